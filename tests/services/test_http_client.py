"""The inter-service HTTP client (`HttpPool`) against scripted asyncio servers: keep-alive
reuse, the answer framings, and every failure turned into `UpstreamError`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from musicrec.http_client import HttpPool, UpstreamError

Handler = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]]


def ok(body: Any, extra: bytes = b"") -> bytes:
    data = orjson.dumps(body)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(data)
        + data
    )


class Server:
    """An HTTP/1.1 server whose answer to each request is written by `handler(head, body,
    writer)`; the handler returns False to close the connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if not await self.handler(head, body, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_keeps_connections_alive_and_encodes_requests() -> None:
    async def echo(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(ok({"target": head.split(b" ")[1].decode(), "body": body.decode()}))
        return True

    async def main() -> None:
        async with Server(echo) as srv:
            pool = HttpPool(srv.url + "/prefix/", timeout_s=2)
            data, seconds = await pool.post_json("/get_events", params={"user_id": 7, "k": 5})
            assert data == {"target": "/prefix/get_events?user_id=7&k=5", "body": ""}
            assert seconds > 0
            data, _ = await pool.post_json("/b", body={"track_ids": [1, 2]})
            assert orjson.loads(data["body"]) == {"track_ids": [1, 2]}
            assert b"Content-Type: application/json" in srv.requests[1]
            assert b"Host: 127.0.0.1:" in srv.requests[0]
            # 20 concurrent calls, then sequential ones reuse the pooled connections
            await asyncio.gather(*(pool.post_json("/c") for _ in range(20)))
            opened = srv.connections
            assert opened <= 21 and pool.idle_connections == opened
            for _ in range(10):
                await pool.post_json("/d")
            assert srv.connections == opened
            await pool.close()
            assert pool.idle_connections == 0
            with pytest.raises(UpstreamError) as err:
                await pool.post_json("/e")
            assert err.value.kind == "closed"

    run(main())


def test_reads_chunked_and_close_delimited_answers() -> None:
    async def chunked(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        if b"/chunked" in head:
            w.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b'5;ext=1\r\n{"a":\r\n3\r\n[1]\r\n1\r\n}\r\n0\r\nx-trailer: 1\r\n\r\n'
            )
            return True
        # no length: the body ends with the connection, here in two segments
        w.write(b"HTTP/1.0 200 OK\r\n\r\n[1, 2,")
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(b" 3]")
        return False

    async def main() -> None:
        async with Server(chunked) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            assert (await pool.post_json("/chunked"))[0] == {"a": [1]}
            assert pool.idle_connections == 1
            assert (await pool.post_json("/chunked"))[0] == {"a": [1]}
            assert srv.connections == 1
            assert (await pool.post_json("/plain"))[0] == [1, 2, 3]
            assert pool.idle_connections == 0  # not reusable
            await pool.close()

    run(main())


def test_answers_beyond_the_body_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Close-delimited and chunked answers alike stop at `MAX_BODY`: a bad response, not
    an ever larger buffer."""
    from musicrec import http_client

    monkeypatch.setattr(http_client, "MAX_BODY", 10)

    async def big(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        if b"/chunked" in head:
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            w.write(b"8\r\n[1,2,3,4\r\n8\r\n,5,6,7]\r\n0\r\n\r\n")
            return True
        w.write(b"HTTP/1.0 200 OK\r\n\r\n[1, 2, 3, 4, 5]")
        return False

    async def main() -> None:
        async with Server(big) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            for path in ("/plain", "/chunked"):
                with pytest.raises(UpstreamError) as err:
                    await pool.post_json(path)
                assert err.value.kind == "bad_response" and "too large" in str(err.value)
            await pool.close()

    run(main())


def test_connection_close_is_honoured_and_stale_connections_are_retried() -> None:
    async def closing(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        if b"/close" in head:
            w.write(ok([1], extra=b"connection: close\r\n"))
            return False
        w.write(ok([2]))
        # the server drops the connection right after answering, without saying so: the
        # client's pooled copy is stale on the next call
        return b"/drop" not in head

    async def main() -> None:
        async with Server(closing) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            assert (await pool.post_json("/close"))[0] == [1]
            assert pool.idle_connections == 0
            assert (await pool.post_json("/drop"))[0] == [2]
            await asyncio.sleep(0.05)  # the server's FIN arrives
            assert (await pool.post_json("/after"))[0] == [2]  # a fresh connection
            assert srv.connections == 3
            await pool.close()

    run(main())


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found", "http_404"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{oops", "bad_json"),
        (b"SMTP ready\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort", "disconnected"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "bad_response"),
        # what int(.., 16) takes but HTTP does not: a negative size escaped as ValueError
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-5\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x2\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+2\r\n", "bad_response"),
        # a chunk-size line longer than the reader's 64 KiB limit
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;"
            + b"x" * 70_000
            + b"\r\n[]\r\n0\r\n\r\n",
            "bad_response",
        ),
    ],
)
def test_bad_answers_become_upstream_errors(answer: bytes, kind: str) -> None:
    async def bad(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(answer)
        return False

    async def main() -> None:
        async with Server(bad) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            with pytest.raises(UpstreamError) as err:
                await pool.post_json("/x")
            assert err.value.kind == kind
            assert err.value.url == srv.url + "/x"
            # a complete answer leaves the connection reusable; a broken one never
            assert pool.idle_connections == (kind in ("http_404", "bad_json"))
            await pool.close()

    run(main())


def test_http_error_keeps_the_body_as_detail_and_the_connection() -> None:
    async def not_found(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 8\r\n\r\nnot yet!")
        return True

    async def main() -> None:
        async with Server(not_found) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            with pytest.raises(UpstreamError) as err:
                await pool.post_json("/x")
            assert err.value.kind == "http_503" and err.value.detail == "not yet!"
            assert pool.idle_connections == 1  # the answer was complete: still usable
            await pool.close()

    run(main())


@pytest.mark.parametrize("status", [204, 304])
def test_answers_without_a_body_are_not_read_to_the_end(status: int) -> None:
    """204 and 304 have no body whatever the head says: without a length they were read
    until the server closed the connection (a timeout)."""

    async def empty(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 %d Nothing\r\n\r\n" % status)
        return True  # the connection stays open

    async def main() -> None:
        async with Server(empty) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            with pytest.raises(UpstreamError) as err:
                await pool.post_json("/x")
            assert err.value.kind == f"http_{status}"
            assert pool.idle_connections == 1  # complete: reusable
            await pool.close()

    run(main())


def test_timeout_and_cancellation_close_the_connection() -> None:
    async def slow(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.3)
        w.write(ok("late"))
        return True

    async def main() -> None:
        async with Server(slow) as srv:
            pool = HttpPool(srv.url, timeout_s=0.05)
            with pytest.raises(UpstreamError) as err:
                await pool.post_json("/x")
            assert err.value.kind == "timeout"
            assert pool.idle_connections == 0  # a late answer must not reach the next call
            pool.timeout_s = 2
            task = asyncio.create_task(pool.post_json("/y"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.idle_connections == 0
            assert (await pool.post_json("/z"))[0] == "late"
            await pool.close()

    run(main())


def test_refused_connection_is_unreachable() -> None:
    async def main() -> None:
        async with Server(lambda h, b, w: asyncio.sleep(0, False)) as srv:
            url = srv.url
        await asyncio.sleep(0.05)
        pool = HttpPool(url, timeout_s=1)  # the port is closed now
        with pytest.raises(UpstreamError) as err:
            await pool.post_json("/x")
        assert err.value.kind == "unreachable"

    run(main())


@pytest.mark.parametrize("url", ["ftp://host/", "localhost:8000", "http:///path"])
def test_bad_base_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="upstream URL"):
        HttpPool(url, timeout_s=1)


def test_configured_headers_go_with_every_request() -> None:
    """The recommendation service's key for the event service: a header sent on every
    call; a name or value that would split the request is refused when the pool is made."""

    async def scenario() -> list[bytes]:
        seen: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = HttpPool(f"http://127.0.0.1:{port}", timeout_s=2, headers={"X-API-Key": "k3y"})
        try:
            await pool.post_json("/a", body={"x": 1})
            await pool.post_json("/b", params={"k": 1})
        finally:
            await pool.close()
            server.close()
        return seen

    heads = asyncio.run(scenario())
    assert len(heads) == 2 and all(b"\r\nX-API-Key: k3y\r\n" in h for h in heads), heads
    for bad in (
        {"X-API-Key": "a\r\nX-Evil: 1"},
        {"Bad Name": "v"},
        {"": "v"},
        {"Host": "evil"},  # the client writes these itself: a second copy is ambiguous
        {"content-length": "0"},
    ):
        with pytest.raises(ValueError):
            HttpPool("http://127.0.0.1:1", timeout_s=1, headers=bad)

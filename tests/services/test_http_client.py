"""The inter-service HTTP client (`HttpPool`) against scripted asyncio servers: keep-alive
reuse, the answer framings, and every failure turned into `UpstreamError`."""

from __future__ import annotations

import asyncio
import time
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


def test_an_answer_of_exactly_the_body_limit_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """`MAX_BODY` is the largest answer accepted, not the first one refused: with a limit
    of 10 bytes, a 10-byte answer is read in every framing (Content-Length, chunked,
    close-delimited) and an 11-byte one is a bad response."""
    from musicrec import http_client

    monkeypatch.setattr(http_client, "MAX_BODY", 10)

    async def framed(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        data = b"[1,2,3,45]" if b"/fits" in head else b"[1,2,3,456]"
        if b"/length" in head:
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(data) + data)
            return True
        if b"/chunked" in head:
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            w.write(b"4\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (data[:4], len(data) - 4, data[4:]))
            return True
        w.write(b"HTTP/1.0 200 OK\r\n\r\n" + data)
        return False

    async def main() -> None:
        async with Server(framed) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            for framing in ("/length", "/chunked", "/plain"):
                assert (await pool.post_json(framing + "/fits"))[0] == [1, 2, 3, 45]
                with pytest.raises(UpstreamError) as err:
                    await pool.post_json(framing + "/over")
                assert err.value.kind == "bad_response" and "too large" in str(err.value)
            await pool.close()

    run(main())


def test_a_status_line_without_a_reason_phrase_is_read() -> None:
    """The reason phrase is optional: "HTTP/1.1 200" (no phrase, even no space after the
    code) is a 200 like "HTTP/1.1 200 OK"."""

    async def bare(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        status = b"HTTP/1.1 200 " if b"/space" in head else b"HTTP/1.1 200"
        w.write(status + b"\r\ncontent-length: 3\r\n\r\n[7]")
        return True

    async def main() -> None:
        async with Server(bare) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            assert (await pool.post_json("/bare"))[0] == [7]
            assert (await pool.post_json("/space"))[0] == [7]
            await pool.close()

    run(main())


def test_idle_connections_expire_and_the_seconds_are_the_calls_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection idle for `KEEPALIVE_S` is not reused, even if the server kept it open
    (the server may be closing it), while one idle for less is; the seconds returned
    (the upstream latency metric) are the duration of the call."""
    from musicrec import http_client

    monkeypatch.setattr(http_client, "KEEPALIVE_S", 0.1)

    async def slowish(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        w.write(ok([1]))
        return True  # the server keeps every connection open

    async def main() -> None:
        async with Server(slowish) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            t0 = time.perf_counter()
            _, seconds = await pool.post_json("/a")
            assert 0.015 <= seconds <= time.perf_counter() - t0
            await pool.post_json("/b")  # idle for less than KEEPALIVE_S: reused
            assert srv.connections == 1
            await asyncio.sleep(0.15)
            await pool.post_json("/c")  # expired: a fresh connection
            assert srv.connections == 2
            await pool.close()

    run(main())


def test_a_pooled_connection_closed_before_answering_is_retried_but_a_cut_answer_is_not() -> None:
    """A kept-alive connection the server closes when the next request arrives (its idle
    timeout raced the request) is retried once on a fresh connection: the call succeeds.
    A server that started answering and then dropped the connection got the request: that
    is `disconnected`, not retried."""
    requests: dict[asyncio.StreamWriter, int] = {}

    async def racing(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        requests[w] = requests.get(w, 0) + 1
        if requests[w] == 1:
            w.write(ok("fresh"))
            return True
        if b"/cut" in head:
            w.write(b"HTTP/1.1 200 OK\r\ncontent-le")
        return False  # the second request on a connection: closed, unanswered or cut

    async def main() -> None:
        async with Server(racing) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            assert (await pool.post_json("/a"))[0] == "fresh"
            assert pool.idle_connections == 1
            assert (await pool.post_json("/b"))[0] == "fresh"  # on a second connection
            assert srv.connections == 2 and pool.idle_connections == 1
            with pytest.raises(UpstreamError) as err:
                await pool.post_json("/cut")
            assert err.value.kind == "disconnected"
            assert srv.connections == 2  # not retried
            await pool.close()

    run(main())


def test_an_http_1_0_answer_keeps_the_connection_only_when_it_says_keep_alive() -> None:
    """HTTP/1.0 closes after each answer unless it says `Connection: keep-alive`; HTTP/1.1
    keeps it unless it says `close` (any other token changes nothing)."""

    async def old(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        version = b"HTTP/1.1" if b"/v11" in head else b"HTTP/1.0"
        connection = head.split(b" ")[1].rsplit(b"/", 1)[1]  # the path's last part
        w.write(version + b" 200 OK\r\nconnection: " + connection + b"\r\n")
        w.write(b"content-length: 2\r\n\r\n{}")
        return True  # the server would keep every connection

    async def main() -> None:
        async with Server(old) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            expected = [("/v10/keep-alive", 1), ("/v10/upgrade", 0), ("/v11/upgrade", 1)]
            for path, idle in expected:
                assert (await pool.post_json(path))[0] == {}
                assert pool.idle_connections == idle, path
            await pool.close()

    run(main())


def test_chunk_sizes_are_hexadecimal() -> None:
    """Chunk sizes are read in base 16, in either case ("10" is 16 bytes, "a" and "A" 10):
    the other tests' single-digit sizes read the same in any base."""
    data = b'["abcdefghijklmnopqrstuvwxyz01234567"]'  # 38 bytes: chunks of 16, 10, 10, 2

    async def chunked(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        w.write(b"10\r\n" + data[:16] + b"\r\na\r\n" + data[16:26] + b"\r\n")
        w.write(b"A\r\n" + data[26:36] + b"\r\n2\r\n" + data[36:] + b"\r\n0\r\n\r\n")
        return True

    async def main() -> None:
        async with Server(chunked) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            assert (await pool.post_json("/x"))[0] == ["abcdefghijklmnopqrstuvwxyz01234567"]
            await pool.close()

    run(main())


@pytest.mark.parametrize("status", [100, 199])
def test_an_interim_1xx_answer_fails_the_call_and_closes_the_connection(status: int) -> None:
    """A 1xx head (100 to 199) is not the answer (this client never asks for one) and has
    no body: the call fails with `http_1xx` at once and its connection is closed, so that
    the final answer following it on the same connection cannot be read as the answer to
    the next call."""

    async def interim(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
        if b"/first" in head:
            w.write(b"HTTP/1.1 %d Interim\r\n\r\n" % status + ok("first"))
        else:
            w.write(ok("second"))
        return True

    async def main() -> None:
        async with Server(interim) as srv:
            pool = HttpPool(srv.url, timeout_s=2)
            with pytest.raises(UpstreamError) as err:
                await pool.post_json("/first")
            assert err.value.kind == f"http_{status}"
            assert pool.idle_connections == 0
            assert (await pool.post_json("/second"))[0] == "second"
            assert srv.connections == 2
            await pool.close()

    run(main())


def test_default_ports_and_tls_follow_the_scheme() -> None:
    """Without a port, http:// connects to 80 and https:// to 443 with TLS; a given port is
    kept, and plain http gets no TLS."""
    assert (HttpPool("http://svc", timeout_s=1).port, HttpPool("http://svc", timeout_s=1).ssl) == (
        80,
        None,
    )
    secure = HttpPool("https://svc/api", timeout_s=1)
    assert secure.port == 443 and secure.ssl is not None
    assert HttpPool("https://svc:8443", timeout_s=1).port == 8443
    assert HttpPool("http://svc:8020", timeout_s=1).port == 8020


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
        # a status line of another protocol, or without a status code
        (b"HTTP/2 200 OK\r\ncontent-length: 2\r\n\r\n{}", "bad_response"),
        (b"HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", "bad_response"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "bad_response"),
        # an empty body is a length like any other: the status decides
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", "http_404"),
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


def test_header_values_take_spaces_tabs_and_visible_characters_not_controls() -> None:
    """A header value may hold spaces, tabs and any visible character ("~" and latin-1
    letters included); the control characters (below space, and DEL) are refused when
    the pool is made."""
    pool = HttpPool("http://127.0.0.1:1", timeout_s=1, headers={"X-API-Key": "a b\tc~\xe9!"})
    assert pool.extra_headers == b"\r\nX-API-Key: a b\tc~\xe9!"
    for bad in ("\x00", "key\x1f", "key\x7f", "\x7f"):
        with pytest.raises(ValueError, match="control character"):
            HttpPool("http://127.0.0.1:1", timeout_s=1, headers={"X-API-Key": bad})


def test_credentials_in_the_url_stay_out_of_the_host_header() -> None:
    """An upstream URL with a user and password (`http://user:secret@host:port`) sends
    `Host: host:port`: the secret is not written into every request's Host header."""

    async def scenario() -> tuple[bytes, bytes]:
        async def echo(head: bytes, body: bytes, w: asyncio.StreamWriter) -> bool:
            w.write(ok([1]))
            return True

        async with Server(echo) as srv:
            hostport = srv.url.removeprefix("http://")
            pool = HttpPool(f"http://user:secret@{hostport}", timeout_s=2)
            assert (await pool.post_json("/x"))[0] == [1]
            await pool.close()
            return srv.requests[0], hostport.encode()

    request, hostport = asyncio.run(scenario())
    assert b"\r\nHost: " + hostport + b"\r\n" in request
    assert b"secret" not in request and b"user" not in request

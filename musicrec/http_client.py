"""The HTTP client for calls between the services: pooled keep-alive HTTP/1.1 over asyncio.

One `HttpPool` per upstream (base URL), created in the lifespan and closed at shutdown.
`post_json(path, params=, body=)` sends one POST on an idle pooled connection (or a new
one), reads the answer (Content-Length or chunked body) and decodes it with orjson.

Why not aiohttp or httpx: the calls go to our own uvicorn services on a private network
and carry a few hundred bytes, so the client's own CPU is most of their cost. Client CPU
per call on this machine (`python bench/client_ab.py`: 20,000 POSTs, 25 concurrent, to a
one-line uvicorn app, medians of 3 rounds): aiohttp 149 us, this client 87 us (1.7x less);
`httpx.AsyncClient` costs ~4.5 ms (`shared/notes/lessons.md`). It speaks exactly what the
services need: HTTP/1.1 keep-alive, `http://` and `https://`, a JSON body, Content-Length
or chunked answers; no redirects, proxies, cookies or compression.

Every failure (refused, reset, timeout, non-200, malformed answer, bad JSON) becomes
`UpstreamError` with a short `kind` for metrics, so callers have one thing to catch when
they degrade gracefully. A connection goes back to the pool only after a complete answer;
one that failed, timed out or was cancelled midway is closed. A pooled connection the
server closed meanwhile is retried once on a fresh one (the calls are read-only).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

#: seconds an idle pooled connection is kept; below uvicorn's keep-alive (the services run
#: with 30 s, uvicorn's default is 5 s) so the client, not the server, closes idle sockets
KEEPALIVE_S = 4.0
#: the largest answer accepted (bytes); the services answer a few KB
MAX_BODY = 16 * 1024 * 1024
_MAX_HEAD = 64 * 1024


class UpstreamError(Exception):
    """A call to another service failed; `kind` is a short label for metrics."""

    def __init__(self, url: str, kind: str, detail: str = "") -> None:
        self.url = url
        self.kind = kind
        self.detail = detail
        super().__init__(f"{url}: {kind}" + (f" ({detail})" if detail else ""))


class _StaleConnection(Exception):
    """A pooled connection was closed by the server before it answered."""


class _Conn:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


class HttpPool:
    """Keep-alive connections to one upstream, e.g. `HttpPool("http://127.0.0.1:8020")`.

    `timeout_s` bounds each call (connect + send + answer); at most `limit` calls are in
    flight at once (more wait for a free slot within their timeout); at most `limit` idle
    connections are kept. Use from one event loop.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        limit: int = 256,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"upstream URL must be http(s)://host[:port][/prefix], got {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self.prefix = parts.path.rstrip("/")
        self.host_header = parts.netloc.rsplit("@", 1)[-1].encode("idna")
        #: sent with every request (e.g. an API key); names and values checked here, as a
        #: CR or LF in them would split the request
        self.extra_headers = b"".join(
            b"\r\n" + _header_line(name, value) for name, value in (headers or {}).items()
        )
        self.timeout_s = timeout_s
        self.limit = limit
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(limit)
        self._closed = False

    async def close(self) -> None:
        """Close the idle connections; calls made afterwards fail with `closed`."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            # already reset by the peer: nothing to do
            with contextlib.suppress(OSError, ssl.SSLError):
                await conn.writer.wait_closed()

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def post_json(
        self,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
    ) -> tuple[Any, float]:
        """POST `path` (query `params`, optional JSON `body`); `(decoded JSON, seconds)`.

        Raises `UpstreamError` on any failure; `asyncio.CancelledError` passes through
        (the connection in use is closed)."""
        target = self.prefix + path
        if params:
            target += "?" + urlencode(params)
        url = self.base_url + path
        payload = orjson.dumps(body) if body is not None else b""
        head = (
            f"POST {target} HTTP/1.1\r\n".encode()
            + b"Host: "
            + self.host_header
            + self.extra_headers
            + (b"\r\nContent-Type: application/json" if body is not None else b"")
            + f"\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        )
        request = head + payload
        if self._closed:
            raise UpstreamError(url, "closed", "the client was closed")
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._slots:
                    status, answer = await self._exchange(request)
        except TimeoutError as exc:
            raise UpstreamError(url, "timeout", f"{self.timeout_s:.3f}s") from exc
        except ConnectionRefusedError as exc:
            raise UpstreamError(url, "unreachable", str(exc)) from exc
        except (_StaleConnection, asyncio.IncompleteReadError, ConnectionError) as exc:
            raise UpstreamError(url, "disconnected", repr(exc)) from exc
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(url, "unreachable", repr(exc)) from exc
        except _ProtocolError as exc:
            raise UpstreamError(url, "bad_response", str(exc)) from exc
        if status != 200:
            raise UpstreamError(url, f"http_{status}", answer[:200].decode("latin-1"))
        try:
            data = orjson.loads(answer)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(url, "bad_json", str(exc)) from exc
        return data, time.perf_counter() - start

    # --- connections ----------------------------------------------------------------------

    def _take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < KEEPALIVE_S and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send on a pooled connection (retried once on a fresh one if the server had
        closed it) or a new one; `(status, body)`."""
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._roundtrip(conn, request)
            except (_StaleConnection, ConnectionError):
                pass  # the server closed it while idle: once more on a new connection
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl, limit=_MAX_HEAD
        )
        return await self._roundtrip(_Conn(reader, writer), request)

    async def _roundtrip(self, conn: _Conn, request: bytes) -> tuple[int, bytes]:
        reusable = False
        try:
            conn.writer.write(request)
            try:
                head = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _StaleConnection("closed before answering") from exc
                raise
            except asyncio.LimitOverrunError as exc:
                raise _ProtocolError("response head too long") from exc
            status, length, chunked, keep_alive = _parse_head(head)
            if status < 200 or status in (204, 304):
                answer = b""  # never a body (RFC 9112 section 6.3), whatever the head says
                # an interim 1xx answer is followed by the final one: not ours to read
                keep_alive = keep_alive and status >= 200
            elif chunked:
                answer = await _read_chunked(conn.reader)
            elif length is not None:
                if length > MAX_BODY:
                    raise _ProtocolError(f"answer of {length} bytes is too large")
                answer = await conn.reader.readexactly(length)
            else:  # no length: the body ends with the connection
                answer = await _read_to_end(conn.reader)
                keep_alive = False
            reusable = keep_alive and not self._closed and len(self._idle) < self.limit
            return status, answer
        finally:
            if reusable:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()


class _ProtocolError(Exception):
    """The answer is not HTTP/1.x as this client reads it."""


#: headers every request carries already (a second copy would make it ambiguous)
_OWN_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection"}
)


def _header_line(name: str, value: str) -> bytes:
    """`name: value` as bytes; `ValueError` for a name that is not a token or a value with
    a control character (latin-1 as HTTP carries it)."""
    if not name or not all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name):
        raise ValueError(f"not an HTTP header name: {name!r}")
    if name.lower() in _OWN_HEADERS:
        raise ValueError(f"the client writes {name} itself")
    if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in value):
        raise ValueError(f"a control character in the value of header {name}")
    return f"{name}: {value}".encode("latin-1")


def _parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """`(status, content length or None, chunked, keep-alive)` of a response head."""
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise _ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError as exc:
        raise _ProtocolError(f"bad status code: {lines[0][:80]!r}") from exc
    length: int | None = None
    chunked = False
    keep_alive = status_line[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError as exc:
                raise _ProtocolError(f"bad Content-Length: {value[:40]!r}") from exc
            if length < 0:
                raise _ProtocolError(f"bad Content-Length: {length}")
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            token = value.strip().lower()
            if token == b"close":
                keep_alive = False
            elif token == b"keep-alive":
                keep_alive = True
    return status, length, chunked, keep_alive


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    """A body delimited by the end of the connection (no length, not chunked), however
    many segments it arrives in; `_ProtocolError` beyond `MAX_BODY`."""
    parts: list[bytes] = []
    total = 0
    while chunk := await reader.read(65536):
        total += len(chunk)
        if total > MAX_BODY:
            raise _ProtocolError("answer is too large")
        parts.append(chunk)
    return b"".join(parts)


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """A CRLF-ended line of a chunked body; `_ProtocolError` if longer than the reader's
    limit (a chunk-size line or trailer no server of ours sends)."""
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError as exc:
        raise _ProtocolError("chunk-size or trailer line too long") from exc


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body (RFC 9112 section 7.1); trailers are read and ignored."""
    parts: list[bytes] = []
    total = 0
    while True:
        line = await _read_line(reader)
        digits = line.split(b";", 1)[0].strip()
        # hex digits only: int(.., 16) also takes "-5", "+5", "0x5" and "5_0"
        if not digits or digits.lstrip(b"0123456789abcdefABCDEF"):
            raise _ProtocolError(f"bad chunk size line: {line[:40]!r}")
        size = int(digits, 16)
        if size == 0:
            while await _read_line(reader) != b"\r\n":  # trailers, then the end
                pass
            return b"".join(parts)
        total += size
        if total > MAX_BODY:
            raise _ProtocolError("chunked answer is too large")
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise _ProtocolError("chunk not followed by CRLF")

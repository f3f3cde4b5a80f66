"""The shared async HTTP client for calls between the services.

One `aiohttp.ClientSession` per process, created in the lifespan (`create_session`) and
closed at shutdown: pooled keep-alive connections, short timeouts
(`settings.upstream_timeout_s`), orjson on both ways. aiohttp was chosen over
`httpx.AsyncClient` after measuring both on the same call chain (about an order of magnitude
less CPU per request; see the benchmark in the service notes).

`post_json` turns every failure (refused, reset, timeout, non-200, bad JSON) into
`UpstreamError`, so callers have a single thing to catch when they degrade gracefully.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from musicrec.settings import Settings

#: seconds an idle pooled connection is kept; below uvicorn's default keep-alive (5 s) so
#: the client, not the server, closes idle connections (avoids reusing a closed socket)
KEEPALIVE_S = 4.0
_JSON_HEADERS = {"Content-Type": "application/json"}


class UpstreamError(Exception):
    """A call to another service failed; `kind` is a short label for metrics."""

    def __init__(self, url: str, kind: str, detail: str = "") -> None:
        self.url = url
        self.kind = kind
        self.detail = detail
        super().__init__(f"{url}: {kind}" + (f" ({detail})" if detail else ""))


def create_session(settings: Settings, *, pool_size: int = 256) -> aiohttp.ClientSession:
    """The process's shared session. Call inside the running event loop (the lifespan)."""
    connector = aiohttp.TCPConnector(
        limit=pool_size,
        limit_per_host=pool_size,
        keepalive_timeout=KEEPALIVE_S,
        ttl_dns_cache=300,
    )
    timeout = aiohttp.ClientTimeout(
        total=settings.upstream_timeout_s, sock_connect=settings.upstream_timeout_s
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        raise_for_status=False,
    )


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    params: Mapping[str, str | int] | None = None,
    body: Any = None,
) -> tuple[Any, float]:
    """POST (query `params`, optional JSON `body`) and return `(decoded JSON, seconds)`.

    A pooled connection the server closed meanwhile is retried once on a fresh one (the
    calls made with this helper are read-only). Raises `UpstreamError` on any failure.
    """
    data = orjson.dumps(body) if body is not None else None
    headers = _JSON_HEADERS if data is not None else None
    start = time.perf_counter()
    for attempt in range(2):
        try:
            async with session.post(url, params=params, data=data, headers=headers) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    raise UpstreamError(url, f"http_{resp.status}", payload[:200].decode("latin-1"))
                return orjson.loads(payload), time.perf_counter() - start
        except aiohttp.ServerDisconnectedError as exc:
            if attempt == 0:
                continue
            raise UpstreamError(url, "disconnected", str(exc)) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(url, "unreachable", str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(url, "client_error", repr(exc)) from exc
        except TimeoutError as exc:
            raise UpstreamError(url, "timeout") from exc
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(url, "bad_json", str(exc)) from exc
    raise AssertionError("unreachable")  # pragma: no cover

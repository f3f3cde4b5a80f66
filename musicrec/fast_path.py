"""An express lane in front of FastAPI for the hottest `?<id>=&k=` routes.

Under load, most of a recommendation request's CPU went to the framework rather than to
the recommendation: routing over every route, building a `Request`, resolving the
dependencies, validating the query with pydantic, the exception-handling layers (py-spy on
full10 artifacts: uvicorn + Starlette + FastAPI ~45% of the worker's samples). For the
routes registered here, `FastPath` answers a request itself when, and only when, its query
string has the plain form the route accepts:

    POST <path>?<id>=<digits>[&k=<digits>]     (either order, each at most once)

with the id (`user_id`, `track_id`) in 0 .. 2**31-1 and `k` in 1 .. K_MAX. Everything
else (another method, a missing or malformed parameter, a percent-encoded digit, an extra
parameter, a service not ready yet, ...) goes on to FastAPI unchanged, which answers
exactly as before: its 422 for bad input, its 503 while loading. The answer is the same
bytes and headers as the FastAPI route's `OrjsonResponse`, and it is counted under the same
route template by `MetricsMiddleware` (which wraps this lane).
`tests/services/test_fast_path.py` sends the same requests with and without the lane and
compares status, headers and body. Used by `/recommendations`, `/recommendations_offline`
and `/similar_tracks`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from musicrec.service_common import INT32_MAX, K_MAX

#: (id, k) -> the answer's body (JSON bytes), or None to let FastAPI answer (not ready)
IdKHandler = Callable[[int, int], Awaitable[bytes | None]]

#: longer query strings are never the plain form (track_id=2147483647&k=1000 is 29 bytes)
MAX_QUERY = 64


def parse_id_k(query: bytes, id_name: bytes, default_k: int) -> tuple[int, int] | None:
    """`(id, k)` if `query` is exactly `<id_name>=<digits>[&k=<digits>]` (either order,
    each once, ASCII digits, the id in 0 .. 2**31-1 like `UserIdQuery` / `TrackIdQuery`, k
    in 1 .. K_MAX like `KQuery`), `k` defaulting to `default_k`; None for anything else."""
    if len(query) > MAX_QUERY:
        return None
    key: int | None = None
    k: int | None = None
    for part in query.split(b"&"):
        name, sep, value = part.partition(b"=")
        # bytes.isdigit() is ASCII-only; 10 digits bound the int() below
        if not sep or not value.isdigit() or len(value) > 10:
            return None
        if name == id_name and key is None:
            key = int(value)
        elif name == b"k" and k is None:
            k = int(value)
        else:
            return None
    if key is None or key > INT32_MAX:
        return None
    if k is None:
        k = default_k
    elif not 1 <= k <= K_MAX:
        return None
    return key, k


@dataclass(frozen=True)
class Lane:
    """One route served by the lane: its FastAPI route object (for the metrics label), the
    handler computing the JSON body, the route's default `k` and its id parameter."""

    route: Any
    handler: IdKHandler
    default_k: int
    id_name: bytes = b"user_id"


def route_of(app: Any, path: str) -> Any:
    """The app's route object for `path` (what `Lane.route` needs for the metrics label)."""
    return next(r for r in app.routes if getattr(r, "path", None) == path)


class FastPath:
    """Pure ASGI middleware: serves the plain requests of `lanes` (path -> `Lane`) and
    passes everything else to the wrapped app."""

    def __init__(self, app: ASGIApp, lanes: dict[str, Lane]) -> None:
        self.app = app
        self.lanes = lanes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # not under a root path: the router matches the path without it (uvicorn puts it in
        # front), which this lookup does not; such requests go the usual way
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            lane = self.lanes.get(scope["path"])
            if lane is not None:
                parsed = parse_id_k(scope["query_string"], lane.id_name, lane.default_k)
                if parsed is not None:
                    body = await lane.handler(*parsed)
                    if body is not None:
                        scope["route"] = lane.route
                        await send(
                            {
                                "type": "http.response.start",
                                "status": 200,
                                # the headers of starlette's Response, in its order
                                "headers": [
                                    (b"content-length", str(len(body)).encode()),
                                    (b"content-type", b"application/json"),
                                ],
                            }
                        )
                        await send({"type": "http.response.body", "body": body})
                        return
        await self.app(scope, receive, send)

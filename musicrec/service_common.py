"""Pieces shared by the three services.

* request bounds (`UserIdQuery`, `TrackIdQuery`, `K_MAX`, ...) and a 422 handler with a
  readable message (bounded and always renderable, whatever the client sent; an
  unparseable body is a 422 too);
* `OrjsonResponse` - a JSON response rendered by orjson;
* `ServiceMetrics` + `MetricsMiddleware` - Prometheus metrics (one registry per app, so
  several apps can live in one process) and one structured debug log line per request;
* `install_common` - the 422 handler, the metrics middleware and `GET /health`, `GET
  /ready`, `GET /metrics`;
* artifact helpers - `MISSING_ARTIFACT_HINT` (for `musicrec.io.read_artifact`), column
  readers of the tables it checked (`int_column`, ...), `GroupedIndex` (CSR-like key ->
  slice offsets);
* `fetch_artifacts_if_configured`, `configure_service_logging`, `RateLimitedLog`;
* `app_or_exit` - the app of an entry module uvicorn imports (`api_main.py`, ...).

Nothing here has side effects at import.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

import numpy as np
import orjson
import pyarrow as pa
from fastapi import FastAPI, Query, Request
from fastapi.exception_handlers import (
    http_exception_handler as default_http_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.telemetry import TelemetryConfig
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from pydantic import BaseModel, BeforeValidator, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from musicrec.settings import INSTANCE_HEADER, Settings

log = logging.getLogger("musicrec.services")

# --- request bounds --------------------------------------------------------------------

INT32_MAX = 2**31 - 1
#: the largest list a client may ask for (recommendations, similar tracks)
K_MAX = 1000
#: the batch routes' limits, which the recommendation service's coalesced calls keep to:
#: users per `/get_events_batch`, seeds per `/similar_tracks_batch`, a batch body's bytes,
#: and the events one `/get_events_batch` answer may hold (users x k, about 4 MB of JSON)
EVENTS_BATCH_MAX_USERS = 500
SIMILAR_BATCH_MAX_SEEDS = 200
BATCH_BODY_MAX = 64 * 1024
#: (without it, 500 users x 10,000 events, 1.5 kB asked, made a 40 MB answer built on the
#: event loop: seconds during which every other request waited)
EVENTS_BATCH_MAX_EVENTS = 500_000

_DECIMAL_RE = re.compile(r"-?[0-9]+")


def decimal_digits(value: Any) -> Any:
    """A query integer as the README defines it: ASCII decimal digits (a leading minus is
    let through, for the bound's own message). pydantic alone also reads `1_000`, `+5`,
    ` 5` and `2.0` as integers, and the fast lane (`musicrec.fast_path`) refuses them:
    one answer for one query, whichever lane takes it."""
    if isinstance(value, str) and not _DECIMAL_RE.fullmatch(value):
        raise ValueError("must be a whole number in decimal digits")
    return value


#: the validator of an integer query parameter, after its `Query(...)` (before it, the
#: bounds vanish from the OpenAPI schema: `ge` instead of `minimum`)
DECIMAL = BeforeValidator(decimal_digits)
UserIdQuery = Annotated[
    int, Query(ge=0, le=INT32_MAX, description="User id (0 .. 2**31-1)", examples=[42]), DECIMAL
]
TrackIdQuery = Annotated[
    int,
    Query(ge=0, le=INT32_MAX, description="Track id (0 .. 2**31-1)", examples=[99262]),
    DECIMAL,
]
KQuery = Annotated[int, Query(ge=1, le=K_MAX, description=f"List length (1 .. {K_MAX})"), DECIMAL]


#: a 422 answer lists at most this many errors, and echoes at most this much of an input
MAX_ERRORS = 20
MAX_ECHO_CHARS = 200
_INT64 = 2**63


def _clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, with lone surrogates escaped (orjson refuses them)."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_safe(value: Any, depth: int = 0) -> Any:
    """A bounded copy of a request fragment that orjson can always render.

    Validation errors echo what the client sent: that may be a 60 kB body, bytes that are
    not UTF-8, lone surrogates or integers beyond 64 bits (all of which made the 422
    handler itself fail with a 500). Strings are clipped, containers cut to `MAX_ERRORS`
    items and 3 levels, big integers and anything else turned into clipped text.
    """
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else _clip(str(value))
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, bytes | bytearray):
        return _clip(repr(bytes(value[: 2 * MAX_ECHO_CHARS])))
    if depth >= 3:
        return _clip(repr(value))
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ERRORS]
        return {_clip(str(k)): json_safe(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in list(value)[:MAX_ERRORS]]
    return _clip(str(value))


def validation_message(
    errors: Sequence[Any], total: int | None = None, patterns: dict[str, str] | None = None
) -> str:
    """One readable line from pydantic's error list, e.g. `query k: Input should be ...`.
    `patterns`: what a parameter's `pattern` means in words (pydantic's message quotes the
    regular expression), from the app's `state.pattern_meanings`."""
    patterns = patterns or {}
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        where = " ".join(loc) if loc else "request"
        ctx = err.get("ctx") if isinstance(err.get("ctx"), dict) else {}
        # an error of this module's own may carry no input (a body it could not decode)
        got = f" (got {_clip(repr(err['input']), 80)})" if "input" in err else ""
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":  # `loc` is (body, position), `input` a `{}`
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            where, msg, got = "body", f"not valid JSON{at} ({ctx.get('error', msg)})", ""
        elif err.get("type") == "string_pattern_mismatch" and ctx.get("pattern") in patterns:
            msg = f"must be {patterns[ctx['pattern']]}"
        parts.append(f"{where}: {msg}{got}")
    more = (total or len(errors)) - len(errors)
    if more > 0:
        parts.append(f"... and {more} more error(s)")
    return "invalid request: " + "; ".join(parts)


def validation_response(
    raw_errors: Sequence[Any], patterns: dict[str, str] | None = None
) -> Response:
    """The 422 answer: a bounded, JSON-safe `detail` list plus a one-line `message`."""
    errors = [json_safe(dict(e)) for e in list(raw_errors)[:MAX_ERRORS]]
    message = validation_message(errors, len(raw_errors), patterns)
    return OrjsonResponse(
        {"detail": errors, "message": message},
        status_code=422,
    )


async def validation_exception_handler(request: Request, exc: Exception) -> Response:
    """422 with FastAPI's usual `detail` list plus a one-line `message`."""
    assert isinstance(exc, RequestValidationError)
    return validation_response(exc.errors(), getattr(request.app.state, "pattern_meanings", None))


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's handler, except for a body it could not parse (not UTF-8, ...): FastAPI
    answers that with a vague 400; here it is a 422 like every other invalid input, with
    the reason."""
    assert isinstance(exc, StarletteHTTPException)
    cause = exc.__cause__
    # RecursionError: a body nested thousands of levels deep
    if exc.status_code == 400 and isinstance(cause, ValueError | RecursionError):
        msg = f"the body is not valid JSON: {cause}"
        return validation_response([{"type": "body_invalid", "loc": ["body"], "msg": msg}])
    return await default_http_exception_handler(request, exc)


#: FastAPI's native OpenTelemetry hooks, switched off: the services export Prometheus
#: metrics, and the no-op tracing/metrics/log hooks cost ~10% throughput on /health
TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


# --- responses -------------------------------------------------------------------------


def json_body(content: Any) -> bytes:
    """JSON bytes by orjson (numpy arrays and scalars allowed): every JSON answer's body."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class OrjsonResponse(Response):
    """`application/json` rendered by orjson (numpy arrays and scalars allowed)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json_body(content)


class HealthResponse(BaseModel):
    """Liveness: the process answers."""

    status: str = Field("ok", examples=["ok"])
    service: str


class ReadyResponse(BaseModel):
    """Readiness: artifacts loaded (or the store opened), the service can answer."""

    ready: bool
    service: str


class ErrorResponse(BaseModel):
    """An error answer (401, 503, ...)."""

    detail: str


class ValidationErrorResponse(BaseModel):
    """A 422 answer: pydantic's error list and a one-line summary."""

    detail: list[dict[str, Any]]
    message: str


#: OpenAPI documentation of the 422 answer, for the `responses=` argument of routes
VALIDATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorResponse, "description": "Out-of-range or malformed input"},
}
NOT_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "Not ready yet (artifacts loading)"},
}


# --- metrics and request logging -------------------------------------------------------

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """Prometheus metrics of one service, in a registry of its own."""

    def __init__(self, service: str) -> None:
        self.service = service
        scratch = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if scratch and not (os.path.isdir(scratch) and os.access(scratch, os.W_OK | os.X_OK)):
            from musicrec.errors import ConfigError

            # it failed at every request instead (after the answer, a traceback each, and
            # /metrics a 500), the service reporting ready
            raise ConfigError(
                f"PROMETHEUS_MULTIPROC_DIR={scratch!r} is not a writable directory (where "
                "prometheus_client keeps each uvicorn worker's metrics): create it, empty, "
                "or unset it for a single worker"
            )
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "recommendation_fallbacks_total",
            "Answers degraded to the offline list because an upstream failed or was slow",
            ["reason"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "upstream_errors_total",
            "Failed calls to another service",
            ["upstream", "kind"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "upstream_request_duration_seconds",
            "Latency of calls to another service",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_batch = Histogram(
            "upstream_batch_keys",
            "Lookups (users, seed tracks) carried by one coalesced call to another service",
            ["upstream"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )

        # (method, route, status) -> the two labelled children `observe` updates: the
        # label sets are few and bounded (route templates), and `labels()` (a lock, string
        # conversions, a dict lookup) cost more than the update itself
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and record its latency (called once per request)."""
        if method not in HTTP_METHODS:
            method = "OTHER"  # any token is a valid method: keep the label set bounded
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The text exposition of this process's metrics, or, when the service runs as
        several uvicorn workers (`PROMETHEUS_MULTIPROC_DIR` set, see `musicrec.serve`), of
        all its workers together."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times each request by its route template (not the
    raw path, so the label set stays bounded) and logs one JSON line at DEBUG level."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, logger: logging.Logger) -> None:
        self.app = app
        self.metrics = metrics
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], template, status, elapsed)
            if self.logger.isEnabledFor(logging.DEBUG):
                self.logger.debug(
                    orjson.dumps(
                        {
                            "service": self.metrics.service,
                            "method": scope["method"],
                            "path": scope["path"],
                            "query": scope.get("query_string", b"").decode("latin-1"),
                            "status": status,
                            "ms": round(elapsed * 1000, 3),
                        }
                    ).decode()
                )


def _plainly_distinct(query: bytes) -> bool:
    """True when the names of a query are distinct as written and no escape (`%`, `+`) can
    make two of them equal once decoded: the common query needs no parsing (parse_qsl took
    about 4 us of the 9 us the middleware stack costs a request, `bench/metrics_ab.py`)."""
    if b"%" in query or b"+" in query:
        return False
    names = {part.partition(b"=")[0] for part in query.split(b"&")}
    return len(names) == query.count(b"&") + 1


class NoRepeatedQuery:
    """Pure ASGI middleware: a query that names a parameter twice (`?user_id=1&user_id=2`)
    is a 422 naming it, on every route. FastAPI would silently take the last value, and a
    client that sends two is confused about which it meant (`/add_event?user_id=U&
    track_id=4&track_id=5` stored track 5). Names are compared decoded (`user%5Fid` is
    `user_id`). Here rather than as a FastAPI dependency: parsing a plain query takes about
    5 µs, while a dependency on every route made a slow-path `/similar_tracks` 1.2x slower
    (193.5 against 159.6 µs, medians of 9 alternated in-process rounds, 2026-12-07, a busy
    host). It sits inside the express lane, which refuses repeated parameters itself.

    It runs before routing, so it asks `router` (the app's) whether a route answers this
    path and method: only then is the answer a 422, labelled with that route in the
    metrics; an unknown path keeps its 404 and a wrong method its 405. A blank name
    (`?=1&=2`) names no parameter and is ignored, as FastAPI ignores it."""

    def __init__(self, app: ASGIApp, router: Router | None = None) -> None:
        self.app = app
        self.router = router

    def _answered(self, scope: Scope) -> bool:
        """Whether a route answers this path and method (always, without a router); the
        route found is put in the scope for the metrics' label."""
        if self.router is None:
            return True
        for route in self.router.routes:
            if route.matches(scope)[0] is Match.FULL:
                scope["route"] = route
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if b"&" in query and not _plainly_distinct(query):
            values: dict[str, list[str]] = {}
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                values.setdefault(name, []).append(value)
            if len(values) < query.count(b"&") + 1:  # one pass; at most MAX_ERRORS named
                errors = [
                    {
                        "type": "repeated_parameter",
                        "loc": ["query", name],
                        "msg": "given more than once; send each parameter once",
                        "input": got[:MAX_ERRORS],
                    }
                    for name, got in values.items()
                    if len(got) > 1 and name
                ]
                if errors and self._answered(scope):
                    await validation_response(errors)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class JsonErrorBodies:
    """Pure ASGI middleware: an error answered in plain text below the app's handlers (the
    413 that Starlette's body limit sends at once for a Content-Length over a route's
    `max_body_size`, where a chunked body over it gets the JSON handler's 413) is sent as
    every other error is, `{"detail": "<the text>"}` in JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        text = bytearray()

        async def send_wrapper(message: Message) -> None:
            nonlocal held
            if held is None:
                if (
                    message["type"] == "http.response.start"
                    and message["status"] >= 400
                    and dict(message.get("headers", [])).get(b"content-type", b"")[:10]
                    == b"text/plain"
                ):
                    held = message
                    return
            elif message["type"] == "http.response.body":
                text.extend(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = orjson.dumps({"detail": text.decode("utf-8", "replace")})
                kept = [
                    (k, v)
                    for k, v in held.get("headers", [])
                    if k.lower() not in (b"content-type", b"content-length")
                ]
                kept += [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({**held, "headers": kept})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_wrapper)


class RateLimitedLog:
    """Logs a warning (or an error with its traceback) at most once per `interval_s`; the
    rest go to DEBUG, without a traceback, and are counted in the next one logged, so a long
    outage (or an upstream answering garbage to every request) does not flood the log."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: object) -> None:
        self._log(logging.WARNING, msg, args, exc_info=False)

    def exception(self, msg: str, *args: object) -> None:
        """An ERROR with the traceback of the exception being handled."""
        self._log(logging.ERROR, msg, args, exc_info=True)

    def _log(self, level: int, msg: str, args: tuple[object, ...], exc_info: bool) -> None:
        now = time.monotonic()
        with self._lock:
            due = now - self._last >= self.interval_s
            if due:
                suppressed, self._suppressed, self._last = self._suppressed, 0, now
            else:
                self._suppressed += 1
        if due:
            suffix = f" ({suppressed} similar messages suppressed)" if suppressed else ""
            self.logger.log(level, msg + suffix, *args, exc_info=exc_info)
        else:
            self.logger.debug(msg, *args)


def install_common(
    app: FastAPI,
    service: str,
    metrics: ServiceMetrics,
    is_ready: Callable[[], bool],
    instance: str | None = None,
) -> None:
    """Add the metrics middleware (outermost), JSON error bodies (innermost: after an
    express lane, whose answers never need it), the 422 handler and `/health`, `/ready`,
    `/metrics`."""
    app.user_middleware.append(Middleware(JsonErrorBodies))
    app.user_middleware.append(Middleware(NoRepeatedQuery, router=app.router))
    app.add_middleware(MetricsMiddleware, metrics=metrics, logger=log.getChild(service))
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)

    @app.get("/health", response_model=HealthResponse, tags=["probes"])
    async def health() -> Response:
        """Liveness probe: 200 while the process runs."""
        return OrjsonResponse({"status": "ok", "service": service})

    @app.get(
        "/ready",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "Not ready yet"}},
        tags=["probes"],
    )
    async def ready() -> Response:
        """Readiness probe: 200 `{"ready": true}` once loaded, else 503 `{"ready": false}`
        (started by `musicrec serve`: its run's token in the X-Musicrec-Instance header)."""
        ok = is_ready()
        headers = {INSTANCE_HEADER: instance} if instance else None
        return OrjsonResponse(
            {"ready": ok, "service": service}, status_code=200 if ok else 503, headers=headers
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
        tags=["probes"],
    )
    async def prometheus_metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def freeze_startup_heap() -> None:
    """Exclude everything allocated at start-up (modules, the app, loaded artifacts) from
    the garbage collector's future passes (`gc.freeze`). A full collection of the ~70k
    start-up objects takes tens of ms; under load it fired every few seconds and put
    those pauses into the p99 latency. Call at the end of the lifespan's start-up."""
    gc.collect()
    gc.freeze()


def not_ready(what: str) -> Exception:
    """The 503 raised by dependencies when the service has not finished starting."""
    from fastapi import HTTPException

    return HTTPException(status_code=503, detail=f"service not ready: {what} not loaded yet")


# --- artifacts -------------------------------------------------------------------------


#: what to do when an artifact a service reads is missing: the end of the error of
#: `musicrec.io.read_artifact`
MISSING_ARTIFACT_HINT = (
    "run `python -m musicrec pipeline` first, or set MUSICREC_ARTIFACTS_DIR / "
    "MUSICREC_FETCH_ARTIFACTS_FROM_S3"
)


def int_column(table: pa.Table, name: str) -> np.ndarray:
    """An integer id column of a table `musicrec.io.read_artifact` returned (which checked
    its kind and that it has no null) as int64."""
    return np.asarray(_plain(table.column(name)).to_numpy(), dtype=np.int64)


def numeric_column(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column (e.g. ranks) of a table `read_artifact` returned, in its own dtype."""
    return np.asarray(_plain(table.column(name)).to_numpy())


def _plain(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column without dictionary encoding (which `read_artifact` accepts)."""
    return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


def float_column(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float32/float64 (float32 kept)."""
    arr = numeric_column(table, name)
    return arr if arr.dtype == np.float32 else arr.astype(np.float64)


def compact_ids(values: np.ndarray) -> np.ndarray:
    """int32 when every id fits (the usual case), else int64."""
    if values.size == 0 or (values.min() >= 0 and values.max() <= INT32_MAX):
        return values.astype(np.int32)
    return values.astype(np.int64)


def json_integer(value: Any) -> Any:
    """Only JSON numbers may be integers: `true` or `"5"` are refused instead of being read
    as 1 or 5 (pydantic's lax mode); `5.0` is an integer in JSON Schema and is accepted."""
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a JSON integer")
    return value


#: an integer in a JSON body (see `json_integer`)
JsonInt = Annotated[int, BeforeValidator(json_integer)]
#: a user or track id in a JSON body: a JSON integer in 0 .. 2**31 - 1
JsonId = Annotated[int, Field(ge=0, le=INT32_MAX), BeforeValidator(json_integer)]


@dataclass(frozen=True)
class GroupedIndex:
    """CSR-like index: sorted unique `keys` and `offsets` (len(keys) + 1), so that the rows
    of key `keys[i]` are `offsets[i]:offsets[i + 1]` of arrays sorted by key."""

    keys: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_sorted(cls, sorted_keys: np.ndarray) -> GroupedIndex:
        """Build from a key column already sorted ascending."""
        if sorted_keys.size == 0:
            return cls(np.empty(0, np.int64), np.zeros(1, np.int64))
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        keys = sorted_keys[starts].astype(np.int64)
        offsets = np.append(starts, sorted_keys.size).astype(np.int64)
        return cls(keys, offsets)

    def __len__(self) -> int:
        return int(self.keys.size)

    def span(self, key: int) -> tuple[int, int] | None:
        """`(start, stop)` of the key's rows, or None for an unknown key."""
        i = int(np.searchsorted(self.keys, key))
        if i < self.keys.size and int(self.keys[i]) == key:
            return int(self.offsets[i]), int(self.offsets[i + 1])
        return None


def sort_order(keys: np.ndarray, ranks: np.ndarray) -> np.ndarray | None:
    """Row order sorting by (key, rank); None when the rows are already in that order."""
    if keys.size < 2:
        return None
    if ranks.dtype.kind == "u":  # np.diff would wrap around on unsigned ranks
        ranks = ranks.astype(np.int64)
    if keys.dtype.kind == "u":
        keys = keys.astype(np.int64)
    dk = np.diff(keys)
    if np.all(dk >= 0) and np.all((dk > 0) | (np.diff(ranks) >= 0)):
        return None
    return np.lexsort((ranks, keys))


#: seconds between the start-up fetch's attempts while an upload is under way
FETCH_RETRY_S = 5.0


def warn_if_unfinished_run(settings: Settings) -> None:
    """A warning at start-up when the local artifacts are of a pipeline run that did not
    reach its end (`musicrec.artifacts.RunState`): the service still starts on them (they
    may be a mix of two runs' files). Not for artifacts fetched from S3 (an upload of an
    unfinished run is refused)."""
    if settings.fetch_artifacts_from_s3:
        return
    from musicrec.artifacts import ArtifactPaths, RunState

    reason = RunState.unfinished_reason(ArtifactPaths(Path(settings.artifacts_dir)))
    if reason:
        log.warning(
            "%s: %s; serving its files, which may mix two runs' (run the pipeline to its end)",
            settings.artifacts_dir,
            reason,
        )


def fetch_artifacts_if_configured(
    settings: Settings, files: Sequence[Path], optional: Sequence[Path] = ()
) -> None:
    """Download `files` (paths under `settings.artifacts_dir`: what the service reads, not
    the whole tree of data and models) from S3 first when `settings.fetch_artifacts_from_s3`
    (blocking; call it from a thread), and `optional` too if the bucket has them.
    `musicrec.s3` is imported only then.

    A bucket in the middle of an upload is tried again every `FETCH_RETRY_S` for up to
    `settings.fetch_wait_s`. When the fetch still fails (S3 unreachable, credentials
    refused, the upload never finishes) and an earlier fetch left a complete copy from
    one upload in the directory (`fetched_copy_is_complete`), the service starts on that
    copy with an error in the log instead of not starting; otherwise the `StorageError`
    stops the start-up."""
    if not settings.fetch_artifacts_from_s3:
        return
    from musicrec.errors import StorageError, UploadInProgressError
    from musicrec.s3 import download_artifacts, fetched_copy_is_complete

    root = Path(settings.artifacts_dir)
    only = [Path(f).relative_to(root).as_posix() for f in files]
    extra = [Path(f).relative_to(root).as_posix() for f in optional]
    log.info("fetching %s from S3 into %s", ", ".join([*only, *extra]), root)
    deadline = time.monotonic() + settings.fetch_wait_s
    while True:
        try:
            # reuse: the workers of a service start together; one downloads, the others
            # (and later restarts) keep the files it wrote while the bucket is unchanged
            download_artifacts(settings, root, only=only, optional=extra, reuse=True)
            return
        except UploadInProgressError as exc:
            if time.monotonic() + FETCH_RETRY_S > deadline:
                error: StorageError = exc
                break
            log.warning("%s; trying again in %.0f s", exc, FETCH_RETRY_S)
            time.sleep(FETCH_RETRY_S)
        except StorageError as exc:
            error = exc
            break
    if not fetched_copy_is_complete(root, only, extra):
        raise error
    log.error("%s; serving the copy an earlier start fetched into %s instead", error, root)


#: uvicorn's loggers (server messages, one line per request)
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure_service_logging(settings: Settings) -> None:
    """Log to stderr at `settings.log_level` when the process has no logging set up yet (a
    bare `uvicorn module:app`); leave an existing configuration (tests, embedding) alone.
    A level set in the environment or `.env` (`MUSICREC_LOG_LEVEL`) is uvicorn's too: its
    `--log-level` (default info) would otherwise keep printing INFO lines and an access
    line per request under `MUSICREC_LOG_LEVEL=WARNING` (`musicrec serve` passes the
    level to uvicorn itself)."""
    if not logging.getLogger().handlers:
        from musicrec.logs import setup_logging

        setup_logging(settings.log_level)
    apply_uvicorn_log_level(settings)


def apply_uvicorn_log_level(settings: Settings) -> None:
    """A level set in the environment or `.env` (`MUSICREC_LOG_LEVEL`) is uvicorn's too."""
    if "log_level" in settings.model_fields_set:
        for name in UVICORN_LOGGERS:
            logging.getLogger(name).setLevel(settings.log_level)


def app_or_exit(create_app: Callable[[], FastAPI]) -> FastAPI:
    """`create_app()` for a top-level entry module (`uvicorn api_main:app`): a bad setting
    (`MUSICREC_RECS_PORT=abc`, ...) is one `error:` line on stderr and exit code 2, as in
    the CLI, instead of uvicorn's 30-line import traceback ending in that line; a log level
    set in the environment or `.env` is uvicorn's from here on."""
    from musicrec.errors import ConfigError
    from musicrec.settings import get_settings

    try:
        app = create_app()
        settings = get_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # uvicorn imports the app before its first INFO lines ("Started server process",
    # "Waiting for application startup"), and the lifespan, which sets the level too, runs
    # after them: set here, a level given in the environment silences them as well
    apply_uvicorn_log_level(settings)
    return app

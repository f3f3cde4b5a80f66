"""Event-history service (port 8020, `uvicorn event_storage:app`).

* `POST /add_event?user_id=..&track_id=..` stores a listen durably (SQLite, see
  `musicrec.event_store`) and answers once it is committed; needs `X-API-Key` when
  `settings.events_api_key` is set (401 otherwise, nothing stored). Unknown track ids are
  accepted. With an `Idempotency-Key` header (the client's id of the listen, e.g. a UUID)
  a retry of the same call stores nothing new: it gets the first call's event id and the
  header `Idempotent-Replayed: true`; the key with another track is a 409.
* `POST /get_events?user_id=..&k=..` -> `{"events": [track_id, ...], "count": n}`, the
  user's latest `k` listens, newest first (`count` = number of events returned).
* `POST /get_events_batch` with a JSON body `{"user_ids": [...], "k": ..}` (at most
  `EVENTS_BATCH_MAX_USERS` ids, ids x k at most `EVENTS_BATCH_MAX_EVENTS`) ->
  `{"results": [{"user_id", "events"}, ...]}`, one entry per requested id in request
  order: the recommendation service's coalesced lookups.
* `POST /delete_events?user_id=..` -> `{"result": "ok", "deleted": n}`: deletes the
  user's whole history (a privacy request), in order with the adds.
* `GET /stats` -> store counters (events, users, commits, mean group-commit size, cache
  hits, ...).

With a key set, every route above needs it (a listening history is personal data, and
`/stats` names the database's path); `/ready`, `/health` and `/metrics` stay open.

All database work happens on the store's threads; the handlers only await it. Reads of
users whose latest events are cached (`settings.events_cache_users`) are answered from
memory on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field, model_validator
from starlette.responses import Response

from musicrec.errors import ConfigError
from musicrec.event_store import (
    KEY_CHARS,
    KEY_MAX_LEN,
    EventStore,
    KeyReused,
    StoreUnavailable,
)
from musicrec.service_common import (
    BATCH_BODY_MAX,
    DECIMAL,
    EVENTS_BATCH_MAX_EVENTS,
    EVENTS_BATCH_MAX_USERS,
    NOT_READY_RESPONSES,
    TELEMETRY_OFF,
    VALIDATION_RESPONSES,
    ErrorResponse,
    JsonId,
    JsonInt,
    OrjsonResponse,
    ServiceMetrics,
    TrackIdQuery,
    UserIdQuery,
    configure_service_logging,
    freeze_startup_heap,
    install_common,
    not_ready,
)
from musicrec.settings import EVENTS_K_MAX, Settings, get_settings, sendable_header_value

log = logging.getLogger("musicrec.services.events")

SERVICE = "events"
#: latest events per user when a read gives no `k`
DEFAULT_K = 5

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Events API key")


# trailing blanks: one HTTP parser keeps them (leading ones no parser keeps); the length
# bound is the key's, without them
_KEY_PATTERN = rf"^{KEY_CHARS}{{1,{KEY_MAX_LEN}}}[ \t]*$"
#: the app's `state.pattern_meanings`: its patterns in words, for the 422's message
PATTERN_MEANINGS = {_KEY_PATTERN: f"1 to {KEY_MAX_LEN} printable ASCII characters without spaces"}


async def idempotency_key(
    request: Request,
    raw: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=_KEY_PATTERN,
            description="The client's id of this listen (e.g. a UUID), unique per user, 1 to "
            f"{KEY_MAX_LEN} printable ASCII characters without spaces, taken verbatim: a retry "
            "with the same key within the key's lifetime (MUSICREC_EVENTS_KEY_TTL_S, default a "
            "day, counted from the first call) stores nothing new and answers with the first "
            "call's event id",
        ),
    ] = None,
) -> str | None:
    """Dependency: the request's `Idempotency-Key` (the IETF HTTPAPI draft's name), without
    the spaces or tabs around it (not part of a header's value, RFC 9110; one HTTP parser
    keeps them, another strips them), or None. Sent more than once, it is a 422: which of
    the values is the key is not for the service to guess."""
    if raw is None:
        return None
    values = request.headers.getlist("idempotency-key")
    if len(values) > 1:
        raise RequestValidationError(
            [
                {
                    "type": "idempotency_key_repeated",
                    "loc": ("header", "Idempotency-Key"),
                    "msg": f"Idempotency-Key sent {len(values)} times: send one key per call",
                    "input": values,
                }
            ]
        )
    return raw.strip(" \t")


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]
#: the answer's header marking a replay (nothing stored by this call)
REPLAYED_HEADER = "Idempotent-Replayed"


class AddEventResponse(BaseModel):
    """The event was committed to the history."""

    result: str = Field("ok", examples=["ok"])
    id: int = Field(description="Id of the stored event (grows with insertion order)")


class DeleteEventsResponse(BaseModel):
    """The user's history was deleted (a privacy request)."""

    result: str = Field("ok", examples=["ok"])
    deleted: int = Field(description="Events deleted (0: the user had none)")


class EventsResponse(BaseModel):
    """Latest listens of a user, newest first."""

    events: list[int] = Field(examples=[[53404, 33311, 99262]])
    count: int = Field(description="Number of events in `events`")


class EventsBatchRequest(BaseModel):
    """Several users in one call."""

    user_ids: list[JsonId] = Field(
        max_length=EVENTS_BATCH_MAX_USERS,
        description=f"User ids (at most {EVENTS_BATCH_MAX_USERS})",
    )
    k: JsonInt = Field(DEFAULT_K, ge=1, le=EVENTS_K_MAX, description="Latest events per user")

    @model_validator(mode="after")
    def _bounded_answer(self) -> EventsBatchRequest:
        if len(self.user_ids) * self.k > EVENTS_BATCH_MAX_EVENTS:
            raise ValueError(
                f"{len(self.user_ids)} users x k={self.k} asks for more than "
                f"{EVENTS_BATCH_MAX_EVENTS:,} events in one answer: fewer users per call, or a "
                "smaller k"
            )
        return self


class EventsBatchItem(BaseModel):
    """The latest events of one user, newest first (empty for a user without events)."""

    user_id: int
    events: list[int]


class EventsBatchResponse(BaseModel):
    """One entry per requested user, in request order."""

    results: list[EventsBatchItem]


class StatsResponse(BaseModel):
    """Event store counters."""

    events: int
    users: int
    commits: int
    mean_batch: float = Field(description="Mean events per group commit")
    max_batch: int
    failed_commits: int
    refused_full: int = Field(
        description="`/add_event` and `/delete_events` calls refused: write queue full"
    )
    replayed: int = Field(
        description="`/add_event` calls whose Idempotency-Key had stored the event already"
    )
    deleted_users: int = Field(description="`/delete_events` calls that deleted something")
    deleted_events: int = Field(description="Events deleted by `/delete_events`")
    key_conflicts: int = Field(
        description="`/add_event` calls refused: Idempotency-Key sent before with another track"
    )
    pending: int
    uptime_s: float
    db_path: str
    synchronous: str
    cache_users: int = Field(description="Users whose latest events are held in memory")
    cache_events: int = Field(description="Events held in memory, all users together")
    cache_hits: int = Field(description="Users' reads answered from memory")
    cache_misses: int = Field(
        description="Users' reads answered from SQLite (not in memory, or deeper than held)"
    )
    cache_refused_fills: int = Field(
        description="Reads from SQLite not kept in memory because a write or a deletion "
        "committed while they read (the next read tries again); a count that keeps growing "
        "means the cache is not filling"
    )


async def get_store(request: Request) -> EventStore:
    """Dependency: the open store, or 503 while starting."""
    store: EventStore | None = request.app.state.store
    if store is None or not store.is_open:
        raise not_ready("event store")
    return store


StoreDep = Annotated[EventStore, Depends(get_store)]


def expected_api_key(settings: Settings) -> bytes:
    """The configured events API key (empty: no key required). A key must be printable
    ASCII: HTTP carries header values as bytes that servers decode as latin-1, so a key
    with other characters could never be sent as configured (`ConfigError`, without the
    key in the message). Set but empty: a warning, as the key is then not checked."""
    key = settings.events_api_key
    if key is None:
        return b""
    value = key.get_secret_value()
    if not value:
        log.warning("MUSICREC_EVENTS_API_KEY is set but empty: no route needs a key")
    elif not sendable_header_value(value):
        raise ConfigError(
            "MUSICREC_EVENTS_API_KEY must be printable ASCII without spaces (HTTP header "
            "values are bytes; other characters cannot be sent as configured)"
        )
    return value.encode()


async def check_api_key(
    request: Request, key: Annotated[str | None, Security(api_key_header)] = None
) -> None:
    """Dependency: 401 unless `X-API-Key` matches `settings.events_api_key` (when set)."""
    expected: bytes = request.app.state.api_key
    if not expected:
        return
    if key is None or not hmac.compare_digest(key.encode(), expected):
        raise HTTPException(
            status_code=401,
            detail="missing or invalid X-API-Key header",
            headers={"WWW-Authenticate": "ApiKey"},
        )


ApiKeyDep = Annotated[None, Depends(check_api_key)]
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key (when one is set)"}
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The event-history app; the SQLite store is opened in the lifespan."""
    cfg = settings or get_settings()
    metrics = ServiceMetrics(SERVICE)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_service_logging(cfg)
        store = EventStore(
            cfg.event_db_path,
            cache_users=cfg.events_cache_users,
            cache_events=cfg.events_cache_events,
            key_ttl_s=cfg.events_key_ttl_s,
        )
        await asyncio.to_thread(store.open)
        app.state.store = store
        freeze_startup_heap()
        try:
            yield
        finally:
            app.state.store = None
            await asyncio.to_thread(store.close)
            log.info("event store %s closed", cfg.event_db_path)

    app = FastAPI(
        title="musicrec event history",
        description="Durable listening history (SQLite, WAL, group commit).",
        version="1.0",
        lifespan=lifespan,
        telemetry=TELEMETRY_OFF,
    )
    app.state.store = None
    app.state.api_key = expected_api_key(cfg)
    app.state.pattern_meanings = PATTERN_MEANINGS
    install_common(
        app,
        SERVICE,
        metrics,
        lambda: app.state.store is not None and app.state.store.is_open,
        cfg.serve_instance,
    )

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        """503 with the reason: the store is closing, its write queue is full or a commit
        failed. For `/add_event` nothing was stored, so the client can retry."""
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return OrjsonResponse({"detail": f"event store unavailable: {exc}"}, status_code=503)

    app.add_exception_handler(StoreUnavailable, store_unavailable)

    @app.post(
        "/add_event",
        response_model=AddEventResponse,
        responses={
            **VALIDATION_RESPONSES,
            200: {
                "description": "Stored (or, with an `Idempotency-Key` sent before, stored by "
                "the first call)",
                "headers": {
                    REPLAYED_HEADER: {
                        "description": "`true` when this call's `Idempotency-Key` had stored "
                        "the event already (nothing stored now); absent otherwise",
                        "schema": {"type": "string", "enum": ["true"]},
                    }
                },
            },
            409: {
                "model": ErrorResponse,
                "description": "The `Idempotency-Key` was sent by this user before with "
                "another track (nothing stored)",
            },
            **NOT_READY_RESPONSES,
            **AUTH_RESPONSES,
            503: {
                "model": ErrorResponse,
                "description": "Not ready, or the event was not stored (closing, write queue "
                "full, failed commit): retry",
            },
        },
        tags=["events"],
    )
    async def add_event(
        store: StoreDep,
        _auth: ApiKeyDep,
        user_id: UserIdQuery,
        track_id: TrackIdQuery,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        """Store one listen; answers after the event is durably committed. With an
        `Idempotency-Key`, a repeated call answers with the first one's event id and the
        header `Idempotent-Replayed: true`, and stores nothing."""
        if idempotency_key is None:
            event_id = await store.add(user_id, track_id)
            return OrjsonResponse({"result": "ok", "id": event_id})
        try:
            added = await store.add_once(user_id, track_id, idempotency_key)
        except KeyReused as exc:
            raise HTTPException(409, str(exc)) from None
        headers = {REPLAYED_HEADER: "true"} if added.replayed else None
        return OrjsonResponse({"result": "ok", "id": added.id}, headers=headers)

    @app.post(
        "/get_events",
        response_model=EventsResponse,
        responses={**VALIDATION_RESPONSES, **NOT_READY_RESPONSES, **AUTH_RESPONSES},
        tags=["events"],
    )
    async def get_events(
        store: StoreDep,
        _auth: ApiKeyDep,
        user_id: UserIdQuery,
        k: Annotated[
            int,
            Query(ge=1, le=EVENTS_K_MAX, description=f"How many (1 .. {EVENTS_K_MAX})"),
            DECIMAL,
        ] = DEFAULT_K,
    ) -> Response:
        """The user's latest `k` listened track ids, newest first."""
        events = await store.latest(user_id, k)
        return OrjsonResponse({"events": events, "count": len(events)})

    @app.post(
        "/get_events_batch",
        response_model=EventsBatchResponse,
        responses={**VALIDATION_RESPONSES, **NOT_READY_RESPONSES, **AUTH_RESPONSES},
        tags=["events"],
        max_body_size=BATCH_BODY_MAX,
    )
    async def get_events_batch(
        store: StoreDep, _auth: ApiKeyDep, req: EventsBatchRequest
    ) -> Response:
        """The latest `k` listened track ids of each user, newest first, in one round trip."""
        events = await store.latest_many(req.user_ids, req.k)
        results = [{"user_id": u, "events": e} for u, e in zip(req.user_ids, events, strict=True)]
        return OrjsonResponse({"results": results})

    @app.post(
        "/delete_events",
        response_model=DeleteEventsResponse,
        responses={
            **VALIDATION_RESPONSES,
            **AUTH_RESPONSES,
            503: {
                "model": ErrorResponse,
                "description": "Not ready, or nothing was deleted (closing, failed commit): retry",
            },
        },
        tags=["events"],
    )
    async def delete_events(store: StoreDep, _auth: ApiKeyDep, user_id: UserIdQuery) -> Response:
        """Delete every listen of the user (and its idempotency keys), e.g. for a privacy
        request; answers once the deletion is committed. Listens added before this call
        are deleted too, later ones are kept. The offline artifacts are not changed: the
        pipeline's next run reads the raw data as it is then."""
        deleted = await store.delete_user(user_id)
        return OrjsonResponse({"result": "ok", "deleted": deleted})

    @app.get(
        "/stats",
        response_model=StatsResponse,
        responses={**NOT_READY_RESPONSES, **AUTH_RESPONSES},
        tags=["events"],
    )
    async def stats(store: StoreDep, _auth: ApiKeyDep) -> Response:
        """Event store counters."""
        return OrjsonResponse(await store.counts())

    return app

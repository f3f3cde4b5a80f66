"""Recommendation service (port 8000, `uvicorn api_main:app`).

* `POST /recommendations_offline` - the ranker's list (`recommendations.parquet`) of a user
  the pipeline saw; the most popular tracks (`top_popular.parquet`) for anyone else.
* `POST /recommendations_online` - tracks similar to the user's latest listens: the latest
  events come from the event service, their similar tracks from the similarity service,
  merged by score (max over seeds), without the user's events (the latest
  `settings.exclude_events_max`); empty when the user has no events; 503 when an upstream
  fails. The lookups of concurrent requests are coalesced into shared batch calls
  (`/get_events_batch`, `/similar_tracks_batch`; see `musicrec.coalesce`).
* `POST /recommendations` - `[online[0], offline[0], online[1], offline[1], ...]`, without
  duplicates or the user's events (read as for the online part), exactly `k` long (topped
  up from the popular list).
  Tracks the user heard before the pipeline's served fit (`recommendations/heard/`,
  `musicrec.heard`) are left out of the online part and the top-up as well; the stored
  lists never hold them.
  If an upstream is down or slow it still answers 200 with the offline part within
  `settings.request_budget_s`; the fallback is counted and logged.

All answer `{"recs": [track_id, ...]}`. The artifacts are loaded once in the lifespan into
numpy arrays with a `GroupedIndex` (user -> slice); the upstream calls go through one
keep-alive connection pool per upstream (`musicrec.http_client.HttpPool`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from musicrec.artifacts import ArtifactPaths
from musicrec.blending import blend, cold_start, dedupe, merge_by_score
from musicrec.coalesce import Coalescer, MissingKey
from musicrec.columns import Columns as C
from musicrec.errors import ArtifactError
from musicrec.fast_path import FastPath, Lane, route_of
from musicrec.heard import FILES as HEARD_FILES
from musicrec.heard import NOTHING_HEARD, HeardIndex, drop_heard, heard_by, heard_mask, unheard
from musicrec.http_client import MAX_BODY, HttpPool, UpstreamError
from musicrec.io import read_artifact
from musicrec.service_common import (
    EVENTS_BATCH_MAX_EVENTS,
    MISSING_ARTIFACT_HINT,
    NOT_READY_RESPONSES,
    SIMILAR_BATCH_MAX_SEEDS,
    TELEMETRY_OFF,
    VALIDATION_RESPONSES,
    ErrorResponse,
    GroupedIndex,
    KQuery,
    OrjsonResponse,
    RateLimitedLog,
    ServiceMetrics,
    UserIdQuery,
    compact_ids,
    configure_service_logging,
    fetch_artifacts_if_configured,
    freeze_startup_heap,
    install_common,
    int_column,
    json_body,
    not_ready,
    numeric_column,
    sort_order,
    warn_if_unfinished_run,
)
from musicrec.settings import Settings, get_settings

log = logging.getLogger("musicrec.services.recommendations")

SERVICE = "recommendations"
#: share of `settings.request_budget_s` the online part may use (the rest is for the
#: offline lookup, blending and the response)
ONLINE_BUDGET_SHARE = 0.75
#: popular tracks kept as a Python list for top-ups (k + exclusions never need more)
POPULAR_LIST_MAX = 20_000
#: keys per coalesced upstream call (at most what the upstreams accept per call:
#: `EVENTS_BATCH_MAX_USERS`, `SIMILAR_BATCH_MAX_SEEDS`)
EVENTS_BATCH = 200
SIMILAR_BATCH = SIMILAR_BATCH_MAX_SEEDS
#: list length when the request gives no `k`
DEFAULT_K = 100
#: users who heard up to this many tracks have them checked as a Python set in the online
#: merge (a few microseconds to build); longer histories by binary search in the index
SET_HISTORY_MAX = 2048
#: bytes of JSON an event id can take in an events answer (an int64 with its sign and comma)
EVENT_ID_JSON_BYTES = 21
#: coalesced calls outstanding per upstream and worker (2 and 4 gave the same throughput
#: within this machine's noise; 2 keeps batches larger)
IN_FLIGHT = 2


# --- offline data ----------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineRecs:
    """The ranker's lists (user -> slice of `tracks`, ranked), the popular list and what
    each user heard before the served fit (None for artifacts written before it existed)."""

    users: GroupedIndex
    tracks: np.ndarray
    popular: list[int]
    heard: HeardIndex | None = None

    @classmethod
    def load(cls, paths: ArtifactPaths) -> OfflineRecs:
        """Read and validate `recommendations.parquet`, `top_popular.parquet` and, when it
        exists, the heard index (memory-mapped; a corrupt one is an `ArtifactError`)."""
        rec_path = paths.recommendations
        table = read_artifact(rec_path, missing_hint=MISSING_ARTIFACT_HINT)
        users = compact_ids(int_column(table, C.User))
        tracks = int_column(table, C.Item)
        ranks = numeric_column(table, C.Rank)
        del table
        keep = tracks >= 0  # padding ids (-1) some libraries emit
        if not keep.all():
            users, tracks, ranks = users[keep], tracks[keep], ranks[keep]
        order = sort_order(users, ranks)
        if order is not None:
            users, tracks = users[order], tracks[order]
        index = GroupedIndex.from_sorted(users)

        pop_path = paths.top_popular
        pop = read_artifact(pop_path, missing_hint=MISSING_ARTIFACT_HINT)
        pop_tracks = int_column(pop, C.Item)
        pop_ranks = numeric_column(pop, C.Rank)
        pop_tracks = pop_tracks[np.argsort(pop_ranks, kind="stable")]
        pop_tracks = pop_tracks[pop_tracks >= 0]
        if pop_tracks.size == 0:
            raise ArtifactError(f"{pop_path}: no tracks, so cold-start users get no answer")
        _, first = np.unique(pop_tracks, return_index=True)
        popular = pop_tracks[np.sort(first)][:POPULAR_LIST_MAX].tolist()
        if len(index) == 0:
            log.warning("%s has no users: everyone gets the popular list", rec_path)
        heard = None
        if paths.heard_dir.exists():
            heard = HeardIndex.load(paths.heard_dir)
            _warn_of_users_missing_from(heard, index.keys, paths)
        else:
            log.warning(
                "%s is missing (artifacts of an older pipeline run): the online part and the "
                "popular top-up may hold tracks heard before the pipeline ran",
                paths.heard_dir,
            )
        return cls(index, compact_ids(tracks), popular, heard)

    def heard_of(self, user_id: int) -> np.ndarray:
        """The sorted track ids the user heard before the served fit (empty if unknown)."""
        return heard_by(self.heard, user_id)

    def offline(self, user_id: int, k: int) -> list[int]:
        """The user's stored list, its first `k` distinct tracks; for a user without one,
        the popular list without the tracks the user heard (`ranked`), which for a user
        never heard of is the cold-start answer."""
        return dedupe(self.ranked(user_id, k))

    def ranked(self, user_id: int, n: int, heard: np.ndarray | None = None) -> list[int]:
        """The first `n` rows of the user's list as stored (not deduplicated: the blend
        does that), or for a user without a list the popular list without the tracks the
        user heard: nothing for a cold user, but a user of the heard index can lack a
        list (no candidate left after the heard filter, or files of different runs).
        `heard`: the user's `heard_of`, when the caller has looked it up already."""
        span = self.users.span(user_id)
        if span is None:
            heard = self.heard_of(user_id) if heard is None else heard
            if heard.size == 0:
                return cold_start(self.popular, n)
            return list(islice(unheard(self.popular, heard), max(n, 0)))
        start, stop = span
        return self.tracks[start : min(stop, start + n)].tolist()  # type: ignore[no-any-return]


def _warn_of_users_missing_from(heard: HeardIndex, users: np.ndarray, paths: ArtifactPaths) -> None:
    """Warn when users with a stored list are not in the heard index: the pipeline writes
    both from the same history, so the two files come from different runs (a newer list
    beside an older index) and those users' history is not left out of the online part
    and the top-up."""
    missing = int(np.count_nonzero(~heard_mask(heard.users, users)))
    if missing:
        log.warning(
            "%d of the %d users of %s are not in the heard index %s (files of different "
            "pipeline runs?): tracks they heard before the fit may come back in the online "
            "part and the popular top-up",
            missing,
            users.size,
            paths.recommendations,
            paths.heard_dir,
        )


# --- online part -----------------------------------------------------------------------


@dataclass
class OnlineResult:
    """What the online part gathered; filled step by step so that a failure in the second
    call still leaves the user's events for the exclusion."""

    #: the user's latest events (up to `exclude_events_max`), newest first: the first
    #: `online_history_k` are the seeds, all are left out of every list
    events: list[int] = field(default_factory=list)
    #: `events` as a set, built once for every check
    events_set: set[int] = field(default_factory=set)
    recs: list[int] = field(default_factory=list)


def _int(value: Any) -> int:
    """`value` if it is a JSON integer (not a bool, float or string); else TypeError."""
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {value!r:.40}")
    return value


def _ints(values: Any) -> list[int]:
    """`values` if it is a list of JSON integers; else TypeError (an upstream's ids are
    served as they are: "123", 123.7 or true must not become recommendations)."""
    if type(values) is not list or not all(type(v) is int for v in values):
        raise TypeError(f"expected a list of integers, got {values!r:.60}")
    return values


def _numbers(values: Any) -> list[float]:
    """`values` if it is a list of JSON numbers (not bools or strings); else TypeError."""
    if type(values) is not list or not all(type(v) in (int, float) for v in values):
        raise TypeError(f"expected a list of numbers, got {values!r:.60}")
    return values


class OnlineFailure(Exception):
    """An upstream failed; `reason` is a bounded label (`events:timeout`, ...)."""

    def __init__(
        self, upstream: str, kind: str, detail: str = "", partial: OnlineResult | None = None
    ) -> None:
        self.upstream = upstream
        self.kind = kind
        self.reason = f"{upstream}:{kind}"
        self.detail = detail
        #: what the online part had gathered before failing (recent events, maybe)
        self.partial = partial if partial is not None else OnlineResult()
        super().__init__(f"{self.reason} {detail}".strip())


Similar = tuple[list[int], list[float]]
V = TypeVar("V")


def events_batch(events_k: int) -> int:
    """Users per coalesced events call: `EVENTS_BATCH`, fewer when that many users with
    `events_k` events each could make an answer larger than the client reads (`MAX_BODY`;
    with 10,000 events a user, 200 users could) or than the event service gives in one
    call (`EVENTS_BATCH_MAX_EVENTS`)."""
    return max(
        1,
        min(
            EVENTS_BATCH,
            MAX_BODY // (events_k * EVENT_ID_JSON_BYTES),
            EVENTS_BATCH_MAX_EVENTS // events_k,
        ),
    )


class Upstreams:
    """Calls to the event and similarity services: one connection pool each, and the
    lookups of concurrent requests coalesced into batch calls."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        timeout = settings.upstream_timeout_s
        self.pools = {
            "events": HttpPool(
                settings.events_base_url, timeout_s=timeout, headers=settings.events_auth_headers
            ),
            "similar": HttpPool(settings.similar_base_url, timeout_s=timeout),
        }
        #: latest events read per request: all of them are left out of the answer, the
        #: first `online_history_k` distinct ones are the seeds of the similar lookup
        self.events_k = max(settings.online_history_k, settings.exclude_events_max)
        self.events: Coalescer[int, list[int]] = Coalescer(
            self._fetch_events, max_batch=events_batch(self.events_k), max_in_flight=IN_FLIGHT
        )
        self.similar: Coalescer[int, Similar] = Coalescer(
            self._fetch_similar, max_batch=SIMILAR_BATCH, max_in_flight=IN_FLIGHT
        )

    async def close(self) -> None:
        await self.events.close()
        await self.similar.close()
        for pool in self.pools.values():
            await pool.close()

    async def _call(self, upstream: str, path: str, keys: int, body: Any) -> Any:
        try:
            data, seconds = await self.pools[upstream].post_json(path, body=body)
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels(upstream, exc.kind).inc()
            raise OnlineFailure(upstream, exc.kind, exc.detail) from exc
        self.metrics.upstream_latency.labels(upstream).observe(seconds)
        self.metrics.upstream_batch.labels(upstream).observe(keys)
        return data

    def _bad_payload(self, upstream: str, exc: Exception) -> OnlineFailure:
        self.metrics.upstream_errors.labels(upstream, "bad_payload").inc()
        return OnlineFailure(upstream, "bad_payload", repr(exc))

    async def _fetch_events(self, users: list[int]) -> dict[int, list[int]]:
        """Latest `events_k` track ids of each user, newest first (one batch call)."""
        body = {"user_ids": users, "k": self.events_k}
        data = await self._call("events", "/get_events_batch", len(users), body)
        try:
            return {_int(r["user_id"]): _ints(r["events"]) for r in data["results"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise self._bad_payload("events", exc) from exc

    async def _fetch_similar(self, seeds: list[int]) -> dict[int, Similar]:
        """`(track_ids, scores)` of each seed (one batch call)."""
        body = {"track_ids": seeds, "k": self.settings.online_similar_k}
        data = await self._call("similar", "/similar_tracks_batch", len(seeds), body)
        try:
            out = {
                _int(r["track_id"]): (_ints(r["track_id_2"]), _numbers(r["score"]))
                for r in data["results"]
            }
            if any(len(t) != len(s) for t, s in out.values()):
                raise ValueError("track and score lists differ in length")
            return out
        except (KeyError, TypeError, ValueError) as exc:
            raise self._bad_payload("similar", exc) from exc

    async def _lookup(
        self, upstream: str, coalescer: Coalescer[int, V], keys: list[int]
    ) -> list[V]:
        """The values of `keys`; a key the answer lacks is the upstream's bad payload."""
        try:
            return await coalescer.get_many(keys)
        except MissingKey as exc:
            raise self._bad_payload(upstream, exc) from exc

    async def online(
        self, user_id: int, out: OnlineResult, k: int, heard: np.ndarray = NOTHING_HEARD
    ) -> None:
        """Fill `out`: latest events, then similar tracks of the distinct latest
        `online_history_k` of them, merged by best score without any recent track or any
        track in `heard` (sorted: what the user heard before the served fit)."""
        cfg = self.settings
        (out.events,) = await self._lookup("events", self.events, [user_id])
        out.events_set = set(out.events)
        seeds = dedupe(out.events)[: cfg.online_history_k]
        if not seeds:
            return
        sources = await self._lookup("similar", self.similar, seeds)
        if heard.size <= SET_HISTORY_MAX:
            # a short history joins the set every candidate is checked against
            out.recs = merge_by_score(sources, k, out.events_set.union(heard.tolist()))
            return
        # a long one is searched once for the whole merged list
        merged = merge_by_score(sources, sum(len(t) for t, _ in sources), out.events_set)
        out.recs = drop_heard(merged, heard)[:k]


# --- app -------------------------------------------------------------------------------


class Recommender:
    """What `/recommendations` and `/recommendations_online` compute, for the routes and
    the express lane alike: the online part within its budget (`online`) and the blend of
    online, offline and popular lists (`blended`), falling back to the offline list when
    an upstream fails."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        self.online_budget = settings.request_budget_s * ONLINE_BUDGET_SHARE
        #: one line per fallback, rate-limited
        self.fallback_log = RateLimitedLog(log)
        #: the online part's unforeseen errors, with tracebacks
        self.error_log = RateLimitedLog(log)

    async def online(
        self, upstreams: Upstreams, user_id: int, k: int, heard: np.ndarray
    ) -> OnlineResult:
        """The online part within the budget; raises `OnlineFailure` on any failure, with
        whatever was gathered in `exc.partial`."""
        out = OnlineResult()
        try:
            async with asyncio.timeout(self.online_budget):
                await upstreams.online(user_id, out, k, heard)
        except TimeoutError as exc:
            raise OnlineFailure("budget", "exceeded", f"{self.online_budget:.3f}s", out) from exc
        except OnlineFailure as exc:
            # the failure of a coalesced call is shared by its callers: one copy each
            raise OnlineFailure(exc.upstream, exc.kind, exc.detail, out) from exc
        except Exception as exc:
            # anything else (an answer no check foresaw, a bug): the offline answer rather
            # than a 500, and the traceback in the log so that it is not hidden
            self.error_log.exception("online part failed for user %d", user_id)
            raise OnlineFailure("online", "error", repr(exc)[:200], out) from exc
        return out

    async def blended(
        self, offline: OfflineRecs, upstreams: Upstreams, user_id: int, k: int
    ) -> list[int]:
        """Online and offline interleaved, deduplicated, without the user's recent events
        and heard tracks, exactly `k` long (topped up from the popular list); the offline
        list alone (and the recent events gathered) when the online part fails."""
        heard = offline.heard_of(user_id)
        try:
            out = await self.online(upstreams, user_id, k, heard)
        except OnlineFailure as exc:
            out = exc.partial
            self.metrics.fallbacks.labels(exc.reason).inc()
            self.fallback_log.warning(
                "fallback to offline recommendations for user %d: %s", user_id, exc
            )
        events = out.events_set
        # a longer offline list, so that dropped duplicates and heard tracks are replaced by
        # the next ranked ones before the popular top-up
        offline_recs = offline.ranked(user_id, 2 * k + len(events), heard)
        # the stored list holds no heard track; the online part was filtered above; the
        # popular top-up is checked against the history lazily, only as far as it is read
        return blend(out.recs, offline_recs, k, events, unheard(offline.popular, heard))


class RecsResponse(BaseModel):
    """Recommended track ids, best first."""

    recs: list[int] = Field(examples=[[53404, 33311, 99262]])


async def get_offline(request: Request) -> OfflineRecs:
    """Dependency: the loaded offline data, or 503 while loading."""
    recs: OfflineRecs | None = request.app.state.offline
    if recs is None:
        raise not_ready("recommendations.parquet / top_popular.parquet")
    return recs


async def get_upstreams(request: Request) -> Upstreams:
    """Dependency: the upstream client, or 503 while starting."""
    upstreams: Upstreams | None = request.app.state.upstreams
    if upstreams is None:
        raise not_ready("upstream client")
    return upstreams


OfflineDep = Annotated[OfflineRecs, Depends(get_offline)]
UpstreamsDep = Annotated[Upstreams, Depends(get_upstreams)]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The recommendation app; artifacts and the upstream pools are set up in the lifespan."""
    cfg = settings or get_settings()
    metrics = ServiceMetrics(SERVICE)
    recommender = Recommender(cfg, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_service_logging(cfg)
        paths = ArtifactPaths(cfg.artifacts_dir)
        await asyncio.to_thread(
            fetch_artifacts_if_configured,
            cfg,
            [paths.recommendations, paths.top_popular],
            [paths.heard_dir / name for name in HEARD_FILES],
        )
        warn_if_unfinished_run(cfg)
        offline = await asyncio.to_thread(OfflineRecs.load, paths)
        log.info(
            "loaded %s (%d users, %d rows) and %s (%d tracks)",
            paths.recommendations,
            len(offline.users),
            offline.tracks.size,
            paths.top_popular,
            len(offline.popular),
        )
        if offline.heard is not None:
            log.info(
                "mapped %s (%d users, %d heard tracks)",
                paths.heard_dir,
                len(offline.heard),
                offline.heard.tracks.size,
            )
        upstreams = Upstreams(cfg, metrics)
        app.state.upstreams = upstreams
        app.state.offline = offline
        freeze_startup_heap()
        try:
            yield
        finally:
            app.state.offline = None
            app.state.upstreams = None
            await upstreams.close()

    app = FastAPI(
        title="musicrec recommendations",
        description="Offline (ranker), online (similar to recent listens) and blended lists.",
        version="1.0",
        lifespan=lifespan,
        telemetry=TELEMETRY_OFF,
    )
    app.state.offline = None
    app.state.upstreams = None
    # the express lane for the plain requests of the two hottest routes (filled below, once
    # the routes exist); added before install_common so that MetricsMiddleware wraps it
    lanes: dict[str, Lane] = {}
    if cfg.fast_path:
        app.add_middleware(FastPath, lanes=lanes)
    install_common(
        app,
        SERVICE,
        metrics,
        lambda: app.state.offline is not None and app.state.upstreams is not None,
        cfg.serve_instance,
    )
    responses = {**VALIDATION_RESPONSES, **NOT_READY_RESPONSES}

    @app.post(
        "/recommendations_offline",
        response_model=RecsResponse,
        responses=responses,
        tags=["recommendations"],
    )
    async def recommendations_offline(
        offline: OfflineDep, user_id: UserIdQuery, k: KQuery = DEFAULT_K
    ) -> Response:
        """The ranker's list for a known user; the most popular tracks for a cold one."""
        return OrjsonResponse({"recs": offline.offline(user_id, k)})

    @app.post(
        "/recommendations_online",
        response_model=RecsResponse,
        responses={
            **responses,
            503: {"model": ErrorResponse, "description": "Not ready, or an upstream failed"},
        },
        tags=["recommendations"],
    )
    async def recommendations_online(
        offline: OfflineDep, upstreams: UpstreamsDep, user_id: UserIdQuery, k: KQuery = DEFAULT_K
    ) -> Response:
        """Tracks similar to the user's latest listens, best first, without the listened
        ones; empty when the user has no events."""
        try:
            out = await recommender.online(upstreams, user_id, k, offline.heard_of(user_id))
        except OnlineFailure as exc:
            recommender.fallback_log.warning(
                "online recommendations for user %d failed: %s", user_id, exc
            )
            raise HTTPException(
                status_code=503, detail=f"online recommendations unavailable: {exc.reason}"
            ) from exc
        return OrjsonResponse({"recs": out.recs})

    @app.post(
        "/recommendations",
        response_model=RecsResponse,
        responses=responses,
        tags=["recommendations"],
    )
    async def recommendations(
        offline: OfflineDep,
        upstreams: UpstreamsDep,
        user_id: UserIdQuery,
        k: KQuery = DEFAULT_K,
    ) -> Response:
        """Online and offline interleaved, deduplicated, without recently heard tracks,
        exactly `k` long (topped up from the popular list). Degrades to the offline list
        when an upstream is down or slow."""
        return OrjsonResponse({"recs": await recommender.blended(offline, upstreams, user_id, k)})

    async def lane_blended(user_id: int, k: int) -> bytes | None:
        offline, upstreams = app.state.offline, app.state.upstreams
        if offline is None or upstreams is None:
            return None  # FastAPI answers the 503
        return json_body({"recs": await recommender.blended(offline, upstreams, user_id, k)})

    async def lane_offline(user_id: int, k: int) -> bytes | None:
        offline = app.state.offline
        if offline is None:
            return None
        return json_body({"recs": offline.offline(user_id, k)})

    for path, handler in (
        ("/recommendations", lane_blended),
        ("/recommendations_offline", lane_offline),
    ):
        lanes[path] = Lane(route_of(app, path), handler, DEFAULT_K)
    return app

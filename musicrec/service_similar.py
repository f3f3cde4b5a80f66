"""Similar-tracks service (port 8010, `uvicorn similarity_store:app`).

Serves `recsys/recommendations/similar.parquet` (track_id_1, track_id_2, score, rank):

* `POST /similar_tracks?track_id=..&k=..` -> `{"track_id_2": [...], "score": [...]}`,
  best first; an unknown track gets empty lists;
* `POST /similar_tracks_batch` with a JSON body `{"track_ids": [...], "k": ..}` (at most
  `SIMILAR_BATCH_MAX_SEEDS` ids) -> `{"results": [{"track_id", "track_id_2", "score"},
  ...]}`, one entry per requested id in request order - the online recommender's single
  round trip.

The file is loaded once in the lifespan into three arrays sorted by (track_id_1, rank) and a
`GroupedIndex`, so a request is a binary search and a slice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from musicrec.artifacts import ArtifactPaths
from musicrec.columns import Columns as C
from musicrec.fast_path import FastPath, Lane, route_of
from musicrec.io import read_artifact
from musicrec.service_common import (
    BATCH_BODY_MAX,
    K_MAX,
    MISSING_ARTIFACT_HINT,
    NOT_READY_RESPONSES,
    SIMILAR_BATCH_MAX_SEEDS,
    TELEMETRY_OFF,
    VALIDATION_RESPONSES,
    GroupedIndex,
    JsonId,
    JsonInt,
    KQuery,
    OrjsonResponse,
    ServiceMetrics,
    TrackIdQuery,
    compact_ids,
    configure_service_logging,
    fetch_artifacts_if_configured,
    float_column,
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

log = logging.getLogger("musicrec.services.similar")

SERVICE = "similar"
#: list length when the request gives no `k`
DEFAULT_K = 10


@dataclass(frozen=True)
class SimilarIndex:
    """Similar tracks of each track, best first: `index` maps track_id_1 to a slice of
    `tracks` (track_id_2) and `scores`."""

    index: GroupedIndex
    tracks: np.ndarray
    scores: np.ndarray

    @classmethod
    def load(cls, path: Path) -> SimilarIndex:
        """Read and validate `similar.parquet`; `ArtifactError` names the file if bad."""
        table = read_artifact(path, missing_hint=MISSING_ARTIFACT_HINT)
        src = int_column(table, C.Item1)
        dst = int_column(table, C.Item2)
        scores = float_column(table, C.Score)
        ranks = numeric_column(table, C.Rank)
        keep = (dst >= 0) & (src >= 0) & (dst != src)  # padding ids and self-pairs
        if not keep.all():
            src, dst, scores, ranks = src[keep], dst[keep], scores[keep], ranks[keep]
        order = sort_order(src, ranks)
        if order is not None:
            src, dst, scores = src[order], dst[order], scores[order]
        index = cls(GroupedIndex.from_sorted(src), compact_ids(dst), scores)
        if len(index.index) == 0:
            log.warning("%s holds no similar pairs: every lookup will be empty", path)
        return index

    def get(self, track_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most similar tracks and their scores (empty for an unknown track), as
        read-only array views (orjson serialises them directly; float32 scores come out in
        their shortest form)."""
        span = self.index.span(track_id)
        if span is None:
            return self.tracks[:0], self.scores[:0]
        start, stop = span
        stop = min(stop, start + k)
        return self.tracks[start:stop], self.scores[start:stop]

    @property
    def n_pairs(self) -> int:
        return int(self.tracks.size)


class SimilarResponse(BaseModel):
    """Similar tracks, best first; both lists have the same length."""

    track_id_2: list[int] = Field(examples=[[53404, 33311]])
    score: list[float] = Field(examples=[[0.93, 0.91]])


class SimilarBatchRequest(BaseModel):
    """Several seed tracks in one call."""

    track_ids: list[JsonId] = Field(
        max_length=SIMILAR_BATCH_MAX_SEEDS,
        description=f"Seed track ids (at most {SIMILAR_BATCH_MAX_SEEDS})",
    )
    k: JsonInt = Field(DEFAULT_K, ge=1, le=K_MAX, description="Similar tracks per seed")


class SimilarBatchItem(BaseModel):
    """The similar tracks of one seed (empty lists for an unknown seed)."""

    track_id: int
    track_id_2: list[int]
    score: list[float]


class SimilarBatchResponse(BaseModel):
    """One entry per requested seed, in request order."""

    results: list[SimilarBatchItem]


async def get_index(request: Request) -> SimilarIndex:
    """Dependency: the loaded index, or 503 while loading."""
    index: SimilarIndex | None = request.app.state.similar
    if index is None:
        raise not_ready("similar.parquet")
    return index


IndexDep = Annotated[SimilarIndex, Depends(get_index)]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The similar-tracks app; `similar.parquet` is loaded in the lifespan."""
    cfg = settings or get_settings()
    metrics = ServiceMetrics(SERVICE)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_service_logging(cfg)
        path = ArtifactPaths(cfg.artifacts_dir).similar
        await asyncio.to_thread(fetch_artifacts_if_configured, cfg, [path])
        warn_if_unfinished_run(cfg)
        index = await asyncio.to_thread(SimilarIndex.load, path)
        app.state.similar = index
        log.info("loaded %s: %d tracks, %d pairs", path, len(index.index), index.n_pairs)
        freeze_startup_heap()
        yield
        app.state.similar = None

    app = FastAPI(
        title="musicrec similar tracks",
        description="Tracks similar to a track (item-item), best first.",
        version="1.0",
        lifespan=lifespan,
        telemetry=TELEMETRY_OFF,
    )
    app.state.similar = None
    # the express lane for plain /similar_tracks requests (musicrec.fast_path), filled once
    # the route exists; added before install_common so that MetricsMiddleware wraps it
    lanes: dict[str, Lane] = {}
    if cfg.fast_path:
        app.add_middleware(FastPath, lanes=lanes)
    install_common(app, SERVICE, metrics, lambda: app.state.similar is not None, cfg.serve_instance)

    @app.post(
        "/similar_tracks",
        response_model=SimilarResponse,
        responses={**VALIDATION_RESPONSES, **NOT_READY_RESPONSES},
        tags=["similar"],
    )
    async def similar_tracks(
        index: IndexDep, track_id: TrackIdQuery, k: KQuery = DEFAULT_K
    ) -> Response:
        """The `k` tracks most similar to `track_id`, best first (empty if unknown)."""
        tracks, scores = index.get(track_id, k)
        return OrjsonResponse({"track_id_2": tracks, "score": scores})

    async def lane_similar(track_id: int, k: int) -> bytes | None:
        index: SimilarIndex | None = app.state.similar
        if index is None:
            return None  # FastAPI answers the 503
        tracks, scores = index.get(track_id, k)
        return json_body({"track_id_2": tracks, "score": scores})

    @app.post(
        "/similar_tracks_batch",
        response_model=SimilarBatchResponse,
        responses={**VALIDATION_RESPONSES, **NOT_READY_RESPONSES},
        tags=["similar"],
        max_body_size=BATCH_BODY_MAX,
    )
    async def similar_tracks_batch(index: IndexDep, req: SimilarBatchRequest) -> Response:
        """The `k` most similar tracks of each seed, in one round trip."""
        results = []
        for track_id in req.track_ids:
            tracks, scores = index.get(track_id, req.k)
            results.append({"track_id": track_id, "track_id_2": tracks, "score": scores})
        return OrjsonResponse({"results": results})

    route = route_of(app, "/similar_tracks")
    lanes["/similar_tracks"] = Lane(route, lane_similar, DEFAULT_K, b"track_id")
    return app

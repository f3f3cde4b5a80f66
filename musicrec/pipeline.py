"""The offline job: raw files -> every artifact the services read, with honest metrics.

Stages run in order; each one's result is reused when its fingerprint (parameters, the
size and modification time of its input files, the fingerprints of the stages it depends
on, and the hash of the code it runs: `musicrec.codehash`) matches the last run and its
outputs exist. `force=True` recomputes all.

Data flow (windows are global, by time):

    events ──split──> history (before test_start) | test window
    history ──split──> feature history (before label_start) | label window

- top popular, ALS, similar tracks and the ranker's inference are fit on `history`;
- ALS hyper-parameters are tuned and the ranker is trained on feature history -> label
  window; the test window is only read by the evaluation stage;
- the `als_label` stage fits the ALS of the feature history once: the ranker's first stage
  for the label window, and (with `als.warm_start_iterations`) the served ALS's start;
- with `final_fit="all"` the served artifacts are refit on all events after evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from musicrec.als import FILES as ALS_FILES
from musicrec.als import ALSModel, top_item_codes
from musicrec.artifacts import ArtifactPaths, RunState, pipeline_lock
from musicrec.candidates import FirstStage, generate_candidates, set_als_recs
from musicrec.codehash import code_hash
from musicrec.columns import Columns as C
from musicrec.columns import RawFiles
from musicrec.config import ALSConfig, PipelineConfig
from musicrec.errors import ArtifactError, ConfigError, DataValidationError, MusicRecError
from musicrec.features import collect_features
from musicrec.heard import FILES as HEARD_FILES
from musicrec.heard import HeardIndex
from musicrec.io import (
    PARQUET_READ_OPTIONS,
    read_json,
    remove_stale_temporaries,
    write_json,
    write_parquet,
    write_parquet_batches,
)
from musicrec.logs import log_json
from musicrec.matrix import InteractionMatrix, rows_of_keys
from musicrec.memory import release_free_memory, rss_gib
from musicrec.plots import EDA_FILES
from musicrec.popular import listeners_per_track, recommend_popular, top_popular_table
from musicrec.prepare import PreparedData, load_prepared, prepare_data
from musicrec.ranker import (
    TARGET,
    WINDOW,
    FeatureRange,
    Ranker,
    group_ids,
    label_candidates,
    rank_candidates,
    sample_training_rows,
)
from musicrec.raw import require_raw_files
from musicrec.settings import Settings
from musicrec.similar import similar_tracks
from musicrec.split import Split, serving_end, split_by_time

log = logging.getLogger("musicrec.pipeline")


# ---------------------------------------------------------------------------- caching
class StageCache:
    """Fingerprints of finished stages, one JSON file per stage under `recsys/cache/`.

    Nothing in a record names the directories the run used: input files count by name,
    size and mtime, outputs by their path inside the artifacts directory (the cache
    directory's parent). So an artifacts directory moved or copied with its mtimes (`mv`,
    `cp -a`, `rsync -a`), run from another working directory, or read with its data
    directory moved likewise, reuses its stages."""

    def __init__(self, cache_dir: Path, force: bool = False) -> None:
        self.dir = cache_dir
        self.force = force

    @staticmethod
    def fingerprint(
        name: str, params: Any, inputs: list[Path], upstream: list[str], code: str = ""
    ) -> str:
        h = hashlib.sha256(name.encode())
        h.update(code.encode())
        h.update(json.dumps(params, sort_keys=True, default=str).encode())
        for p in inputs:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        for u in upstream:
            h.update(u.encode())
        return h.hexdigest()[:16]

    def output_stats(self, outputs: list[Path]) -> dict[str, list[int]]:
        """Size and modification time of each output (to notice files rewritten since),
        keyed by the path inside the artifacts directory."""
        root = self.dir.resolve().parent
        out = {}
        for p in outputs:
            full = p.resolve()
            key = full.relative_to(root) if full.is_relative_to(root) else full
            st = p.stat()
            out[key.as_posix()] = [st.st_size, st.st_mtime_ns]
        return out

    def read(self, name: str) -> dict[str, Any] | None:
        """Stage `name`'s record; None without one, or for one that is not a record (a
        damaged file: the stage is then run again, with a warning; it was a traceback)."""
        path = self.dir / f"{name}.json"
        try:
            rec = read_json(path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            log.warning("%s: unreadable cache record (%s); the stage runs again", path, exc)
            return None
        if rec is not None and not isinstance(rec, dict):
            log.warning("%s: not a cache record; the stage runs again", path)
            return None
        return rec

    def on_disk(
        self, name: str, fp: str, outputs: list[Path], skip: Collection[Path] = ()
    ) -> dict[str, Any] | None:
        """The record of stage `name` if it ran with `fp` and its outputs (but `skip`: files
        a later stage of the plan rewrites) exist and are the files it wrote."""
        rec = self.read(name)
        if not rec or rec.get("fingerprint") != fp:
            return None
        checked = [p for p in outputs if p not in skip]
        if not all(p.exists() for p in checked):
            return None
        recorded = rec.get("outputs")
        now = self.output_stats(checked)
        if not isinstance(recorded, dict) or any(recorded.get(k) != v for k, v in now.items()):
            return None
        return rec

    def fresh(self, name: str, fp: str, outputs: list[Path]) -> dict[str, Any] | None:
        """The recorded info of stage `name` if it ran with `fp` and its outputs exist and
        are the files it wrote (not since overwritten, e.g. by `final_fit`); None under
        `force`."""
        rec = None if self.force else self.on_disk(name, fp, outputs)
        if rec is None or set(rec.get("outputs") or {}) != set(self.output_stats(outputs)):
            return None
        info = rec.get("info", {})
        return dict(info) if isinstance(info, dict) else None

    def record(self, name: str, fp: str, info: dict[str, Any], outputs: list[Path]) -> None:
        rec = {"fingerprint": fp, "info": info, "outputs": self.output_stats(outputs)}
        write_json(rec, self.dir / f"{name}.json")


# ---------------------------------------------------------------------------- context
@dataclass
class PipelineContext:
    """What the stages share: inputs, parameters and in-memory results."""

    data_dir: Path
    paths: ArtifactPaths
    cfg: PipelineConfig
    cache: StageCache
    fingerprints: dict[str, str] = field(default_factory=dict)
    #: the outputs of each stage run or reused in this context (checked on disk later)
    stage_outputs: dict[str, list[Path]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    #: stages this run reused (their `seconds` is the check and load, not the computation)
    reused: list[str] = field(default_factory=list)
    data: PreparedData | None = None
    test_split: Split | None = None
    label_split: Split | None = None
    als_params: dict[str, float] | None = None
    _stage: FirstStage | None = None

    # -- lazy accessors --
    @property
    def prepared(self) -> PreparedData:
        if self.data is None:
            self.data = load_prepared(self.paths)
            # the parquet reads' buffers (several GB at the full size) go back to the system
            release_free_memory("after loading the prepared data")
        return self.data

    @property
    def test(self) -> Split:
        if self.test_split is None:
            self.test_split = self._split(
                self.prepared.events, self.cfg.split.test_start, self.cfg.split.test_share, "test"
            )
            # the split's frame holds every event (history first): keep it instead of the
            # prepared frame, so that only one copy of the events stays in memory
            self.data = dataclasses.replace(self.prepared, events=self.test_split.frame)
            release_free_memory("after the test split")  # the prepared events' copy
        return self.test_split

    @property
    def label(self) -> Split:
        if self.label_split is None:
            self.label_split = self._split(
                self.test.history, None, self.cfg.split.label_share, "label"
            )
        return self.label_split

    def _split(self, events: pd.DataFrame, start: Any, share: float, window: str) -> Split:
        """`split_by_time`, failing with a DataValidationError naming events.parquet when
        the dates allow no split (one day, an empty side) or when no user of the window was
        seen before it (all cold: nothing to train the ranker on or to evaluate)."""
        where = (str(self.paths.events), C.Datetime)
        try:
            split = split_by_time(events, start, share)
        except ValueError as exc:
            raise DataValidationError(
                *where, f"dates that split into history and a {window} window", found=str(exc)
            ) from exc
        users = split.window_events[C.User].unique()
        if not np.isin(users, split.history[C.User].unique()).any():
            raise DataValidationError(
                *where,
                f"a {window} window (from {split.start.date()}) holding users with earlier "
                "events (see split.test_start / test_share / label_share)",
                found=f"all {len(users):,} users of the window are new (cold)",
            )
        return split

    def als_cfg(self) -> ALSConfig:
        return self.cfg.als.model_copy(update=self.als_params or {})

    def first_stage(self) -> FirstStage:
        """ALS + similar tracks fit on the pre-test history (loaded from the artifacts)."""
        if self._stage is None:
            hist = self.test.history
            matrix = InteractionMatrix.from_events(hist)
            als = ALSModel.load(self.paths.model_dir)
            if not als.is_fit_on(matrix):
                raise ArtifactError(
                    f"{self.paths.model_dir}: the saved ALS model was not fit on the history "
                    "before the test window (a final_fit = 'all' run refit it, or the files "
                    "come from another run); rerun with --force (FORCE = True in the notebook)"
                )
            sim = pd.read_parquet(self.paths.similar, **PARQUET_READ_OPTIONS)
            scored = top_item_codes(matrix, self.cfg.als.max_scored_items)
            self._stage = FirstStage.from_fitted(hist, self.test.start, matrix, als, sim, scored)
            # the ALS stage's top-n of every user, by this model on this matrix: the ranker's
            # ALS candidates are sliced from it instead of scoring every user again
            als_recs = pd.read_parquet(self.paths.personal_als, **PARQUET_READ_OPTIONS)
            set_als_recs(self._stage, als_recs, self.cfg.als.n_recs)
            # the matrix build and the parquet reads leave freed buffers behind (GBs at the
            # full size): hand them back before the user batches allocate theirs
            release_free_memory("after loading the first stage")
        return self._stage

    def fingerprint(self, stage: Stage) -> str:
        """`stage`'s fingerprint now: its parameters, inputs and code, and the fingerprints
        its upstream stages have in this context (each must have one)."""
        upstream = [self.fingerprints[u] for u in stage.upstream]
        return StageCache.fingerprint(
            stage.name, stage.params, stage.inputs, upstream, code_hash(stage.code)
        )

    def is_current(self, stage: Stage, rewritten: Collection[Path] = ()) -> bool:
        """`stage` ran or was reused in this context on what its upstream stages have now,
        and its record and outputs on disk are still that run's (but `rewritten`: files a
        later stage of the plan writes again). In the notebook an earlier cell run again
        leaves the later stages' results behind until their cells run too, and a CLI run or
        `prepare` on the folder between two cells rewrites files under the context."""
        if stage.name not in self.fingerprints or any(
            u not in self.fingerprints for u in stage.upstream
        ):
            return False
        fp = self.fingerprint(stage)
        return fp == self.fingerprints[stage.name] and (
            self.cache.on_disk(stage.name, fp, stage.outputs, rewritten) is not None
        )

    def run_stage(self, stage: Stage) -> dict[str, Any]:
        """Run `stage`, or reuse its recorded result when its fingerprint is unchanged."""
        name = stage.name
        missing = [u for u in stage.upstream if u not in self.fingerprints]
        if missing:  # the notebook runs stages one by one: a cell run before the ones above
            raise MusicRecError(
                f"stage {name!r} needs {', '.join(map(repr, missing))} run first in this "
                "context (in the notebook: run the cells above it)"
            )
        # what this context ran the upstream stages on must still be on disk: a CLI run (or
        # `prepare`) on the folder between two notebook cells rewrote them, and this stage
        # was then reused or run on the other run's files and recorded as fresh
        changed = [
            u
            for u in stage.upstream
            if self.cache.on_disk(u, self.fingerprints[u], self.stage_outputs.get(u, [])) is None
        ]
        if changed:
            raise MusicRecError(
                f"stage {name!r} needs {', '.join(map(repr, changed))} as this context ran "
                "them, but their results on disk changed since (another run or `prepare` on "
                "the folder, or final_fit = 'all' refitting them): run them and the stages "
                "after them again (in the notebook: the cells from there on)"
            )
        fp = self.fingerprint(stage)
        # registered once the stage has run or been reused, not before: a stage that failed
        # (or a notebook cell interrupted) would count as done, and the next cell would build
        # on its previous outputs and record that under the new fingerprint
        self.fingerprints.pop(name, None)
        t0 = time.perf_counter()
        # the notebook runs stages one by one: each holds the directory against a CLI run
        with pipeline_lock(self.paths.cache_dir):
            info = self.cache.fresh(name, fp, stage.outputs)
            if info is not None:
                log.info("stage %-12s reused (fingerprint %s)", name, fp)
                if name not in self.reused:
                    self.reused.append(name)
            else:
                if name in self.reused:  # a notebook cell run again with other parameters
                    self.reused.remove(name)
                RunState.write(
                    self.paths, RunState.UNFINISHED, what=f"stage {name!r} was recomputed"
                )
                info = stage.run()
                self.cache.record(name, fp, info, stage.outputs)
        self.fingerprints[name] = fp
        self.stage_outputs[name] = stage.outputs
        if name == "als_label":  # reused, it still tells later stages the tuned parameters
            self.als_params = info.get("params") or {}
        self.results[name] = info
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        log.info("stage %-12s done in %.1f s", name, self.seconds[name])
        # what the stage freed goes back to the system before the next one allocates (and
        # the log gets the resident set of each stage)
        release_free_memory(f"after stage {name}")
        return info


@dataclass(frozen=True)
class Stage:
    """One step of the plan: what it runs and what its fingerprint is made of."""

    name: str
    run: Callable[[], dict[str, Any]]
    params: Any  # parameters (JSON-able) that change its result
    inputs: list[Path]  # files read that no other stage writes (size + mtime)
    outputs: list[Path]  # files it writes; all must exist (unchanged) to reuse it
    upstream: list[str]  # stages whose results it uses
    code: tuple[str, ...] = ()  # package modules it runs (musicrec.codehash.code_hash)


# ---------------------------------------------------------------------------- stages
def stage_prepare(ctx: PipelineContext) -> dict[str, Any]:
    ctx.data = prepare_data(ctx.data_dir, ctx.paths, ctx.cfg.data)
    log.info("prepare:\n%s", ctx.data.summary())
    return {"stats": ctx.data.stats}


def stage_eda(ctx: PipelineContext) -> dict[str, Any]:
    from musicrec.plots import draw_eda

    files = draw_eda(ctx.prepared.items, ctx.prepared.events, ctx.paths.pictures_dir)
    return {"pictures": [str(p) for p in files]}


def stage_split(ctx: PipelineContext) -> dict[str, Any]:
    label = ctx.label.facts("label")
    # both splits name their history `history_*`: the label split's is renamed
    label["label_history_rows"] = label.pop("history_rows")
    label["label_history_users"] = label.pop("history_users")
    facts = {**ctx.test.facts("test"), **label}
    log.info("split: %s", log_json(facts))
    # the label split is a reordered copy of most of the history (3.6 GB at the full size):
    # it is not held through the ALS and similar-tracks stages, the ranker splits again
    ctx.label_split = None
    return {"split": facts}


def stage_top_popular(ctx: PipelineContext) -> dict[str, Any]:
    top = top_popular_table(ctx.test.history, ctx.prepared.items, ctx.cfg.top_popular_k)
    write_parquet(top, ctx.paths.top_popular)
    return {"rows": len(top)}


def tune_als(ctx: PipelineContext) -> dict[str, float]:
    """Grid search on feature history -> label window (never the test window), by NDCG@10:
    the grid point of `als_tuning_grid` with the best mean score (the first of equals); {}
    with `als.tune` off."""
    return best_grid_point(als_tuning_grid(ctx))


def als_tuning_grid(ctx: PipelineContext) -> list[tuple[dict[str, float], float]]:
    """Every ALS grid point with its mean NDCG@k over the newest `als.tune_windows` label
    windows (`als_grid_ndcg` on each), in the grid's order; [] with `als.tune` off."""
    cfg = ctx.cfg.als
    if not cfg.tune:
        return []
    grids = [als_grid_ndcg(ctx, lab) for lab in label_windows(ctx, cfg.tune_windows)]
    log.info("ALS tuning: NDCG means over %d label window(s)", len(grids))
    return mean_grid(grids)


def mean_grid(
    grids: Sequence[list[tuple[dict[str, float], float]]],
) -> list[tuple[dict[str, float], float]]:
    """Each grid point with its mean score over `grids` (one per window, in one order)."""
    return [
        (grids[0][i][0], float(np.mean([g[i][1] for g in grids]))) for i in range(len(grids[0]))
    ]


def best_grid_point(grid: Sequence[tuple[dict[str, float], float]]) -> dict[str, float]:
    """The parameters of the best-scoring point of `grid` (the first of equals); {} for an
    empty grid."""
    if not grid:
        return {}
    best = int(np.argmax([score for _, score in grid]))
    log.info("ALS tuning picked %s (label-window NDCG %.4f)", grid[best][0], grid[best][1])
    return grid[best][0]


def als_grid_ndcg(ctx: PipelineContext, lab: Split) -> list[tuple[dict[str, float], float]]:
    """Every point of the ALS grid (`als.factors_grid` x `regularization_grid` x
    `alpha_grid`) with its NDCG@k (`eval.k_ndcg`) on `lab`'s window: fit on `lab.history`
    (at most `als.tune_max_users` random users of it, with all their listens), scored on
    the window's listens of those users."""
    from musicrec.metrics import ndcg_at_k

    cfg = ctx.cfg.als
    hist = lab.history
    n_users = hist[C.User].nunique()
    if cfg.tune_max_users is not None and n_users > cfg.tune_max_users:
        # the grid runs len(grid) fits: on a random subset of users (all their listens)
        # it costs a bounded share of one full fit; the chosen parameters are then fit on
        # every user
        rng = np.random.default_rng(cfg.random_state)
        keep = rng.choice(np.unique(hist[C.User].to_numpy()), cfg.tune_max_users, replace=False)
        hist = hist[hist[C.User].isin(keep)]
        log.info("ALS tuning on %d of %d users (%d listens)", len(keep), n_users, len(hist))
    matrix = InteractionMatrix.from_events(hist)
    scored = top_item_codes(matrix, cfg.max_scored_items)
    warm = np.intersect1d(lab.window_events[C.User].unique(), matrix.users.ids)
    if len(warm) == 0:  # no grid point could be scored: it fell back to the defaults, silently
        raise ConfigError(
            f"ALS tuning: none of the {len(matrix.users.ids):,} users it samples "
            f"(als.tune_max_users = {cfg.tune_max_users}) listened in the label window, so "
            "no grid point can be scored: raise als.tune_max_users or set als.tune = false"
        )
    target = lab.window_events[lab.window_events[C.User].isin(warm)]
    grid = []
    for f in cfg.factors_grid:
        for r in cfg.regularization_grid:
            for a in cfg.alpha_grid:
                params: dict[str, float] = {"factors": f, "regularization": r, "alpha": a}
                model = ALSModel.fit(matrix, cfg, overrides=params)
                recs = model.recommend(
                    warm, matrix, ctx.cfg.eval.k_ndcg, cfg.batch_size, items=scored
                )
                score = float(ndcg_at_k(recs, target, ctx.cfg.eval.k_ndcg, users=warm).mean())
                log.info("ALS tuning %s: NDCG@%d %.4f", params, ctx.cfg.eval.k_ndcg, score)
                grid.append((params, score))
    return grid


def stage_als_label(ctx: PipelineContext) -> dict[str, Any]:
    """ALS tuned (`tune_als`) and fit on the history before the ranker's newest label
    window: that window's first stage in the ranker, and the starting point of the served
    ALS when `als.warm_start_iterations` is set. It never sees the label window."""
    grid = als_tuning_grid(ctx)
    params = best_grid_point(grid)
    ctx.als_params = params
    matrix = InteractionMatrix.from_events(ctx.label.history)
    ALSModel.fit(matrix, ctx.als_cfg()).save(ctx.paths.label_model_dir)
    ctx.label_split = None  # a copy of most of the history: the ranker splits it again
    return {
        "params": params,
        # every grid point with its mean label-window NDCG@k (the notebook's table)
        "tuning": [{**point, "mean_label_window_ndcg": score} for point, score in grid],
        "users": len(matrix.users.ids),
        "tracks": len(matrix.items.ids),
    }


def stage_als(ctx: PipelineContext) -> dict[str, Any]:
    """The served ALS, fit on the history before the test window: from random factors with
    `als.iterations`, or from the label-window model's with `als.warm_start_iterations`
    (the two histories differ by the label window); then the top-n of every user."""
    hist = ctx.test.history
    matrix = InteractionMatrix.from_events(hist)
    cfg = ctx.als_cfg()
    warm = cfg.warm_start_iterations
    init = ALSModel.load(ctx.paths.label_model_dir) if warm is not None else None
    model = ALSModel.fit(matrix, cfg, init=init, iterations=warm)
    del init
    model.save(ctx.paths.model_dir)
    # what every user heard before the served fit, for the services' online part and
    # top-up (the stored lists already leave these tracks out)
    HeardIndex.from_matrix(matrix).save(ctx.paths.heard_dir)
    scored = top_item_codes(matrix, ctx.cfg.als.max_scored_items)
    recs = model.recommend(
        matrix.users.ids, matrix, ctx.cfg.als.n_recs, ctx.cfg.als.batch_size, items=scored
    )
    write_parquet(recs, ctx.paths.personal_als)
    ctx._stage = None
    return {
        "iterations": cfg.iterations if warm is None else warm,
        "warm_start": warm is not None,
        "users": int(recs[C.User].nunique()),
        "rows": len(recs),
    }


def stage_similar(ctx: PipelineContext) -> dict[str, Any]:
    model = ALSModel.load(ctx.paths.model_dir)
    scored = None  # similar tracks among the same head of tracks the ALS stage scored
    if ctx.cfg.als.max_scored_items is not None:
        matrix = InteractionMatrix.from_events(ctx.test.history, model.users, model.items)
        scored = top_item_codes(matrix, ctx.cfg.als.max_scored_items)
    sim = similar_tracks(model, ctx.cfg.similar.k, ctx.cfg.similar.batch_size, items=scored)
    write_parquet(sim, ctx.paths.similar)
    ctx._stage = None
    return {"tracks": int(sim[C.Item1].nunique()), "rows": len(sim)}


def label_windows(ctx: PipelineContext, count: int | None = None) -> Iterator[Split]:
    """The ranker's label windows, newest first: `ctx.label`, then each earlier one split
    off the history of the previous with the same share (`count` in all, by default
    `ranker.label_windows`). Yielded one at a time so that only one window's copy of the
    history is alive. Stops early, with a warning, when the history left is too short to
    split or holds no warm users."""
    want = ctx.cfg.ranker.label_windows if count is None else count
    split = ctx.label
    yield split
    for w in range(1, want):
        try:
            split = ctx._split(split.history, None, ctx.cfg.split.label_share, f"label {w}")
        except DataValidationError as exc:
            log.warning("%d label windows instead of %d: %s", w, want, exc)
            return
        yield split


def window_training_rows(
    ctx: PipelineContext, lab: Split, window: int, als_params: dict[str, float] | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Training rows of one label window: a first stage fit on the history before it (ALS
    with `als_params` over the config's, default the served ALS's: `ctx.als_cfg()`), its
    candidates labelled by the window, the sampled rows with their features."""
    rcfg = ctx.cfg.ranker
    als_cfg = ctx.als_cfg() if als_params is None else ctx.cfg.als.model_copy(update=als_params)
    # the newest window's ALS is the als_label stage's when its parameters are these (it is
    # fit on this very history); similar tracks only for what the candidates read: the
    # label users' latest tracks
    reuse = window == 0 and als_cfg == ctx.als_cfg()
    stage = FirstStage.fit(
        lab.history,
        lab.start,
        als_cfg,
        ctx.cfg.similar,
        similar_for=(lab.window_events[C.User].unique(), rcfg.recent_tracks),
        als=ALSModel.load(ctx.paths.label_model_dir) if reuse else None,
    )
    users = np.intersect1d(lab.window_events[C.User].unique(), stage.matrix.users.ids)
    # label-window pairs of those users, sorted by user so a batch's rows are gathered by
    # binary search
    window_pairs = lab.window_events[[C.User, C.Item]].drop_duplicates()
    window_pairs = window_pairs[window_pairs[C.User].isin(users)].sort_values(C.User, kind="stable")
    t_users = window_pairs[C.User].to_numpy()
    # Candidates are generated and labelled in user batches (bounded memory), and only the
    # users with a positive are kept: the others can never be sampled. With
    # `max_train_users`, users are visited in a seeded random order and the visit stops once
    # that many users with a positive are found: the users with a positive among the first
    # ones of a random order are a uniform sample of all users with a positive, so the
    # training sample has the same distribution as labelling every user first (at full
    # size: 2 batches instead of 19). Features are then computed for the sampled rows only
    # (they are per row, so this equals computing them for every candidate).
    cap = rcfg.max_train_users
    if cap is not None and len(users) > cap:
        rng = np.random.default_rng(np.random.SeedSequence([rcfg.random_seed, window]))
        visit = rng.permutation(users)
    else:
        visit = users
    frames, hits, target_pairs, scanned, found = [], 0, 0, 0, 0
    batch = rcfg.inference_batch_users
    for s in range(0, len(visit), batch):
        b = np.sort(visit[s : s + batch])
        rows = rows_of_keys(t_users, b)
        part = label_candidates(generate_candidates(stage, b, rcfg), window_pairs.iloc[rows])
        hits += int(part[TARGET].sum())
        target_pairs += len(rows)
        scanned += len(b)
        with_pos = part.loc[part[TARGET].to_numpy() == 1, C.User].unique()
        frames.append(part[part[C.User].isin(with_pos).to_numpy()])
        found += len(with_pos)
        if cap is not None and found >= cap:
            break
    labelled = pd.concat(frames, ignore_index=True)
    del frames
    train = sample_training_rows(labelled, rcfg.negatives_per_user, cap, rcfg.random_seed + window)
    del labelled
    train = collect_features(stage, ctx.prepared.items, train, rcfg)
    train[WINDOW] = np.int8(window)
    facts = {
        "start": str(lab.start.date()),
        "als_params": als_cfg.model_dump(include={"factors", "regularization", "alpha"}),
        "history_rows": len(lab.history),
        "rows": len(train),
        "users": int(train[C.User].nunique()),
        "positive_share": float(train[TARGET].mean()) if len(train) else 0.0,
        # over the users visited (a random sample of them once max_train_users is reached)
        "candidate_recall": float(hits / max(target_pairs, 1)),
        "users_scanned": scanned,
        "users_with_positive": found,
    }
    log.info("ranker label window %d: %s", window, log_json(facts))
    return train, facts


def training_als_params(ctx: PipelineContext) -> list[dict[str, float] | None]:
    """The ALS parameters of each label window's training rows, newest first: with
    `als.tune`, the grid's pick over the `als.tune_windows` windows older than it, so that
    nothing its features come from saw its labels (the served ALS's pick, made on the
    newest windows, made the newest window's ALS features fit its own labels best of the
    grid: a leak into the training rows, found by a review that moved the pick by
    changing only that window's listens). A window with no older one to tune on gets the
    config's own parameters. None (the served ALS's) for every window without tuning."""
    n = ctx.cfg.ranker.label_windows
    cfg = ctx.cfg.als
    if not cfg.tune:
        return [None] * n
    # each window's grid once (the windows after the first), one window alive at a time;
    # None for an older window no grid point can be scored on (no sampled user in it)
    grids: list[list[tuple[dict[str, float], float]] | None] = []
    for w, lab in enumerate(label_windows(ctx, n + cfg.tune_windows)):
        if w > 0:
            try:
                grids.append(als_grid_ndcg(ctx, lab))
            except ConfigError as exc:
                log.warning("label window %d not used to tune the training rows' ALS: %s", w, exc)
                grids.append(None)
    untuned = {"factors": cfg.factors, "regularization": cfg.regularization, "alpha": cfg.alpha}
    picks: list[dict[str, float] | None] = []
    for w in range(n):
        older = [g for g in grids[w : w + cfg.tune_windows] if g is not None]
        pick = best_grid_point(mean_grid(older)) if older else untuned
        log.info(
            "ranker label window %d: ALS parameters %s (%s)",
            w,
            pick,
            f"tuned on the {len(older)} window(s) before it"
            if older
            else "no window before it to tune on: the config's",
        )
        picks.append(pick)
    return picks


def train_ranker(ctx: PipelineContext) -> tuple[Ranker, dict[str, Any]]:
    """Fit the ranker on the pooled rows of its label windows (`label_windows`): each
    window's features come from a first stage fit only on the history before it, with ALS
    parameters tuned only on windows before it (`training_als_params`)."""
    frames, windows, ranges = [], [], []
    names = ctx.cfg.ranker.feature_names
    params = training_als_params(ctx)
    for w, lab in enumerate(label_windows(ctx)):
        rows, facts = window_training_rows(ctx, lab, w, params[w])
        frames.append(rows)
        windows.append(facts)
        ranges.append(FeatureRange(names).update(rows))
    train = pd.concat(frames, ignore_index=True)
    del frames
    pooled = functools.reduce(FeatureRange.merge, ranges)
    for w, rng in enumerate(ranges):
        windows[w]["constant_features"] = skew = rng.constant_where_varying(pooled)
        if skew:
            log.warning(
                "ranker label window %d: features %s take one value in this window but vary "
                "in the others (a time window shorter than the data's time step, e.g. "
                "ranker.recent_days on monthly dates?)",
                w,
                skew,
            )
    if not len(train):
        raise DataValidationError(
            str(ctx.paths.events),
            C.Datetime,
            "label windows where some candidate of a warm user is listened to",
            found="no positive training row",
        )
    if train[TARGET].nunique() < 2:  # CatBoost: "All train targets are equal"
        raise DataValidationError(
            str(ctx.paths.events),
            C.Datetime,
            "training rows with both listened and unlistened candidates",
            found=f"{len(train):,} rows, every one labelled {int(train[TARGET].iloc[0])}: too "
            "few candidates per user (ranker.als_candidates, popular_candidates, "
            "similar_candidates) to leave negatives",
        )
    log.info(
        "ranker training: %d rows, %d queries over %d windows, %.3f positive",
        len(train),
        len(np.unique(group_ids(train))),
        len(windows),
        float(train[TARGET].mean()),
    )
    ranker = Ranker.fit(train, ctx.cfg.ranker)
    ranker.training_range = pooled
    importances = ranker.feature_importances(train, ctx.cfg.ranker.window_weight_decay)
    log.info(
        "feature importances: %s", json.dumps({k: round(v, 3) for k, v in importances.items()})
    )
    info = {
        "train_rows": len(train),
        "train_users": int(train[C.User].nunique()),
        "label_candidate_recall": windows[0]["candidate_recall"],
        "label_windows": windows,
        "feature_importances": importances,
    }
    return ranker, info


def stage_ranker(ctx: PipelineContext) -> dict[str, Any]:
    ranker_path = ctx.paths.ranker_model
    ranker, info = train_ranker(ctx)
    ranker.save(ranker_path)
    ctx.label_split = None  # a copy of most of the history, not needed after training
    release_free_memory("after the ranker's training")
    info.update(write_ranked(ctx, ranker, ctx.first_stage()))
    return info


def ranked_batches(
    ctx: PipelineContext,
    ranker: Ranker,
    stage: FirstStage,
    counter: dict[str, int],
    users: np.ndarray | None = None,
    scored: FeatureRange | None = None,
) -> Iterator[pd.DataFrame]:
    """Ranker top-k of `users` (default: every user with history), one user batch at a
    time (bounded memory: 1.37M users x top 100 is 137M rows at the full size). Adds the
    candidates scored and the users ranked to `counter`, and their features' values to
    `scored`."""
    users = stage.matrix.users.ids if users is None else users
    batch = ctx.cfg.ranker.inference_batch_users
    t0 = time.perf_counter()
    for s in range(0, len(users), batch):
        cand = generate_candidates(stage, users[s : s + batch], ctx.cfg.ranker)
        feats = collect_features(stage, ctx.prepared.items, cand, ctx.cfg.ranker, ranker.features)
        del cand
        counter["candidates"] += len(feats)
        if scored is not None:
            scored.update(feats)
        top = rank_candidates(feats, ranker.predict(feats), ctx.cfg.top_k)
        del feats
        # each batch frees ~2 GiB of candidates and features at full size; without this the
        # resident set crept up ~0.04 GiB per batch (13.1 -> 14.1 GiB over 26 batches,
        # 2026-12-03), which put the run's peak over 16 GiB
        release_free_memory(f"after batch {s // batch}", logging.DEBUG)
        counter["users"] += int(top[C.User].nunique())
        done = min(s + batch, len(users))
        log.info(
            "ranked %d of %d users (%d candidates so far), %.0f s, RSS %.2f GiB",
            done,
            len(users),
            counter["candidates"],
            time.perf_counter() - t0,
            rss_gib(),
        )
        yield top


def write_ranked(
    ctx: PipelineContext,
    ranker: Ranker,
    stage: FirstStage,
    users: np.ndarray | None = None,
    path: Path | None = None,
) -> dict[str, Any]:
    """Score `users` (default: every user of `stage`) and write their top-k to `path`
    (default `recommendations.parquet`) batch by batch. With a ranker trained in this
    process, also the features constant over every scored candidate though they vary in
    training (`constant_at_inference`, logged as a warning)."""
    counter = {"candidates": 0, "users": 0}
    trained = ranker.training_range
    scored = FeatureRange(ranker.features) if trained is not None else None
    rows = write_parquet_batches(
        ranked_batches(ctx, ranker, stage, counter, users, scored),
        path or ctx.paths.recommendations,
    )
    out: dict[str, Any] = {
        "users": counter["users"],
        "rows": rows,
        "candidates": counter["candidates"],
    }
    if scored is not None and trained is not None:
        out["constant_at_inference"] = skew = scored.constant_where_varying(trained)
        if skew:
            log.warning(
                "ranker: features %s take one value over every scored candidate but vary in "
                "the training rows: a train/serve skew (a time window shorter than the "
                "data's time step, e.g. ranker.recent_days on monthly dates?)",
                skew,
            )
    return out


def stage_evaluate(ctx: PipelineContext) -> dict[str, Any]:
    from musicrec.evaluation import (
        candidate_recall_diagnostic,
        compare_models,
        read_top,
        unproven_gains,
    )
    from musicrec.metrics import evaluate, metrics_table
    from musicrec.plots import draw_metrics

    e = ctx.cfg.eval
    test = ctx.test
    hist_users = test.history[C.User].unique()
    test_users = test.window_events[C.User].unique()
    warm = np.intersect1d(test_users, hist_users)
    cold = np.setdiff1d(test_users, hist_users)
    catalog = len(ctx.prepared.items)
    stage = ctx.first_stage()
    kmax = max(e.k_precision, e.k_ndcg)

    def ev(recs: pd.DataFrame, users: np.ndarray) -> dict[str, Any]:
        return evaluate(
            recs, test.window_events, test.history, catalog, e.k_precision, e.k_ndcg, users
        )

    popular = listeners_per_track(test.history)
    pop_recs = recommend_popular(popular, stage.matrix, warm, kmax)
    diag = candidate_recall_diagnostic(
        stage, warm, test.window_events, ctx.cfg, e.candidate_recall_users
    )
    # the first stage is not read by the metrics: drop it (at the full size its matrix, the
    # ALS lists of every user and the similar tracks are GBs) before they allocate theirs;
    # the history it shares with the test split stays
    del stage
    ctx._stage = None
    release_free_memory("after the candidate diagnostic")
    warm_recs = {
        "top_popular": pop_recs,
        # only the first kmax of each list are scored: reading them alone keeps a tenth of
        # the 137M rows of each file in memory at the full size
        "als": read_top(ctx.paths.personal_als, kmax),
        "ranker": read_top(ctx.paths.recommendations, kmax),
    }
    del pop_recs
    warm_results = {name: ev(recs, warm) for name, recs in warm_recs.items()}
    comparisons = compare_models(
        warm_recs,
        test.window_events,
        warm,
        e.k_precision,
        e.k_ndcg,
        baselines=("als", "top_popular"),
    )
    del warm_recs
    # every cold user gets the popular list, as long as it is (a small catalogue can hold
    # fewer than kmax tracks)
    top = popular.head(kmax)
    cold_recs = pd.DataFrame(
        {
            C.User: np.repeat(cold, len(top)),
            C.Item: np.tile(top[C.Item].to_numpy(), len(cold)),
            C.Score: np.tile(top[C.Listeners].to_numpy(), len(cold)).astype(float),
            C.Rank: np.tile(np.arange(1, len(top) + 1), len(cold)),
        }
    )
    cold_results = {"top_popular": ev(cold_recs, cold)} if len(cold) else {}
    table = metrics_table(
        {f"warm/{k}": v for k, v in warm_results.items()}
        | {f"cold/{k}": v for k, v in cold_results.items()}
    )
    log.info("evaluation (test window from %s):\n%s", test.start.date(), table.to_string())
    log.info("candidates: %s", log_json(diag))
    log.info("paired differences (mean ± stderr over warm users): %s", log_json(comparisons))
    for line in unproven_gains(comparisons):
        log.warning(line)
    draw_metrics(
        warm_results,
        ctx.paths.pictures_dir / "metrics_comparison.png",
        title=f"Warm test users ({len(warm):,}): mean ± standard error; higher is better",
    )
    return {
        "warm": warm_results,
        "cold": cold_results,
        "comparisons": comparisons,
        "candidates": diag,
    }


def stage_final_fit(ctx: PipelineContext) -> dict[str, Any]:
    """Refit the served artifacts on all events (production serving)."""
    events = ctx.prepared.events
    end = serving_end(events[C.Datetime], ctx.test.start)
    top = top_popular_table(events, ctx.prepared.items, ctx.cfg.top_popular_k)
    write_parquet(top, ctx.paths.top_popular)
    stage = FirstStage.fit(events, end, ctx.als_cfg(), ctx.cfg.similar)
    stage.als.save(ctx.paths.model_dir)
    HeardIndex.from_matrix(stage.matrix).save(ctx.paths.heard_dir)
    write_parquet(stage.similar, ctx.paths.similar)
    als = stage.als.recommend(
        stage.matrix.users.ids,
        stage.matrix,
        ctx.cfg.als.n_recs,
        ctx.cfg.als.batch_size,
        items=stage.cache.get("scored_items"),
    )
    write_parquet(als, ctx.paths.personal_als)
    set_als_recs(stage, als, ctx.cfg.als.n_recs)  # candidates reuse these lists
    ranker = Ranker.load(ctx.paths.ranker_model)
    written = write_ranked(ctx, ranker, stage)
    return {"fit_end": end.isoformat(), "users": written["users"]}


# ---------------------------------------------------------------------------- driver
def build_plan(ctx: PipelineContext) -> list[Stage]:
    """The stages of the pipeline in order (the CLI, the notebook and the benchmark run it)."""
    cfg, paths = ctx.cfg, ctx.paths
    model_files = [paths.model_dir / name for name in ALS_FILES]
    heard_files = [paths.heard_dir / name for name in HEARD_FILES]
    plan = [
        Stage(
            "prepare",
            lambda: stage_prepare(ctx),
            cfg.data.model_dump(),
            [ctx.data_dir / f for f in RawFiles.All],
            [paths.events, paths.items],
            [],
            code=("prepare",),
        ),
        Stage(
            "eda",
            lambda: stage_eda(ctx),
            {},
            [],
            [paths.pictures_dir / name for name in EDA_FILES],
            ["prepare"],
            code=("plots",),
        ),
        Stage(
            "split",
            lambda: stage_split(ctx),
            cfg.split.model_dump(),
            [],
            [],
            ["prepare"],
            code=("split",),
        ),
        Stage(
            "top_popular",
            lambda: stage_top_popular(ctx),
            cfg.top_popular_k,
            [],
            [paths.top_popular],
            ["split"],
            code=("popular",),
        ),
        Stage(
            "als_label",
            lambda: stage_als_label(ctx),
            # the only evaluation setting it reads: the k of the NDCG it tunes by (the
            # whole `eval` refit both ALS stages when e.g. the recall sample changed)
            [
                cfg.als.model_dump(exclude={"warm_start_iterations"}),
                {"k_ndcg": cfg.eval.k_ndcg} if cfg.als.tune else None,
            ],
            [],
            [paths.label_model_dir / f.name for f in model_files],
            ["split"],
            code=("als", "metrics"),  # tuned by NDCG@10 on the label window
        ),
        Stage(
            "als",
            lambda: stage_als(ctx),
            cfg.als.model_dump(),  # and the tuned parameters, through als_label's fingerprint
            [],
            [*model_files, *heard_files, paths.personal_als],
            ["als_label"],
            code=("als", "heard"),
        ),
        Stage(
            "similar",
            lambda: stage_similar(ctx),
            cfg.similar.model_dump(),
            [],
            [paths.similar],
            ["als"],
            code=("similar",),
        ),
        Stage(
            "ranker",
            lambda: stage_ranker(ctx),
            [cfg.ranker.model_dump(), cfg.top_k],
            [],
            [paths.recommendations, paths.ranker_model],
            ["als_label", "similar", "top_popular"],
            code=("candidates", "features", "ranker"),
        ),
        Stage(
            "evaluate",
            lambda: stage_evaluate(ctx),
            cfg.eval.model_dump(),
            [],
            [paths.pictures_dir / "metrics_comparison.png"],
            ["ranker"],
            code=("evaluation", "metrics", "plots"),
        ),
    ]
    if cfg.final_fit == "all":
        # it overwrites the artifacts of top_popular/als/similar/ranker: their records then
        # no longer match their outputs, so a later run recomputes them before reusing any
        served = [
            paths.top_popular,
            *model_files,
            *heard_files,
            paths.personal_als,
            paths.similar,
        ]
        plan.append(
            Stage(
                "final_fit",
                lambda: stage_final_fit(ctx),
                cfg.final_fit,
                [],
                [*served, paths.recommendations],
                ["evaluate"],
                code=("candidates", "features", "ranker", "heard"),
            )
        )
    return plan


def collect_metrics(ctx: PipelineContext) -> dict[str, Any]:
    """The content of `recsys/metrics.json`, from the results of a finished plan."""
    r = ctx.results
    missing = [name for name in ("prepare", "split", "ranker", "evaluate") if name not in r]
    if missing:  # the notebook's metrics cell run before the stage cells
        raise MusicRecError(
            f"the metrics need the stages {', '.join(map(repr, missing))} run first in this "
            "context (in the notebook: run the cells above it)"
        )
    return {
        "split": r["split"]["split"],
        "data": r["prepare"].get("stats", {}),
        "als_params": ctx.als_cfg().model_dump(include={"factors", "regularization", "alpha"}),
        "ranker": dict(r["ranker"]),
        "warm": r["evaluate"]["warm"],
        "cold": r["evaluate"]["cold"],
        "comparisons": r["evaluate"].get("comparisons", {}),
        "candidates": r["evaluate"]["candidates"],
        "final_fit": ctx.cfg.final_fit,
        "stage_seconds": ctx.seconds,
        # stages whose recorded result this run reused: their seconds are not a stage's time
        "reused_stages": list(ctx.reused),
    }


def finish_run(ctx: PipelineContext) -> dict[str, Any]:
    """The end of a run: `recsys/metrics.json` written from the stages' results and, when
    every stage of the plan ran or was reused in `ctx`, the folder marked as one finished
    run (`RunState`). Returns the metrics. The notebook's last section calls it too."""
    metrics = collect_metrics(ctx)
    with pipeline_lock(ctx.paths.cache_dir):
        write_json(metrics, ctx.paths.metrics)
        done = RunState.read(ctx.paths) or {}
        plan = build_plan(ctx)
        stages = {stage.name: ctx.fingerprints.get(stage.name) for stage in plan}
        rewritten: set[Path] = set()  # by a later stage (final_fit's refit of the served files)
        current = True
        for stage in reversed(plan):
            current = current and ctx.is_current(stage, rewritten)
            rewritten.update(stage.outputs)
        if not current:  # metrics.json now describes this context, not the files beside it
            what = "metrics.json was written from stages whose files changed on disk since"
            RunState.write(ctx.paths, RunState.UNFINISHED, what=what)
        elif done.get("state") != RunState.COMPLETE or done.get("stages") != stages:
            # (a run that reused every stage of a finished one leaves the file as it is)
            RunState.write(ctx.paths, RunState.COMPLETE, stages=stages)
    return metrics


def run_pipeline(
    data_dir: str | Path,
    artifacts_dir: str | Path,
    cfg: PipelineConfig | None = None,
    force: bool = False,
    settings: Settings | None = None,
    progress: bool = True,
    on_stage: Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run every stage; return (and write to `recsys/metrics.json`) the metrics.

    `on_stage(name, run)`, if given, is called for each stage instead of `run()` and must
    return what `run()` returns (the benchmark uses it to time and sample each stage).
    With `settings` holding an S3 bucket, the artifacts are uploaded at the end.
    """
    from tqdm.auto import tqdm

    cfg = cfg or PipelineConfig()
    require_raw_files(data_dir)  # before any folder is made (the fingerprints stat them)
    paths = ArtifactPaths(Path(artifacts_dir))
    paths.ensure_dirs()
    ctx = PipelineContext(Path(data_dir), paths, cfg, StageCache(paths.cache_dir, force))
    with pipeline_lock(paths.cache_dir):  # the whole run: no other run interleaves stages
        # the half-written files of a run killed outright (gigabytes at the full size)
        files, size = remove_stale_temporaries(paths.root)
        if files:
            log.info(
                "removed %d temporary files (%.1f MB) of an interrupted run", files, size / 1e6
            )
        plan = build_plan(ctx)
        # counted by hand: an iterating bar shows a count that lags behind its stage name
        with tqdm(total=len(plan), desc="pipeline", unit="stage", disable=not progress) as bar:
            for stage in plan:
                bar.set_postfix_str(stage.name)  # redrawn at once, with the stages done
                run = functools.partial(ctx.run_stage, stage)
                if on_stage is not None:
                    on_stage(stage.name, run)
                else:
                    run()
                bar.update(1)
        metrics = finish_run(ctx)
        if settings is not None:  # still under the lock: no other run rewrites what is sent
            from musicrec.s3 import upload_artifacts

            upload_artifacts(settings, paths.root)
    log.info("stage times (s): %s", json.dumps(ctx.seconds))
    return metrics

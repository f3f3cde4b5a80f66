"""The context and the dumped rows shared by the ranker experiments (`ranker_variants.py`,
`ranker_head.py`, `ranker_diagnostics.py`, `als_seeds.py`, `cotag_feature.py`): the
command-line options that locate a finished pipeline run (data, artifacts, config) and, in
`--work`, the pipeline's pooled label-window training rows and the features of every warm
test user's candidates, built once exactly as `run_pipeline` builds them from the
artifacts."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from musicrec.artifacts import ArtifactPaths
from musicrec.candidates import generate_candidates
from musicrec.columns import FEATURES
from musicrec.columns import Columns as C
from musicrec.config import load_config
from musicrec.features import collect_features
from musicrec.pipeline import (
    PipelineContext,
    StageCache,
    label_windows,
    training_als_params,
    window_training_rows,
)
from musicrec.ranker import TARGET, WINDOW

ROOT = Path(__file__).resolve().parents[1]


def add_context_args(ap: argparse.ArgumentParser, work: bool = True) -> None:
    """--data-dir, --artifacts-dir, --config (default: the Last.fm run of
    `bench/quality.py --only lastfm`) and, with `work`, --work (the dump's folder)."""
    ap.add_argument(
        "--data-dir", type=Path, default=ROOT.parent / "shared/datasets/lastfm-hetrec2k"
    )
    ap.add_argument("--artifacts-dir", type=Path, default=Path("/tmp/musicrec-quality/lastfm"))
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "lastfm.toml")
    if work:
        ap.add_argument("--work", type=Path, default=Path("/tmp/musicrec-ranker-variants"))


def context(args: argparse.Namespace) -> PipelineContext:
    """The pipeline's context over the finished run that `args` names."""
    paths = ArtifactPaths(args.artifacts_dir)
    cfg = load_config(args.config)
    return PipelineContext(args.data_dir, paths, cfg, StageCache(paths.cache_dir))


def dump(ctx: PipelineContext, work: Path) -> None:
    """Write `train.parquet` (every label window's training rows, `label_window` marking
    them) and `test_candidates.parquet` (the warm test users' candidates with features)."""
    params = training_als_params(ctx)  # as the pipeline's training rows are built
    frames = [
        window_training_rows(ctx, lab, w, params[w])[0] for w, lab in enumerate(label_windows(ctx))
    ]
    pd.concat(frames, ignore_index=True).to_parquet(work / "train.parquet")
    stage, test = ctx.first_stage(), ctx.test
    warm = np.intersect1d(test.window_events[C.User].unique(), test.history[C.User].unique())
    cand = generate_candidates(stage, warm, ctx.cfg.ranker)
    feats = collect_features(stage, ctx.prepared.items, cand, ctx.cfg.ranker)
    feats.to_parquet(work / "test_candidates.parquet")


def load_dump(ctx: PipelineContext, work: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, test candidates) from `work`, dumped there first when missing or
    when a file lacks one of today's feature columns (a dump of older code)."""
    work.mkdir(parents=True, exist_ok=True)
    files = [work / "train.parquet", work / "test_candidates.parquet"]
    missing = set()
    for f in files:
        if f.exists():
            missing |= set(FEATURES) - set(pq.read_schema(f).names)
    if missing:
        print(f"{work}: the dump lacks {sorted(missing)} (older code): dumping again")
    if missing or not all(f.exists() for f in files):
        dump(ctx, work)
    return pd.read_parquet(work / "train.parquet"), pd.read_parquet(
        work / "test_candidates.parquet"
    )


def holdout_split(
    train: pd.DataFrame, window: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The holdout of the dumped training rows: (rows to fit on: the label windows older
    than `window`, candidates to score: `window`'s rows, their positives as the target).
    Windows are numbered newest first; the test window is not used."""
    if not (train[WINDOW] > window).any():
        raise SystemExit(
            f"a holdout on label window {window} needs ranker.label_windows >= {window + 2}"
            f" (it fits on windows {window + 1}..)"
        )
    cand = train[train[WINDOW] == window].reset_index(drop=True)
    fit_rows = train[train[WINDOW] > window].reset_index(drop=True)
    return fit_rows, cand, cand[cand[TARGET] == 1]


def positions(groups: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """1-based place of each row in its group by descending score (NaN last, ties in row
    order)."""
    s = pd.Series(np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf))
    return s.groupby(groups, sort=False).rank(ascending=False, method="first").to_numpy()

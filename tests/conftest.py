"""Shared session fixtures: tiny synthetic raw data and one tiny pipeline run.

Fixtures (all session-scoped; treat what they return as read-only - a test that reruns
the pipeline with other parameters must use its own artifacts directory):

* `tiny_raw_dir` - `generate_dataset("tiny", seed=42)` written to a temporary directory
  (tracks.parquet, catalog_names.parquet, interactions.parquet; ~25k events, 300 users,
  2,000 tracks, all of 2022). Takes well under a second.
* `tiny_prepared` - `prepare_data` on `tiny_raw_dir` (a `PreparedData`: items, events).
* `fast_config` - `fast_pipeline_config()`: the small, fast `PipelineConfig` below.
* `tiny_pipeline` - `run_pipeline(tiny_raw_dir, <tmp>/recsys, fast_config)` run once, with
  the execution log written through `musicrec.logs.setup_logging`; returns a
  `TinyPipeline` (data_dir, root, paths, cfg, metrics, log_file). About 5 s.

`fast_pipeline_config(**overrides)` builds the same config with top-level overrides (e.g.
`final_fit="all"`) for tests that need their own run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit runs its own threads

from musicrec.artifacts import ArtifactPaths  # noqa: E402
from musicrec.config import DataConfig, PipelineConfig  # noqa: E402
from musicrec.prepare import PreparedData, prepare_data  # noqa: E402

#: the tiny pipeline's parameters: a one-point ALS grid (so tuning runs, once), few
#: iterations, a 50-iteration ranker and short lists
FAST_CONFIG: dict[str, Any] = {
    "als": {
        "factors": 16,
        "iterations": 5,
        "tune": True,
        "factors_grid": [16],
        "regularization_grid": [0.01],
        "alpha_grid": [10.0],
        "n_recs": 50,
    },
    "similar": {"k": 10},
    "ranker": {
        "iterations": 50,
        "depth": 4,
        "als_candidates": 50,
        "popular_candidates": 20,
        "similar_candidates": 20,
        "negatives_per_user": 20,
        "thread_count": 2,
    },
    "top_k": 20,
    "top_popular_k": 200,
}


def fast_pipeline_config(**overrides: Any) -> PipelineConfig:
    """`FAST_CONFIG` with top-level keys replaced by `overrides` (sections replace whole)."""
    return PipelineConfig.model_validate({**FAST_CONFIG, **overrides})


@dataclass(frozen=True)
class TinyPipeline:
    """One finished pipeline run on the tiny preset."""

    data_dir: Path  # the raw files (tiny_raw_dir)
    root: Path  # the artifacts directory (recsys/)
    paths: ArtifactPaths
    cfg: PipelineConfig
    metrics: dict[str, Any]  # what run_pipeline returned (also in recsys/metrics.json)
    log_file: Path  # the execution log of the run


@pytest.fixture(scope="session")
def tiny_raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw files of the `tiny` preset (seed 42), generated once per session."""
    from musicrec.generate import generate_dataset

    out = tmp_path_factory.mktemp("tiny_raw")
    generate_dataset("tiny", seed=42, out_dir=out)
    return out


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    """items and events prepared from `tiny_raw_dir`."""
    root = tmp_path_factory.mktemp("tiny_prepared")
    return prepare_data(tiny_raw_dir, ArtifactPaths(root), DataConfig())


@pytest.fixture(scope="session")
def fast_config() -> PipelineConfig:
    return fast_pipeline_config()


@pytest.fixture(scope="session")
def tiny_pipeline(
    tiny_raw_dir: Path, fast_config: PipelineConfig, tmp_path_factory: pytest.TempPathFactory
) -> TinyPipeline:
    """The whole pipeline run once on `tiny_raw_dir` with `fast_config`."""
    from musicrec.logs import setup_logging
    from musicrec.pipeline import run_pipeline

    work = tmp_path_factory.mktemp("tiny_pipeline")
    root = work / "recsys"
    log_file = work / "execution_log.txt"
    root_logger = logging.getLogger()
    level = root_logger.level
    setup_logging("INFO", log_file)
    try:
        metrics = run_pipeline(tiny_raw_dir, root, fast_config, progress=False)
    finally:
        for h in list(root_logger.handlers):
            if getattr(h, "_musicrec", False):
                root_logger.removeHandler(h)
                h.close()
        root_logger.setLevel(level)
    return TinyPipeline(tiny_raw_dir, root, ArtifactPaths(root), fast_config, metrics, log_file)

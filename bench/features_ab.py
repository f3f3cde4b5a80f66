"""A/B of the id -> code lookups inside `features.collect_features`: `IdMap`'s dense table
against the binary search it falls back to, on one batch of real-size users.

    python bench/features_ab.py        # after `make bench-pipeline` (full10 artifacts)

Loads the first stage from the artifacts, builds the candidates of `--users` users, then
runs `collect_features` with each lookup, alternating `--repeats` times in one process;
prints the times, their medians and the ratio, and checks that both give the same frame.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from musicrec import candidates, features, matrix  # noqa: E402
from musicrec.artifacts import ArtifactPaths  # noqa: E402
from musicrec.config import load_config  # noqa: E402
from musicrec.pipeline import PipelineContext, StageCache  # noqa: E402


def no_table(self: matrix.IdMap) -> None:
    """The binary-search path only (what `IdMap.codes` did before the dense table)."""
    return None


def main() -> None:
    bench = Path("/tmp/musicrec-bench/full10")
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--artifacts-dir", type=Path, default=bench / "recsys")
    ap.add_argument("--data-dir", type=Path, default=bench / "data")
    ap.add_argument("--config", type=Path, default=ROOT / "bench" / "configs" / "full.toml")
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config(args.config)
    paths = ArtifactPaths(args.artifacts_dir)
    ctx = PipelineContext(args.data_dir, paths, cfg, StageCache(paths.cache_dir))
    stage = ctx.first_stage()
    items = ctx.prepared.items
    cand = candidates.generate_candidates(stage, stage.matrix.users.ids[: args.users], cfg.ranker)
    features.collect_features(stage, items, cand.head(100_000), cfg.ranker)  # cached stats
    dense = matrix.IdMap._dense_table
    versions = {"binary search": no_table, "dense table": dense}
    times: dict[str, list[float]] = {name: [] for name in versions}
    out: dict[str, pd.DataFrame] = {}
    try:
        for _ in range(args.repeats):
            for name, fn in versions.items():
                matrix.IdMap._dense_table = fn  # type: ignore[method-assign]
                t0 = time.perf_counter()
                out[name] = features.collect_features(stage, items, cand, cfg.ranker)
                times[name].append(time.perf_counter() - t0)
    finally:
        matrix.IdMap._dense_table = dense  # type: ignore[method-assign]
    pd.testing.assert_frame_equal(out["binary search"], out["dense table"])
    print(f"collect_features for {args.users:,} users ({len(cand):,} candidates), same output")
    for name, ts in times.items():
        print(f"  {name:14s} {' '.join(f'{t:6.2f}' for t in ts)} s   median {np.median(ts):.2f} s")
    base, new = (float(np.median(v)) for v in times.values())
    print(f"  ratio {base / new:.2f}x")


if __name__ == "__main__":
    main()

"""A/B of the candidate union: `candidates.outer_join_pairs` against the chained pandas
outer merges it replaced, inside `generate_candidates`, on one batch of real-size users.

    python bench/candidates_ab.py          # after `make bench-pipeline` (full10 artifacts)

Loads the first stage from the artifacts (ALS, similar tracks, the ALS top-N), then runs
`generate_candidates` for `--users` users with each version, alternating `--repeats` times
in one process, and prints the times, their medians and the ratio.
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

import musicrec.candidates as candidates  # noqa: E402
from musicrec.artifacts import ArtifactPaths  # noqa: E402
from musicrec.columns import Columns as C  # noqa: E402
from musicrec.config import load_config  # noqa: E402
from musicrec.pipeline import PipelineContext, StageCache  # noqa: E402


def chained_merges(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The previous implementation: outer merges on (user, track), one per source."""
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p, on=[C.User, C.Item], how="outer")
    return out


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
    users = stage.matrix.users.ids[: args.users]
    candidates.generate_candidates(stage, users[:1000], cfg.ranker)  # warm the caches
    versions = {"chained merges": chained_merges, "outer_join_pairs": candidates.outer_join_pairs}
    times: dict[str, list[float]] = {name: [] for name in versions}
    rows = 0
    for _ in range(args.repeats):
        for name, fn in versions.items():
            candidates.outer_join_pairs = fn  # generate_candidates looks it up at call time
            t0 = time.perf_counter()
            rows = len(candidates.generate_candidates(stage, users, cfg.ranker))
            times[name].append(time.perf_counter() - t0)
    candidates.outer_join_pairs = versions["outer_join_pairs"]
    print(f"generate_candidates for {len(users):,} users ({rows:,} candidates)")
    for name, ts in times.items():
        print(f"  {name:18s} {' '.join(f'{t:6.2f}' for t in ts)} s   median {np.median(ts):.2f} s")
    base, new = (float(np.median(v)) for v in times.values())
    print(f"  ratio {base / new:.2f}x")


if __name__ == "__main__":
    main()

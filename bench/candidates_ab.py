"""A/B of the candidate union: `candidates.outer_join_pairs` against the chained pandas
outer merges it replaced, inside `generate_candidates`, on one batch of real-size users.

    python bench/candidates_ab.py          # after `make bench-pipeline` (full10 artifacts)

Loads the first stage from the artifacts (ALS, similar tracks, the ALS top-N), then runs
`generate_candidates` for `--users` users with each version, alternating `--repeats` times
in one process, and prints the times, their medians and the ratio.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ab_setup  # noqa: E402
import pandas as pd  # noqa: E402

import musicrec.candidates as candidates  # noqa: E402
from musicrec.columns import Columns as C  # noqa: E402


def chained_merges(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The previous implementation: outer merges on (user, track), one per source."""
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p, on=[C.User, C.Item], how="outer")
    return out


def main() -> None:
    args = ab_setup.parser(__doc__).parse_args()
    cfg, ctx, stage = ab_setup.load_first_stage(args)
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
    ab_setup.report(times)


if __name__ == "__main__":
    main()

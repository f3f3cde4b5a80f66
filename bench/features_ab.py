"""A/B of the id -> code lookups inside `features.collect_features`: `IdMap`'s dense table
against the binary search it falls back to, on one batch of real-size users.

    python bench/features_ab.py        # after `make bench-pipeline` (full10 artifacts)

Loads the first stage from the artifacts, builds the candidates of `--users` users, then
runs `collect_features` with each lookup, alternating `--repeats` times in one process;
prints the times, their medians and the ratio, and checks that both give the same frame.
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

from musicrec import candidates, features, matrix  # noqa: E402


def no_table(self: matrix.IdMap) -> None:
    """The binary-search path only (what `IdMap.codes` did before the dense table)."""
    return None


def main() -> None:
    args = ab_setup.parser(__doc__).parse_args()
    cfg, ctx, stage = ab_setup.load_first_stage(args)
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
    ab_setup.report(times)


if __name__ == "__main__":
    main()

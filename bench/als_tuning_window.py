"""Does the ALS grid pick the same point on every label window? (issue #3)

    python bench/quality.py --only lastfm        # the run this reads (or --artifacts-dir)
    python bench/als_tuning_window.py --windows 0 1 2

The pipeline tunes ALS on the newest label window (window 0) and the ranker then trains on
that same window, among others: the pick carries a little of window 0's labels into the
ALS features of its training rows. If the grid picks the same point on the older windows,
where that does not apply, the shared window changes nothing for this config. For each
window asked for (the ranker's label windows, newest first; never the test window) the
script runs the pipeline's own grid search (`musicrec.pipeline.als_grid_ndcg`) and prints
every grid point's NDCG@k, each window's pick, and the pick's rank on the other windows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ranker_dump import add_context_args, context  # noqa: E402

from musicrec.pipeline import als_grid_ndcg, label_windows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_context_args(ap, work=False)
    ap.add_argument("--windows", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    ctx = context(args)
    start = time.perf_counter()
    grids: dict[int, list[tuple[dict[str, float], float]]] = {}
    for w, lab in enumerate(label_windows(ctx)):
        if w > max(args.windows):
            break
        if w in args.windows:
            grids[w] = als_grid_ndcg(ctx, lab)
            print(f"window {w} (from {lab.start.date()}): {len(lab.window_events):,} listens")
    if not grids:
        sys.exit("no label window of those asked for")
    windows = sorted(grids)
    points = [params for params, _ in grids[windows[0]]]
    k = ctx.cfg.eval.k_ndcg
    print(f"\nNDCG@{k} of each grid point (rank on that window in brackets)")
    print("factors  reg     alpha  " + "".join(f"  window {w:<7}" for w in windows))
    ranks = {
        w: {i: r for r, (i, _) in enumerate(sorted(enumerate(g), key=lambda x: -x[1][1]), 1)}
        for w, g in grids.items()
    }
    for i, p in enumerate(points):
        cells = "".join(f"  {grids[w][i][1]:.4f} ({ranks[w][i]:>2})" for w in windows)
        print(f"{p['factors']:<8} {p['regularization']:<7} {p['alpha']:<6}{cells}")
    for w in windows:
        best = min(ranks[w], key=lambda i: ranks[w][i])
        elsewhere = ", ".join(f"window {v}: rank {ranks[v][best]}" for v in windows if v != w)
        print(f"window {w} picks {points[best]} ({elsewhere})")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

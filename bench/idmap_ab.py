"""IdMap at the full size: the id -> code map of 1M sparse track ids, built from and
looked up for 200M listens, old way (sort, binary search) against the current one (marks,
dense table). The two are alternated `--rounds` times in one process; same output checked.

    python bench/idmap_ab.py                    # 200M values, 1M ids up to 20M, 3 rounds
    python bench/idmap_ab.py --values 2000000   # a quick run

Prints the median seconds of each step and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from musicrec.matrix import IdMap  # noqa: E402


def old_from_values(values: np.ndarray) -> np.ndarray:
    return np.unique(values)


def old_codes(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    pos = np.minimum(np.searchsorted(ids, values), len(ids) - 1)
    return np.where(ids[pos] == values, pos, -1).astype(np.int32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--values", type=int, default=200_000_000)
    ap.add_argument("--ids", type=int, default=1_000_000)
    ap.add_argument("--top", type=int, default=20_000_000, help="largest id")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(args.top, args.ids, replace=False)).astype(np.int32)
    values = ids[rng.integers(0, len(ids), args.values)]
    print(f"{args.values:,} values of {len(ids):,} ids up to {int(ids[-1]):,}", flush=True)
    steps = ("old map", "new map", "old codes", "new codes")
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        t = time.perf_counter()
        old_ids = old_from_values(values)
        times["old map"].append(time.perf_counter() - t)
        t = time.perf_counter()
        m = IdMap.from_values(values)
        times["new map"].append(time.perf_counter() - t)
        assert np.array_equal(old_ids, m.ids)
        t = time.perf_counter()
        old = old_codes(old_ids, values)
        times["old codes"].append(time.perf_counter() - t)
        t = time.perf_counter()
        new = m.codes(values)  # includes building the table (once per map)
        times["new codes"].append(time.perf_counter() - t)
        assert np.array_equal(old, new)
        del old, new
    med = {k: statistics.median(v) for k, v in times.items()}
    for step in ("map", "codes"):
        o, n = med[f"old {step}"], med[f"new {step}"]
        rounds = f"medians of {args.rounds}"
        print(f"{step:<6} old {o:7.2f} s   new {n:7.2f} s   {o / n:5.1f}x  ({rounds})")


if __name__ == "__main__":
    main()

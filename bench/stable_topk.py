"""`matrix.stable_topk` against implicit's `topk` alone: time, and how much the lists move
with the batch size.

    python bench/stable_topk.py
    python bench/stable_topk.py --queries 20000 --targets 200000 --k 100 300 --repeats 5

Random factors drawn around a few hundred centres (tracks of one style lie close together,
as ALS's do), scored in the pipeline's batches (10,000 queries, one BLAS thread, implicit's
own threads). Prints, per k: the median time of each version over `--repeats` alternating
runs and their ratio, how many of (at most) 10,000 queries `stable_topk` had to propose more targets
(a near-tie at the cut-off), then for each version how many (query, rank) entries of the
first `--check` queries change between batches of 1 query and of 10,000.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from implicit.cpu.topk import topk  # noqa: E402

from musicrec import matrix  # noqa: E402
from musicrec.matrix import stable_topk  # noqa: E402


def factors(n: int, f: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    picks = centres[rng.integers(0, len(centres), n)]
    return (picks + 0.05 * rng.normal(size=(n, f))).astype(np.float32)


def batched(
    fn: Callable[..., Any], targets: np.ndarray, queries: np.ndarray, k: int, batch: int
) -> np.ndarray:
    out = [fn(targets, queries[s : s + batch], k)[0] for s in range(0, len(queries), batch)]
    return np.concatenate(out)


def plain(targets: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids, scores = topk(targets, queries, k, num_threads=0)
    return ids, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--targets", type=int, default=100_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--k", type=int, nargs="+", default=[100, 300])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--check", type=int, default=500, help="queries scored one at a time")
    args = ap.parse_args()
    widened = [0]  # rows `_rescore` found unsure (proposed more targets), over its calls
    rescore = matrix._rescore

    def counting(
        targets: np.ndarray,
        queries: np.ndarray,
        ids: np.ndarray,
        first: np.ndarray,
        k: int,
        err: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = rescore(targets, queries, ids, first, k, err)
        widened[0] += int(out[2].sum())
        return out

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(300, args.factors)).astype(np.float32)
    targets = factors(args.targets, args.factors, centres, rng)
    queries = factors(args.queries, args.factors, centres, rng)
    versions = {"implicit topk": plain, "stable_topk": stable_topk}
    print(
        f"{args.queries:,} queries x {args.targets:,} targets x {args.factors} factors, "
        f"batches of 10,000, {args.repeats} alternating runs"
    )
    for k in args.k:
        times: dict[str, list[float]] = {name: [] for name in versions}
        for _ in range(args.repeats):
            for name, fn in versions.items():
                t0 = time.perf_counter()
                batched(fn, targets, queries, k, 10_000)
                times[name].append(time.perf_counter() - t0)
        med = {name: float(np.median(t)) for name, t in times.items()}
        print(f"k={k}")
        for name, t in med.items():
            print(f"  {name:14s} median {t:7.3f} s  ({', '.join(f'{x:.3f}' for x in times[name])})")
        print(f"  ratio stable/implicit {med['stable_topk'] / med['implicit topk']:.3f}")
        widened[0], matrix._rescore = 0, counting
        few = queries[:10_000]
        stable_topk(targets, few, k)
        matrix._rescore = rescore
        print(f"  rows proposed more targets (near-ties at the cut-off): {widened[0]:,}", end="")
        print(f" of {len(few):,}")
        for name, fn in versions.items():
            big = batched(fn, targets, queries[: args.check], k, 10_000)
            one = batched(fn, targets, queries[: args.check], k, 1)
            moved = int((big != one).sum())
            print(f"  {name:14s} entries that differ, batch 1 vs 10,000: {moved:,} of {big.size:,}")


if __name__ == "__main__":
    main()

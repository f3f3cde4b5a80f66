"""A/B of changes inside `features.collect_features`, on one batch of real-size users.

    python bench/features_ab.py                    # after `make bench-pipeline` (full10)
    python bench/features_ab.py --change latest
    python bench/features_ab.py --change cosine --users 25000
    python bench/features_ab.py --change opt-in --users 25000

`--change lookup` (default): the id -> code lookups, `IdMap`'s dense table against the
binary search it falls back to. `--change latest`: the similarity to the user's latest
tracks, one einsum over all of them against one `pair_dots` pass per latest track (the
code before 2026-12-02, kept below as the baseline). `--change cosine`: the users' genre
profiles of `user_genre_cosine`, read through the sorted keys of the sparse profiles (the
first version, still the path for catalogues with very many genres) against a dense users x
genres table. `--change opt-in`: every feature (what the scoring path computed until
2026-12-06) against the default list (what it computes for the default ranker: the opt-in
`user_genre_cosine` left out); the columns both have must agree.

Loads the first stage from the artifacts, builds the candidates of `--users` users, then
runs `collect_features` with each version, alternating `--repeats` times in one process;
prints the times, their medians and the ratio, and checks that both give the same frame.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ab_setup  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from musicrec import candidates, features, matrix  # noqa: E402
from musicrec.columns import DEFAULT_FEATURES  # noqa: E402
from musicrec.columns import Columns as C  # noqa: E402
from musicrec.matrix import pair_dots  # noqa: E402


def no_table(self: matrix.IdMap) -> None:
    """The binary-search path only (what `IdMap.codes` did before the dense table)."""
    return None


def latest_per_track(
    stage: Any, u_ids: np.ndarray, i_ids: np.ndarray, n_latest: int
) -> tuple[np.ndarray, np.ndarray]:
    """`features._similarity_to_latest` before 2026-12-02: one `pair_dots` pass (two row
    gathers) per latest track."""
    f = stage.als.item_factors
    norms = np.linalg.norm(f, axis=1)
    normed = f / np.where(norms > 0, norms, 1.0)[:, None]
    users = np.unique(u_ids)
    recent = candidates.latest_for_users(stage, users, n_latest)
    umap = matrix.IdMap(users)
    table = np.full((len(users), n_latest), -1, dtype=np.int64)
    table[umap.codes(recent[C.User].to_numpy()), recent["recency"].to_numpy() - 1] = (
        stage.als.items.codes(recent[C.Item].to_numpy())
    )
    c_u, c_i = umap.codes(u_ids), stage.als.items.codes(i_ids)
    mx = np.full(len(u_ids), np.nan, dtype=np.float32)
    mean = np.full(len(u_ids), np.nan, dtype=np.float32)
    for s in range(0, len(u_ids), 1_000_000):
        sl = slice(s, s + 1_000_000)
        ci, rc = c_i[sl], table[c_u[sl]]
        valid = rc >= 0
        sims = np.stack(
            [
                pair_dots(normed, np.maximum(ci, 0), normed, np.maximum(rc[:, r], 0))
                for r in range(rc.shape[1])
            ],
            axis=1,
        ).reshape(len(ci), rc.shape[1])
        sims = np.where(valid, sims, np.nan)
        has = valid.any(axis=1) & (ci >= 0)
        with np.errstate(all="ignore"):
            mx[sl] = np.where(has, np.nanmax(np.where(valid, sims, -np.inf), axis=1), np.nan)
            mean[sl] = np.where(has, np.nanmean(sims, axis=1), np.nan)
    return mx, mean


def patcher(owner: Any, attr: str, value: Any) -> Callable[[], None]:
    return lambda: setattr(owner, attr, value)


def versions(change: str) -> dict[str, Callable[[], None]]:
    """Name -> a function that installs that version (the current code last)."""
    if change == "lookup":
        dense = matrix.IdMap._dense_table
        return {
            "binary search": patcher(matrix.IdMap, "_dense_table", no_table),
            "dense table": patcher(matrix.IdMap, "_dense_table", dense),
        }
    if change == "opt-in":  # the versions differ in collect_features' argument (main)
        return {"every feature": lambda: None, "default list": lambda: None}
    if change == "cosine":
        cells = features.DENSE_PROFILE_CELLS
        return {
            "sorted keys": patcher(features, "DENSE_PROFILE_CELLS", 0),
            "dense table": patcher(features, "DENSE_PROFILE_CELLS", cells),
        }
    current = features._similarity_to_latest
    return {
        "pair_dots per latest": patcher(features, "_similarity_to_latest", latest_per_track),
        "one einsum": patcher(features, "_similarity_to_latest", current),
    }


def main() -> None:
    ap = ab_setup.parser(__doc__)
    ap.add_argument("--change", choices=["lookup", "latest", "cosine", "opt-in"], default="lookup")
    args = ap.parse_args()
    cfg, ctx, stage = ab_setup.load_first_stage(args)
    items = ctx.prepared.items
    cand = candidates.generate_candidates(stage, stage.matrix.users.ids[: args.users], cfg.ranker)
    features.collect_features(stage, items, cand.head(100_000), cfg.ranker)  # cached stats
    install = versions(args.change)
    wanted = dict.fromkeys(install, None)  # None: every feature
    if args.change == "opt-in":
        wanted["default list"] = DEFAULT_FEATURES
    times: dict[str, list[float]] = {name: [] for name in install}
    out: dict[str, pd.DataFrame] = {}
    try:
        for _ in range(args.repeats):
            for name, use in install.items():
                use()
                t0 = time.perf_counter()
                out[name] = features.collect_features(stage, items, cand, cfg.ranker, wanted[name])
                times[name].append(time.perf_counter() - t0)
    finally:
        list(install.values())[-1]()  # the current code back
    a, b = out.values()
    # float32 sums in another order; the opt-in A/B compares the columns both computed
    pd.testing.assert_frame_equal(a[b.columns], b, rtol=1e-5)
    print(f"collect_features for {args.users:,} users ({len(cand):,} candidates), same output")
    ab_setup.report(times)


if __name__ == "__main__":
    main()

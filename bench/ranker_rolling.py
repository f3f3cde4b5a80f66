"""The ranker against the ALS score on several label windows in turn (issue #3).

    python bench/quality.py --only lastfm                    # the artifacts this reads
    python bench/ranker_rolling.py --windows 0 1 2 --seeds 42 43

The test window has 466 warm users on Last.fm, so one standard error of NDCG@10 there is
about 0.008 and a paired difference's about 0.005: a head gain of that size cannot be told
from noise on it. This script asks the same question on more users without touching the
test window: for each label window w (newest first) the config's ranker is fit on the
label windows older than w and scores w's candidates (its users with a positive among
them), as `--holdout` does for w = 0 in the other ranker scripts. Each window's paired
difference from the ALS score alone (the first stage's order of the same candidates) is
printed, then the pooled one over every (window, user) pair: a user in two windows counts
twice, as two independent questions (their answers correlate a little, so the pooled
standard error is somewhat optimistic). `--drop` refits without the named features as well
(e.g. the two genre features, whose Last.fm genres were built partly from label-window tag
events: a leak inside the label windows only) and `--keep` with only the named ones; each
can be repeated, one variant per group, all paired with the same ALS score. `--save` in
one run and `--paired-with` in another (e.g. over rows dumped with another config) pair the
two rankers by (window, user). `--active-days N` also scores each ranker's lists routed by
user activity (the ALS order for the users whose latest listen is at most N days before
the window, the ranker's for the others: "ranker, routed") and prints the ranker's pooled
difference from the ALS score for each kind of user. `--losses` refits with other CatBoost
losses (every feature kept), one variant each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from ranker_dump import add_context_args, context, holdout_split, load_dump  # noqa: E402

from musicrec.columns import FEATURES  # noqa: E402
from musicrec.columns import Columns as C  # noqa: E402
from musicrec.config import RankerConfig  # noqa: E402
from musicrec.metrics import paired_difference, paired_text, per_user_metrics  # noqa: E402
from musicrec.ranker import WINDOW, Ranker, rank_candidates  # noqa: E402

METRICS = ("ndcg@10", "recall@5", "ndcg@20")


def window_scores(
    train: pd.DataFrame,
    window: int,
    configs: dict[str, RankerConfig],
    seeds: list[int],
    top_k: int,
    active_days: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Per-user metrics on `window` of the ALS score ("ALS score") and of each named ranker
    config (the mean score of its `seeds` fits), all over the same candidates; with
    `active_days`, also each ranker routed by activity ("<name>, routed": the ALS score
    for the users whose latest listen is at most that many days before the window)."""
    fit_rows, cand, target = holdout_split(train, window)
    users = np.sort(target[C.User].unique())

    def per_user(scores: np.ndarray) -> pd.DataFrame:
        recs = rank_candidates(cand, np.asarray(scores, np.float64), max(top_k, 20))
        return per_user_metrics(recs, target, None, 5, 10, users).join(
            per_user_metrics(recs, target, None, 5, 20, users)[["ndcg@20"]]
        )

    out = {"ALS score": per_user(cand["als_score"].to_numpy())}
    for name, rcfg in configs.items():
        scores = [
            Ranker.fit(fit_rows, rcfg.model_copy(update={"random_seed": s})).predict(cand)
            for s in seeds
        ]
        mean = np.mean(scores, axis=0)
        out[name] = per_user(mean)
        if active_days is not None:
            active = (cand["user_days_since_last"] <= active_days).to_numpy()
            out[f"{name}, routed"] = per_user(np.where(active, cand["als_score"], mean))
    return out


def feature_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options of a one-feature test (`feature_gain`): the run's context (`ranker_dump`),
    --windows (default 0 1 2), --seeds (default 42 43) and --threads."""
    ap = argparse.ArgumentParser(description=doc)
    add_context_args(ap)
    ap.add_argument("--windows", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    ap.add_argument("--threads", type=int, default=2)
    return ap


def feature_gain(
    train: pd.DataFrame,
    name: str,
    base: RankerConfig,
    windows: list[int],
    seeds: list[int],
    top_k: int,
    metrics: tuple[str, ...] = ("ndcg@10", "recall@5"),
) -> None:
    """The label-window test of one new feature column `name` of `train` (not a package
    feature): each of `windows` scored by `base` fit on the older windows ("ranker") and by
    `base` with `name` added ("with"). Prints each window's and the pooled paired
    differences of both from the ALS score, then the pooled with - without."""
    # model_copy skips the config's check that features are the package's own
    configs = {
        "ranker": base,
        "with": base.model_copy(update={"features": [*base.feature_names, name]}),
    }
    pooled: dict[str, list[pd.DataFrame]] = {}

    def cells(a: pd.DataFrame, b: pd.DataFrame) -> str:
        return "  ".join(f"{m} {paired_text(paired_difference(a[m], b[m]))}" for m in metrics)

    for w in windows:
        res = window_scores(train, w, configs, seeds, top_k)
        for key, per_user in res.items():
            pooled.setdefault(key, []).append(pd.concat({w: per_user}, names=["window", C.User]))
        for key in configs:
            print(
                f"window {w} ({len(res[key])} users) {key} - ALS score: "
                + cells(res[key], res["ALS score"])
            )
    frames = {key: pd.concat(f) for key, f in pooled.items()}
    n = len(frames["ranker"])
    for key in configs:
        print(
            f"pooled ({n} user-windows) {key} - ALS score: "
            + cells(frames[key], frames["ALS score"])
        )
    print(
        f"pooled ({n} user-windows) with {name} - without: "
        + cells(frames["with"], frames["ranker"])
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_context_args(ap)
    ap.add_argument("--windows", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", help="CatBoost seeds (default: the config's)")
    for flag, how in (("--drop", "without"), ("--keep", "with only")):
        ap.add_argument(
            flag,
            nargs="+",
            action="append",
            default=[],
            metavar="FEATURE",
            help=f"refit {how} these features as well (repeat for several variants)",
        )
    ap.add_argument(
        "--losses",
        nargs="+",
        default=[],
        metavar="LOSS",
        help="refit with each of these CatBoost losses as well, every feature kept (one "
        "variant each, e.g. 'StochasticRank:metric=NDCG;top=10')",
    )
    ap.add_argument(
        "--active-days",
        type=int,
        metavar="N",
        help="also score the rankers routed by activity (ALS order for users with a listen "
        "in the N days before the window) and split the ranker's gain by it",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--save",
        type=Path,
        help="write the ranker's pooled per-(window, user) metrics to this parquet file, for "
        "--paired-with in a run over another dump (e.g. the rows of another config)",
    )
    ap.add_argument(
        "--paired-with",
        type=Path,
        help="a --save file of another run over the same windows: print this run's ranker "
        "minus that one, paired by (window, user)",
    )
    args = ap.parse_args()
    ctx = context(args)
    train, _ = load_dump(ctx, args.work)
    base = ctx.cfg.ranker.model_copy(update={"thread_count": args.threads, "bag_size": 1})
    seeds = args.seeds or [base.random_seed]
    configs = {"ranker": base}
    every = base.feature_names
    unknown = sorted({f for g in args.drop + args.keep for f in g} - set(FEATURES))
    assert not unknown, f"unknown features: {unknown}"
    for group in args.drop:
        kept = [f for f in every if f not in group]
        configs["ranker without " + "+".join(group)] = base.model_copy(update={"features": kept})
    for group in args.keep:
        configs["ranker with only " + "+".join(group)] = base.model_copy(
            update={"features": list(group)}
        )
    for loss in args.losses:
        # validated as the pipeline's config would be (a typo fails before any fit)
        configs[f"ranker with {loss}"] = RankerConfig.model_validate(
            {**base.model_dump(), "loss_function": loss}
        )
    pooled: dict[str, list[pd.DataFrame]] = {}
    for w in args.windows:
        t0 = time.perf_counter()
        res = window_scores(train, w, configs, seeds, ctx.cfg.top_k, args.active_days)
        for name, per_user in res.items():
            keyed = pd.concat({w: per_user}, names=["window", C.User])  # (window, user)
            pooled.setdefault(name, []).append(keyed)
        for name in res:
            if name == "ALS score":
                continue
            line = [f"window {w} ({len(res[name])} users) {name}:"]
            for m in METRICS:
                d = paired_difference(res[name][m], res["ALS score"][m])
                line.append(
                    f"{m} {res[name][m].mean():.4f} vs {res['ALS score'][m].mean():.4f}"
                    f" ({d['mean']:+.4f} ± {d['stderr']:.4f})"
                )
            print("  ".join(line), flush=True)
        print(f"window {w}: {time.perf_counter() - t0:.0f} s", flush=True)
    als = pd.concat(pooled.pop("ALS score"))
    for name, frames in pooled.items():
        ranker = pd.concat(frames)
        cells = []
        for m in METRICS:
            d = paired_difference(ranker[m], als[m])
            mean, se = d["mean"], d["stderr"]
            ratio = mean / se if mean is not None and se else np.nan  # no ratio of a 0 stderr
            cells.append(
                f"{m} {ranker[m].mean():.4f} vs {als[m].mean():.4f}"
                f" ({paired_text(d)}, {ratio:.1f} SE)"
            )
        print(
            f"pooled over windows {args.windows} ({len(ranker)} user-windows) {name}: "
            + "  ".join(cells)
        )
    base_pooled = pd.concat(pooled["ranker"])
    days = args.active_days
    if days is not None:  # the ranker against the ALS score on each kind of user
        since = train.groupby([WINDOW, C.User])["user_days_since_last"].first()
        active = (since.reindex(base_pooled.index) <= days).to_numpy()
        for label, rows in [
            (f"users active within {days} days", active),
            ("the other users", ~active),
        ]:
            cells = []
            for m in METRICS:
                d = paired_difference(base_pooled[m][rows], als[m][rows])
                cells.append(f"{m} {paired_text(d)}")
            print(f"pooled ranker - ALS score, {label} ({rows.sum()}): " + "  ".join(cells))
    if args.save:
        base_pooled[list(METRICS)].to_parquet(args.save)
    if args.paired_with:
        other = pd.read_parquet(args.paired_with)
        cells = []
        for m in METRICS:
            d = paired_difference(base_pooled[m], other[m])
            cells.append(f"{m} {paired_text(d)}")
        print(
            f"pooled ranker - the ranker of {args.paired_with} ({d['n_users']} user-windows): "
            + "  ".join(cells)
        )
    for name, frames in pooled.items():
        if name == "ranker":
            continue
        variant = pd.concat(frames)
        cells = []
        for m in METRICS:
            d = paired_difference(variant[m], base_pooled[m])
            cells.append(f"{m} {paired_text(d)}")
        print(f"pooled {name} - ranker: " + "  ".join(cells))


if __name__ == "__main__":
    main()

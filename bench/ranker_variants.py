"""Ranker variants on the same training rows and test candidates (issue #3 experiments).

    python bench/quality.py --only lastfm            # the artifacts this reads
    python bench/ranker_variants.py base no_genre    # 2026-12-02: 0.0818 / 0.0810 NDCG@10
    python bench/ranker_variants.py base --seeds 42 1 2 3 4   # each seed, then their average
    python bench/ranker_variants.py base --losses PairLogit LambdaMart --seeds 42 1 2

Dumps once (into `--work`) the pipeline's pooled label-window training rows and the
features of every warm test user's candidates, exactly as `run_pipeline` builds them from
the artifacts in `--artifacts-dir` (the ALS factors, similar tracks, ALS lists); then, for
each named variant, fits the CatBoost ranker with that variant's feature list and scores
its top-10 on the test window, and the paired difference of each variant's seed average
from the ALS score alone (the first stage's own ranking of the same candidates). `base`
reproduces the pipeline's single-model ranker (`ranker.bag_size` is set to 1 here: the bag
is what `--seeds` averages). With `--seeds`, each variant is fit once per CatBoost seed,
and the mean of the seeds' scores (a bag of models) is scored too. With `--losses`, each
variant is fit with each CatBoost loss (default: the config's `ranker.loss_function`). With
`--set KEY=VALUE[,KEY=VALUE]` (repeatable), each variant is fit once more per `--set` with
those `ranker` settings (e.g. `depth=2`, `l2_leaf_reg=10`), after the config's own.

With `--holdout`, the test window is not used at all: the variants are fit on the label
windows 1.. and scored on the newest label window's rows (its users with a positive among
their candidates; NDCG@10 and Recall@5 over those candidates, `musicrec.metrics.evaluate`),
and the paired difference of each later variant's seed average from the first's is
printed. Choose variants this way; the test window only reports the choice. Settings that
change the dumped features (e.g. `ranker.recent_days`) need one dump per config (`--config`,
`--work`); `--save` in one run and `--paired-with` in the other pair them user by user.

    python bench/ranker_variants.py base compact --seeds 42 1 2 --holdout   # 2026-12-03
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

from musicrec.columns import Columns as C  # noqa: E402
from musicrec.config import RankerConfig  # noqa: E402
from musicrec.metrics import evaluate, paired_difference, per_user_metrics  # noqa: E402
from musicrec.ranker import Ranker, rank_candidates  # noqa: E402

GENRE = ("user_genre_share", "user_genre_cosine", "main_genre")
#: the nine largest importances of the pipeline's Last.fm ranker on its training rows
#: (2026-12-03), the rest dropped
COMPACT = [
    "als_score",
    "als_rank",
    "profile_sim",
    "sim_max_latest",
    "item_listeners",
    "item_pop_vs_user",
    "item_days_since_last",
    "user_genre_share",
    "main_genre",
]
VARIANT_NAMES = ("base", "no_genre", "no_main_genre", "compact")


def variant_features(name: str, base: list[str]) -> list[str]:
    """The features variant `name` is trained on (`ranker.features`), from `base`: the
    config's list (DEFAULT_FEATURES when it has none)."""
    if name == "compact":
        return COMPACT
    drop = {"base": (), "no_genre": GENRE, "no_main_genre": ("main_genre",)}[name]
    return [f for f in base if f not in drop]


def with_settings(cfg: RankerConfig, tweak: str, update: dict[str, object]) -> RankerConfig:
    """`cfg` with `tweak`'s "key=value,key=value" settings and then `update` applied,
    validated like a config file's (unknown keys and bad values are errors)."""
    pairs = [kv.split("=", 1) for kv in tweak.split(",") if kv]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"--set wants KEY=VALUE[,KEY=VALUE], got {tweak!r}")
    return RankerConfig.model_validate({**cfg.model_dump(), **dict(pairs), **update})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("variants", nargs="+", choices=VARIANT_NAMES)
    add_context_args(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", help="CatBoost seeds (default: the config's)")
    ap.add_argument("--losses", nargs="+", help="CatBoost losses (default: the config's)")
    ap.add_argument(
        "--holdout", action="store_true", help="fit on label windows 1.., score window 0"
    )
    ap.add_argument(
        "--set",
        dest="tweaks",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="ranker settings for one more fit of each variant after the config's own "
        "(e.g. --set depth=2 --set l2_leaf_reg=10,iterations=600); repeatable",
    )
    ap.add_argument(
        "--save",
        type=Path,
        help="write each variant's per-user NDCG@10 and Recall@5 (seed average) to this "
        "parquet file, for --paired-with in a run over another dump",
    )
    ap.add_argument(
        "--paired-with",
        type=Path,
        help="a --save file of another run on the same users (e.g. the same holdout dumped "
        "with another config): print each variant's paired difference from its first variant",
    )
    args = ap.parse_args()
    ctx = context(args)
    cfg = ctx.cfg
    train, feats = load_dump(ctx, args.work)
    target = ctx.test.window_events
    history: pd.DataFrame | None = ctx.test.history
    if args.holdout:
        train, feats, target = holdout_split(train)
        history = None
    warm = np.sort(feats[C.User].unique())
    rcfg = cfg.ranker.model_copy(update={"thread_count": args.threads, "bag_size": 1})
    where = "label window 0 (holdout)" if args.holdout else "test"
    print(f"{len(train):,} training rows, {len(feats):,} {where} candidates of {len(warm)} users")
    seeds = args.seeds or [rcfg.random_seed]
    labels: list[str] = []
    #: "<label> <metric>" -> the label's per-user values of NDCG@10 and Recall@5 (seed average)
    per_user: dict[str, pd.Series] = {}

    def report(label: str, scores: np.ndarray, seconds: float) -> pd.DataFrame:
        """Print the top-10's NDCG@10 and Recall@5; return the top-10 lists."""
        recs = rank_candidates(feats, scores, cfg.top_k)
        res = evaluate(recs, target, history, len(ctx.prepared.items), 5, 10, warm)
        cells = "  ".join(
            f"{m} {res[m]['mean']:.4f} ± {res[m]['stderr']:.4f}" for m in ("ndcg@10", "recall@5")
        )
        print(f"{label:<24} {cells}  ({seconds:.0f} s)", flush=True)
        return recs

    losses = args.losses or [rcfg.loss_function]
    tweaks = [""] + args.tweaks
    runs = [(n, lo, tw) for n in args.variants for lo in losses for tw in tweaks]
    for name, loss, tweak in runs:
        label = name if args.losses is None else f"{name} {loss}"
        label = f"{label} {tweak}".rstrip()
        feats_of = variant_features(name, rcfg.feature_names)
        run_cfg = with_settings(rcfg, tweak, {"loss_function": loss, "features": feats_of})
        bag = np.zeros(len(feats), dtype=np.float64)
        t_all = time.perf_counter()
        for seed in seeds:
            t0 = time.perf_counter()
            model = Ranker.fit(train, run_cfg.model_copy(update={"random_seed": seed}))
            scores = model.predict(feats)
            bag += scores
            recs = report(f"{label} seed {seed}", scores, time.perf_counter() - t0)
        if len(seeds) > 1:  # with one seed, the mean is that seed's scores: `recs` as is
            mean = (bag / len(seeds)).astype(np.float32)
            recs = report(f"{label} mean of {len(seeds)} seeds", mean, time.perf_counter() - t_all)
        users = per_user_metrics(recs, target, history, 5, 10, warm)
        labels.append(label)
        per_user |= {f"{label} {m}": users[m] for m in ("ndcg@10", "recall@5")}
    als = report("ALS score alone", feats["als_score"].to_numpy(np.float32), 0.0)
    als_users = per_user_metrics(als, target, history, 5, 10, warm)
    for label in labels:
        cells = "  ".join(
            f"{m} {d['mean']:+.4f} ± {d['stderr']:.4f}"
            for m in ("ndcg@10", "recall@5")
            for d in [paired_difference(per_user[f"{label} {m}"], als_users[m])]
        )
        print(f"paired {label} - ALS score alone: {cells}")
    a, *others = labels
    for b in others:
        d = paired_difference(per_user[f"{b} ndcg@10"], per_user[f"{a} ndcg@10"])
        print(f"paired NDCG@10 {b} - {a}: {d['mean']:+.4f} ± {d['stderr']:.4f}")
    if args.save:
        pd.DataFrame(per_user).to_parquet(args.save)
    if args.paired_with:
        other = pd.read_parquet(args.paired_with)
        for m in ("ndcg@10", "recall@5"):
            column = next(str(c) for c in other.columns if str(c).endswith(f" {m}"))
            base = other[column]
            if not base.index.equals(per_user[f"{a} {m}"].index):
                raise SystemExit(f"{args.paired_with}: not the same users as this run")
            for label in labels:
                d = paired_difference(per_user[f"{label} {m}"], base)
                print(
                    f"paired {m} {label} - {column.removesuffix(' ' + m)} of "
                    f"{args.paired_with.name}: {d['mean']:+.4f} ± {d['stderr']:.4f}"
                )


if __name__ == "__main__":
    main()

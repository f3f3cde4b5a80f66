"""Attempts to carry the ranker's gain into the head of the list (issue #3 experiments).

    python bench/quality.py --only lastfm                          # the artifacts this reads
    python bench/ranker_head.py --holdout --seeds 42 43            # choose here
    python bench/ranker_head.py --seeds 42                         # the test window

On Last.fm the ranker beats the ALS score clearly deep in the list (Recall@100) but not in
its top 10 (`bench/ranker_diagnostics.py`). Each variant here changes how the top-10 is
formed, on the training rows and candidates `bench/ranker_variants.py` dumps (`--work`);
with `--holdout` it fits on label windows 1.. and scores window 0 (never the test window).

Scores of the base model (the config's ranker, one fit per `--seeds`, averaged), changed
after the fit:
- `restrict:N` - only the ALS top-N candidates are reranked, the rest follow them;
- `filter:N` - the ranker's top-N, ordered by the ALS score;
- `blend:W` - by W * (ranker's position) + (1 - W) * (ALS position).
Other fits (same features, loss, depth, trees, seeds):
- `baseline:S` - the trees start from S * (the ALS score standardised within the user's
  candidates) instead of 0 and learn a correction to it (CatBoost's `baseline`);
- `headtrain:N` - fit only on the training rows among their user's ALS top N and rerank
  only the test candidates in the ALS top N with it (the rest follow in the base model's
  order): the model learns to tell apart what ALS already ranks high;
- `pairs:lambda` / `pairs:hardneg` - PairLogit over explicit (positive, negative) pairs of
  a user weighted by their places p, n in the ALS order: |1/log2(1+p) - 1/log2(1+n)| (the
  NDCG change of swapping them) or 1/log2(1+n) (hard negatives count more); mean weight 1.
  `pairs:uniform` (every weight 1) checks that explicit pairs alone change nothing.
Printed: NDCG@10 and Recall@5 of each, and its paired difference from the ALS score alone.
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
from ranker_dump import add_context_args, context, holdout_split, load_dump, positions  # noqa: E402

from musicrec.columns import CAT_FEATURES  # noqa: E402
from musicrec.columns import Columns as C  # noqa: E402
from musicrec.config import RankerConfig  # noqa: E402
from musicrec.metrics import evaluate, paired_difference, per_user_metrics  # noqa: E402
from musicrec.ranker import (  # noqa: E402
    TARGET,
    Ranker,
    catboost_params,
    group_ids,
    rank_candidates,
    window_weights,
)

DEFAULT = ["restrict:50", "filter:20", "blend:0.7", "baseline:1", "pairs:lambda"]


def standardised(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(value - group mean) / group std (std 0 -> 1), NaN -> 0."""
    v = pd.Series(np.asarray(values, np.float64))
    g = v.groupby(groups, sort=False)
    std = g.transform("std").replace(0.0, 1.0)
    return ((v - g.transform("mean")) / std).fillna(0.0).to_numpy()


def all_pairs(groups: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Every (positive row, negative row) pair within a group, as an (n, 2) array; the
    rows of a group are contiguous."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], len(groups)]
    win, lose = [], []
    for s, e in zip(starts, ends, strict=True):
        rows = np.arange(s, e)
        pos, neg = rows[target[s:e] > 0], rows[target[s:e] <= 0]
        win.append(np.repeat(pos, len(neg)))
        lose.append(np.tile(neg, len(pos)))
    return np.c_[np.concatenate(win), np.concatenate(lose)].astype(np.int64)


def pair_weights(scheme: str, als_place: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    gain_p = 1 / np.log2(1 + als_place[pairs[:, 0]])
    gain_n = 1 / np.log2(1 + als_place[pairs[:, 1]])
    if scheme == "uniform":  # the pairs PairLogit makes from the labels, as a check
        w = np.ones(len(pairs))
    elif scheme == "lambda":
        w = np.abs(gain_p - gain_n)
    elif scheme == "hardneg":
        w = gain_n
    else:
        raise SystemExit(f"pairs:{scheme}: want uniform, lambda or hardneg")
    return np.asarray(w / w.mean())


def fit_predict(
    train: pd.DataFrame,
    cand: pd.DataFrame,
    cfg: RankerConfig,
    seed: int,
    baseline: float = 0.0,
    pairs: str | None = None,
) -> np.ndarray:
    """The scores of `cand` by one CatBoost fit with the config's settings: `Ranker.fit`'s
    model, or with a `baseline` or explicit `pairs` the same parameters, query ids and
    window weights on a pool of this script's making."""
    if not baseline and pairs is None:
        return Ranker.fit(train, cfg.model_copy(update={"random_seed": seed})).predict(cand)
    from catboost import CatBoost, Pool

    names = cfg.feature_names
    cats = [c for c in CAT_FEATURES if c in names]
    groups = group_ids(train)
    # the label goes in even with explicit pairs: CatBoost 1.2.10 crashes (SIGSEGV) on
    # categorical features with pairs but no label
    kw: dict[str, object] = {
        "label": train[TARGET].to_numpy(),
        "group_id": groups,
        "group_weight": window_weights(train, cfg.window_weight_decay),
    }
    if baseline:
        kw["baseline"] = baseline * standardised(groups, train["als_score"].to_numpy())[:, None]
    if pairs is not None:
        pp = all_pairs(groups, train[TARGET].to_numpy())
        als_place = positions(groups, train["als_score"].to_numpy())
        kw |= {"pairs": pp, "pairs_weight": pair_weights(pairs, als_place, pp)}
    model = CatBoost({**catboost_params(cfg), "random_seed": seed})
    model.fit(Pool(train[names], cat_features=cats, **kw))
    scores = np.asarray(model.predict(Pool(cand[names], cat_features=cats)), np.float64)
    if baseline:
        users = cand[C.User].to_numpy()
        scores += baseline * standardised(users, cand["als_score"].to_numpy())
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("variants", nargs="*", default=DEFAULT, help=f"default: {DEFAULT}")
    add_context_args(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", help="CatBoost seeds (default: the config's)")
    ap.add_argument("--holdout", action="store_true", help="fit on windows 1.., score window 0")
    args = ap.parse_args()
    ctx = context(args)
    cfg = ctx.cfg
    train, cand = load_dump(ctx, args.work)
    target: pd.DataFrame = ctx.test.window_events
    if args.holdout:
        train, cand, target = holdout_split(train)
    users = np.sort(cand[C.User].unique())
    rcfg = cfg.ranker.model_copy(update={"thread_count": args.threads, "bag_size": 1})
    seeds = args.seeds or [rcfg.random_seed]
    where = "label window 0 (holdout)" if args.holdout else "test"
    print(f"{len(train):,} training rows, {len(cand):,} {where} candidates of {len(users)} users")

    def score(label: str, scores: np.ndarray, seconds: float) -> pd.DataFrame:
        recs = rank_candidates(cand, np.asarray(scores, np.float64), cfg.top_k)
        res = evaluate(recs, target, None, len(ctx.prepared.items), 5, 10, users)
        per_user = per_user_metrics(recs, target, None, 5, 10, users)
        cells = [f"ndcg@10 {res['ndcg@10']['mean']:.4f}", f"recall@5 {res['recall@5']['mean']:.4f}"]
        if label != "ALS score alone":
            for m in ("ndcg@10", "recall@5"):
                d = paired_difference(per_user[m], als_users[m])
                cells.append(f"{m} - ALS {d['mean']:+.4f} ± {d['stderr']:.4f}")
        print(f"{label:<16} " + "  ".join(cells) + f"  ({seconds:.0f} s)", flush=True)
        return per_user

    als_score = cand["als_score"].to_numpy(np.float64)
    als_users = per_user_metrics(
        rank_candidates(cand, als_score, cfg.top_k), target, None, 5, 10, users
    )
    score("ALS score alone", als_score, 0.0)
    t0 = time.perf_counter()
    base = np.mean([fit_predict(train, cand, rcfg, s) for s in seeds], axis=0)
    score("base", base, time.perf_counter() - t0)
    groups = cand[C.User].to_numpy()
    als_place, base_place = positions(groups, als_score), positions(groups, base)
    for variant in args.variants:
        kind, _, value = variant.partition(":")
        t0 = time.perf_counter()
        if kind == "restrict":  # the rest keep their order, after the ALS top-N
            scores = np.where(als_place <= float(value), base, base - 1e9)
        elif kind == "filter":
            scores = np.where(base_place <= float(value), -als_place, -1e9 - base_place)
        elif kind == "blend":
            w = float(value)
            scores = -(w * base_place + (1 - w) * als_place)
        elif kind == "baseline":
            fits = [fit_predict(train, cand, rcfg, s, baseline=float(value)) for s in seeds]
            scores = np.mean(fits, axis=0)
        elif kind == "headtrain":
            n = float(value)
            t_place = positions(group_ids(train), train["als_score"].to_numpy())
            head_rows = train[t_place <= n].reset_index(drop=True)
            head = np.mean([fit_predict(head_rows, cand, rcfg, s) for s in seeds], axis=0)
            # the ALS top N first, in the head model's order; the rest after, as `restrict`
            scores = np.where(als_place <= n, head, base - 1e9)
        elif kind == "pairs":
            scores = np.mean([fit_predict(train, cand, rcfg, s, pairs=value) for s in seeds], 0)
        else:
            raise SystemExit(f"unknown variant {variant!r}")
        score(variant, scores, time.perf_counter() - t0)


if __name__ == "__main__":
    main()

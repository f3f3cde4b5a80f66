"""Where the ranker's signal comes from and where its gain shows (issue #3).

    python bench/quality.py --only lastfm          # the artifacts this reads
    python bench/ranker_diagnostics.py             # Last.fm

1. **Within-user AUC of each feature**, per label window and on the test window: a check
for leaks and train/serve skew. For every numeric feature (and, as `ranker`, the score of
the pipeline's saved model `model/ranker.cbm`), the mean over users of the within-user AUC
(`musicrec.metrics.within_user_auc`: the chance that one of the user's positive candidates
outscores one of the negatives) in each label window's training rows and among the warm
test users' candidates (labelled by the test window). 0.5 = no signal; below 0.5 the
feature marks positives by small values (ranks, days since). The last column, `test -
windows`, is |AUC - 0.5| on the test window minus its mean over the label windows.

A feature whose AUC is clearly further from 0.5 in the label windows than on the test
window learned something there that does not hold at test time: a leak into the training
features (e.g. metadata built from the label window's events) or a skew. The saved ranker
was fit on these label windows, so its own AUC there is in-sample: the gap between its
label-window and test figures is its overfit plus the windows' difference.

2. **The saved ranker against the ALS score at several cutoffs**: NDCG@k and Recall@k of
the top-k of the ranker's score and of the ALS score over the same test candidates, and
their paired difference, for k = 5, 10, 20, 50, 100: whether the ranker's gain is in the
head of the list (what the product shows) or deeper.

3. **What the ranker changes in the head**: of the top-k (k = 5, 10) by the ranker and by
the ALS score, the candidates in both, the ones the ranker promoted into its top-k and the
ones it demoted out of ALS's, with how many there are, their hit rate (share listened to in
the test window) and their mean position in the ALS order. Promoted items that hit no more
often than the demoted ones mean the reordering of the head is a wash.

4. **A leak check of the genre metadata**: per label window and on the test window, for
candidates grouped by their listeners in the history, how many times more often a
candidate with a genre is a positive than one without (positive rate with a genre / without
one). Where the genres were built from events up to the test window (Last.fm: tags before
2010-11-01), a rarely heard track in a label window may have a genre only because that
window's listeners tagged it, so having a genre marks positives there and not at test time.
`ranker.genre_min_listeners` hides the genre of such candidates (the buckets it covers then
have no candidate with a genre: NaN lifts; run the check with `--config` a copy of the
config without it and its own `--work`).

5. **The ranker against the ALS score by user activity** on the test window: NDCG@10 and
Recall@5 of both over the same candidates, with their paired difference, for users grouped
by the days between their latest listen and the test window (`user_days_since_last`): at
most 31 (active in the month before; on monthly dates a whole month), 32-90, over 90, and
all. `bench/ranker_rolling.py --active-days 31` prints the same split on the label windows.

The rows are the dump of `bench/ranker_variants.py` (`--work`; made here when missing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from ranker_dump import add_context_args, context, load_dump, positions  # noqa: E402

from musicrec.columns import CAT_FEATURES, FEATURES  # noqa: E402
from musicrec.columns import Columns as C  # noqa: E402
from musicrec.metrics import (  # noqa: E402
    paired_difference,
    per_user_metrics,
    summarize,
    within_user_auc,
)
from musicrec.ranker import (  # noqa: E402
    TARGET,
    WINDOW,
    Ranker,
    label_candidates,
    rank_candidates,
)

CUTOFFS = (5, 10, 20, 50, 100)
#: buckets of days between a user's latest listen and the window (table 5)
ACTIVITY_BINS = (-np.inf, 31.0, 90.0, np.inf)


def mean_auc(df: pd.DataFrame, col: str, nan_high: bool) -> tuple[float, int]:
    """Mean within-user AUC of `df[col]` over the users with a positive and a negative, and
    how many users that is."""
    auc = within_user_auc(df[C.User], df[col].to_numpy(np.float64), df[TARGET], nan_high)
    s = summarize(auc)
    return (np.nan if s["mean"] is None else float(s["mean"])), int(s["n_users"] or 0)


def auc_table(
    parts: dict[str, pd.DataFrame], columns: list[str], train: pd.DataFrame
) -> pd.DataFrame:
    """Mean within-user AUC of each column (rows) in each labelled part (columns); the last
    row holds how many users each part's means average over. A column with NaN values
    (e.g. `als_rank` of a candidate ALS did not propose) ranks them below every value, or
    above when that puts its AUC on `train` further from 0.5 (row name marked "NaN high");
    the choice is made on `train`, never on the test window."""
    table: dict[str, dict[str, float]] = {name: {} for name in parts}
    users: dict[str, float] = {}
    for col in columns:
        nan_high = False
        if train[col].isna().any():
            low, high = (mean_auc(train, col, flag)[0] for flag in (False, True))
            nan_high = abs(high - 0.5) > abs(low - 0.5)
        row = f"{col} (NaN high)" if nan_high else col
        for name, df in parts.items():
            table[name][row], users[name] = mean_auc(df, col, nan_high)
    out = pd.DataFrame(table)
    out.loc["users"] = pd.Series(users)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_context_args(ap)
    args = ap.parse_args()
    ctx = context(args)
    train, cand = load_dump(ctx, args.work)
    test = label_candidates(cand, ctx.test.window_events)

    columns = [f for f in FEATURES if f not in CAT_FEATURES]
    model_path = ctx.paths.model_dir / "ranker.cbm"
    if model_path.exists():
        ranker = Ranker.load(model_path)
        train["ranker"] = ranker.predict(train)
        test["ranker"] = ranker.predict(test)
        columns.append("ranker")
    parts = {"test": test}
    parts |= {f"window {w}": train[train[WINDOW] == w] for w in sorted(train[WINDOW].unique())}
    table = auc_table(parts, columns, train)
    windows = [c for c in table.columns if c != "test"]
    # how much further from 0.5 (more telling) the feature is on the test window than on
    # the label windows on average: clearly negative = it told the labels apart better in
    # training than it can at test time
    strength = (table[windows] - 0.5).abs().mean(axis=1)
    table["test - windows"] = (table["test"] - 0.5).abs() - strength
    table.loc["users", "test - windows"] = np.nan
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string())
    if "ranker" in test:
        print()
        print(cutoff_table(test, ctx.test.window_events, test["ranker"].to_numpy()).to_string())
        print()
        print(head_swaps(test, test["ranker"].to_numpy()).to_string())
        print()
        print(activity_table(test, ctx.test.window_events, test["ranker"].to_numpy()).to_string())
    print()
    print(genre_lift(parts).to_string())


LISTENER_BINS = (-1, 2, 5, 10, 20, np.inf)


def genre_lift(parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """For each part (columns) and bucket of the candidates' history listeners (rows): the
    positive rate of the candidates with a genre divided by that of the ones without (NaN
    where a side has no rows or no positive), then, as "rows without genre", how many rows
    the rates without a genre average over."""
    lift, bare = {}, {}
    for name, df in parts.items():
        bucket = pd.cut(df["item_listeners"], LISTENER_BINS)
        has = (df["main_genre"] != "-1").rename("has_genre")
        rate = df[TARGET].groupby([bucket, has], observed=False).mean().unstack("has_genre")
        rate = rate.reindex(columns=[False, True])
        lift[name] = (rate[True] / rate[False].replace(0.0, np.nan)).round(2)
        bare[name] = (~has).groupby(bucket, observed=False).sum()
    out = pd.concat({"genre lift": pd.DataFrame(lift), "rows without genre": pd.DataFrame(bare)})
    out.index.names = ["", "history listeners"]
    return out


def head_swaps(
    cand: pd.DataFrame, scores: np.ndarray, cutoffs: tuple[int, ...] = (5, 10)
) -> pd.DataFrame:
    """For each k: the labelled candidates (`TARGET`) in both top-k lists (by `scores` and by
    the ALS score), only in the top-k by `scores` ("promoted") and only in ALS's
    ("demoted"): their count, hit rate and mean position in the ALS order (1 = first)."""
    users = cand[C.User].to_numpy()
    new_pos, als_pos = positions(users, scores), positions(users, cand["als_score"].to_numpy())
    hits = cand[TARGET].to_numpy()
    rows = []
    for k in cutoffs:
        mine, als = new_pos <= k, als_pos <= k
        for name, rows_in in (
            ("both", mine & als),
            ("promoted", mine & ~als),
            ("demoted", als & ~mine),
        ):
            rows.append(
                {
                    "k": k,
                    "rows": name,
                    "count": int(rows_in.sum()),
                    "hit rate": round(float(hits[rows_in].mean()), 4) if rows_in.any() else np.nan,
                    "mean ALS position": round(float(als_pos[rows_in].mean()), 1)
                    if rows_in.any()
                    else np.nan,
                }
            )
    return pd.DataFrame(rows).set_index(["k", "rows"])


def cutoff_table(
    cand: pd.DataFrame, target: pd.DataFrame, scores: np.ndarray, cutoffs: tuple[int, ...] = CUTOFFS
) -> pd.DataFrame:
    """NDCG@k and Recall@k of the top-k by `scores` and by `cand`'s ALS score, over the
    users of `cand`, with the paired difference (mean ± stderr), one row per metric."""
    users = np.sort(cand[C.User].unique())
    rows = []
    for k in cutoffs:
        ranker = per_user_metrics(rank_candidates(cand, scores, k), target, None, k, k, users)
        als_scores = cand["als_score"].to_numpy(np.float32)
        als = per_user_metrics(rank_candidates(cand, als_scores, k), target, None, k, k, users)
        for m in (f"ndcg@{k}", f"recall@{k}"):
            d = paired_difference(ranker[m], als[m])
            rows.append(
                {
                    "metric": m,
                    "ranker": round(float(ranker[m].mean()), 4),
                    "ALS score": round(float(als[m].mean()), 4),
                    "ranker - ALS (paired)": f"{d['mean']:+.4f} ± {d['stderr']:.4f}",
                }
            )
    return pd.DataFrame(rows).set_index("metric")


def activity_table(
    cand: pd.DataFrame,
    target: pd.DataFrame,
    scores: np.ndarray,
    bins: tuple[float, ...] = ACTIVITY_BINS,
) -> pd.DataFrame:
    """NDCG@10 and Recall@5 of the top-10 by `scores` and by `cand`'s ALS score with their
    paired difference, for the users of `cand` grouped by their days since their latest
    listen (`user_days_since_last`, in `bins`), then for all of them."""
    users = np.sort(cand[C.User].unique())
    ranker = per_user_metrics(rank_candidates(cand, scores, 10), target, None, 5, 10, users)
    als_scores = cand["als_score"].to_numpy(np.float32)
    als = per_user_metrics(rank_candidates(cand, als_scores, 10), target, None, 5, 10, users)
    since = cand.groupby(C.User)["user_days_since_last"].first().reindex(users)
    buckets = pd.cut(since, list(bins))
    groups = [(str(b), (buckets == b).to_numpy()) for b in buckets.cat.categories]
    rows = []
    for label, mask in [
        *((b, m) for b, m in groups if m.any()),
        ("all", np.ones(len(users), bool)),
    ]:
        row: dict[str, object] = {"days since latest listen": label, "users": int(mask.sum())}
        for m in ("ndcg@10", "recall@5"):
            d = paired_difference(ranker[m][mask], als[m][mask])
            row[f"{m} ranker"] = round(float(ranker[m][mask].mean()), 4)
            row[f"{m} ALS score"] = round(float(als[m][mask].mean()), 4)
            row[f"{m} ranker - ALS"] = f"{d['mean']:+.4f} ± {d['stderr']:.4f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("days since latest listen")


if __name__ == "__main__":
    main()

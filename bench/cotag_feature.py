"""A candidate new ranker feature tried on the holdout before it enters the package: how
often the candidate was listened to in the same month as the user's latest tracks
(issue #3 experiment; a template for trying others).

    python bench/quality.py --only lastfm              # the artifacts this reads
    python bench/cotag_feature.py --seeds 42 43        # 2026-12-06: not kept

`cotag_latest` of (user u, candidate c), from the history before the row's window only:
baskets are the (user, month) sets of listened tracks; with B the baskets x tracks 0/1
matrix and n_t the baskets holding track t, the cosine-normalised co-occurrence of c with
each of u's tracks of u's latest active month, averaged over those tracks:
    cotag_latest(u, c) = mean over l in latest(u) of (B^T B)[l, c] / sqrt(n_l n_c).
It is added to the dumped training rows (`bench/ranker_dump.py`) of every label window,
then the config's ranker is fit on windows 1.. with and without it and scored on window 0
(never the test window), as `ranker_variants.py --holdout` does. Printed: the feature's
within-user AUC per window, both models' NDCG@10 / Recall@5 (mean of the seeds' scores)
and the paired difference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from ranker_dump import add_context_args, context, holdout_split, load_dump  # noqa: E402

from musicrec.columns import FEATURES  # noqa: E402
from musicrec.columns import Columns as C  # noqa: E402
from musicrec.matrix import IdMap  # noqa: E402
from musicrec.metrics import (  # noqa: E402
    paired_difference,
    per_user_metrics,
    summarize,
    within_user_auc,
)
from musicrec.pipeline import label_windows  # noqa: E402
from musicrec.ranker import TARGET, WINDOW, Ranker, rank_candidates  # noqa: E402

NAME = "cotag_latest"


def cotag_latest(history: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """`cotag_latest` (module docstring) of each (user, track) row of `rows` over
    `history`; 0 where the user or the track has no history."""
    items = IdMap.from_values(history[C.Item].to_numpy())
    month = history[C.Datetime].dt.to_period("M").astype(str)
    basket = pd.factorize(history[C.User].astype(str) + "|" + month)[0]
    codes = items.codes(history[C.Item].to_numpy())
    shape = (int(basket.max()) + 1, len(items))
    b = sp.csr_matrix((np.ones(len(history), np.float32), (basket, codes)), shape=shape)
    b.data[:] = 1.0  # a track twice in one basket counts once
    scale = sp.diags(1 / np.sqrt(np.maximum(np.asarray(b.sum(axis=0)).ravel(), 1)))
    newest = history[C.Datetime] == history.groupby(C.User)[C.Datetime].transform("max")
    users = IdMap.from_values(rows[C.User].to_numpy())
    latest = history[newest.to_numpy()]
    lu = users.codes(latest[C.User].to_numpy())
    keep = lu >= 0
    li = items.codes(latest[C.Item].to_numpy())[keep]
    mat = sp.csr_matrix(
        (np.ones(len(li), np.float32), (lu[keep], li)), shape=(len(users), len(items))
    )
    mat = sp.diags(1 / np.maximum(np.asarray(mat.sum(axis=1)).ravel(), 1)) @ mat
    scores = (((mat @ scale) @ b.T) @ (b @ scale)).tocsr()
    ru, ri = users.codes(rows[C.User].to_numpy()), items.codes(rows[C.Item].to_numpy())
    out = np.zeros(len(rows), dtype=np.float32)
    ok = ri >= 0
    out[ok] = np.asarray(scores[ru[ok], ri[ok]]).ravel()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_context_args(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    args = ap.parse_args()
    ctx = context(args)
    train, _ = load_dump(ctx, args.work)
    train[NAME] = np.float32(0)
    for w, split in enumerate(label_windows(ctx)):
        rows = (train[WINDOW] == w).to_numpy()
        train.loc[rows, NAME] = cotag_latest(split.history, train[rows])
        part = train[rows]
        auc = summarize(within_user_auc(part[C.User], part[NAME], part[TARGET]))
        print(
            f"window {w} (from {split.start.date()}): within-user AUC of {NAME} {auc['mean']:.3f}"
        )
    fit_rows, cand, target = holdout_split(train)
    users = np.sort(cand[C.User].unique())
    rcfg = ctx.cfg.ranker.model_copy(update={"thread_count": args.threads, "bag_size": 1})
    per_user = {}
    for label, names in (("without", list(FEATURES)), ("with", [*FEATURES, NAME])):
        # model_copy skips the config's check that features are the package's own
        fits = [
            Ranker.fit(fit_rows, rcfg.model_copy(update={"random_seed": s, "features": names}))
            for s in args.seeds
        ]
        scores = np.mean([m.predict(cand) for m in fits], axis=0)
        recs = rank_candidates(cand, scores, ctx.cfg.top_k)
        per_user[label] = per_user_metrics(recs, target, None, 5, 10, users)
        cells = "  ".join(f"{m} {per_user[label][m].mean():.4f}" for m in ("ndcg@10", "recall@5"))
        print(f"{label} {NAME}: {cells}", flush=True)
    for m in ("ndcg@10", "recall@5"):
        d = paired_difference(per_user["with"][m], per_user["without"][m])
        print(f"paired {m} with - without: {d['mean']:+.4f} ± {d['stderr']:.4f}")


if __name__ == "__main__":
    main()

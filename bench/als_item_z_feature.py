"""The ALS score standardised per track, tried on the label windows before it enters the
package (issue #3 experiment; pre-registered in docs/quality.md, 2026-12-06 15:41 UTC).

    python bench/quality.py --only lastfm                          # the artifacts this reads
    python bench/als_item_z_feature.py --windows 0 1 2 --seeds 42 43

`als_item_z` of (user u, candidate i), from the first stage that scored the row (fit on the
history before the row's window only): with x_u, y_i the factors and m, S the mean and the
covariance of the user factors over every user of that fit,

    als_item_z = (x_u . y_i - m . y_i) / sqrt(y_i' S y_i),

the z-score of u's score for i among every user's score for i (exact: the mean of x . y_i
over the users is m . y_i and its variance y_i' S y_i); 0 where the denominator is 0 or the
pair is unknown to the fit. `als_score` says how much u likes i compared with u's other
candidates; this says how unusual that liking is for i, which tells a track everyone scores
high (a popular one) from one few users score high.

Each label window's ALS is refit as the pipeline fit it (window 0: the saved label model;
the tuned parameters from metrics.json) and must reproduce the dump's `als_score` to 1e-4.
The feature is added to the dumped training rows (`bench/ranker_dump.py`); then, as
`ranker_rolling.py` does, each of `--windows` is scored by the config's ranker fit on the
older windows, with and without it (never the test window). Printed: its within-user AUC
per window, each window's and the pooled paired differences from the ALS score, and the
pooled paired difference with - without.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from ranker_dump import context, load_dump  # noqa: E402
from ranker_rolling import feature_gain, feature_parser  # noqa: E402

from musicrec.als import ALSModel  # noqa: E402
from musicrec.columns import Columns as C  # noqa: E402
from musicrec.matrix import InteractionMatrix  # noqa: E402
from musicrec.metrics import summarize, within_user_auc  # noqa: E402
from musicrec.pipeline import label_windows  # noqa: E402
from musicrec.ranker import TARGET, WINDOW  # noqa: E402

NAME = "als_item_z"
METRICS = ("ndcg@10", "recall@5")


def item_z(als: ALSModel, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """`als_item_z` (module docstring) of each (users[j], items[j]) pair, float32."""
    x = als.user_factors.astype(np.float64)
    y = als.item_factors.astype(np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False, bias=True)  # over every user of the fit
    mu = y @ mean  # the mean score of each track over the users
    sd = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", y, cov, y), 0.0))
    u = als.users.codes(np.asarray(users))
    i = als.items.codes(np.asarray(items))
    out = np.zeros(len(u), dtype=np.float32)
    ok = (u >= 0) & (i >= 0)
    ok[ok] &= sd[i[ok]] > 0
    score = np.einsum("ij,ij->i", x[u[ok]], y[i[ok]])
    out[ok] = (score - mu[i[ok]]) / sd[i[ok]]
    return out


def main() -> None:
    args = feature_parser(__doc__).parse_args()
    ctx = context(args)
    ctx.als_params = json.loads(ctx.paths.metrics.read_text()).get("als_params")
    train, _ = load_dump(ctx, args.work)
    train[NAME] = np.float32(0)
    for w, split in enumerate(label_windows(ctx)):
        rows = (train[WINDOW] == w).to_numpy()
        matrix = InteractionMatrix.from_events(split.history)
        als = (
            ALSModel.load(ctx.paths.label_model_dir)
            if w == 0
            else ALSModel.fit(matrix, ctx.als_cfg())
        )
        assert np.array_equal(als.users.ids, matrix.users.ids), f"window {w}: other users"
        part = train[rows]
        u, i = part[C.User].to_numpy(), part[C.Item].to_numpy()
        gap = np.nanmax(np.abs(als.score_pairs(u, i) - part["als_score"].to_numpy()))
        assert gap < 1e-4, f"window {w}: the refit ALS is off the dump's als_score by {gap}"
        train.loc[rows, NAME] = item_z(als, u, i)
        part = train[rows]
        aucs = [
            summarize(within_user_auc(part[C.User], part[f], part[TARGET]))["mean"]
            for f in (NAME, "als_score")
        ]
        corr = float(part[[NAME, "als_score"]].corr(method="spearman").to_numpy()[0, 1])
        print(
            f"window {w} (from {split.start.date()}): within-user AUC of {NAME} {aucs[0]:.3f},"
            f" als_score {aucs[1]:.3f}; Spearman with als_score {corr:.2f}"
            f" (ALS refit reproduces als_score to {gap:.1e})",
            flush=True,
        )
    base = ctx.cfg.ranker.model_copy(update={"thread_count": args.threads, "bag_size": 1})
    feature_gain(train, NAME, base, args.windows, args.seeds, ctx.cfg.top_k, METRICS)


if __name__ == "__main__":
    main()

"""How much ALS's figure moves with its random initialisation, and what averaging several
initialisations gives (issue #3: "a tuned ALS scores NDCG@10 0.075-0.081 depending on its
initialisation").

    python bench/quality.py --only lastfm     # the artifacts this reads (split, tuned params)
    python bench/als_seeds.py --seeds 10      # Last.fm

On the newest label window (history before it, never the test window) and on the test
window, ALS with the pipeline's tuned parameters is fit with `--seeds` random states
(`als.random_state`, +1, ...). Printed: each seed's NDCG@10 over the warm users (top-10 of
unheard tracks), their median, and for n = 1, 3, 5, ... the ensemble of the first n seeds:
their factors side by side with the item factors divided by n, whose dot products are the
mean of the n models' scores. With the paired difference of the ensemble from the first
seed alone (the pipeline's model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from ranker_dump import add_context_args, context  # noqa: E402

from musicrec.als import ALSModel  # noqa: E402
from musicrec.columns import Columns as C  # noqa: E402
from musicrec.matrix import InteractionMatrix  # noqa: E402
from musicrec.metrics import paired_difference, per_user_metrics, summarize  # noqa: E402
from musicrec.pipeline import PipelineContext  # noqa: E402
from musicrec.split import Split  # noqa: E402


def mean_score_model(models: list[ALSModel]) -> ALSModel:
    """One model whose scores are the mean of `models`' scores (same id maps): user factors
    concatenated, item factors concatenated and divided by the number of models."""
    users = np.hstack([m.user_factors for m in models])
    items = np.hstack([m.item_factors for m in models]) / np.float32(len(models))
    return ALSModel(models[0].users, models[0].items, users, items)


def study(name: str, split: Split, ctx: PipelineContext, n_seeds: int, threads: int) -> None:
    hist, target = split.history, split.window_events
    warm = np.intersect1d(hist[C.User].unique(), target[C.User].unique())
    matrix = InteractionMatrix.from_events(hist)
    cfg = ctx.als_cfg()
    models = [
        ALSModel.fit(matrix, cfg.model_copy(update={"random_state": cfg.random_state + i}), threads)
        for i in range(n_seeds)
    ]

    def score(model: ALSModel) -> pd.DataFrame:
        """Per-user metrics of the model's top-k (the warm users who get none count 0)."""
        recs = model.recommend(warm, matrix, ctx.cfg.top_k)
        return per_user_metrics(recs, target, hist, 5, 10, warm)

    singles = [score(m) for m in models]
    first = singles[0]
    print(f"{name} ({len(warm)} warm users, history before {split.start.date()}):")
    ndcg = [float(u["ndcg@10"].mean()) for u in singles]
    cells = ", ".join(f"{v:.4f}" for v in ndcg)
    print(f"  single seeds NDCG@10: {cells}; median {float(np.median(ndcg)):.4f}")
    for n in sorted({1, 3, 5, n_seeds} & set(range(1, n_seeds + 1))):
        users = score(mean_score_model(models[:n]))
        res = {m: summarize(users[m]) for m in ("ndcg@10", "recall@5")}
        d = paired_difference(users["ndcg@10"], first["ndcg@10"])
        print(
            f"  mean of {n:>2} seeds: NDCG@10 {res['ndcg@10']['mean']:.4f} ± "
            f"{res['ndcg@10']['stderr']:.4f}, Recall@5 {res['recall@5']['mean']:.4f}; "
            f"paired over the first seed {d['mean']:+.4f} ± {d['stderr']:.4f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_context_args(ap, work=False)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ctx = context(args)
    # the parameters the pipeline's tuning chose (metrics.json), else the config's
    ctx.als_params = json.loads(ctx.paths.metrics.read_text()).get("als_params")
    print(f"ALS {ctx.als_cfg().model_dump(include={'factors', 'regularization', 'alpha'})}")
    study("label window 0", ctx.label, ctx, args.seeds, args.threads)
    study("test window", ctx.test, ctx, args.seeds, args.threads)


if __name__ == "__main__":
    main()

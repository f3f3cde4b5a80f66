"""The evaluation stage's parts beyond the single metrics (`metrics.py`): reading the
lists to score, the share of test listens among the ranker's candidates (the ceiling of
any reranker's recall), the ranker's paired gains over its baselines and the warnings
when a gain is not above its standard error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from musicrec.candidates import FirstStage, generate_candidates
from musicrec.columns import Columns as C
from musicrec.config import PipelineConfig
from musicrec.io import PARQUET_READ_OPTIONS
from musicrec.metrics import candidate_recall, paired_difference, paired_text, per_user_metrics


def read_top(path: Path, k: int) -> pd.DataFrame:
    """The rows of a recommendations file (user, track, score, rank) with rank <= k."""
    return pd.read_parquet(path, filters=[(C.Rank, "<=", k)], **PARQUET_READ_OPTIONS)


def candidate_recall_diagnostic(
    stage: FirstStage,
    warm: np.ndarray,
    target: pd.DataFrame,
    cfg: PipelineConfig,
    max_users: int | None,
) -> dict[str, Any]:
    """Share of the test (user, track) pairs of warm users found among their ranker
    candidates, overall and per source (`src_als`, `src_pop`, `src_sim`): the ceiling of
    any reranker's recall.

    Computed on a random sample of at most `max_users` of the sorted `warm` users (seeded
    by `cfg.ranker.random_seed`; None: all), in user batches of
    `cfg.ranker.inference_batch_users` (bounded memory); hits and test pairs are summed
    over the batches, so the result equals one pass over the sample. `candidates_per_user`
    is the mean number of candidates of the sampled users with test pairs (a batch without
    any is not scored), the same whatever the batch size."""
    users = np.sort(warm)
    if max_users is not None and len(users) > max_users:
        rng = np.random.default_rng(cfg.ranker.random_seed)
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    pairs = target[[C.User, C.Item]]
    pairs = pairs[pairs[C.User].isin(users)].drop_duplicates()
    pairs = pairs.sort_values(C.User, kind="stable")
    t_users = pairs[C.User].to_numpy()
    srcs = ("all", "src_als", "src_pop", "src_sim")
    hits = dict.fromkeys(srcs, 0.0)
    n_cand = n_scored = 0
    batch = cfg.ranker.inference_batch_users
    for s in range(0, len(users), batch):
        b = users[s : s + batch]
        lo, hi = np.searchsorted(t_users, b[0], "left"), np.searchsorted(t_users, b[-1], "right")
        t = pairs.iloc[lo:hi]
        if len(t) == 0:
            continue
        cand = generate_candidates(stage, b, cfg.ranker)
        with_test = t[C.User].unique()
        n_cand += int(cand[C.User].isin(with_test).sum())
        n_scored += len(with_test)
        for src in srcs:
            c = cand if src == "all" else cand[cand[src] == 1]
            hits[src] += candidate_recall(c, t) * len(t)
    recall = {src: hits[src] / len(pairs) if len(pairs) else float("nan") for src in srcs}
    diag: dict[str, Any] = {
        "test_candidate_recall": recall["all"],
        "candidates_per_user": n_cand / max(n_scored, 1),
        "candidate_recall_users": int(len(users)),
    }
    for src in srcs[1:]:
        diag[f"test_candidate_recall_{src}"] = recall[src]
    return diag


def compare_models(
    recs: dict[str, pd.DataFrame],
    test: pd.DataFrame,
    users: np.ndarray,
    k_precision: int,
    k_ndcg: int,
    baselines: tuple[str, ...],
) -> dict[str, dict[str, Any]]:
    """The ranker (`recs["ranker"]`) minus each of `baselines` (other keys of `recs`), per
    user of `users`, on NDCG@k_ndcg and Recall@k_precision: the mean difference and its
    paired standard error (`paired_difference`). Keys are "ranker-als" and so on, in the
    order of `baselines`."""

    cols = [f"ndcg@{k_ndcg}", f"recall@{k_precision}"]

    def per_user(name: str) -> pd.DataFrame:
        return per_user_metrics(recs[name], test, None, k_precision, k_ndcg, users)

    ours = per_user("ranker")
    out = {}
    for name in baselines:
        base = per_user(name)
        out[f"ranker-{name}"] = {c: paired_difference(ours[c], base[c]) for c in cols}
    return out


def unproven_gains(comparisons: dict[str, dict[str, Any]]) -> list[str]:
    """One warning per (comparison, metric) of `compare_models` whose paired gain is not
    above one paired standard error (mean <= stderr): the second stage is then not shown
    to earn its cost over that baseline on the test window, and serving the baseline is
    as good as far as this evaluation can tell."""
    lines = []
    for name, diffs in comparisons.items():
        model, base = name.split("-", 1)
        for metric, d in diffs.items():
            mean, se = d.get("mean"), d.get("stderr")
            if mean is None or se is None or mean <= se:
                lines.append(
                    f"{model} does not beat {base} on {metric} by more than one paired "
                    f"standard error: {paired_text(d)} over {d.get('n_users')} users"
                )
    return lines

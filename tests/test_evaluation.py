"""The evaluation stage's parts: the recommendations read up to rank k, the candidate-recall
diagnostic (over user batches and a seeded sample), the ranker's paired gains over its
baselines and the warnings when a gain is not above its standard error.

The diagnostic's first stage is replaced by a fixed table of candidates (`_fake_candidates`),
so the expected recalls are counted by hand."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

import musicrec.evaluation as evaluation_module
from musicrec.candidates import FirstStage
from musicrec.columns import Columns as C
from musicrec.config import PipelineConfig
from musicrec.evaluation import (
    candidate_recall_diagnostic,
    compare_models,
    read_top,
    unproven_gains,
)

# (user, track, src_als, src_pop, src_sim): what the first stage proposes to each user
CANDIDATES = pd.DataFrame(
    [
        (1, 10, 1, 0, 0),
        (1, 11, 0, 1, 0),
        (2, 12, 0, 1, 1),
        (3, 15, 1, 0, 0),
        (4, 10, 0, 1, 0),
        (5, 14, 1, 0, 0),
        (6, 10, 1, 0, 0),  # user 6: warm in one test, without test listens
    ],
    columns=[C.User, C.Item, "src_als", "src_pop", "src_sim"],
)
# test listens: user 1 twice on track 10 (one pair), user 9 is not warm
TARGET = pd.DataFrame(
    [(1, 10), (1, 10), (1, 11), (2, 12), (3, 13), (4, 10), (5, 14), (9, 10)],
    columns=[C.User, C.Item],
)
# hits per warm user (test pairs found among its candidates / its test pairs), by source:
# user 1: 10 (als), 11 (pop) -> 2/2; user 2: 12 (pop, sim) -> 1/1; user 3: 0/1;
# user 4: 10 (pop) -> 1/1; user 5: 14 (als) -> 1/1
HITS = {1: 2, 2: 1, 3: 0, 4: 1, 5: 1}
PAIRS = {1: 2, 2: 1, 3: 1, 4: 1, 5: 1}


def _config(batch_users: int, seed: int = 42) -> PipelineConfig:
    cfg = PipelineConfig()
    ranker = cfg.ranker.model_copy(
        update={"inference_batch_users": batch_users, "random_seed": seed}
    )
    return cfg.model_copy(update={"ranker": ranker})


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The user batches the diagnostic asks candidates for (the first stage replaced by
    `CANDIDATES`)."""
    seen: list[list[int]] = []

    def fake(stage: Any, users: np.ndarray, rcfg: Any) -> pd.DataFrame:
        seen.append(users.tolist())
        return CANDIDATES[CANDIDATES[C.User].isin(users)].reset_index(drop=True)

    monkeypatch.setattr(evaluation_module, "generate_candidates", fake)
    return seen


STAGE = cast(FirstStage, None)


def test_read_top_keeps_the_ranks_up_to_k(tmp_path: Path) -> None:
    """Rows with rank <= k, every user, nothing else."""
    path = tmp_path / "recs.parquet"
    pd.DataFrame(
        {
            C.User: [1, 1, 1, 2, 2],
            C.Item: [10, 11, 12, 10, 13],
            C.Score: [0.9, 0.5, 0.1, 0.7, 0.6],
            C.Rank: [1, 2, 3, 1, 2],
        }
    ).to_parquet(path)
    top = read_top(path, 2)
    assert sorted(zip(top[C.User], top[C.Item], strict=True)) == [
        (1, 10),
        (1, 11),
        (2, 10),
        (2, 13),
    ]


def test_candidate_recall_diagnostic_by_hand(batches: list[list[int]]) -> None:
    """Over the unsorted warm users 4, 2, 5, 1, 3 in batches of 2 ([1, 2], [3, 4], [5]):
    6 unique test pairs of warm users (user 9's listen and the repeated (1, 10) left out),
    5 found (1/10, 1/11, 2/12, 4/10, 5/14): recall 5/6; by source als 2/6 (1/10, 5/14),
    pop 3/6 (1/11, 2/12, 4/10), sim 1/6 (2/12); 6 candidates for 5 users: 1.2 each."""
    warm = np.array([4, 2, 5, 1, 3])
    diag = candidate_recall_diagnostic(STAGE, warm, TARGET, _config(2), None)
    assert batches == [[1, 2], [3, 4], [5]]
    assert diag == pytest.approx(
        {
            "test_candidate_recall": 5 / 6,
            "candidates_per_user": 6 / 5,
            "candidate_recall_users": 5,
            "test_candidate_recall_src_als": 2 / 6,
            "test_candidate_recall_src_pop": 3 / 6,
            "test_candidate_recall_src_sim": 1 / 6,
        }
    )
    # a batch without test pairs is skipped; the others give the same figures
    warm_and_idle = np.array([1, 2, 3, 4, 5, 6])  # user 6: warm but no test pair
    diag6 = candidate_recall_diagnostic(STAGE, warm_and_idle, TARGET, _config(5), None)
    assert diag6["test_candidate_recall"] == pytest.approx(5 / 6)
    assert diag6["candidate_recall_users"] == 6
    # candidates per user with test pairs: 6 for users 1-5, 1.2 (not 6 / 6: user 6's batch
    # of one was not scored), the same when user 6 shares a batch with them (not 7 / 6)
    assert diag6["candidates_per_user"] == pytest.approx(6 / 5)
    one_batch = candidate_recall_diagnostic(STAGE, warm_and_idle, TARGET, _config(6), None)
    assert one_batch == pytest.approx(diag6)


def test_candidate_recall_diagnostic_samples_max_users(batches: list[list[int]]) -> None:
    """A cap below the warm users: a seeded sample of that many distinct warm users, sorted,
    and the recall of exactly those users (summed hits / summed pairs of `HITS`/`PAIRS`);
    a cap equal to their number keeps them all."""
    warm = np.array([4, 2, 5, 1, 3])
    diag = candidate_recall_diagnostic(STAGE, warm, TARGET, _config(10), 3)
    (sample,) = batches
    assert len(set(sample)) == 3 and set(sample) <= {1, 2, 3, 4, 5}
    assert sample == sorted(sample)
    assert diag["candidate_recall_users"] == 3
    want = sum(HITS[u] for u in sample) / sum(PAIRS[u] for u in sample)
    assert diag["test_candidate_recall"] == pytest.approx(want)
    batches.clear()
    again = candidate_recall_diagnostic(STAGE, warm, TARGET, _config(10), 3)
    assert batches == [sample] and again == diag
    batches.clear()
    candidate_recall_diagnostic(STAGE, warm, TARGET, _config(10), 5)
    assert batches == [[1, 2, 3, 4, 5]]


def test_candidate_recall_diagnostic_one_user_and_none(batches: list[list[int]]) -> None:
    """One warm user with 2 candidates: 2 candidates per user; no warm user: no test pair
    (recall NaN, for every source) and 0 candidates per user (0 / max(0, 1))."""
    one = candidate_recall_diagnostic(STAGE, np.array([1]), TARGET, _config(2), None)
    assert one["candidates_per_user"] == 2.0 and one["test_candidate_recall"] == 1.0
    none = candidate_recall_diagnostic(STAGE, np.array([], np.int64), TARGET, _config(2), None)
    assert none["candidates_per_user"] == 0.0 and none["candidate_recall_users"] == 0
    assert all(
        math.isnan(none[f"test_candidate_recall{s}"])
        for s in ("", "_src_als", "_src_pop", "_src_sim")
    )


def _recs(lists: dict[int, list[int]]) -> pd.DataFrame:
    rows = [(u, t, 1.0 / r, r) for u, ts in lists.items() for r, t in enumerate(ts, start=1)]
    return pd.DataFrame(rows, columns=[C.User, C.Item, C.Score, C.Rank])


def test_compare_models_paired_gains_by_hand() -> None:
    """Test listens: user 1 -> track 10, user 2 -> track 20; k_precision 1, k_ndcg 2.
    ranker: user 1 [10, 11] (hit at 1), user 2 [21, 20] (hit at 2);
    als: user 1 [11, 10] (hit at 2), user 2 [21, 22] (no hit); pop: the ranker's lists.
    recall@1: ranker (1, 0), als (0, 0) -> diffs (1, 0): mean 0.5, stderr
    std([1, 0], ddof=1) / sqrt(2) = 0.7071 / 1.4142 = 0.5.
    ndcg@2 (one relevant track, ideal DCG 1): hit at 2 is 1 / log2(3) = 0.6309;
    ranker (1, 0.6309), als (0.6309, 0) -> diffs (0.3691, 0.6309): mean 0.5, stderr
    |0.3691 - 0.6309| / 2 = 0.1309. Against pop every diff is 0."""
    test = pd.DataFrame([(1, 10), (2, 20)], columns=[C.User, C.Item])
    ranker = {1: [10, 11], 2: [21, 20]}
    recs = {"ranker": _recs(ranker), "als": _recs({1: [11, 10], 2: [21, 22]}), "pop": _recs(ranker)}
    out = compare_models(recs, test, np.array([1, 2]), 1, 2, ("pop", "als"))
    assert list(out) == ["ranker-pop", "ranker-als"]
    als = out["ranker-als"]
    assert list(als) == ["ndcg@2", "recall@1"]
    g = 1 / math.log2(3)
    assert als["recall@1"] == pytest.approx({"mean": 0.5, "stderr": 0.5, "n_users": 2})
    assert als["ndcg@2"] == pytest.approx(
        {"mean": 0.5, "stderr": abs((1 - g) - g) / 2, "n_users": 2}
    )
    assert out["ranker-pop"]["ndcg@2"] == {"mean": 0.0, "stderr": 0.0, "n_users": 2}


def test_unproven_gains_flags_gains_not_above_one_stderr() -> None:
    """Flagged: mean equal to the stderr, below it, an undefined stderr (one user) or an
    undefined mean (no user); not flagged: mean above the stderr. The model and baseline
    names are split at the first hyphen only (a baseline may hold one)."""
    comparisons = {
        "ranker-als": {
            "ndcg@10": {"mean": 0.0051, "stderr": 0.0050, "n_users": 100},
            "recall@5": {"mean": 0.0050, "stderr": 0.0050, "n_users": 100},
        },
        "ranker-item-knn": {
            "ndcg@10": {"mean": 0.0200, "stderr": 0.0300, "n_users": 100},
            "recall@5": {"mean": 0.3, "stderr": None, "n_users": 1},
        },
        "ranker-top": {"ndcg@10": {"mean": None, "stderr": None, "n_users": 0}},
    }
    assert unproven_gains(comparisons) == [
        "ranker does not beat als on recall@5 by more than one paired standard error: "
        "+0.0050 ± 0.0050 over 100 users",
        "ranker does not beat item-knn on ndcg@10 by more than one paired standard error: "
        "+0.0200 ± 0.0300 over 100 users",
        "ranker does not beat item-knn on recall@5 by more than one paired standard error: "
        "+0.3000 ± nan over 1 users",
        "ranker does not beat top on ndcg@10 by more than one paired standard error: "
        "+nan ± nan over 0 users",
    ]

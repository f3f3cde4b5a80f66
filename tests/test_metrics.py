"""Offline metrics: hand-computed examples, edge cases and a naive-loop cross-check."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from musicrec import metrics as M
from musicrec.errors import DataValidationError

LOG2_3 = math.log2(3)  # 1.5849625


def frame(rows: dict[int, list[int]], with_rank: bool = True) -> pd.DataFrame:
    """{user: [track, ...]} -> rows; list order = rank 1, 2, ..."""
    out = [(u, t, 1.0 / (r + 1), r + 1) for u, tracks in rows.items() for r, t in enumerate(tracks)]
    df = pd.DataFrame(out, columns=["user_id", "track_id", "score", "rank"])
    df = df.astype({"user_id": "int32", "track_id": "int32", "rank": "int32"})
    return df if with_rank else df[["user_id", "track_id"]]


# user 1: 3 relevant, hits at ranks 1 and 3; user 2: 1 relevant, only 2 recs, hit at rank 2;
# user 3: 2 relevant, no recommendations at all; user 4: recs but no test listens.
RECS = frame({1: [10, 11, 20, 12, 13], 2: [41, 40], 4: [10]})
TEST = frame({1: [10, 20, 30], 2: [40], 3: [50, 60]}, with_rank=False)
# history: user 1 heard 11, 99; user 2 heard 41, 11; user 5 heard 10, 11 -> N = 3 users;
# listeners: 11 -> 3, 10 -> 1, 41 -> 1, 99 -> 1, anything else 0 (smoothed to 1)
HISTORY = frame({1: [11, 99], 2: [41, 11], 5: [10, 11]}, with_rank=False)


def test_precision_recall_hit_rate_by_hand() -> None:
    p = M.precision_at_k(RECS, TEST, 5)
    # user 1: 2 hits / 5 = 0.4; user 2: 1 hit / 5 (missing slots are misses) = 0.2; user 3: 0
    assert p.to_dict() == pytest.approx({1: 0.4, 2: 0.2, 3: 0.0})
    r = M.recall_at_k(RECS, TEST, 5)
    # user 1: 2 / 3 relevant; user 2: 1 / 1; user 3: 0 / 2
    assert r.to_dict() == pytest.approx({1: 2 / 3, 2: 1.0, 3: 0.0})
    h = M.hit_rate_at_k(RECS, TEST, 5)
    assert h.to_dict() == {1: 1.0, 2: 1.0, 3: 0.0}
    # k = 1: user 1's rank 1 (track 10) is a hit, user 2's (41) is not
    assert M.precision_at_k(RECS, TEST, 1).to_dict() == pytest.approx({1: 1.0, 2: 0.0, 3: 0.0})


def test_ndcg_by_hand() -> None:
    n = M.ndcg_at_k(RECS, TEST, 5)
    # user 1: DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5
    #         IDCG over min(3, 5) = 3 slots = 1 + 1/log2(3) + 1/log2(4) = 2.1309298
    #         NDCG = 1.5 / 2.1309298 = 0.7039180
    # user 2: DCG = 1/log2(3) = 0.6309298; IDCG over min(1, 5) = 1 slot = 1 -> 0.6309298
    idcg1 = 1 + 1 / LOG2_3 + 0.5
    assert n[1] == pytest.approx(1.5 / idcg1)
    assert n[1] == pytest.approx(0.7039180, abs=1e-7)
    assert n[2] == pytest.approx(1 / LOG2_3)
    assert n[3] == 0.0
    # k = 2: user 1 top-2 = [10, 11]: DCG = 1; IDCG over min(3, 2) = 2 slots = 1 + 1/log2(3)
    assert M.ndcg_at_k(RECS, TEST, 2)[1] == pytest.approx(1 / (1 + 1 / LOG2_3))


def test_map_by_hand() -> None:
    ap = M.map_at_k(RECS, TEST, 5)
    # user 1: hits at r=1 (precision@1 = 1/1) and r=3 (precision@3 = 2/3)
    #         AP@5 = (1 + 2/3) / min(3, 5) = 1.6667 / 3 = 0.5556
    # user 2: hit at r=2 (precision@2 = 1/2); AP@5 = 0.5 / min(1, 5) = 0.5
    assert ap.to_dict() == pytest.approx({1: (1 + 2 / 3) / 3, 2: 0.5, 3: 0.0})
    # k smaller than |relevant|: user 1, k = 3 -> the same hits, / min(3, 3) = 3
    assert M.map_at_k(RECS, TEST, 3)[1] == pytest.approx((1 + 2 / 3) / 3)
    # k = 1: user 1 hit at r=1 -> 1 / min(3, 1) = 1.0
    assert M.map_at_k(RECS, TEST, 1)[1] == pytest.approx(1.0)


def test_perfect_list_scores_one() -> None:
    recs = frame({1: [10, 20, 30, 7, 8]})
    test = frame({1: [10, 20, 30]}, with_rank=False)
    for fn in (M.ndcg_at_k, M.map_at_k, M.recall_at_k, M.hit_rate_at_k):
        assert fn(recs, test, 5)[1] == pytest.approx(1.0), fn.__name__
    # k = 2 < |relevant| = 3: still perfect for NDCG and AP (ideal over min(3, 2) = 2 slots)
    assert M.ndcg_at_k(recs, test, 2)[1] == pytest.approx(1.0)
    assert M.map_at_k(recs, test, 2)[1] == pytest.approx(1.0)
    assert M.recall_at_k(recs, test, 2)[1] == pytest.approx(2 / 3)


def test_coverage_by_hand() -> None:
    # population = test users {1, 2, 3}: tracks {10, 11, 20, 12, 13, 41, 40} = 7 of 100
    res = M.evaluate(RECS, TEST, None, catalog_size=100, k_precision=5, k_ndcg=5)
    assert res["coverage@5"] == {"mean": 0.07, "stderr": None, "n_users": 2}
    # top-1 of every user in recs: {10, 41} (user 4's 10 again) = 2 of 100
    assert M.coverage_at_k(RECS, 100, 1) == pytest.approx(0.02)
    with pytest.raises(ValueError):
        M.coverage_at_k(RECS, 0, 5)


def test_novelty_by_hand() -> None:
    nov = M.novelty_unseen_at_k(RECS, HISTORY, 5)
    # user 1: top-5 [10, 11, 20, 12, 13], heard 11 -> 4 unseen / 5 = 0.8
    # user 2: top [41, 40] (2 recs), heard 41 -> 1 / 2 = 0.5
    # user 4: top [10], never heard it -> 1 / 1 = 1.0
    assert nov.to_dict() == pytest.approx({1: 0.8, 2: 0.5, 4: 1.0})
    miuf = M.mean_inverse_user_frequency_at_k(RECS, HISTORY, 5)
    # N = 3 history users; -log2(listeners / 3), a never-heard track counts 1 listener:
    # user 1: 10 -> log2(3), 11 -> -log2(3/3) = 0, 20, 12, 13 -> log2(3) -> 4 log2(3) / 5
    # user 2: 41 -> log2(3), 40 -> log2(3) (never heard) -> log2(3)
    assert miuf.to_dict() == pytest.approx({1: 4 * LOG2_3 / 5, 2: LOG2_3, 4: LOG2_3})


def test_evaluate_by_hand_with_stderr() -> None:
    res = M.evaluate(RECS, TEST, HISTORY, catalog_size=100, k_precision=5, k_ndcg=5)
    # precision@5 over test users {1, 2, 3} = [0.4, 0.2, 0.0]: mean 0.2,
    # std(ddof=1) = sqrt(((0.2)^2 + 0 + (0.2)^2) / 2) = 0.2, stderr = 0.2 / sqrt(3) = 0.11547
    assert res["precision@5"]["mean"] == pytest.approx(0.2)
    assert res["precision@5"]["stderr"] == pytest.approx(0.2 / math.sqrt(3))
    assert res["precision@5"]["n_users"] == 3
    assert res["recall@5"]["mean"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert res["hit_rate@5"]["mean"] == pytest.approx(2 / 3)
    # novelty metrics average over users that got recommendations (user 3 has none)
    assert res["novelty_unseen@5"]["mean"] == pytest.approx((0.8 + 0.5) / 2)
    assert res["novelty_unseen@5"]["n_users"] == 2
    assert res["mean_inverse_user_frequency@5"]["mean"] == pytest.approx(
        (4 * LOG2_3 / 5 + LOG2_3) / 2
    )
    assert set(res) == {
        "precision@5",
        "recall@5",
        "hit_rate@5",
        "ndcg@5",
        "map@5",
        "novelty_unseen@5",
        "mean_inverse_user_frequency@5",
        "coverage@5",
    }
    res2 = M.evaluate(RECS, TEST, None, catalog_size=100, k_precision=5, k_ndcg=10)
    assert {"precision@10", "recall@10", "ndcg@10", "map@10"} <= set(res2)
    assert "novelty_unseen@5" not in res2


def test_population_users_absent_from_recs_count_as_zero() -> None:
    # explicit population including user 4 (no test listens) and user 7 (nothing at all)
    res = M.evaluate(RECS, TEST, None, 100, users=[1, 2, 3, 4, 7])
    # precision@5 = [0.4, 0.2, 0, 0, 0] / 5 = 0.12
    assert res["precision@5"]["mean"] == pytest.approx(0.12)
    assert res["precision@5"]["n_users"] == 5
    # a model that returns nothing is penalised, not skipped
    empty = RECS.iloc[:0]
    res = M.evaluate(empty, TEST, HISTORY, 100)
    assert res["precision@5"] == {"mean": 0.0, "stderr": 0.0, "n_users": 3}
    assert res["ndcg@10"]["mean"] == 0.0
    assert res["coverage@5"]["mean"] == 0.0
    assert res["novelty_unseen@5"] == {"mean": None, "stderr": None, "n_users": 0}


def test_users_as_series_and_recs_outside_population_ignored() -> None:
    p = M.precision_at_k(RECS, TEST, 5, users=pd.Series([2, 1, 2]))
    assert p.to_dict() == pytest.approx({1: 0.4, 2: 0.2})


def test_duplicate_recs_rejected() -> None:
    dup = frame({1: [10, 11, 10, 12]})
    with pytest.raises(DataValidationError, match="duplicate"):
        M.precision_at_k(dup, TEST, 5)
    # a duplicate beyond the evaluated top-k does not matter
    assert M.precision_at_k(dup, TEST, 2)[1] == pytest.approx(0.5)


def test_duplicate_test_rows_count_once() -> None:
    test = pd.concat([TEST, TEST])
    assert M.recall_at_k(RECS, test, 5).to_dict() == pytest.approx({1: 2 / 3, 2: 1.0, 3: 0.0})


def test_unsorted_input_and_rank_gaps() -> None:
    recs = RECS.copy()
    recs["rank"] = recs["rank"] * 3 + 7  # gaps: 10, 13, 16, ... - only the order matters
    shuffled = recs.sample(frac=1.0, random_state=3)
    for df in (recs, shuffled):
        pu = M.per_user_metrics(df, TEST, HISTORY, 5, 5)
        ref = M.per_user_metrics(RECS, TEST, HISTORY, 5, 5)
        pd.testing.assert_frame_equal(pu, ref)


def test_missing_column_and_null_ids() -> None:
    with pytest.raises(DataValidationError, match="rank"):
        M.precision_at_k(RECS.drop(columns="rank"), TEST, 5)
    bad = RECS.astype({"user_id": "float64"})
    bad.loc[0, "user_id"] = np.nan
    with pytest.raises(DataValidationError, match="missing"):
        M.precision_at_k(bad, TEST, 5)
    with pytest.raises(ValueError):
        M.precision_at_k(RECS, TEST, 0)


def test_string_ids_match_int_ids() -> None:
    def as_str(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(user_id="u" + df.user_id.astype(str), track_id=df.track_id.astype(str))

    a = M.per_user_metrics(RECS, TEST, HISTORY, 5, 5)
    b = M.per_user_metrics(as_str(RECS), as_str(TEST), as_str(HISTORY), 5, 5)
    np.testing.assert_allclose(a.to_numpy(), b.loc[["u1", "u2", "u3"]].to_numpy())


def test_candidate_recall() -> None:
    cands = frame({1: [10, 11, 12], 2: [40], 9: [50]})
    # test pairs (1,10) (1,20) (1,30) (2,40) (3,50) (3,60): found (1,10), (2,40) -> 2 / 6
    assert M.candidate_recall(cands, TEST) == pytest.approx(1 / 3)
    assert math.isnan(M.candidate_recall(cands, TEST.iloc[:0]))


def test_summarize() -> None:
    assert M.summarize([1.0, 2.0, 3.0, np.nan]) == {
        "mean": 2.0,
        "stderr": pytest.approx(1.0 / math.sqrt(3)),  # std(ddof=1) = 1
        "n_users": 3,
    }
    assert M.summarize([5.0]) == {"mean": 5.0, "stderr": None, "n_users": 1}


def test_paired_difference_by_hand() -> None:
    # users 1..4; user 4 only in `a`, user 3 NaN in `b`: both dropped -> users 1, 2
    a = pd.Series([0.5, 0.2, 0.9, 1.0], index=[1, 2, 3, 4])
    b = pd.Series([0.1, 0.4, np.nan], index=[2, 1, 3])
    # diffs: user 1 0.5 - 0.4 = 0.1, user 2 0.2 - 0.1 = 0.1 -> mean 0.1, std 0
    assert M.paired_difference(a, b) == {
        "mean": pytest.approx(0.1),
        "stderr": pytest.approx(0.0, abs=1e-12),
        "n_users": 2,
    }
    # diffs 1, 0, -1 over three users: mean 0, std(ddof=1) 1, stderr 1/sqrt(3), while each
    # series alone has stderr 1/sqrt(3) too: the pairing is what the comparison needs
    x = pd.Series([3.0, 2.0, 1.0])
    y = pd.Series([2.0, 2.0, 2.0])
    d = M.paired_difference(x, y)
    assert d["mean"] == pytest.approx(0.0) and d["stderr"] == pytest.approx(1 / math.sqrt(3))
    # correlated values: a constant shift has zero paired error whatever the spread
    z = pd.Series(np.linspace(0, 1, 50))
    assert M.paired_difference(z + 0.05, z)["stderr"] == pytest.approx(0.0, abs=1e-12)


def test_metrics_table() -> None:
    res = {
        "als": M.evaluate(RECS, TEST, HISTORY, 100),
        "top_popular": {"precision@5": {"mean": 0.0135, "stderr": 0.00012, "n_users": 10}},
    }
    table = M.metrics_table(res)
    assert list(table.index) == ["als", "top_popular"]
    assert table.columns[-1] == "n_users"
    # precision@5 of als: 0.2 ± 0.11547 -> rounded to stderr's 2nd significant digit
    assert table.loc["als", "precision@5"] == "0.20 ± 0.12"
    assert table.loc["top_popular", "precision@5"] == "0.01350 ± 0.00012"

    assert table.loc["als", "coverage@5"] == "0.07"
    assert table.loc["als", "n_users"] == 3
    assert pd.isna(table.loc["top_popular", "ndcg@10"])


# ------------------------------------------------------------------ naive cross-check
def naive_per_user(
    recs: pd.DataFrame, test: pd.DataFrame, history: pd.DataFrame, kp: int, kn: int
) -> pd.DataFrame:
    """Straightforward per-user loop implementing the textbook formulas."""
    rel = test.groupby("user_id")["track_id"].apply(set).to_dict()
    heard = history.groupby("user_id")["track_id"].apply(set).to_dict()
    listeners = history.groupby("track_id")["user_id"].nunique().to_dict()
    n_hist = history["user_id"].nunique()
    lists = {
        u: list(g.sort_values("rank", kind="stable")["track_id"])
        for u, g in recs.groupby("user_id")
    }
    rows = {}
    for u in sorted(rel):
        r, lst = rel[u], lists.get(u, [])
        row: dict[str, float] = {}
        for k in sorted({kp, kn}):
            hits = sum(t in r for t in lst[:k])
            row[f"precision@{k}"] = hits / k
            row[f"recall@{k}"] = hits / len(r)
        row[f"hit_rate@{kp}"] = float(any(t in r for t in lst[:kp]))
        dcg = sum(1 / math.log2(i + 2) for i, t in enumerate(lst[:kn]) if t in r)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(r), kn)))
        row[f"ndcg@{kn}"] = dcg / idcg
        ap, h = 0.0, 0
        for i, t in enumerate(lst[:kn]):
            if t in r:
                h += 1
                ap += h / (i + 1)
        row[f"map@{kn}"] = ap / min(len(r), kn)
        top = lst[:kp]
        seen = heard.get(u, set())
        row[f"novelty_unseen@{kp}"] = sum(t not in seen for t in top) / len(top) if top else np.nan
        row[f"mean_inverse_user_frequency@{kp}"] = (
            float(np.mean([-math.log2(max(listeners.get(t, 0), 1) / n_hist) for t in top]))
            if top
            else np.nan
        )
        rows[u] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def random_data(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n_users, n_items = 300, 60
    recs = []
    for u in range(n_users):
        n = int(rng.integers(0, 25))  # some users get nothing, some fewer than k
        tracks = rng.choice(n_items, size=n, replace=False)
        ranks = np.sort(rng.choice(1000, size=n, replace=False)) + 1  # gaps
        recs += [(u, int(t), float(-r), int(r)) for t, r in zip(tracks, ranks, strict=True)]
    recs_df = pd.DataFrame(recs, columns=["user_id", "track_id", "score", "rank"])
    recs_df = recs_df.sample(frac=1.0, random_state=seed)  # unsorted input
    test = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users + 20, 3000),  # some test users have no recs
            "track_id": rng.integers(0, n_items, 3000),  # repeated pairs too
        }
    )
    history = pd.DataFrame(
        {"user_id": rng.integers(0, n_users, 4000), "track_id": rng.integers(0, n_items, 4000)}
    ).drop_duplicates()
    return recs_df, test, history


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matches_naive_loop(seed: int) -> None:
    recs, test, history = random_data(seed)
    fast = M.per_user_metrics(recs, test, history, k_precision=5, k_ndcg=10)
    slow = naive_per_user(recs, test, history, 5, 10)
    fast = fast.drop(columns=["n_relevant", "n_recommended"])
    assert list(fast.index) == list(slow.index)
    pd.testing.assert_frame_equal(fast, slow[fast.columns], check_names=False, atol=1e-12)
    res = M.evaluate(recs, test, history, catalog_size=60)
    for col in slow.columns:
        v = slow[col].dropna()
        assert res[col]["mean"] == pytest.approx(v.mean())
        assert res[col]["stderr"] == pytest.approx(v.std(ddof=1) / math.sqrt(len(v)))
        assert res[col]["n_users"] == len(v)


def test_scales_to_many_users() -> None:
    """100k users x 50 recs in a few seconds (no per-user Python)."""
    rng = np.random.default_rng(0)
    n_users, k = 100_000, 50
    users = np.repeat(np.arange(n_users, dtype=np.int32), k)
    tracks = np.repeat(rng.integers(0, 50_000, n_users), k) + np.tile(np.arange(k), n_users)
    recs = pd.DataFrame(
        {
            "user_id": users,
            "track_id": tracks.astype(np.int32),
            "score": np.zeros(len(users), np.float32),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n_users),
        }
    )
    test = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, 500_000).astype(np.int32),
            "track_id": rng.integers(0, 50_100, 500_000).astype(np.int32),
        }
    )
    t0 = time.perf_counter()
    res = M.evaluate(recs, test, test, catalog_size=50_100)
    assert time.perf_counter() - t0 < 20
    assert res["precision@5"]["n_users"] == test.user_id.nunique()


def test_metrics_table_treats_float_noise_as_zero_stderr() -> None:
    # every cold user gets the same list: the stderr is 0 up to rounding (about 1e-16)
    noisy = {"m": {"ndcg@10": {"mean": 3.44397805, "stderr": 4e-16, "n_users": 136}}}
    assert M.metrics_table(noisy).loc["m", "ndcg@10"] == "3.444 ± 0"


def test_within_user_auc_by_hand() -> None:
    """User 1: the positive outscores both negatives (1.0). User 2: positives 2 and 0,
    negatives 1 and 2: 2 > 1 wins, 2 = 2 ties (0.5), 0 loses twice -> 1.5 / 4. User 3: a
    NaN positive ranks below the negative (0.0). User 4 (no positive) and user 5 (no
    negative) have no AUC. Row order within a user does not matter."""
    users = [2, 1, 2, 1, 3, 2, 1, 3, 2, 4, 4, 5]
    scores = [1.0, 3.0, 2.0, 1.0, np.nan, 2.0, 2.0, 0.5, 0.0, 1.0, 2.0, 1.0]
    labels = [0, 1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 1]
    auc = M.within_user_auc(users, scores, labels)
    assert auc.index.tolist() == [1, 2, 3]
    assert auc.tolist() == pytest.approx([1.0, 1.5 / 4, 0.0])
    # a score and its negation are mirror images; ties stay one half
    flipped = M.within_user_auc(users, [-x for x in scores], labels)
    assert flipped.loc[[1, 2]].tolist() == pytest.approx([0.0, 1 - 1.5 / 4])
    # with nan_high, user 3's NaN positive ranks above the negative
    assert M.within_user_auc(users, scores, labels, nan_high=True).loc[3] == 1.0


# ------------------------------------------------------- boundaries: one row, one pair, ...
def test_single_test_pair_is_found() -> None:
    """A test window of exactly one (user, track) pair still counts its hit."""
    recs = frame({1: [10, 11]})
    test = frame({1: [10]}, with_rank=False)
    # the only relevant track is at rank 1: 1 hit / k = 1
    assert M.precision_at_k(recs, test, 1).to_dict() == {1: 1.0}


def test_history_sharing_no_track_with_recs() -> None:
    """A history that shares no (user, track) pair with the lists: nothing heard, no error."""
    recs = frame({1: [10, 11]})
    history = frame({1: [50], 2: [60]}, with_rank=False)
    # neither 10 nor 11 was heard by user 1 -> 2 unseen / 2
    assert M.novelty_unseen_at_k(recs, history, 5).to_dict() == {1: 1.0}


def test_one_row_recommendations_frame() -> None:
    """A recommendations frame of a single row is evaluated, not treated as empty."""
    recs = frame({1: [10]})
    test = frame({1: [10, 20]}, with_rank=False)
    # 1 hit at rank 1: precision@1 = 1 / 1, recall@5 = 1 of 2 relevant
    assert M.precision_at_k(recs, test, 1).to_dict() == {1: 1.0}
    assert M.recall_at_k(recs, test, 5).to_dict() == {1: 0.5}


def test_recs_not_grouped_by_user() -> None:
    """Rows u1, u2, u1 (ranks ascending within each user): each user's top-k is still
    taken by rank, so the second u1 row (rank 2) is outside the top-1."""
    recs = pd.DataFrame(
        {"user_id": [1, 2, 1], "track_id": [10, 40, 20], "score": 0.0, "rank": [1, 1, 2]}
    )
    test = frame({1: [20], 2: [40]}, with_rank=False)
    # user 1's rank 1 is 10 (a miss; 20 is rank 2); user 2's rank 1 is 40 (a hit)
    assert M.precision_at_k(recs, test, 1).to_dict() == {1: 0.0, 2: 1.0}
    assert M.precision_at_k(recs, test, 2).to_dict() == {1: 0.5, 2: 0.5}


def test_two_row_duplicate_list_rejected() -> None:
    """A list of just two rows, both the same track, is rejected as a duplicate."""
    with pytest.raises(DataValidationError, match="duplicate"):
        M.precision_at_k(frame({1: [10, 10]}), TEST, 5)


def test_population_user_without_test_listens_scores_zero() -> None:
    """A `users=` member with no test listens scores 0 (not NaN) on recall, NDCG and MAP."""
    # user 4 has recs ([10]) but no test listens; user 7 has neither
    for fn in (M.recall_at_k, M.ndcg_at_k, M.map_at_k):
        values = fn(RECS, TEST, 5, users=[2, 4, 7])
        # user 2: 1 relevant (40), hit at rank 2: recall 1, NDCG 1/log2(3), AP 1/2
        expected_2 = {"recall_at_k": 1.0, "ndcg_at_k": 1 / LOG2_3, "map_at_k": 0.5}
        assert values.to_dict() == pytest.approx({2: expected_2[fn.__name__], 4: 0.0, 7: 0.0})


def test_coverage_and_novelty_honour_users() -> None:
    """coverage_at_k and both novelty metrics restrict to `users=` when given."""
    # user 2's top-5 = [41, 40]: 2 distinct tracks of 100 (all users in RECS: 7 of 100)
    assert M.coverage_at_k(RECS, 100, 5, users=[2]) == pytest.approx(0.02)
    # user 2 heard 41, not 40 -> 1 / 2; user 7 has no recommendations -> NaN
    nov = M.novelty_unseen_at_k(RECS, HISTORY, 5, users=[2, 7])
    assert list(nov.index) == [2, 7]
    assert nov[2] == pytest.approx(0.5) and math.isnan(nov[7])
    # 41 has 1 listener of N = 3, 40 none (smoothed to 1): both log2(3)
    miuf = M.mean_inverse_user_frequency_at_k(RECS, HISTORY, 5, users=[2])
    assert miuf.to_dict() == pytest.approx({2: LOG2_3})


def test_miuf_track_id_above_history_ids() -> None:
    """A recommended track id larger than every history track id has 0 listeners: it
    scores log2(N), the maximum, without an index error."""
    history = frame({1: [10], 2: [11], 3: [10]}, with_rank=False)  # N = 3; 10 has 2 listeners
    recs = frame({1: [500, 10]})
    # 500 -> -log2(1/3) = log2(3); 10 -> -log2(2/3) = log2(3) - 1; mean over 2
    miuf = M.mean_inverse_user_frequency_at_k(recs, history, 5)
    assert miuf.to_dict() == pytest.approx({1: (2 * LOG2_3 - 1) / 2})


def test_miuf_one_user_history_is_zero() -> None:
    """With a single history user every track is heard by all N = 1 users (or smoothed to
    1): MIUF is -log2(1 / 1) = 0.0, not NaN."""
    history = frame({1: [10]}, with_rank=False)
    recs = frame({1: [10, 20]})
    assert M.mean_inverse_user_frequency_at_k(recs, history, 5).to_dict() == {1: 0.0}


def test_candidate_recall_single_test_pair() -> None:
    """candidate_recall of a test window with exactly one pair: 1.0 when it is a candidate."""
    cands = frame({1: [10, 11]})
    assert M.candidate_recall(cands, frame({1: [10]}, with_rank=False)) == 1.0
    assert M.candidate_recall(cands, frame({1: [12]}, with_rank=False)) == 0.0


def test_metrics_table_shows_na_for_undefined_mean() -> None:
    """A summary whose mean is None (no user had a value) shows as "n/a"."""
    # nothing recommended: novelty has no user, {"mean": None, "stderr": None, "n_users": 0}
    res = M.evaluate(RECS.iloc[:0], TEST, HISTORY, 100)
    table = M.metrics_table({"empty": res})
    assert table.loc["empty", "novelty_unseen@5"] == "n/a"
    assert table.loc["empty", "precision@5"] == "0 ± 0"


def test_metrics_table_skips_non_metric_entries() -> None:
    """Entries that are not metric summaries (a string, a dict without "mean") are left out."""
    res = {
        "m": {
            "precision@5": {"mean": 0.25, "stderr": None, "n_users": 4},
            "note": "mean over the test users",
            "config": {"k": 5, "n_users": 99},
        }
    }
    table = M.metrics_table(res)
    assert list(table.columns) == ["precision@5", "n_users"]
    assert table.loc["m", "precision@5"] == "0.25"
    assert table.loc["m", "n_users"] == 4


def test_per_user_metrics_default_ks() -> None:
    """per_user_metrics defaults to k_precision = 5 and k_ndcg = 10."""
    pu = M.per_user_metrics(RECS, TEST, HISTORY)
    assert list(pu.columns) == [
        "n_relevant",
        "n_recommended",
        "precision@5",
        "recall@5",
        "precision@10",
        "recall@10",
        "hit_rate@5",
        "ndcg@10",
        "map@10",
        "novelty_unseen@5",
        "mean_inverse_user_frequency@5",
    ]
    # user 1: 5 recs, hits at ranks 1 and 3 -> 2 / 5 and 2 / 10
    assert pu.loc[1, "precision@5"] == pytest.approx(0.4)
    assert pu.loc[1, "precision@10"] == pytest.approx(0.2)


def test_evaluate_rejects_zero_catalog() -> None:
    """evaluate(catalog_size=0) is a ValueError (coverage would divide by zero)."""
    with pytest.raises(ValueError, match="catalog_size"):
        M.evaluate(RECS, TEST, None, catalog_size=0)


def test_coverage_n_users_counts_single_recommendation() -> None:
    """coverage's n_users counts a population user who got exactly one recommendation."""
    # population {1, 2, 4}: user 4 has one rec ([10]), users 1 and 2 several
    res = M.evaluate(RECS, TEST, None, 100, users=[1, 2, 4])
    assert res["coverage@5"]["n_users"] == 3
    # tracks {10, 11, 20, 12, 13} | {41, 40} | {10} = 7 of 100
    assert res["coverage@5"]["mean"] == pytest.approx(0.07)

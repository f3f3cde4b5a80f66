"""Id maps, the binary users x items matrix, the seen-pair lookup and top-k per group."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from musicrec import matrix
from musicrec.columns import Columns as C
from musicrec.matrix import (
    IdMap,
    InteractionMatrix,
    pair_dots,
    seen_mask,
    stable_topk,
    threads,
)


def _events(pairs: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=[C.User, C.Item]).astype(np.int32)


# ----------------------------------------------------------------------------- IdMap


def test_idmap_sorted_unique_codes_and_unknown_minus_one() -> None:
    m = IdMap.from_values(np.array([50, 10, 30, 10, 50]))
    assert m.ids.tolist() == [10, 30, 50]
    assert len(m) == 3
    codes = m.codes(np.array([30, 10, 50, 20, 5, 99, 10]))
    assert codes.dtype == np.int32
    assert codes.tolist() == [1, 0, 2, -1, -1, -1, 0]
    # round trip for every known id
    assert np.array_equal(m.ids[m.codes(m.ids)], m.ids)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
@pytest.mark.parametrize("top", [3_000_000, 20_000_000, 2**26])  # marked, marked, sorted
def test_idmap_from_many_values_equals_np_unique(dtype: type, top: int) -> None:
    rng = np.random.default_rng(top % 101)
    values = np.concatenate([rng.integers(0, top, 1_100_000), [top - 1, 0, 7, 7]]).astype(dtype)
    m = IdMap.from_values(values)
    expected = np.unique(values)
    assert m.ids.dtype == expected.dtype and np.array_equal(m.ids, expected)
    # negative ids take the sorting path and still give the sorted unique ids
    signed = np.append(values.astype(np.int64), -5)
    assert np.array_equal(IdMap.from_values(signed).ids, np.unique(signed))


def test_idmap_empty_map_gives_minus_one() -> None:
    m = IdMap.from_values(np.array([], dtype=np.int64))
    assert len(m) == 0
    assert m.codes(np.array([1, 2])).tolist() == [-1, -1]


def test_idmap_accepts_series() -> None:
    m = IdMap.from_values(pd.Series([3, 1, 2]))
    assert m.codes(pd.Series([2, 4])).tolist() == [1, -1]


@pytest.mark.parametrize(
    ("top", "n_ids", "dense"),
    [
        (5_000, 2_000, True),  # compact ids: a dense table
        (2**31 - 1, 2_000, False),  # sparse: binary search
        (20_000_000, 2_000, False),  # sparse, few ids: binary search
        (20_000_000, 70_000, True),  # sparse below DENSE_CAP, a big map: a table
        (2**26, 70_000, False),  # a big map above DENSE_CAP: binary search
    ],
)
def test_idmap_dense_table_and_binary_search_agree_with_a_dict(
    top: int, n_ids: int, dense: bool
) -> None:
    rng = np.random.default_rng(top % 97)
    m = IdMap.from_values(np.append(rng.integers(0, top, n_ids), top - 1))
    values = np.concatenate(
        [rng.choice(m.ids, 5_000), rng.integers(-10, top, 5_000), [top, top + 7, -1, 0]]
    )
    reference = {int(i): c for c, i in enumerate(m.ids)}
    expected = [reference.get(int(v), -1) for v in values]
    for _ in range(2):  # the table is built on the first call and reused
        got = m.codes(values)
        assert got.dtype == np.int32 and got.tolist() == expected
    assert (m._table is not None) == dense
    assert m.codes(values.astype(np.uint32) if dense else values).tolist() == expected
    assert m.codes(np.array([1.5])).tolist() == [-1]  # a non-integer never matches


# ----------------------------------------------------------------------- the matrix


def test_matrix_is_binary_float32_and_sums_to_unique_pairs() -> None:
    rng = np.random.default_rng(0)
    ev = _events(list(zip(rng.integers(0, 50, 2_000), rng.integers(0, 80, 2_000), strict=True)))
    # repeated (user, track) rows must count once
    ev = pd.concat([ev, ev.head(300)], ignore_index=True)
    m = InteractionMatrix.from_events(ev)
    n_pairs = len(ev.drop_duplicates())
    assert m.csr.dtype == np.float32
    assert m.csr.nnz == n_pairs
    assert float(m.csr.sum()) == pytest.approx(n_pairs)  # the int8 trap would give ~0
    assert set(np.unique(m.csr.data).tolist()) == {1.0}
    assert m.shape == (ev[C.User].nunique(), ev[C.Item].nunique())
    assert m.csr.has_sorted_indices and m.csr.has_canonical_format
    # every event is a non-zero at (code of user, code of track)
    dense = m.csr.toarray()
    assert (dense[m.users.codes(ev[C.User]), m.items.codes(ev[C.Item])] == 1.0).all()


def test_matrix_users_are_rows() -> None:
    m = InteractionMatrix.from_events(_events([(7, 100), (7, 200), (9, 200)]))
    assert m.users.ids.tolist() == [7, 9]
    assert m.items.ids.tolist() == [100, 200]
    assert m.csr.toarray().tolist() == [[1.0, 1.0], [0.0, 1.0]]


def test_matrix_with_given_maps_drops_outside_rows() -> None:
    ev = _events([(1, 10), (1, 11), (2, 10), (3, 12)])
    users = IdMap(np.array([1, 2, 5]))
    items = IdMap(np.array([10, 11]))
    m = InteractionMatrix.from_events(ev, users=users, items=items)
    assert m.shape == (3, 2)
    assert m.csr.toarray().tolist() == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]


def test_matrix_with_an_empty_given_map_keeps_it() -> None:
    """An empty IdMap is falsy (len 0): it must still be used, not rebuilt from events."""
    ev = _events([(1, 10), (2, 11)])
    m = InteractionMatrix.from_events(ev, users=IdMap(np.array([], dtype=np.int32)))
    assert m.shape == (0, 2)
    assert m.csr.nnz == 0


# ------------------------------------------------------------------------ seen_mask


def _naive_seen(pairs: set[tuple[int, int]], u: np.ndarray, i: np.ndarray) -> np.ndarray:
    return np.array([(a, b) in pairs for a, b in zip(u.tolist(), i.tolist(), strict=True)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seen_mask_matches_a_set_lookup(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 90
    u = rng.integers(0, n_users, 1_500)
    i = rng.integers(0, n_items, 1_500)
    csr = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(n_users, n_items))
    csr.sum_duplicates()
    pairs = set(zip(u.tolist(), i.tolist(), strict=True))
    # queries: half known pairs, half random, some with unknown (-1) codes
    qu = np.concatenate([u[:500], rng.integers(-1, n_users, 3_000)])
    qi = np.concatenate([i[:500], rng.integers(-1, n_items, 3_000)])
    got = seen_mask(csr, qu, qi)
    assert got.dtype == bool
    assert np.array_equal(got, _naive_seen(pairs, qu, qi))
    assert got[:500].all()
    assert not got[(qu < 0) | (qi < 0)].any()


def test_seen_mask_rows_without_listens() -> None:
    """Users whose rows are empty (possible with a given user map) are simply not seen."""
    csr = sp.csr_matrix(np.array([[1, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=np.float32))
    assert seen_mask(csr, np.array([1, 2]), np.array([0, 2])).tolist() == [False, False]
    assert seen_mask(csr, np.array([0, 1, 0]), np.array([2, 2, 1])).tolist() == [
        True,
        False,
        False,
    ]


def test_seen_mask_unsorted_indices() -> None:
    """A valid CSR whose column indices are not sorted within rows still answers right."""
    csr = sp.csr_matrix(
        (np.ones(4, np.float32), np.array([5, 1, 3, 0]), np.array([0, 3, 4])), shape=(2, 6)
    )
    assert not csr.has_sorted_indices
    got = seen_mask(csr, np.array([0] * 6 + [1] * 6), np.tile(np.arange(6), 2))
    assert got.tolist() == [c in (1, 3, 5) for c in range(6)] + [c == 0 for c in range(6)]
    assert csr.indices.tolist() == [5, 1, 3, 0]  # the caller's matrix is not modified


def test_seen_mask_empty_inputs() -> None:
    csr = sp.csr_matrix((3, 3), dtype=np.float32)
    assert seen_mask(csr, np.array([0, 1]), np.array([0, 1])).tolist() == [False, False]
    full = sp.csr_matrix(np.ones((2, 2), dtype=np.float32))
    assert seen_mask(full, np.array([], dtype=int), np.array([], dtype=int)).shape == (0,)


def test_seen_mask_treats_codes_beyond_the_matrix_as_unseen() -> None:
    """An item code past the last column made the key of the next row's first column."""
    csr = sp.csr_matrix(np.array([[1, 0, 0], [1, 0, 0]], dtype=np.float32))
    got = seen_mask(csr, np.array([0, 1, 0, 5]), np.array([3, 0, 0, 0]))
    assert got.tolist() == [False, True, True, False]


def test_topk_frame_ranks_stay_consecutive_around_a_nan_score() -> None:
    from musicrec.matrix import topk_frame

    ids = np.array([[0, 1, 2], [2, -1, 0]])
    scores = np.array([[0.9, np.nan, 0.5], [0.8, -np.inf, 0.1]], dtype=np.float32)
    out = topk_frame(
        np.array([0, 1]), ids, scores, np.array([10, 11]), np.array([100, 101, 102]), ("u", "i")
    )
    assert out["u"].tolist() == [10, 10, 11, 11]
    assert out["i"].tolist() == [100, 102, 102, 100]
    assert out[C.Rank].tolist() == [1, 2, 1, 2]


def test_idmap_codes_of_unsigned_values_beyond_2_53() -> None:
    """uint64 values against int64 ids were compared as float64: 2**53 + 1 rounded to 2**53."""
    ids = IdMap(np.array([2**53, 2**53 + 1, 2**62], dtype=np.int64))
    assert ids._dense_table() is None  # the binary search
    values = np.array([2**53 + 1, 2**53, 2**63 + 5, 7], dtype=np.uint64)
    assert ids.codes(values).tolist() == [1, 0, -1, -1]


def test_seen_mask_user_code_equal_to_the_row_count_is_unseen() -> None:
    """Rows are 0..n_rows - 1: user code 2 of a 2 x 3 matrix is outside it (unseen, not an
    index error), also where it is below the column count (3)."""
    csr = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0]], dtype=np.float32))
    got = seen_mask(csr, np.array([2, 1, 2]), np.array([0, 1, 2]))
    assert got.tolist() == [False, True, False]


def test_idmap_codes_of_floats_match_only_equal_ids() -> None:
    """Float values (ids read as floats, e.g. next to a NaN) take the binary search: 2.0
    is id 2 (code 1 of [1, 2, 3]); 2.5 and NaN are no id, not truncated to 2."""
    m = IdMap(np.array([1, 2, 3], dtype=np.int64))
    assert m.codes(np.array([2.0, 2.5, np.nan, 3.0])).tolist() == [1, -1, -1, 2]


def test_idmap_of_one_sparse_id_finds_it() -> None:
    """A map of a single id too large for a table (binary search): that id is code 0,
    anything else -1."""
    m = IdMap(np.array([5_000_000_000], dtype=np.int64))
    assert m._dense_table() is None
    assert m.codes(np.array([5_000_000_000, 7, 5_000_000_001])).tolist() == [0, -1, -1]


def test_seen_mask_of_a_matrix_with_one_listen() -> None:
    """A single non-zero (user 0, item 1) is found: (0, 1) seen, (0, 0) and (1, 1) not."""
    csr = sp.csr_matrix(np.array([[0, 1], [0, 0]], dtype=np.float32))
    assert seen_mask(csr, np.array([0, 0, 1]), np.array([1, 0, 1])).tolist() == [
        True,
        False,
        False,
    ]


def clustered(n: int, factors: int, seed: int) -> np.ndarray:
    """Rows drawn close to a few centres: many near-ties, as tracks of one style have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, factors)).astype(np.float32)
    rows = centres[rng.integers(0, len(centres), n)] + 0.01 * rng.normal(size=(n, factors))
    return rows.astype(np.float32)


def exact_topk(targets: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Every pair scored by `pair_dots`, each row ordered by (score desc, index asc)."""
    q, t = np.divmod(np.arange(len(queries) * len(targets)), len(targets))
    scores = pair_dots(queries, q, targets, t).reshape(len(queries), len(targets))
    order = np.array([np.lexsort((np.arange(len(targets)), -row))[:k] for row in scores])
    return order, np.take_along_axis(scores, order, 1)


def test_stable_topk_is_the_exact_top_k_by_score_then_index() -> None:
    targets, queries = clustered(400, 16, 0), clustered(300, 16, 1)
    targets[7] = targets[3]  # an exact tie: the lower index first
    ids, scores = stable_topk(targets, queries, 25, num_threads=1)
    want_ids, want_scores = exact_topk(targets, queries, 25)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    both = (ids == 3).any(axis=1) & (ids == 7).any(axis=1)
    assert both.any()
    for row in np.flatnonzero(both):
        assert list(ids[row]).index(3) < list(ids[row]).index(7)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_stable_topk_is_the_same_in_any_batch(num_threads: int) -> None:
    """implicit's own top-k moves near-tied targets with the batch (its matrix product's
    last bits depend on the batch's shape); `stable_topk` does not."""
    targets, queries = clustered(3000, 32, 2), clustered(2500, 32, 3)
    whole = stable_topk(targets, queries, 50, num_threads=num_threads)
    for size in (1, 37):
        parts = [
            stable_topk(targets, queries[s : s + size], 50, num_threads=num_threads)
            for s in range(0, 222, size)
        ]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0][:222])
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1][:222])


def test_stable_topk_threads_give_the_single_thread_answer() -> None:
    targets, queries = clustered(500, 8, 4), clustered(4096, 8, 5)
    one = stable_topk(targets, queries, 30, num_threads=1)
    two = stable_topk(targets, queries, 30, num_threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


def test_stable_topk_never_returns_a_filtered_target() -> None:
    """A filtered target is not scored again (implicit may return it with a real id and a
    -inf score); padding stays -1 when fewer targets than k are left."""
    targets, queries = clustered(10, 4, 6), clustered(3, 4, 7)
    best = exact_topk(targets, queries, 1)[0][:, 0]
    others = [j for j in range(10) if j != best[1]]  # query 1: only its best target left
    filt = sp.csr_matrix((np.ones(9, dtype=np.float32), ([1] * 9, others)), shape=(3, 10))
    ids, scores = stable_topk(targets, queries, 4, filter_query_items=filt, num_threads=1)
    assert ids[1, 0] == best[1] and (ids[1, 1:] == -1).all()
    assert np.isneginf(scores[1, 1:]).all()
    np.testing.assert_array_equal(ids[[0, 2]], exact_topk(targets, queries, 4)[0][[0, 2]])


def test_stable_topk_widens_the_rows_a_large_near_tie_crosses() -> None:
    """300 targets equal up to float32 rounding (tracks heard by the same few users, once
    ALS converges), far more than the margin: the rows they cross the cut-off of are
    proposed more targets until certain, so the answer is still the exact one in any
    batch (the margin alone left 989 of 1,000 such entries batch-dependent)."""
    rng = np.random.default_rng(0)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    base = unit(rng.normal(size=32))
    group = unit(base + rng.normal(scale=1e-7, size=(300, 32)))
    targets = np.vstack([unit(rng.normal(size=(700, 32))), group])
    queries = unit(
        np.vstack([base + rng.normal(scale=1e-3, size=(20, 32)), rng.normal(size=(5, 32))])
    )
    ids, scores = stable_topk(targets, queries, 20, num_threads=1)
    want_ids, want_scores = exact_topk(targets, queries, 20)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    assert (ids[:20] >= 700).all()  # the group's rows: all from the group
    one = [stable_topk(targets, queries[i : i + 1], 20, num_threads=1)[0] for i in range(25)]
    np.testing.assert_array_equal(np.concatenate(one), ids)


def test_stable_topk_never_proposes_a_target_with_a_nan_factor() -> None:
    """A diverged (NaN) target broke implicit's heap for every query (1,965 of 2,000 true
    top-10 entries missing); it is left out and the others' lists are exact."""
    targets, queries = clustered(300, 8, 9), clustered(40, 8, 10)
    broken = targets.copy()
    broken[3] = np.nan
    ids, scores = stable_topk(broken, queries, 10, num_threads=1)
    assert not (ids == 3).any() and np.isfinite(scores).all()
    keep = np.flatnonzero(np.arange(300) != 3)
    want_ids, want_scores = exact_topk(targets[keep], queries, 10)
    np.testing.assert_array_equal(ids, keep[want_ids])
    np.testing.assert_array_equal(scores, want_scores)


def test_stable_topk_in_small_chunks_gives_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second pass works through chunks of `RESCORE_CHUNK` entries (bounded memory for
    any k): chunks of two queries give the answer of one chunk."""
    targets, queries = clustered(400, 8, 11), clustered(301, 8, 12)
    whole = stable_topk(targets, queries, 25, num_threads=2)
    monkeypatch.setattr(matrix, "RESCORE_CHUNK", 90)  # 41 proposals: 2 queries a chunk
    small = stable_topk(targets, queries, 25, num_threads=2)
    np.testing.assert_array_equal(small[0], whole[0])
    np.testing.assert_array_equal(small[1], whole[1])


def test_thread_count_without_sched_getaffinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """`os.sched_getaffinity` is Linux-only: elsewhere every CPU `os.cpu_count` names."""
    assert threads(3) == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert threads(0) == 5


def test_stable_topk_of_a_zero_query_is_its_lowest_allowed_targets() -> None:
    """A zero query (a track whose factors are 0) scores 0 with every target, so no number
    of proposals breaks the tie (it used to widen to every target, 216 s for 2,000 such
    queries against 200,000 targets): the k lowest indices it may have, score 0."""
    targets = clustered(50, 4, 13)
    targets[1] = np.nan  # never proposed
    queries = np.zeros((2, 4), dtype=np.float32)
    filt = sp.csr_matrix((np.ones(2, dtype=np.float32), ([1, 1], [0, 2])), shape=(2, 50))
    ids, scores = stable_topk(targets, queries, 3, filter_query_items=filt, num_threads=1)
    assert ids.tolist() == [[0, 2, 3], [3, 4, 5]]
    assert (scores == 0).all()


@pytest.mark.parametrize("widen", [1, 2])
def test_stable_topk_finished_in_the_band_is_exact(
    widen: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows still unsure after WIDEN_FACTOR x (k + margin) proposals are finished against
    the whole product (bounded time and memory for a tie of 100,000 targets: 16 s and
    0.36 GiB against 198 s and 3.7 GiB when widened to every target); the answer is the
    exact one, also in small groups of proposals and of product rows."""
    rng = np.random.default_rng(14)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    base = unit(rng.normal(size=16))
    targets = np.vstack(
        [unit(rng.normal(size=(300, 16))), unit(base + 1e-7 * rng.normal(size=(300, 16)))]
    )
    queries = unit(np.vstack([base + 1e-3 * rng.normal(size=(6, 16)), rng.normal(size=(4, 16))]))
    filt = sp.csr_matrix((np.ones(2, dtype=np.float32), ([0, 0], [300, 305])), shape=(10, 600))
    banded: list[int] = []
    finish = matrix._finish_in_band

    def spy(targets: np.ndarray, queries: np.ndarray, rows: np.ndarray, *rest: Any) -> None:
        banded.extend(rows.tolist())
        finish(targets, queries, rows, *rest)

    monkeypatch.setattr(matrix, "_finish_in_band", spy)
    monkeypatch.setattr(matrix, "WIDEN_FACTOR", widen)
    monkeypatch.setattr(matrix, "PROPOSE_BUDGET", 100)  # groups of 3 queries at first
    monkeypatch.setattr(matrix, "BAND_CHUNK", 1300)  # 2 queries of the product at once
    ids, scores = stable_topk(targets, queries, 12, filter_query_items=filt, num_threads=1)
    assert set(banded) == set(range(6))  # the group's queries, through the band
    assert not np.isin(ids[0], [300, 305]).any()
    q, t = np.divmod(np.arange(10 * 600), 600)
    exact = pair_dots(queries, q, targets, t).reshape(10, 600)
    exact[0, [300, 305]] = -np.inf
    best = np.array([np.lexsort((np.arange(600), -row))[:12] for row in exact])
    np.testing.assert_array_equal(ids, best)
    np.testing.assert_array_equal(scores, np.take_along_axis(exact, best, 1))

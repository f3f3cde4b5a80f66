"""ALS: recovers planted taste groups, filters heard tracks, persists without pickle."""

from __future__ import annotations

import warnings
from pathlib import Path

import implicit.utils
import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from musicrec.als import ALSModel, warm_factors
from musicrec.columns import Columns as C
from musicrec.config import ALSConfig
from musicrec.matrix import IdMap, InteractionMatrix

N_USERS, N_ITEMS = 80, 120  # per group
CFG = ALSConfig(factors=8, regularization=0.05, alpha=10.0, iterations=15, random_state=1)


def planted_events(seed: int = 0) -> pd.DataFrame:
    """Two disjoint taste groups: users 1000.. listen only to tracks 5000.. (group A),
    users 2000.. only to tracks 7000.. (group B); each user heard 15 tracks of the group."""
    rng = np.random.default_rng(seed)
    rows = []
    for user_base, item_base in ((1000, 5000), (2000, 7000)):
        for u in range(N_USERS):
            items = rng.choice(N_ITEMS, size=15, replace=False)
            rows += [(user_base + u, item_base + int(i)) for i in items]
    return pd.DataFrame(rows, columns=[C.User, C.Item]).astype(np.int32)


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, InteractionMatrix, ALSModel]:
    ev = planted_events()
    m = InteractionMatrix.from_events(ev)
    return ev, m, ALSModel.fit(m, CFG, num_threads=1)


def test_fit_recovers_planted_groups(
    planted: tuple[pd.DataFrame, InteractionMatrix, ALSModel],
) -> None:
    _, m, model = planted
    assert model.user_factors.shape == (2 * N_USERS, CFG.factors)
    assert model.item_factors.shape == (2 * N_ITEMS, CFG.factors)
    assert model.user_factors.dtype == np.float32
    recs = model.recommend(m.users.ids, m, n=10)
    group_of_user = np.where(recs[C.User] < 2000, "A", "B")
    group_of_item = np.where(recs[C.Item] < 7000, "A", "B")
    assert (group_of_user == group_of_item).mean() > 0.98
    # and scores separate the groups: own-group tracks score above other-group tracks
    a_user = np.full(N_ITEMS, 1000)
    own = model.score_pairs(a_user, 5000 + np.arange(N_ITEMS))
    other = model.score_pairs(a_user, 7000 + np.arange(N_ITEMS))
    assert np.median(own) > np.percentile(other, 90)


def test_recommend_filters_heard_and_ranks(
    planted: tuple[pd.DataFrame, InteractionMatrix, ALSModel],
) -> None:
    ev, m, model = planted
    n = 20
    recs = model.recommend(m.users.ids, m, n=n, batch_size=17)  # several batches
    assert list(recs.columns) == C.Recommendations
    assert recs[C.User].dtype.kind == "i" and recs[C.Item].dtype.kind == "i"
    heard = set(zip(ev[C.User].tolist(), ev[C.Item].tolist(), strict=True))
    assert not any((u, i) in heard for u, i in zip(recs[C.User], recs[C.Item], strict=True))
    assert not recs.duplicated([C.User, C.Item]).any()
    assert set(recs[C.User]) == set(m.users.ids.tolist())
    for _, g in recs.groupby(C.User):
        assert g[C.Rank].tolist() == list(range(1, n + 1))
        assert (np.diff(g[C.Score].to_numpy()) <= 0).all()
    # the scores are the factor dot products
    assert np.allclose(
        recs[C.Score],
        model.score_pairs(recs[C.User].to_numpy(), recs[C.Item].to_numpy()),
        rtol=1e-4,
        atol=1e-5,
    )


def test_recommend_whole_catalogue_drops_heard_at_the_end(
    planted: tuple[pd.DataFrame, InteractionMatrix, ALSModel],
) -> None:
    """Asking for more than the unheard tracks: every unheard track once, ranks 1..n."""
    ev, m, model = planted
    recs = model.recommend(np.array([1000, 2001]), m, n=10_000)
    n_items = len(m.items)
    for u, g in recs.groupby(C.User):
        n_heard = int((ev[C.User] == u).sum())
        assert len(g) == n_items - n_heard
        assert g[C.Rank].tolist() == list(range(1, len(g) + 1))
        assert (g[C.Score] > -1e30).all()


def test_recommend_unknown_users_are_skipped(
    planted: tuple[pd.DataFrame, InteractionMatrix, ALSModel],
) -> None:
    _, m, model = planted
    recs = model.recommend(np.array([1, 1000, 999_999]), m, n=5)
    assert set(recs[C.User]) == {1000}
    none = model.recommend(np.array([1, 2]), m, n=5)
    assert len(none) == 0 and list(none.columns) == C.Recommendations
    # with the dtypes of a list that has rows (it was float64 everywhere)
    assert none.dtypes.to_dict() == recs.dtypes.to_dict()


def test_recommend_head_only_tops_up_a_user_who_heard_most_of_the_head() -> None:
    """Scoring only the head (`items`): a user who heard all but a few of its tracks used to
    get a list of those few; now they are scored against every track, and their list is
    the whole-catalogue one. Everybody else keeps the head-only list."""
    ev = planted_events()
    heavy = pd.DataFrame({C.User: 9999, C.Item: 5000 + np.arange(N_ITEMS)}).astype(np.int32)
    m = InteractionMatrix.from_events(pd.concat([ev, heavy], ignore_index=True))
    model = ALSModel.fit(m, CFG, num_threads=1)
    # the head: group A (all heard by the heavy user) and 5 tracks of group B
    head = np.sort(m.items.codes(np.r_[5000 + np.arange(N_ITEMS), 7000 + np.arange(5)]))
    n = 20
    recs = model.recommend(m.users.ids, m, n=n, batch_size=50, items=head)
    mine = recs[recs[C.User] == 9999].reset_index(drop=True)
    whole = model.recommend(np.array([9999]), m, n=n)
    pd.testing.assert_frame_equal(mine, whole)
    assert len(mine) == n and not set(mine[C.Item]) & set(heavy[C.Item])
    others = recs[recs[C.User] != 9999]
    assert others.groupby(C.User).size().eq(n).all()
    assert others[C.Item].isin(m.items.ids[head]).all()
    assert (recs.groupby(C.User)[C.Rank].diff().dropna() == 1).all()


def test_score_pairs_nan_for_unknown(
    planted: tuple[pd.DataFrame, InteractionMatrix, ALSModel],
) -> None:
    _, _, model = planted
    s = model.score_pairs(np.array([1000, 1, 1000, 3]), np.array([5000, 5000, 42, 43]))
    assert np.isfinite(s[0])
    assert np.isnan(s[1:]).all()
    u, i = model.users.codes(np.array([1000])), model.items.codes(np.array([5000]))
    assert s[0] == pytest.approx(float(model.user_factors[u[0]] @ model.item_factors[i[0]]))


def test_fit_rejects_empty_matrix() -> None:
    empty = pd.DataFrame({C.User: np.array([], np.int32), C.Item: np.array([], np.int32)})
    with pytest.raises(ValueError, match="empty"):
        ALSModel.fit(InteractionMatrix.from_events(empty), CFG)


def test_fit_overrides_and_determinism() -> None:
    m = InteractionMatrix.from_events(planted_events(seed=3))
    a = ALSModel.fit(m, CFG, num_threads=1, overrides={"factors": 4})
    b = ALSModel.fit(m, CFG, num_threads=1, overrides={"factors": 4})
    assert a.item_factors.shape[1] == 4
    assert np.array_equal(a.item_factors, b.item_factors)
    # regularization and alpha overrides act too (the tuning grid varies them): each equals
    # a fit with that value in the config, and differs from the config's own value
    for key, value in (("alpha", 40.0), ("regularization", 5.0)):
        over = ALSModel.fit(m, CFG, num_threads=1, overrides={"factors": 4, key: value})
        cfg = CFG.model_copy(update={"factors": 4, key: value})
        assert np.array_equal(over.item_factors, ALSModel.fit(m, cfg, num_threads=1).item_factors)
        assert not np.allclose(over.item_factors, a.item_factors), key


def test_save_load_round_trip_without_pickle(
    planted: tuple[pd.DataFrame, InteractionMatrix, ALSModel], tmp_path: Path
) -> None:
    _, m, model = planted
    model.save(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == [
        "als_item_factors.npy",
        "als_item_ids.npy",
        "als_user_factors.npy",
        "als_user_ids.npy",
    ]
    for name in files:  # plain arrays: readable without pickle
        assert np.load(tmp_path / "model" / name, allow_pickle=False).dtype != object
    loaded = ALSModel.load(tmp_path / "model")
    assert np.array_equal(loaded.users.ids, model.users.ids)
    assert np.array_equal(loaded.items.ids, model.items.ids)
    assert np.array_equal(loaded.user_factors, model.user_factors)
    assert np.array_equal(loaded.item_factors, model.item_factors)
    pd.testing.assert_frame_equal(
        loaded.recommend(m.users.ids, m, 10), model.recommend(m.users.ids, m, 10)
    )


def test_load_refuses_a_pickled_array(
    planted: tuple[pd.DataFrame, InteractionMatrix, ALSModel], tmp_path: Path
) -> None:
    _, _, model = planted
    model.save(tmp_path)
    np.save(tmp_path / "als_user_ids.npy", np.array([1, "x", None], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        ALSModel.load(tmp_path)


def test_is_fit_on_compares_users_and_tracks(
    planted: tuple[pd.DataFrame, InteractionMatrix, ALSModel],
) -> None:
    ev, m, model = planted
    assert model.is_fit_on(m) and model.is_fit_on(InteractionMatrix.from_events(ev))
    fewer_users = ev[ev[C.User] != ev[C.User].iloc[0]]
    fewer_tracks = ev[ev[C.Item] != ev[C.Item].iloc[0]]
    for other in (fewer_users, fewer_tracks):
        assert not model.is_fit_on(InteractionMatrix.from_events(other))


def test_unit_item_factors_hand_example() -> None:
    items = IdMap(np.array([1, 2, 3]))
    f = np.array([[3, 4], [0, 0], [0, -2]], dtype=np.float32)
    model = ALSModel(IdMap(np.array([7])), items, np.ones((1, 2)), f)
    unit = model.unit_item_factors()
    assert unit.dtype == np.float32
    np.testing.assert_array_equal(unit, np.array([[0.6, 0.8], [0, 0], [0, -1]], np.float32))
    np.testing.assert_array_equal(model.item_factors, f)  # the model's own are unchanged


def test_warm_factors_hand_example() -> None:
    init_ids = IdMap(np.array([10, 20, 30]))
    init = np.arange(6, dtype=np.float32).reshape(3, 2)  # 10 -> [0, 1], 20 -> [2, 3], 30 -> [4, 5]
    out = warm_factors(init_ids, init, np.array([30, 99, 10]), np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == (3, 2)
    assert out[0].tolist() == [4.0, 5.0] and out[2].tolist() == [0.0, 1.0]
    assert ((out[1] >= 0) & (out[1] < 0.01)).all()  # 99 is new: implicit's random start


def _training_loss(model: ALSModel, m: InteractionMatrix) -> float:
    from implicit.cpu._als import calculate_loss

    conf = (m.csr * np.float32(CFG.alpha)).astype(np.float32).tocsr()
    return float(
        calculate_loss(conf, model.user_factors, model.item_factors, CFG.regularization, 1)
    )


def test_warm_start_from_an_earlier_fit_converges_in_fewer_iterations() -> None:
    """Started from a model of 80% of the listens (three users unknown to it), two
    iterations on all of them come within 3% of a 15-iteration cold fit's training loss,
    far below two cold iterations."""
    ev = planted_events(seed=5)
    earlier = ev.sample(frac=0.8, random_state=1)
    earlier = earlier[~earlier[C.User].isin([1000, 1001, 2000])]
    m = InteractionMatrix.from_events(ev)
    init = ALSModel.fit(InteractionMatrix.from_events(earlier), CFG, num_threads=1)
    warm = ALSModel.fit(m, CFG, num_threads=1, init=init, iterations=2)
    cold = ALSModel.fit(m, CFG, num_threads=1, iterations=2)
    full = ALSModel.fit(m, CFG, num_threads=1)
    assert warm.users.ids.tolist() == m.users.ids.tolist()  # every user, new ones included
    assert _training_loss(warm, m) < 1.03 * _training_loss(full, m)
    assert _training_loss(warm, m) < 0.9 * _training_loss(cold, m)


def test_warm_start_needs_the_same_factor_count() -> None:
    m = InteractionMatrix.from_events(planted_events(seed=3))
    small = ALSModel.fit(m, CFG, num_threads=1, overrides={"factors": 4})
    with pytest.raises(ValueError, match="8 factors"):
        ALSModel.fit(m, CFG, num_threads=1, init=small, iterations=1)


def test_fit_runs_blas_single_threaded_without_implicits_false_alarm(
    planted: tuple[pd.DataFrame, InteractionMatrix, ALSModel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """implicit warns once per process when it is built under a multi-threaded BLAS; the
    model is built and fit under a one-thread limit, so that warning must not appear even
    when the process's BLAS has two threads."""
    if not any(api["user_api"] == "blas" for api in threadpool_info()):
        pytest.skip("no BLAS library found by threadpoolctl")
    monkeypatch.setattr(implicit.utils, "_checked_blas_config", False)
    _, m, _ = planted
    with threadpool_limits(2, "blas"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ALSModel.fit(m, CFG, num_threads=1)
    assert not [w for w in caught if "OpenBLAS is configured" in str(w.message)]


def _line_model() -> tuple[ALSModel, InteractionMatrix]:
    """One factor: user 1 has +1, user 2 has -1; tracks 10, 20, 30, 40 have 1, 2, 3, 4, so
    a score is +-(track / 10). User 1 heard track 40."""
    model = ALSModel(
        IdMap(np.array([1, 2])),
        IdMap(np.array([10, 20, 30, 40])),
        np.array([[1.0], [-1.0]], np.float32),
        np.array([[1.0], [2.0], [3.0], [4.0]], np.float32),
    )
    heard = pd.DataFrame({C.User: [1], C.Item: [40]}).astype(np.int32)
    return model, InteractionMatrix.from_events(heard, model.users, model.items)


def _rows(recs: pd.DataFrame) -> list[tuple[int, int, float, int]]:
    return [
        (int(u), int(i), float(s), int(r))
        for u, i, s, r in recs[[C.User, C.Item, C.Score, C.Rank]].itertuples(index=False)
    ]


def test_recommend_head_only_keeps_the_lists_of_users_not_topped_up() -> None:
    """Head = tracks 20, 30, 40, n = 2. User 1: 40 heard, so 30 (3) then 20 (2); user 2:
    20 (-2) then 30 (-3). Both lists are full (2 = min(n, 3 unheard)), no top-up: the
    head-only lists are the result (a batch without a top-up was lost)."""
    model, history = _line_model()
    recs = model.recommend(np.array([1, 2]), history, n=2, items=np.array([1, 2, 3]))
    assert _rows(recs) == [(1, 30, 3.0, 1), (1, 20, 2.0, 2), (2, 20, -2.0, 1), (2, 30, -3.0, 2)]


def test_recommend_batches_are_joined_with_a_fresh_index() -> None:
    """One user per batch, n = 2 over every track: user 1 gets 30 (3), 20 (2) (40 heard),
    user 2 gets 10 (-1), 20 (-2); the rows are labelled 0..3, not 0, 1, 0, 1."""
    model, history = _line_model()
    recs = model.recommend(np.array([2, 1]), history, n=2, batch_size=1)
    assert _rows(recs) == [(1, 30, 3.0, 1), (1, 20, 2.0, 2), (2, 10, -1.0, 1), (2, 20, -2.0, 2)]
    assert recs.index.tolist() == [0, 1, 2, 3]


def test_fit_on_a_single_listen() -> None:
    """One listen is a non-empty matrix: the fit runs (one user, one track, CFG.factors)."""
    one = pd.DataFrame({C.User: [1], C.Item: [10]}).astype(np.int32)
    model = ALSModel.fit(InteractionMatrix.from_events(one), CFG, num_threads=1)
    assert model.user_factors.shape == (1, CFG.factors) == model.item_factors.shape


def test_save_creates_missing_parent_directories(
    planted: tuple[pd.DataFrame, InteractionMatrix, ALSModel], tmp_path: Path
) -> None:
    """`save` into a directory whose parents do not exist yet creates them."""
    _, _, model = planted
    model.save(tmp_path / "runs" / "1" / "model")
    loaded = ALSModel.load(tmp_path / "runs" / "1" / "model")
    assert np.array_equal(loaded.item_factors, model.item_factors)


def test_top_item_codes_counts_every_track_of_the_matrix() -> None:
    """One user, four tracks (a given map), listens to codes 0 and 1: listeners 1, 1, 0, 0.
    The head of 3 is codes 0, 1, 2 (ties to the lower code; unheard tracks count 0, the
    matrix has more tracks than users); a head of 4 or more is every track: None."""
    from musicrec.als import top_item_codes

    ev = pd.DataFrame({C.User: [1, 1], C.Item: [10, 20]}).astype(np.int32)
    m = InteractionMatrix.from_events(ev, IdMap(np.array([1])), IdMap(np.array([10, 20, 30, 40])))
    head = top_item_codes(m, 3)
    assert head is not None and head.tolist() == [0, 1, 2]
    assert top_item_codes(m, 4) is None and top_item_codes(m, 5) is None
    assert top_item_codes(m, None) is None


def test_a_users_list_is_the_same_whatever_else_its_batch_holds() -> None:
    """Users scored in batches of 1, 17 or all at once get the same rows (ids, scores,
    ranks): near-tied tracks no longer swap places with the batch's shape, and each score
    is `score_pairs`' for the pair, so the ranker's ALS-score feature equals it."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(6, 16)).astype(np.float32)
    items = centres[rng.integers(0, 6, 1200)] + 0.01 * rng.normal(size=(1200, 16))
    users = rng.normal(size=(400, 16)).astype(np.float32)
    model = ALSModel(IdMap(np.arange(400)), IdMap(np.arange(1200)), users, items)
    heard = (rng.random((400, 1200)) < 0.02).nonzero()
    events = pd.DataFrame({C.User: heard[0], C.Item: heard[1]})
    history = InteractionMatrix.from_events(events, model.users, model.items)
    whole = model.recommend(np.arange(400), history, 40)
    for size in (1, 17):
        pd.testing.assert_frame_equal(
            model.recommend(np.arange(400), history, 40, batch_size=size), whole
        )
    scores = model.score_pairs(whole[C.User].to_numpy(), whole[C.Item].to_numpy())
    np.testing.assert_array_equal(scores, whole[C.Score].to_numpy())
    assert not whole.merge(events, on=[C.User, C.Item]).shape[0]  # heard never recommended

"""Candidate generators: no heard tracks, consistent source flags and ranks, latest tracks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from musicrec.als import ALSModel
from musicrec.candidates import (
    SRC_ALS,
    SRC_POP,
    SRC_SIM,
    FirstStage,
    als_top,
    generate_candidates,
    latest_tracks,
    outer_join_pairs,
    set_als_recs,
    similar_to_latest,
)
from musicrec.columns import Columns as C
from musicrec.config import ALSConfig, RankerConfig, SimilarConfig
from musicrec.matrix import IdMap, InteractionMatrix
from musicrec.popular import recommend_popular
from musicrec.prepare import PreparedData
from musicrec.split import Split, split_by_time

ALS_CFG = ALSConfig(factors=8, iterations=4, tune=False)
SIM_CFG = SimilarConfig(k=8)
RANKER_CFG = RankerConfig(
    als_candidates=25, popular_candidates=10, similar_candidates=10, recent_tracks=3
)


@pytest.fixture(scope="module")
def split(tiny_prepared: PreparedData) -> Split:
    return split_by_time(tiny_prepared.events, None, 0.1)


@pytest.fixture(scope="module")
def stage(split: Split) -> FirstStage:
    return FirstStage.fit(split.history, split.start, ALS_CFG, SIM_CFG, num_threads=1)


@pytest.fixture(scope="module")
def cand(stage: FirstStage, split: Split) -> pd.DataFrame:
    return generate_candidates(stage, split.window_events[C.User].unique(), RANKER_CFG)


def _pairs(df: pd.DataFrame, user: str = C.User, item: str = C.Item) -> set[tuple[int, int]]:
    return set(zip(df[user].tolist(), df[item].tolist(), strict=True))


# --------------------------------------------------------------------- FirstStage


def test_first_stage_is_fit_on_history_only(stage: FirstStage, split: Split) -> None:
    assert stage.end == split.start
    assert stage.history[C.Datetime].max() < stage.end
    assert np.array_equal(stage.matrix.users.ids, np.unique(split.history[C.User]))
    assert np.array_equal(stage.als.items.ids, stage.matrix.items.ids)
    assert set(stage.similar[C.Item1]) <= set(stage.matrix.items.ids.tolist())


def test_first_stage_similar_for_some_users_gives_them_the_same_candidates(
    stage: FirstStage, split: Split
) -> None:
    users = np.intersect1d(split.window_events[C.User].unique(), split.history[C.User].unique())[
        :15
    ]
    n = RANKER_CFG.recent_tracks
    part = FirstStage.fit(
        split.history, split.start, ALS_CFG, SIM_CFG, num_threads=1, similar_for=(users, n)
    )
    latest = latest_tracks(split.history, n)
    assert set(part.similar[C.Item1]) <= set(latest[latest[C.User].isin(users)][C.Item])
    assert part.similar[C.Item1].nunique() < stage.similar[C.Item1].nunique()
    # ALS is fit with the same seed on the same matrix: the same similar lists for them
    full_sim = similar_to_latest(stage, users, n, RANKER_CFG.similar_candidates)
    part_sim = similar_to_latest(part, users, n, RANKER_CFG.similar_candidates)
    pd.testing.assert_frame_equal(
        full_sim[[C.User, C.Item, C.Rank]], part_sim[[C.User, C.Item, C.Rank]]
    )


def test_first_stage_rejects_history_reaching_its_end(stage: FirstStage, split: Split) -> None:
    leaky = pd.concat([stage.history, split.window_events.head(1)])
    with pytest.raises(ValueError, match="on or after its end"):
        replace(stage, history=leaky)


# ---------------------------------------------------------------------- candidates


def test_candidates_never_heard_and_unique(
    cand: pd.DataFrame, stage: FirstStage, split: Split
) -> None:
    assert len(cand) > 0
    assert not (_pairs(cand) & _pairs(stage.history))
    assert not cand.duplicated([C.User, C.Item]).any()
    # only users with history are served; cold target users get no candidates
    warm = set(split.window_events[C.User]) & set(stage.history[C.User])
    assert set(cand[C.User]) == warm
    assert cand[C.User].dtype == np.int32 and cand[C.Item].dtype == np.int32


def test_source_flags_match_ranks(cand: pd.DataFrame) -> None:
    for src, col, n in (
        (SRC_ALS, "als_rank", RANKER_CFG.als_candidates),
        (SRC_POP, "pop_rank", RANKER_CFG.popular_candidates),
        (SRC_SIM, "sim_rank", RANKER_CFG.similar_candidates),
    ):
        assert set(cand[src].unique()) <= {0, 1}
        assert np.array_equal(cand[src].to_numpy() == 1, cand[col].notna().to_numpy()), src
        assert cand[src].sum() > 0, src
        ranks = cand[cand[src] == 1].groupby(C.User)[col].apply(sorted)
        for r in ranks:  # each source's ranks are 1..m (m <= n) per user
            assert r == list(range(1, len(r) + 1))
            assert len(r) <= n
    assert np.array_equal(cand["sim_source_score"].notna(), cand[SRC_SIM] == 1)
    assert ((cand[SRC_ALS] + cand[SRC_POP] + cand[SRC_SIM]) >= 1).all()


def test_candidates_are_the_union_of_the_sources(
    cand: pd.DataFrame, stage: FirstStage, split: Split
) -> None:
    users = np.intersect1d(split.window_events[C.User].unique(), stage.matrix.users.ids)
    als = stage.als.recommend(users, stage.matrix, RANKER_CFG.als_candidates)
    pop = recommend_popular(stage.popular, stage.matrix, users, RANKER_CFG.popular_candidates)
    sim = similar_to_latest(stage, users, RANKER_CFG.recent_tracks, RANKER_CFG.similar_candidates)
    assert _pairs(cand[cand[SRC_ALS] == 1]) == _pairs(als)
    assert _pairs(cand[cand[SRC_POP] == 1]) == _pairs(pop)
    assert _pairs(cand[cand[SRC_SIM] == 1]) == _pairs(sim)
    assert _pairs(cand) == _pairs(als) | _pairs(pop) | _pairs(sim)
    got = cand[cand[SRC_ALS] == 1].set_index([C.User, C.Item])["als_rank"]
    want = als.set_index([C.User, C.Item])[C.Rank]
    assert (got.sort_index() == want.sort_index()).all()


def test_sources_can_be_switched_off(stage: FirstStage, split: Split) -> None:
    cfg = RANKER_CFG.model_copy(update={"popular_candidates": 0, "similar_candidates": 0})
    users = split.window_events[C.User].unique()[:20]
    only_als = generate_candidates(stage, users, cfg)
    assert (only_als[SRC_ALS] == 1).all()
    assert (only_als[SRC_POP] == 0).all() and only_als["pop_rank"].isna().all()
    assert (only_als[SRC_SIM] == 0).all() and only_als["sim_source_score"].isna().all()


def test_candidates_for_unknown_or_no_users(stage: FirstStage) -> None:
    for users in (np.array([], dtype=np.int32), np.array([10**9], dtype=np.int32)):
        out = generate_candidates(stage, users, RANKER_CFG)
        assert len(out) == 0
        assert {SRC_ALS, SRC_POP, SRC_SIM, "als_rank", "pop_rank", "sim_rank"} <= set(out)


# ------------------------------------------------------------------ latest tracks


def test_latest_tracks_order() -> None:
    t = pd.Timestamp("2022-05-01")
    hist = pd.DataFrame(
        {
            C.User: [1, 1, 1, 1, 2, 2],
            C.Item: [10, 11, 12, 13, 20, 21],
            C.Datetime: [t, t + pd.Timedelta(days=2), t + pd.Timedelta(days=2), t, t, t],
            C.Seq: [1, 3, 4, 2, 2, 1],
        }
    )
    out = latest_tracks(hist, 3)
    assert list(out.columns) == [C.User, C.Item, "recency"]
    # newest first; the same day is ordered by track_seq (higher = later)
    assert out[out[C.User] == 1][C.Item].tolist() == [12, 11, 13]
    assert out[out[C.User] == 2][C.Item].tolist() == [20, 21]
    assert out["recency"].tolist() == [1, 2, 3, 1, 2]


def test_similar_to_latest_matches_a_naive_computation(stage: FirstStage) -> None:
    n_latest, n = 3, 10
    users = stage.matrix.users.ids[:40]
    got = similar_to_latest(stage, users, n_latest, n)
    heard = _pairs(stage.history)
    sim = stage.similar
    for u in users[:15]:
        h = stage.history[stage.history[C.User] == u]
        h = h.sort_values([C.Datetime, C.Seq], ascending=False).head(n_latest)
        nb = sim[sim[C.Item1].isin(h[C.Item])]
        best = nb.groupby(C.Item2)[C.Score].max()
        best = best[[(int(u), int(t)) not in heard for t in best.index]]
        mine = got[got[C.User] == u]
        assert len(mine) == min(n, len(best))
        assert mine[C.Rank].tolist() == list(range(1, len(mine) + 1))
        assert (np.diff(mine[C.Score].to_numpy()) <= 0).all()
        # the kept scores are the n best, each the max over the latest tracks
        assert np.allclose(mine[C.Score], np.sort(best.to_numpy())[::-1][: len(mine)])
        assert np.allclose(mine[C.Score], best[mine[C.Item]].to_numpy())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outer_join_pairs_equals_chained_pandas_merges(seed: int) -> None:
    rng = np.random.default_rng(seed)

    def part(n: int, col: str, extra: str | None = None) -> pd.DataFrame:
        pairs = np.unique(rng.integers(0, [40, 30], size=(n, 2)), axis=0)
        df = pd.DataFrame({C.User: pairs[:, 0], C.Item: pairs[:, 1]}).astype(np.int32)
        df[col] = rng.integers(1, 100, len(df)).astype(np.int16)
        if extra:
            df[extra] = rng.random(len(df)).astype(np.float32)
        return df.sample(frac=1.0, random_state=seed)  # unsorted input

    parts = [part(300, "als_rank"), part(200, "pop_rank"), part(250, "sim_rank", "sim_score")]
    if seed == 2:
        parts[1] = parts[1].iloc[:0]  # an empty source
    want = parts[0]
    for p in parts[1:]:
        want = want.merge(p, on=[C.User, C.Item], how="outer")
    want = want.sort_values([C.User, C.Item]).reset_index(drop=True)
    got = outer_join_pairs(parts)
    assert got[C.User].dtype == np.int32 and got[C.Item].dtype == np.int32
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    # large ids survive the 64-bit pair key
    big = pd.DataFrame({C.User: [2**31 - 1], C.Item: [2**31 - 2], "x": [1]}).astype(np.int32)
    one = outer_join_pairs([big])
    assert one[C.User].tolist() == [2**31 - 1] and one[C.Item].tolist() == [2**31 - 2]


def test_first_stage_takes_a_model_fit_on_its_history_and_refuses_another(
    stage: FirstStage, split: Split
) -> None:
    again = FirstStage.fit(
        split.history, split.start, ALS_CFG, SIM_CFG, num_threads=1, als=stage.als
    )
    assert again.als is stage.als
    pd.testing.assert_frame_equal(again.similar, stage.similar)
    older = split.history[split.history[C.Datetime] < split.history[C.Datetime].quantile(0.5)]
    with pytest.raises(ValueError, match="not fit on this history"):
        FirstStage.fit(older, split.start, ALS_CFG, SIM_CFG, num_threads=1, als=stage.als)


def test_latest_for_users_equals_filtering_every_users_latest_tracks(stage: FirstStage) -> None:
    from musicrec.candidates import latest_for_users

    every = latest_tracks(stage.history, 3)
    known = every[C.User].unique()
    rng = np.random.default_rng(0)
    # unsorted, repeated and unknown users
    users = np.concatenate([rng.choice(known, 25), rng.choice(known, 5), [-7, 10**9]])
    got = latest_for_users(stage, users, 3)
    want = every[every[C.User].isin(users)].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    assert len(latest_for_users(stage, np.array([-7]), 3)) == 0


def test_als_candidates_do_not_depend_on_the_depth_of_the_precomputed_lists(
    split: Split,
) -> None:
    """With a scored head, the ALS lists the pipeline precomputes (depth `als.n_recs`) top
    up users short of unheard head tracks from the whole catalogue; their first n were
    sliced as the test's candidates, while the label windows' were scored at depth n,
    inside the head: the ranker met other candidates at test than in training (found by a
    review). Whatever the precomputed depth, the candidates are the ones scored at n."""
    n = 25
    # a head one longer than the deeper list: a user who heard 2 to 11 of its tracks is
    # short at depth n + 35 (topped up from outside the head) but not at n
    head_cfg = ALS_CFG.model_copy(update={"max_scored_items": n + 36, "n_recs": n + 35})
    stage = FirstStage.fit(split.history, split.start, head_cfg, SIM_CFG, num_threads=1)
    users = stage.matrix.users.ids
    fresh = als_top(stage, users, n)
    deep = stage.als.recommend(users, stage.matrix, n + 35, items=stage.cache["scored_items"])
    sliced = deep[deep[C.Rank] <= n]
    assert _pairs(sliced) != _pairs(fresh)  # the depths differ: so would the candidates
    set_als_recs(stage, deep, n + 35)
    assert _pairs(als_top(stage, users, n)) == _pairs(fresh)
    set_als_recs(stage, fresh, n)  # the same depth: reused
    assert _pairs(als_top(stage, users, n)) == _pairs(fresh)


# ---------------------------------------------------------- a first stage by hand

HAND_END = pd.Timestamp("2022-05-03")


def _hand_history() -> pd.DataFrame:
    """User 1 heard 12 then 10, user 2 heard 11 then 12 (sorted by user, then time)."""
    t = pd.Timestamp("2022-05-01")
    return pd.DataFrame(
        {
            C.User: np.array([1, 1, 2, 2], np.int32),
            C.Item: np.array([12, 10, 11, 12], np.int32),
            C.Datetime: [t, t + pd.Timedelta(days=1), t, t + pd.Timedelta(days=1)],
            C.Seq: np.ones(4, np.int16),
        }
    )


def _hand_als(history: pd.DataFrame, item_ids: list[int] | None = None) -> ALSModel:
    """A model with the history's users and (unless `item_ids`) tracks 10, 11, 12 as item
    codes 0, 1, 2, whose unit factors (1, 0), (0.8, 0.6), (0, 1) make the cosines
    10~11 0.8, 11~12 0.6 and 10~12 0."""
    matrix = InteractionMatrix.from_events(history)
    items = matrix.items if item_ids is None else IdMap(np.array(item_ids, np.int32))
    factors = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    return ALSModel(matrix.users, items, np.ones((len(matrix.users), 2)), factors)


def test_first_stage_refuses_a_model_with_the_history_users_but_other_tracks() -> None:
    """Both id maps must be the history's: a model whose users match but whose tracks do not
    (99 in place of 12) is refused too, not only one whose users differ."""
    hist = _hand_history()
    other = _hand_als(hist, [10, 11, 99])
    assert np.array_equal(other.users.ids, [1, 2])
    with pytest.raises(ValueError, match="not fit on this history"):
        FirstStage.fit(hist, HAND_END, ALS_CFG, SIM_CFG, num_threads=1, als=other)


def test_similar_for_queries_a_latest_track_with_als_item_code_0() -> None:
    """`similar_for` keeps every latest track the model knows, code 0 included: user 1's
    latest track is 10, the model's first item, and its neighbour 11 is a candidate."""
    hist = _hand_history()
    als = _hand_als(hist)
    assert als.items.codes(np.array([10])).tolist() == [0]
    stage = FirstStage.fit(
        hist, HAND_END, ALS_CFG, SIM_CFG, num_threads=1, similar_for=(np.array([1]), 1), als=als
    )
    assert stage.similar[C.Item1].unique().tolist() == [10]
    got = similar_to_latest(stage, np.array([1]), 1, 10)
    # 10's neighbours: 11 (cosine 0.8) and 12 (0.0), which user 1 has heard
    assert got[C.User].tolist() == [1] and got[C.Item].tolist() == [11]
    assert got[C.Score].tolist() == pytest.approx([0.8])


def test_als_recs_given_out_of_user_order_are_sliced_as_sorted_ones() -> None:
    """`als_top` finds a user's reused list by binary search over users, so lists handed
    over shuffled are sorted by (user, rank) first: the same answer as from sorted ones."""
    hist = _hand_history()
    stage = FirstStage.fit(hist, HAND_END, ALS_CFG, SIM_CFG, num_threads=1, als=_hand_als(hist))
    ordered = pd.DataFrame(
        {
            C.User: np.array([1, 1, 2, 2], np.int32),
            C.Item: np.array([11, 13, 10, 13], np.int32),
            C.Score: np.array([0.9, 0.5, 0.8, 0.4], np.float32),
            C.Rank: np.array([1, 2, 1, 2], np.int32),
        }
    )
    shuffled = ordered.iloc[[3, 1, 2, 0]]
    assert shuffled[C.User].tolist() == [2, 1, 2, 1]
    set_als_recs(stage, shuffled, 2)
    pd.testing.assert_frame_equal(als_top(stage, np.array([2, 1]), 2), ordered)
    pd.testing.assert_frame_equal(
        als_top(stage, np.array([2]), 1), ordered.iloc[[2]].reset_index(drop=True)
    )
    set_als_recs(stage, ordered, 2)
    pd.testing.assert_frame_equal(als_top(stage, np.array([2, 1]), 2), ordered)


def test_latest_tracks_of_a_history_sorted_by_user_but_not_by_time() -> None:
    """Rows grouped by user but with dates out of order inside a user are not the sorted
    history the fast path reads from the end: the newest listen is still recency 1."""
    t = pd.Timestamp("2022-05-01")
    day = pd.Timedelta(days=1)
    hist = pd.DataFrame(
        {
            C.User: [1, 1, 1, 2],
            C.Item: [10, 11, 12, 20],
            C.Datetime: [t + 2 * day, t, t + day, t],
            C.Seq: [1, 1, 1, 1],
        }
    )
    out = latest_tracks(hist, 2)
    assert out[C.User].tolist() == [1, 1, 2]
    assert out[C.Item].tolist() == [10, 12, 20]
    assert out["recency"].tolist() == [1, 2, 1]


def test_latest_tracks_of_a_sorted_history_count_recency_from_1() -> None:
    """A history sorted by (user, time, seq), as prepared events are, takes the fast path;
    recency there is 1 for the newest listen, exactly as on the sorting path."""
    from musicrec.candidates import _latest_sorted

    t = pd.Timestamp("2022-05-01")
    hist = pd.DataFrame(
        {
            C.User: [1, 1, 1, 2],
            C.Item: [10, 11, 12, 20],
            C.Datetime: [t, t + pd.Timedelta(days=1), t + pd.Timedelta(days=1), t],
            C.Seq: [1, 1, 2, 1],
        }
    )
    assert _latest_sorted(hist, 2) is not None  # the fast path
    out = latest_tracks(hist, 2)
    assert out[C.Item].tolist() == [12, 11, 20]
    assert out["recency"].tolist() == [1, 2, 1]
    slow = latest_tracks(hist.iloc[::-1], 2)  # not sorted: the sorting path
    pd.testing.assert_frame_equal(out, slow)

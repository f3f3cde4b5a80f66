"""Ranker features: no leakage from the predicted window, values match naive computations."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

from musicrec.candidates import FirstStage, generate_candidates, latest_tracks
from musicrec.columns import (
    CAT_FEATURES,
    DEFAULT_FEATURES,
    FEATURES,
    NUMERIC_FEATURES,
    OPT_IN_FEATURES,
)
from musicrec.columns import Columns as C
from musicrec.config import ALSConfig, RankerConfig, SimilarConfig
from musicrec.features import collect_features
from musicrec.prepare import PreparedData
from musicrec.split import choose_window_start, split_by_time

ALS_CFG = ALSConfig(factors=8, iterations=4, tune=False)
SIM_CFG = SimilarConfig(k=8)
CFG = RankerConfig(
    als_candidates=20, popular_candidates=10, similar_candidates=10, recent_tracks=3, recent_days=14
)


def features_at(
    events: pd.DataFrame, items: pd.DataFrame, end: pd.Timestamp, users: np.ndarray
) -> pd.DataFrame:
    """The whole first-stage path: split the events at `end`, fit on the history,
    generate candidates for `users`, collect their features."""
    split = split_by_time(events, end)
    stage = FirstStage.fit(split.history, split.start, ALS_CFG, SIM_CFG, num_threads=1)
    cand = generate_candidates(stage, users, CFG)
    return collect_features(stage, items, cand, CFG)


@pytest.fixture(scope="module")
def end(tiny_prepared: PreparedData) -> pd.Timestamp:
    return choose_window_start(tiny_prepared.events[C.Datetime], 0.15)


@pytest.fixture(scope="module")
def stage(tiny_prepared: PreparedData, end: pd.Timestamp) -> FirstStage:
    hist = tiny_prepared.events[tiny_prepared.events[C.Datetime] < end]
    return FirstStage.fit(hist, end, ALS_CFG, SIM_CFG, num_threads=1)


@pytest.fixture(scope="module")
def feats(stage: FirstStage, tiny_prepared: PreparedData) -> pd.DataFrame:
    users = stage.matrix.users.ids[::3]
    return collect_features(stage, tiny_prepared.items, generate_candidates(stage, users, CFG), CFG)


def test_an_opt_in_feature_left_out_is_not_computed(
    stage: FirstStage,
    tiny_prepared: PreparedData,
    feats: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the default list the opt-in columns are absent, their code never runs, and
    every other column is the one computed with every feature; asked for, they are."""
    import musicrec.features as features_module

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("computed")

    cand = generate_candidates(stage, stage.matrix.users.ids[::3], CFG)
    monkeypatch.setattr(features_module, "_genre_cosine", boom)
    monkeypatch.setattr(features_module, "_genre_tables", boom)
    got = collect_features(stage, tiny_prepared.items, cand, CFG, DEFAULT_FEATURES)
    assert not set(OPT_IN_FEATURES) & set(got.columns)
    pd.testing.assert_frame_equal(got, feats.drop(columns=OPT_IN_FEATURES))
    with pytest.raises(RuntimeError, match="computed"):
        collect_features(stage, tiny_prepared.items, cand, CFG, FEATURES)


# ---------------------------------------------------------------------- leakage


def test_features_ignore_the_predicted_window(
    tiny_prepared: PreparedData, end: pd.Timestamp
) -> None:
    """Replacing every event on/after `end` changes no feature of any candidate.

    The new future makes every candidate a listen (right at `end` and later), adds new
    users and tracks, and drops the real future: any feature reading the window it
    predicts (popularity, recency, user activity, similarity, labels) would move."""
    events, items = tiny_prepared.events, tiny_prepared.items
    past = events[events[C.Datetime] < end]
    users = past[C.User].unique()[::2]
    before = features_at(events, items, end, users)

    rng = np.random.default_rng(0)
    listened = before[[C.User, C.Item]].copy()
    listened[C.Datetime] = end + pd.to_timedelta(rng.integers(0, 20 * 86_400, len(listened)), "s")
    listened.loc[listened.index[:50], C.Datetime] = end  # exactly at the window start
    listened[C.Seq] = np.int16(30_000)
    strangers = pd.DataFrame(
        {
            C.User: np.arange(10**6, 10**6 + 30, dtype=np.int32),
            C.Item: rng.choice(items[C.Item].to_numpy(), 30),
            C.Datetime: end + pd.Timedelta(days=1),
            C.Seq: np.int16(1),
        }
    )
    future = pd.concat([listened, strangers], ignore_index=True).astype(events.dtypes.to_dict())
    changed = pd.concat([future, past], ignore_index=True)
    assert len(changed) != len(events)
    after = features_at(changed, items, end, users)

    key = [C.User, C.Item]
    pd.testing.assert_frame_equal(
        before.sort_values(key).reset_index(drop=True),
        after.sort_values(key).reset_index(drop=True),
    )


def test_history_is_strictly_before_end(stage: FirstStage, end: pd.Timestamp) -> None:
    assert stage.history[C.Datetime].max() < end
    assert stage.history[C.Datetime].max() >= end - pd.Timedelta(days=1)


# ------------------------------------------------------------------ the columns


def test_every_feature_is_present_and_candidates_kept(
    feats: pd.DataFrame, stage: FirstStage
) -> None:
    assert set(FEATURES) <= set(feats.columns)
    assert FEATURES == NUMERIC_FEATURES + CAT_FEATURES
    for col in NUMERIC_FEATURES:
        assert pd.api.types.is_numeric_dtype(feats[col]), col
    # statistics of users and items with history are always defined
    for col in ("item_listeners", "item_age_days", "user_listens", "user_tenure_days"):
        assert feats[col].notna().all(), col
    for col in ("als_score", "profile_sim", "sim_max_latest"):
        assert feats[col].notna().all(), col
    for col in ("profile_sim", "sim_max_latest", "sim_mean_latest"):
        assert feats[col].between(-1.0 - 1e-4, 1.0 + 1e-4).all(), col
    assert (feats["sim_mean_latest"] <= feats["sim_max_latest"] + 1e-6).all()
    assert feats["user_genre_cosine"].between(0.0, 1.0 + 1e-5).all()
    assert (feats["user_genre_cosine"] > 0).mean() > 0.5
    assert (feats["n_sources"] == feats[["src_als", "src_pop", "src_sim"]].sum(axis=1)).all()
    assert (feats["item_days_since_last"] > 0).all()
    assert (feats["item_age_days"] >= feats["item_days_since_last"]).all()


def test_features_match_naive_computations(
    feats: pd.DataFrame, stage: FirstStage, tiny_prepared: PreparedData
) -> None:
    hist, items = stage.history, tiny_prepared.items.set_index(C.Item)
    end = stage.end
    recent = hist[hist[C.Datetime] >= end - pd.Timedelta(days=CFG.recent_days)]
    f = stage.als.item_factors.astype(np.float64)
    normed = f / np.linalg.norm(f, axis=1)[:, None]
    latest = latest_tracks(hist, CFG.recent_tracks)
    day = pd.Timedelta(days=1)
    n_listen = hist.groupby(C.Item).size()
    log_pop = np.log1p(n_listen)
    sample = feats.sample(150, random_state=0)
    rows = cast(list[dict[str, Any]], sample.to_dict("records"))
    genre_of = dict(zip(items.index.tolist(), items[C.MainGenre].tolist(), strict=True))
    artist_of = dict(zip(items.index.tolist(), items[C.MainArtist].tolist(), strict=True))
    for r in rows:
        u, t = r[C.User], r[C.Item]
        ih, uh = hist[hist[C.Item] == t], hist[hist[C.User] == u]
        assert r["item_listeners"] == len(ih)
        assert r["item_listeners_recent"] == (recent[C.Item] == t).sum()
        assert r["item_recent_share"] == pytest.approx(
            (recent[C.Item] == t).sum() / max(len(ih), 1), abs=1e-6
        )
        assert r["item_age_days"] == pytest.approx((end - ih[C.Datetime].min()) / day, rel=1e-5)
        assert r["item_days_since_last"] == pytest.approx(
            (end - ih[C.Datetime].max()) / day, rel=1e-5
        )
        assert r["user_listens"] == len(uh)
        assert r["user_listens_recent"] == (recent[C.User] == u).sum()
        assert r["user_tenure_days"] == pytest.approx((end - uh[C.Datetime].min()) / day, rel=1e-5)
        assert r["user_days_since_last"] == pytest.approx(
            (end - uh[C.Datetime].max()) / day, rel=1e-5
        )
        assert r["item_pop_vs_user"] == pytest.approx(
            np.log1p(len(ih)) - log_pop[uh[C.Item]].mean(), abs=1e-4
        )
        genre, artist = genre_of[t], artist_of[t]
        u_genres = items.loc[uh[C.Item], C.MainGenre].to_numpy()
        u_artists = items.loc[uh[C.Item], C.MainArtist].to_numpy()
        n_genre = (u_genres == genre).sum() if genre >= 0 else 0
        n_artist = (u_artists == artist).sum() if artist >= 0 else 0
        assert r["user_genre_share"] == pytest.approx(n_genre / len(uh), abs=1e-6)
        assert r["user_artist_share"] == pytest.approx(n_artist / len(uh), abs=1e-6)
        assert r["user_artist_listens"] == n_artist
        # genre profile: listens per genre over every genre of every heard track
        profile: dict[int, int] = {}
        for g_list in items.loc[uh[C.Item], C.GenreIds]:
            for g in set(g_list):
                profile[g] = profile.get(g, 0) + 1
        t_genres = set(items.loc[t, C.GenreIds])
        norm = np.sqrt(sum(v * v for v in profile.values()))
        want = sum(profile.get(g, 0) for g in t_genres) / (norm * np.sqrt(len(t_genres)))
        assert r["user_genre_cosine"] == pytest.approx(want if t_genres else 0.0, abs=1e-5)
        assert r["main_genre"] == str(genre)
        # first-stage scores and similarities from the ALS factors
        uc, ic = stage.als.users.codes(np.array([u]))[0], stage.als.items.codes(np.array([t]))[0]
        assert r["als_score"] == pytest.approx(
            float(stage.als.user_factors[uc] @ stage.als.item_factors[ic]), abs=1e-4
        )
        lt = stage.als.items.codes(latest[latest[C.User] == u][C.Item].to_numpy())
        cos = normed[lt] @ normed[ic]
        assert r["sim_max_latest"] == pytest.approx(cos.max(), abs=1e-4)
        assert r["sim_mean_latest"] == pytest.approx(cos.mean(), abs=1e-4)
        prof = normed[stage.als.items.codes(uh[C.Item].to_numpy())].mean(axis=0)
        prof /= np.linalg.norm(prof)
        assert r["profile_sim"] == pytest.approx(float(prof @ normed[ic]), abs=1e-4)


def test_genre_min_listeners_hides_the_genre_of_rarely_heard_candidates(
    feats: pd.DataFrame, stage: FirstStage, tiny_prepared: PreparedData
) -> None:
    """At most N listeners in the history: no genre (main_genre "-1", user_genre_share and
    user_genre_cosine 0); every other row and every other feature as without the setting."""
    n = int(feats["item_listeners"].median())
    cfg = CFG.model_copy(update={"genre_min_listeners": n})
    users = stage.matrix.users.ids[::3]
    masked = collect_features(
        stage, tiny_prepared.items, generate_candidates(stage, users, cfg), cfg
    )
    rare = masked["item_listeners"].to_numpy() <= n
    assert 0 < rare.sum() < len(masked)
    assert (masked.loc[rare, "main_genre"] == "-1").all()
    assert (masked.loc[rare, "user_genre_share"] == 0).all()
    assert (masked.loc[rare, "user_genre_cosine"] == 0).all()
    assert (feats.loc[rare, "main_genre"] != "-1").any()  # there was a genre to hide
    assert (feats.loc[rare, "user_genre_cosine"] > 0).any()
    genre = ["main_genre", "user_genre_share", "user_genre_cosine"]
    pd.testing.assert_frame_equal(masked.loc[~rare], feats.loc[~rare])
    pd.testing.assert_frame_equal(masked.drop(columns=genre), feats.drop(columns=genre))


def test_counts_hold_when_the_history_repeats_a_listen(
    stage: FirstStage, tiny_prepared: PreparedData
) -> None:
    """Prepared histories have one row per (user, track), and the statistics then read the
    first stage's binary matrix; a history with repeated listens must count every row."""
    hist = stage.history
    repeats = hist.sample(frac=0.3, random_state=1).copy()
    repeats[C.Datetime] = repeats[C.Datetime] - pd.Timedelta(hours=5)
    doubled = pd.concat([hist, repeats], ignore_index=True)
    assert doubled.duplicated([C.User, C.Item]).any()
    rep = FirstStage(
        doubled, stage.end, stage.matrix, stage.als, stage.popular, stage.similar
    )  # the same pairs, so the same binary matrix, first-stage model and similar tracks
    items = tiny_prepared.items
    users = stage.matrix.users.ids[::5]
    feats = collect_features(rep, items, generate_candidates(rep, users, CFG), CFG)
    by_item = items.set_index(C.Item)
    n_listen = doubled.groupby(C.Item).size()
    sample = feats.sample(120, random_state=2)
    checked_repeats = 0
    for r in cast(list[dict[str, Any]], sample.to_dict("records")):
        u, t = r[C.User], r[C.Item]
        uh = doubled[doubled[C.User] == u]
        checked_repeats += int(uh.duplicated([C.User, C.Item]).any())
        assert r["item_listeners"] == n_listen.get(t, 0)
        assert r["user_listens"] == len(uh)
        assert r["item_age_days"] == pytest.approx(
            (stage.end - doubled[doubled[C.Item] == t][C.Datetime].min()) / pd.Timedelta(days=1),
            rel=1e-5,
        )
        artist = by_item.loc[t, C.MainArtist]
        n_artist = (by_item.loc[uh[C.Item], C.MainArtist].to_numpy() == artist).sum()
        assert r["user_artist_listens"] == (n_artist if artist >= 0 else 0)
        assert r["item_pop_vs_user"] == pytest.approx(
            np.log1p(n_listen.get(t, 0)) - np.log1p(n_listen[uh[C.Item]]).mean(), abs=1e-4
        )
    assert checked_repeats > 50  # most sampled users have a repeated listen


def test_attribute_pairs_and_first_last_on_a_hand_example() -> None:
    import scipy.sparse as sp

    from musicrec.features import _attribute_pairs, _first_last

    # 3 users x 4 items listen counts; items' attributes 2, 0, 2 and unknown (-1)
    counts = sp.csr_matrix(np.array([[1, 0, 0, 5], [0, 0, 0, 0], [2, 1, 3, 0]], dtype=np.float32))
    keys, n = _attribute_pairs(counts, np.array([2, 0, 2, -1]), 4)
    # keys user * 4 + attribute + 1; item 3's unknown attribute makes no pair
    assert keys.tolist() == [0 * 4 + 3, 2 * 4 + 1, 2 * 4 + 3]
    assert n.tolist() == [1, 1, 5]

    dates = np.array(["2022-01-03", "2022-01-01", "2022-01-02", "2022-01-05"], "datetime64[D]")
    first, last = _first_last(np.array([1, 1, 0, 1]), dates, 3)
    assert first.dtype == last.dtype == np.dtype("datetime64[ns]")
    assert first[:2].astype("datetime64[D]").tolist() == [dates[2], dates[1]]
    assert last[:2].astype("datetime64[D]").tolist() == [dates[2], dates[3]]
    assert np.isnat(first[2]) and np.isnat(last[2])  # code 2 never seen


@pytest.mark.parametrize("dense_cells", [None, 0], ids=["dense", "sorted keys"])
def test_genre_cosine_on_a_hand_example(
    dense_cells: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tracks 10 (genres 7, 9), 11 (genre 9 twice), 12 (none); user 0 heard 10 and 11,
    user 1 heard 12 only. Profiles: user 0 {7: 1, 9: 2}, user 1 {}. Both ways of reading
    the profiles (a dense users x genres table, or sorted keys when it would be large)."""
    import scipy.sparse as sp

    from musicrec import features
    from musicrec.features import _genre_cosine, _genre_matrix
    from musicrec.matrix import IdMap

    if dense_cells is not None:  # None: the package's limit, far above this example's
        monkeypatch.setattr(features, "DENSE_PROFILE_CELLS", dense_cells)

    items = pd.DataFrame({C.Item: [10, 11, 12], C.GenreIds: [[9, 7], [9, 9], []]})
    cat = IdMap(np.array([10, 11, 12], dtype=np.int64))
    g = _genre_matrix(items, cat)
    assert g.toarray().tolist() == [[1, 1], [0, 1], [0, 0]]  # genre codes: 7 -> 0, 9 -> 1
    counts = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1]], dtype=np.float32))
    st = {"item_genres": g, "hist_genres": g, "counts": counts}  # history columns = catalogue
    # pairs: (user 0, track 10), (0, 11), (0, 12), (1, 10), (0, 10) hidden, (0, 10) no user
    cu = np.array([0, 0, 0, 1, 0, 0])
    uk = np.array([True, True, True, True, True, False])
    c_cat = np.array([0, 1, 2, 0, 0, 0])
    hide = np.array([False, False, False, False, True, False])
    got = _genre_cosine(st, cu, uk, c_cat, hide)
    # (1*1 + 2*1) / (sqrt(5) * sqrt(2)); 2 / sqrt(5); the rest 0
    want = [3 / np.sqrt(10), 2 / np.sqrt(5), 0, 0, 0, 0]
    assert got.tolist() == pytest.approx(want, abs=1e-6)


def test_genre_cosine_reads_the_same_profiles_dense_or_sparse(
    stage: FirstStage,
    tiny_prepared: PreparedData,
    feats: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from musicrec import features

    monkeypatch.setattr(features, "DENSE_PROFILE_CELLS", 0)  # the sorted-key lookup
    users = stage.matrix.users.ids[::3]
    cand = generate_candidates(stage, users, CFG)
    sparse = collect_features(stage, tiny_prepared.items, cand, CFG)
    assert (feats["user_genre_cosine"] > 0).mean() > 0.5
    np.testing.assert_array_equal(sparse["user_genre_cosine"], feats["user_genre_cosine"])


def test_unit_item_factors_are_unit_rows_computed_once() -> None:
    from musicrec.als import ALSModel
    from musicrec.features import unit_item_factors
    from musicrec.matrix import IdMap

    factors = np.array([[3, 4], [0, 0], [1, 0]], dtype=np.float32)
    als = ALSModel(IdMap(np.array([1])), IdMap(np.array([5, 6, 7])), np.ones((1, 2)), factors)
    history = pd.DataFrame(
        {C.User: [1], C.Item: [5], C.Datetime: pd.to_datetime(["2022-01-01"]), C.Seq: [1]}
    )
    stage = FirstStage(history, pd.Timestamp("2022-02-01"), cast(Any, None), als, history, history)
    unit = unit_item_factors(stage)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0, 0], [1, 0]])
    assert unit_item_factors(stage) is unit  # cached per first stage


def test_history_stats_follow_the_catalogue_they_were_computed_for(
    stage: FirstStage, tiny_prepared: PreparedData
) -> None:
    """The per-stage cache of history statistics is keyed by the catalogue object (kept with
    them), so another catalogue gets its own (its genres here) and the first one's come
    back with it. (Keyed by id(), another catalogue could take a freed one's id.)"""
    users = stage.matrix.users.ids[::5]
    cand = generate_candidates(stage, users, CFG)
    items = tiny_prepared.items
    first = collect_features(stage, items, cand, CFG)
    no_genres = items.assign(
        genres=[[] for _ in range(len(items))],
        main_genre=np.full(len(items), -1, dtype=items[C.MainGenre].dtype),
    )
    other = collect_features(stage, no_genres, cand, CFG)
    assert (other["main_genre"] == "-1").all() and (first["main_genre"] != "-1").any()
    assert (other["user_genre_share"] == 0).all()
    pd.testing.assert_frame_equal(collect_features(stage, items, cand, CFG), first)


# ------------------------------------------------------- a first stage by hand


def _hand_features(cfg: RankerConfig | None = None) -> pd.DataFrame:
    """The features of five candidates of a first stage made by hand, indexed by (user,
    track). Catalogue (track: main genre, main artist, genres): 10: 5, 7, [5]; 11: 5, 7,
    [5]; 12 and 13: 0, 0, [0]; 14: 6, 8, [6]; 15: 6, 9, [6] (99 is not in it). History:
    user 1 heard 11 then 14, user 2 heard 10 then 12, user 3 heard 14. ALS items 10, 11,
    12, 14 are codes 0..3, with unit factors (1, 0), (0.8, 0.6), (0, 1), (0, 1): cosines
    10~11 0.8, 11~12 and 11~14 0.6, 10~12 and 10~14 0."""
    from musicrec.als import ALSModel
    from musicrec.matrix import InteractionMatrix
    from musicrec.popular import listeners_per_track

    items = pd.DataFrame(
        {
            C.Item: np.array([10, 11, 12, 13, 14, 15], np.int32),
            C.MainGenre: np.array([5, 5, 0, 0, 6, 6], np.int32),
            C.MainArtist: np.array([7, 7, 0, 0, 8, 9], np.int32),
            C.GenreIds: [[5], [5], [0], [0], [6], [6]],
        }
    )
    t = pd.Timestamp("2022-01-01")
    day = pd.Timedelta(days=1)
    history = pd.DataFrame(
        {
            C.User: np.array([1, 1, 2, 2, 3], np.int32),
            C.Item: np.array([11, 14, 10, 12, 14], np.int32),
            C.Datetime: [t, t + day, t, t + day, t + 2 * day],
            C.Seq: np.ones(5, np.int16),
        }
    )
    matrix = InteractionMatrix.from_events(history)
    assert matrix.items.ids.tolist() == [10, 11, 12, 14]
    factors = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.0, 2.0]])
    als = ALSModel(matrix.users, matrix.items, np.ones((3, 2)), factors)
    stage = FirstStage(
        history, t + 9 * day, matrix, als, listeners_per_track(history), history.iloc[:0]
    )
    pairs = [(1, 10), (2, 11), (2, 13), (3, 15), (1, 99)]
    cand = pd.DataFrame(
        {
            C.User: np.array([u for u, _ in pairs], np.int32),
            C.Item: np.array([i for _, i in pairs], np.int32),
            "src_als": np.ones(len(pairs), np.int8),
            "src_pop": np.zeros(len(pairs), np.int8),
            "src_sim": np.zeros(len(pairs), np.int8),
        }
    )
    cfg = cfg or RankerConfig(recent_tracks=2)
    return collect_features(stage, items, cand, cfg).set_index([C.User, C.Item])


def test_the_first_catalogue_row_keeps_its_genre_and_artist() -> None:
    """Track 10, the catalogue's first row (code 0), has a genre and an artist like any
    other, as a candidate and in a user's history."""
    f = _hand_features()
    # (1, 10): user 1 heard 11 (genre 5, artist 7) and 14; 10 is genre 5, artist 7
    assert f.loc[(1, 10), "main_genre"] == "5"
    assert f.loc[(1, 10), "user_genre_share"] == 0.5
    assert f.loc[(1, 10), "user_artist_share"] == 0.5
    assert f.loc[(1, 10), "user_artist_listens"] == 1
    # (2, 11): user 2's listen of 10 counts toward genre 5 and artist 7
    assert f.loc[(2, 11), "user_genre_share"] == 0.5
    assert f.loc[(2, 11), "user_artist_share"] == 0.5
    # a track outside the catalogue has no genre (-1) and no share
    assert f.loc[(1, 99), "main_genre"] == "-1"
    assert f.loc[(1, 99), "user_genre_share"] == 0 and f.loc[(1, 99), "user_artist_share"] == 0


def test_genre_and_artist_id_0_count_toward_the_users_share() -> None:
    """0 is a genre id and an artist id like any other: user 2 heard 12 (genre 0, artist 0)
    of 2 listens, so candidate 13 (genre 0, artist 0) has shares 1/2."""
    f = _hand_features()
    assert f.loc[(2, 13), "main_genre"] == "0"
    assert f.loc[(2, 13), "user_genre_share"] == 0.5
    assert f.loc[(2, 13), "user_artist_share"] == 0.5
    assert f.loc[(2, 13), "user_artist_listens"] == 1


def test_genre_cosine_of_a_one_listen_user_for_a_track_of_that_genre_only_is_1() -> None:
    """User 3 heard one track (genre 6): profile {6: 1}, norm 1; candidate 15 has genre 6
    only, so the cosine is 1 / (1 * sqrt(1)) = 1, not 0."""
    f = _hand_features()
    assert f.loc[(3, 15), "user_genre_cosine"] == pytest.approx(1.0)
    # user 1: profile {5: 1, 6: 1}; track 10: genre 5 -> 1 / sqrt(2)
    assert f.loc[(1, 10), "user_genre_cosine"] == pytest.approx(1 / np.sqrt(2))


def test_similarity_to_latest_counts_als_item_code_0() -> None:
    """Track 10 (ALS item code 0) counts as a latest track and as a candidate; a candidate
    the model does not know has no similarity (NaN)."""
    f = _hand_features()
    # (2, 11): user 2's latest are 12 (cosine 0.6) and 10 (0.8, code 0)
    assert f.loc[(2, 11), "sim_max_latest"] == pytest.approx(0.8)
    assert f.loc[(2, 11), "sim_mean_latest"] == pytest.approx(0.7)
    # (1, 10): candidate of code 0; user 1's latest are 14 (cosine 0) and 11 (0.8)
    assert f.loc[(1, 10), "sim_max_latest"] == pytest.approx(0.8)
    assert f.loc[(1, 10), "sim_mean_latest"] == pytest.approx(0.4)
    for pair in ((2, 13), (1, 99)):  # not ALS items
        assert np.isnan(f.loc[pair, "sim_max_latest"]) and np.isnan(f.loc[pair, "sim_mean_latest"])


def test_genre_cosine_is_0_when_every_candidate_hides_its_genre() -> None:
    """With `genre_min_listeners` above every candidate's listeners no pair is scored: the
    cosine column is still float zeros, not missing."""
    f = _hand_features(RankerConfig(recent_tracks=2, genre_min_listeners=10))
    assert (f["main_genre"] == "-1").all()
    assert f["user_genre_cosine"].dtype == np.float32
    assert f["user_genre_cosine"].tolist() == [0.0] * 5

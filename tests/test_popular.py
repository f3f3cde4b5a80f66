"""Top popular: listeners per track and the personalised (heard tracks removed) list."""

from __future__ import annotations

import numpy as np
import pandas as pd

from musicrec.columns import Columns as C
from musicrec.matrix import InteractionMatrix
from musicrec.popular import listeners_per_track, recommend_popular, top_popular_table


def _events(pairs: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=[C.User, C.Item]).astype(np.int32)


# track 5: 4 listeners, tracks 3 and 9: 2 each (tie -> lower id first), 7 and 1: 1 each
EVENTS = _events([(1, 5), (2, 5), (3, 5), (4, 5), (1, 9), (2, 9), (3, 3), (4, 3), (1, 7), (4, 1)])


def test_listeners_order_and_ties() -> None:
    pop = listeners_per_track(EVENTS)
    assert pop[C.Item].tolist() == [5, 3, 9, 1, 7]
    assert pop[C.Listeners].tolist() == [4, 2, 2, 1, 1]
    assert pop[C.Rank].tolist() == [1, 2, 3, 4, 5]


def test_listeners_match_a_groupby_on_random_data() -> None:
    rng = np.random.default_rng(5)
    ev = _events(
        list(zip(rng.integers(0, 200, 3_000), rng.zipf(1.5, 3_000) % 400, strict=True))
    ).drop_duplicates()
    pop = listeners_per_track(ev)
    ref = ev.groupby(C.Item)[C.User].nunique()
    assert dict(zip(pop[C.Item], pop[C.Listeners], strict=True)) == ref.to_dict()
    # listeners non-increasing, ids increasing within ties
    assert (np.diff(pop[C.Listeners]) <= 0).all()
    same = np.diff(pop[C.Listeners]) == 0
    assert (np.diff(pop[C.Item])[same] > 0).all()


def test_top_popular_table_with_names() -> None:
    items = pd.DataFrame(
        {
            C.Item: [1, 3, 5, 7, 9],
            C.TrackName: ["a", "b", "c", "d", "e"],
            C.ArtistNames: [["x"]] * 5,
            C.MainGenreName: ["pop"] * 5,
        }
    )
    top = top_popular_table(EVENTS, items, k=3)
    assert top[C.Item].tolist() == [5, 3, 9]
    assert top[C.Rank].tolist() == [1, 2, 3]
    assert top[C.TrackName].tolist() == ["c", "b", "e"]
    assert list(top.columns[:3]) == [C.Item, C.Rank, C.Listeners]


def test_recommend_popular_skips_heard_and_fills_from_deeper() -> None:
    pop = listeners_per_track(EVENTS)
    m = InteractionMatrix.from_events(EVENTS)
    recs = recommend_popular(pop, m, np.array([1, 2, 3, 4, 99]), k=2)
    by_user = {u: g[C.Item].tolist() for u, g in recs.groupby(C.User)}
    # user 1 heard 5, 9, 7 -> the top two unheard are 3 and 1
    assert by_user[1] == [3, 1]
    assert by_user[2] == [3, 1]  # heard 5, 9
    assert by_user[3] == [9, 1]  # heard 5, 3
    assert by_user[4] == [9, 7]  # heard 5, 3, 1
    assert by_user[99] == [5, 3]  # unknown user: plain top
    assert list(recs.columns) == C.Recommendations
    assert recs.groupby(C.User)[C.Rank].apply(list).map(lambda r: r == [1, 2]).all()


def test_recommend_popular_random_properties() -> None:
    rng = np.random.default_rng(11)
    n = 6_000
    ev = _events(
        list(zip(rng.integers(0, 300, n), rng.zipf(1.3, n) % 500, strict=True))
    ).drop_duplicates()
    pop = listeners_per_track(ev)
    m = InteractionMatrix.from_events(ev)
    users = m.users.ids
    k = 15
    recs = recommend_popular(pop, m, users, k)
    heard = set(zip(ev[C.User].tolist(), ev[C.Item].tolist(), strict=True))
    assert not any((u, i) in heard for u, i in zip(recs[C.User], recs[C.Item], strict=True))
    sizes = recs.groupby(C.User).size()
    assert set(sizes.index) == set(users.tolist())
    assert (sizes == k).all()  # 500 tracks: always k unheard ones
    assert not recs.duplicated([C.User, C.Item]).any()
    for _, g in recs.groupby(C.User):
        assert g[C.Rank].tolist() == list(range(1, k + 1))
        assert (np.diff(g[C.Score].to_numpy()) <= 0).all()
    # each user's list is exactly the popularity order with the heard tracks removed
    u0 = int(users[0])
    expected = [t for t in pop[C.Item].tolist() if (u0, t) not in heard][:k]
    assert recs[recs[C.User] == u0][C.Item].tolist() == expected


def test_recommend_popular_short_catalogue_and_no_users() -> None:
    pop = listeners_per_track(EVENTS)
    m = InteractionMatrix.from_events(EVENTS)
    recs = recommend_popular(pop, m, np.array([4]), k=10)
    assert recs[C.Item].tolist() == [9, 7]  # only two unheard tracks exist
    empty = recommend_popular(pop, m, np.array([], dtype=np.int32), k=10)
    assert len(empty) == 0
    assert list(empty.columns) == C.Recommendations


def test_recommend_popular_from_a_one_track_list() -> None:
    """A popular list of a single track is still a list: users who have not heard it get
    it (rank 1), the one who has gets nothing."""
    ev = _events([(1, 5)])
    pop = listeners_per_track(ev)
    assert pop[C.Item].tolist() == [5]
    recs = recommend_popular(pop, InteractionMatrix.from_events(ev), np.array([1, 2]), k=3)
    assert recs[C.User].tolist() == [2]
    assert recs[C.Item].tolist() == [5]
    assert recs[C.Rank].tolist() == [1]
    # k = 1 is a list of one too
    top1 = recommend_popular(
        listeners_per_track(EVENTS), InteractionMatrix.from_events(EVENTS), np.array([1, 99]), k=1
    )
    assert top1[C.Item].tolist() == [3, 5]


def test_the_listener_counts_agree_on_a_history_with_a_repeated_pair() -> None:
    """Listeners per track are counted in five places. The row counters (popular, plots,
    metrics, the ranker's features) agree, a repeated (user, track) counting twice; ALS's
    head of tracks counts distinct users, which is the same ranking once repeats are gone."""
    from musicrec import features, metrics, plots
    from musicrec.als import ALSModel, top_item_codes
    from musicrec.candidates import FirstStage

    # track 9: user 1 three times and user 4 (4 rows, 2 users); 5: users 1-3; 3: users 2, 4;
    # 7: user 3
    pairs = [(1, 9), (1, 5), (2, 5), (1, 9), (3, 5), (2, 3), (4, 9), (1, 9), (4, 3), (3, 7)]
    history = _events(pairs)
    t = pd.Timestamp("2022-01-01")
    history[C.Datetime] = [t + pd.Timedelta(hours=h) for h in range(len(pairs))]
    rows = {9: 4, 5: 3, 3: 2, 7: 1}
    tracks = np.array(sorted(rows), np.int32)
    expected = [rows[i] for i in tracks]

    pop = listeners_per_track(history)
    assert dict(zip(pop[C.Item], pop[C.Listeners], strict=True)) == rows
    drawn = plots._popularity(history)
    assert drawn.track_ids.tolist() == tracks.tolist()
    assert drawn.listeners.tolist() == expected
    hu, ht = history[C.User].to_numpy(), history[C.Item].to_numpy()
    counted, n_users = metrics._listener_counts(hu, ht, np.append(tracks, 42))
    assert counted.tolist() == [*expected, 0] and n_users == 4
    matrix = InteractionMatrix.from_events(history)
    als = ALSModel(matrix.users, matrix.items, np.ones((4, 2)), np.ones((4, 2)))
    stage = FirstStage(history, t + pd.Timedelta(days=1), matrix, als, pop, history.iloc[:0])
    catalog = pd.DataFrame({C.Item: tracks, C.MainGenre: 0, C.MainArtist: 0})
    stats = features._history_stats(stage, catalog, recent_days=30)
    assert stats["listeners"][matrix.items.codes(tracks)].tolist() == expected

    # ALS: distinct users, 5 (3) then 3 and 9 (2 each, the lower id first), then 7
    def als_head(n: int) -> list[int]:
        codes = top_item_codes(matrix, n)
        assert codes is not None
        return matrix.items.ids[codes].tolist()

    assert [als_head(n) for n in (1, 2, 3)] == [[5], [3, 5], [3, 5, 9]]
    first = listeners_per_track(history.drop_duplicates([C.User, C.Item]))
    for n in (1, 2, 3):
        assert als_head(n) == sorted(first[C.Item].head(n).tolist())
    assert first[C.Listeners].tolist() == [3, 2, 2, 1]

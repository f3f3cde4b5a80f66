"""Similar tracks: cosine of ALS item factors, top-k per track, no self-pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from musicrec.als import ALSModel
from musicrec.columns import Columns as C
from musicrec.matrix import IdMap
from musicrec.similar import similar_tracks


def random_model(n_items: int, factors: int = 6, seed: int = 0) -> ALSModel:
    rng = np.random.default_rng(seed)
    item_ids = np.sort(rng.choice(np.arange(10, 100_000), size=n_items, replace=False))
    item_f = rng.normal(size=(n_items, factors)).astype(np.float32)
    item_f[3] = 0.0  # a track without signal: cosine 0 with everything, no NaN
    return ALSModel(
        IdMap(np.array([1, 2])), IdMap(item_ids), np.ones((2, factors), np.float32), item_f
    )


def _cosine(model: ALSModel) -> np.ndarray:
    f = model.item_factors.astype(np.float64)
    norms = np.linalg.norm(f, axis=1)
    normed = f / np.where(norms > 0, norms, 1.0)[:, None]
    return normed @ normed.T


@pytest.mark.parametrize("batch_size", [7, 4096])
def test_similar_tracks_properties(batch_size: int) -> None:
    model = random_model(60)
    k = 5
    sim = similar_tracks(model, k, batch_size=batch_size, num_threads=1)
    assert list(sim.columns) == [C.Item1, C.Item2, C.Score, C.Rank]
    assert sim[C.Item1].dtype.kind == "i" and sim[C.Item2].dtype.kind == "i"
    assert not (sim[C.Item1] == sim[C.Item2]).any()
    assert set(sim[C.Item1]) == set(model.items.ids.tolist())
    assert (sim.groupby(C.Item1).size() == k).all()
    assert not sim.duplicated([C.Item1, C.Item2]).any()
    assert sim[C.Score].between(-1.0 - 1e-5, 1.0 + 1e-5).all()
    for _, g in sim.groupby(C.Item1):
        assert g[C.Rank].tolist() == list(range(1, k + 1))
        assert (np.diff(g[C.Score].to_numpy()) <= 1e-7).all()


def test_similar_tracks_match_brute_force_cosine() -> None:
    model = random_model(40, seed=2)
    k = 4
    sim = similar_tracks(model, k, num_threads=1)
    cos = _cosine(model)
    np.fill_diagonal(cos, -np.inf)
    codes1 = model.items.codes(sim[C.Item1].to_numpy())
    codes2 = model.items.codes(sim[C.Item2].to_numpy())
    # each score is the cosine of the pair ...
    assert np.allclose(sim[C.Score], cos[codes1, codes2], atol=1e-5)
    # ... and the k scores of a track are its k largest cosines with other tracks
    for c in range(len(model.items)):
        got = np.sort(sim[C.Score].to_numpy()[codes1 == c])[::-1]
        best = np.sort(cos[c])[::-1][:k]
        assert np.allclose(got, best, atol=1e-5)


def test_queries_restrict_the_tracks_queried_not_their_neighbours() -> None:
    model = random_model(50, seed=3)
    full = similar_tracks(model, 6, batch_size=4, num_threads=1)
    queries = np.array([7, 0, 31, 7, 12])  # codes, unsorted, with a repeat
    part = similar_tracks(model, 6, batch_size=4, num_threads=1, queries=queries)
    want_ids = set(model.items.ids[np.unique(queries)].tolist())
    assert set(part[C.Item1]) == want_ids
    # exactly the rows of those tracks in the full table (neighbours from every track)
    expect = full[full[C.Item1].isin(want_ids)].sort_values([C.Item1, C.Rank])
    got = part.sort_values([C.Item1, C.Rank])
    assert got[[C.Item1, C.Item2, C.Rank]].to_numpy().tolist() == (
        expect[[C.Item1, C.Item2, C.Rank]].to_numpy().tolist()
    )
    assert np.allclose(got[C.Score], expect[C.Score], atol=1e-6)
    assert len(similar_tracks(model, 6, num_threads=1, queries=np.array([], int))) == 0


def test_k_capped_by_catalogue_and_degenerate_models() -> None:
    model = random_model(5)
    sim = similar_tracks(model, 50, num_threads=1)
    assert (sim.groupby(C.Item1).size() == 4).all()  # every other track, no self
    one = ALSModel(
        IdMap(np.array([1])),
        IdMap(np.array([9])),
        np.ones((1, 3), np.float32),
        np.ones((1, 3), np.float32),
    )
    # no pairs, typed as a non-empty result is: the service loads such a similar.parquet
    empty = similar_tracks(one, 5)
    full = similar_tracks(model, 2, num_threads=1)
    assert len(empty) == 0 and empty.dtypes.to_dict() == full.dtypes.to_dict()
    assert str(empty[C.Item1].dtype) == "int32" and str(empty[C.Rank].dtype) == "int16"


def test_a_scored_head_as_small_as_k_still_fills_the_tracks_outside_it() -> None:
    """With `items` (the scored head), a track outside the head has every head track as a
    candidate, a track inside it every other one: lists of len(head) and len(head) - 1
    (both were one short: the self slot was reserved for every track)."""
    model = random_model(30, seed=4)
    head = np.array([2, 5, 9])
    sim = similar_tracks(model, 3, num_threads=1, items=head)
    sizes = sim.groupby(C.Item1).size()
    in_head = set(model.items.ids[head].tolist())
    assert set(sim[C.Item2]) <= in_head and not (sim[C.Item1] == sim[C.Item2]).any()
    assert all(sizes[i] == (2 if i in in_head else 3) for i in model.items.ids.tolist())
    one = similar_tracks(model, 5, num_threads=1, items=np.array([2]))
    assert len(one) == 29 and set(one[C.Item2]) == {int(model.items.ids[2])}


def test_batches_are_joined_into_one_table_with_a_fresh_index() -> None:
    """The batches' frames are concatenated with a new 0..n-1 index: 5 tracks x 2
    neighbours = 10 rows in batches of 2 queries, labelled 0..9 (each batch's own 0..3
    index kept would repeat labels, and `.loc` would return several rows per label)."""
    model = random_model(5, seed=1)
    sim = similar_tracks(model, 2, batch_size=2, num_threads=1)
    assert sim.index.tolist() == list(range(10))


def clustered_model(n_items: int, seed: int) -> ALSModel:
    """Item factors close to a few centres: many near-tied cosines, as in real catalogues."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 16)).astype(np.float32)
    f = centres[rng.integers(0, 6, n_items)] + 0.01 * rng.normal(size=(n_items, 16))
    return ALSModel(
        IdMap(np.array([1])), IdMap(np.arange(n_items)), np.ones((1, 16), np.float32), f
    )


def test_a_tracks_similar_list_is_the_same_whatever_else_its_batch_holds() -> None:
    """The label windows query only their users' latest tracks, serving queries every
    track: the same track's list (ids, scores, ranks) must not depend on which other
    tracks share its batch (before `stable_topk`, 21,696 of 150,000 ranks of a model like
    this one moved between batches of 1 and 4,096)."""
    model = clustered_model(1500, seed=8)
    full = similar_tracks(model, 30, batch_size=4096)
    queries = np.arange(0, 1500, 7)
    for size in (1, 13):
        part = similar_tracks(model, 30, batch_size=size, queries=queries)
        want = full[full[C.Item1].isin(model.items.ids[queries])].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, want)

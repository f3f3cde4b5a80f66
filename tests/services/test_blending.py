"""The serving rules: blending, merging online candidates, cold start."""

from __future__ import annotations

import random
from itertools import zip_longest
from typing import Any

import pytest

from musicrec.artifacts import ArtifactPaths
from musicrec.blending import (
    blend,
    cold_start,
    dedupe,
    merge_by_score,
    top_up,
)
from musicrec.service_recommendations import OfflineRecs


def test_blend_alternates_and_keeps_the_longer_tail() -> None:
    assert blend([1, 2, 3], [10, 20], 10) == [1, 10, 2, 20, 3]
    assert blend([1], [10, 20, 30], 10) == [1, 10, 20, 30]
    assert blend([], [5, 6], 10) == [5, 6]
    assert blend([0], [], 10) == [0]  # 0 is an id like any other
    assert blend([], [0, 1], 10) == [0, 1]


def test_dedupe_top_up() -> None:
    assert dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]
    assert top_up([1, 2], [2, 3, 4, 5], 4, banned={3}) == [1, 2, 4, 5]
    assert top_up([1, 2, 3], [4], 2) == [1, 2]
    assert top_up([1], [1, 2], 5) == [1, 2]  # the fill runs out: fewer than k


def test_merge_by_score_takes_the_best_score_over_sources() -> None:
    sources = [([10, 11, 12], [0.9, 0.5, 0.1]), ([12, 13], [0.95, 0.5])]
    # 12 is found twice: its best score (0.95) counts; ties (11, 13 at 0.5) keep first-met order
    assert merge_by_score(sources, 10) == [12, 10, 11, 13]
    assert merge_by_score(sources, 2) == [12, 10]
    assert merge_by_score(sources, 10, banned={12, 11}) == [10, 13]
    assert merge_by_score([], 5) == []


def test_blend_interleaves_online_and_offline() -> None:
    assert blend([1, 2, 3], [10, 20, 30], 6) == [1, 10, 2, 20, 3, 30]


def test_blend_drops_duplicates_and_recent_then_tops_up_to_exactly_k() -> None:
    online = [1, 2, 3]
    offline = [2, 10, 3, 20]
    recent = {10}
    popular = [1, 99, 98, 97]
    # interleave: 1 2 2 10 3 3 20 -> dedupe: 1 2 10 3 20 -> minus recent: 1 2 3 20
    assert blend(online, offline, 6, recent, popular) == [1, 2, 3, 20, 99, 98]
    assert blend(online, offline, 3, recent, popular) == [1, 2, 3]


def test_blend_never_returns_recent_tracks_even_from_the_popular_list() -> None:
    recs = blend([], [], 3, exclude={1, 2}, popular=[1, 2, 3, 4, 5])
    assert recs == [3, 4, 5]


def test_blend_returns_what_exists_when_the_catalogue_is_smaller_than_k() -> None:
    assert blend([1], [2], 10, exclude=(), popular=[1, 2, 3]) == [1, 2, 3]
    assert blend([1], [2], 0) == []


def test_cold_start_is_the_top_of_the_popular_list() -> None:
    assert cold_start([5, 4, 3], 2) == [5, 4]
    assert cold_start([5, 4, 3], 10) == [5, 4, 3]


@pytest.fixture(scope="module")
def offline(artifacts: dict[str, Any]) -> OfflineRecs:
    return OfflineRecs.load(ArtifactPaths(artifacts["root"]))


def test_offline_known_user_gets_the_rankers_list_in_rank_order(
    offline: OfflineRecs, artifacts: dict[str, Any]
) -> None:
    user = artifacts["warm_user"]
    assert offline.users.span(user) is not None  # the pipeline gave the user a list
    assert offline.offline(user, 10) == artifacts["recs"][user][:10]
    assert offline.offline(user, 1000) == artifacts["recs"][user]


def test_offline_cold_user_gets_top_popular(
    offline: OfflineRecs, artifacts: dict[str, Any]
) -> None:
    cold = artifacts["cold_user"]
    assert offline.users.span(cold) is None
    assert offline.offline(cold, 7) == artifacts["popular"][:7]


def test_offline_short_list_is_not_padded(offline: OfflineRecs, artifacts: dict[str, Any]) -> None:
    user = artifacts["short_user"]
    assert offline.offline(user, 100) == artifacts["recs"][user]
    assert len(artifacts["recs"][user]) < 100


def test_blend_is_the_composition_of_the_rules_on_random_lists() -> None:
    """The single-pass `blend` gives exactly the rules applied one after the other:
    interleave, drop duplicates, drop recent tracks, top up (spelled out here)."""
    rng = random.Random(5)
    for _ in range(500):
        online = [rng.randrange(40) for _ in range(rng.randrange(15))]
        offline = [rng.randrange(40) for _ in range(rng.randrange(30))]
        recent = {rng.randrange(40) for _ in range(rng.randrange(8))}
        popular = rng.sample(range(60), rng.randrange(60))
        k = rng.randrange(-1, 50)
        interleaved = [t for pair in zip_longest(online, offline) for t in pair if t is not None]
        merged = [t for t in dedupe(interleaved) if t not in recent]
        expected = top_up(merged, popular, k, recent) if k > 0 else []
        assert blend(online, offline, k, recent, popular) == expected


def test_merge_by_score_ties_keep_first_met_order() -> None:
    sources = [([5, 6, 7], [0.5, 0.9, 0.5]), ([8, 5, 9], [0.5, 0.2, 0.9])]
    assert merge_by_score(sources, 10) == [6, 9, 5, 7, 8]
    assert merge_by_score(sources, 2, banned={6}) == [9, 5]


def test_merge_by_score_refuses_tracks_and_scores_of_different_lengths() -> None:
    """A source with fewer scores than tracks is a bug upstream: it raises rather than
    silently dropping the tracks left without a score."""
    with pytest.raises(ValueError):
        merge_by_score([([1, 2, 3], [0.9, 0.5])], 5)
    with pytest.raises(ValueError):
        merge_by_score([([4], [0.3]), ([1], [0.9, 0.5])], 5)

"""The contract every recommender of the pipeline keeps, checked on the tiny run's output.

Recommenders: personalised top popular (as the evaluation builds it), ALS
(`personal_als.parquet`) and the ranker (`recommendations.parquet`). Each returns
(user_id, track_id, score, rank) with int ids, ranks 1..n per user, scores non-increasing
with rank, no duplicate pair, no track the user heard before the test window, and `k`
tracks per user (the catalogue is large enough). Users unknown to the pipeline get the
top-popular list (the services' cold-start rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from conftest import TinyPipeline

from musicrec.blending import cold_start
from musicrec.columns import Columns as C
from musicrec.heard import HeardIndex
from musicrec.matrix import InteractionMatrix
from musicrec.popular import listeners_per_track, recommend_popular

RECOMMENDERS = ["top_popular", "als", "ranker"]


@dataclass(frozen=True)
class Produced:
    recs: pd.DataFrame
    k: int  # list length the pipeline asks for
    users: np.ndarray  # users that must get a list


@pytest.fixture(scope="module")
def history(tiny_pipeline: TinyPipeline) -> pd.DataFrame:
    events = pd.read_parquet(tiny_pipeline.paths.events)
    start = pd.Timestamp(tiny_pipeline.metrics["split"]["test_start"])
    return events[events[C.Datetime] < start]


@pytest.fixture(scope="module")
def test_window(tiny_pipeline: TinyPipeline) -> pd.DataFrame:
    events = pd.read_parquet(tiny_pipeline.paths.events)
    start = pd.Timestamp(tiny_pipeline.metrics["split"]["test_start"])
    return events[events[C.Datetime] >= start]


@pytest.fixture(scope="module")
def produced(tiny_pipeline: TinyPipeline, history: pd.DataFrame) -> dict[str, Produced]:
    cfg, paths = tiny_pipeline.cfg, tiny_pipeline.paths
    hist_users = np.unique(history[C.User])
    kmax = max(cfg.eval.k_precision, cfg.eval.k_ndcg)
    pop = recommend_popular(
        listeners_per_track(history), InteractionMatrix.from_events(history), hist_users, kmax
    )
    return {
        "top_popular": Produced(pop, kmax, hist_users),
        "als": Produced(pd.read_parquet(paths.personal_als), cfg.als.n_recs, hist_users),
        "ranker": Produced(pd.read_parquet(paths.recommendations), cfg.top_k, hist_users),
    }


@pytest.fixture(params=RECOMMENDERS)
def rec(request: pytest.FixtureRequest, produced: dict[str, Produced]) -> Produced:
    return produced[request.param]


def test_schema(rec: Produced) -> None:
    df = rec.recs
    assert list(df.columns) == C.Recommendations
    assert df[C.User].dtype.kind == "i"
    assert df[C.Item].dtype.kind == "i"
    assert df[C.Rank].dtype.kind == "i"
    assert df[C.Score].dtype.kind == "f"
    assert df[C.Score].notna().all()
    assert len(df) > 0


def test_ranks_consecutive_and_scores_non_increasing(rec: Produced) -> None:
    df = rec.recs.sort_values([C.User, C.Rank], kind="stable")
    pos = df.groupby(C.User).cumcount() + 1
    assert (df[C.Rank].to_numpy() == pos.to_numpy()).all()
    same_user = df[C.User].to_numpy()[1:] == df[C.User].to_numpy()[:-1]
    steps = np.diff(df[C.Score].to_numpy().astype(np.float64))
    assert (steps[same_user] <= 1e-9).all()


def test_no_duplicates(rec: Produced) -> None:
    assert not rec.recs.duplicated([C.User, C.Item]).any()
    assert not rec.recs.duplicated([C.User, C.Rank]).any()


def test_no_already_heard_tracks(rec: Produced, history: pd.DataFrame) -> None:
    heard = history[[C.User, C.Item]].assign(_heard=True)
    both = rec.recs.merge(heard, on=[C.User, C.Item], how="left")
    assert both["_heard"].isna().all()


def test_k_per_user_for_every_user_with_history(rec: Produced, history: pd.DataFrame) -> None:
    sizes = rec.recs.groupby(C.User).size()
    assert set(sizes.index.tolist()) == set(rec.users.tolist())
    assert (sizes == rec.k).all()
    assert history[C.Item].nunique() > rec.k + history.groupby(C.User).size().max()


def test_tracks_are_catalogue_tracks(rec: Produced, tiny_pipeline: TinyPipeline) -> None:
    items = pd.read_parquet(tiny_pipeline.paths.items)
    assert rec.recs[C.Item].isin(items[C.Item]).all()


def test_cold_users_have_no_personal_list(rec: Produced, test_window: pd.DataFrame) -> None:
    cold = np.setdiff1d(test_window[C.User].unique(), rec.users)
    assert len(cold) > 0  # the tiny data has users who start in the test window
    assert not rec.recs[C.User].isin(cold).any()


# ----------------------------------------------------------------- cold start


def test_top_popular_file_is_the_history_popularity(
    tiny_pipeline: TinyPipeline, history: pd.DataFrame
) -> None:
    top = pd.read_parquet(tiny_pipeline.paths.top_popular)
    expected = listeners_per_track(history).head(tiny_pipeline.cfg.top_popular_k)
    assert top[C.Item].tolist() == expected[C.Item].tolist()
    assert top[C.Listeners].tolist() == expected[C.Listeners].tolist()
    assert top[C.Rank].tolist() == list(range(1, len(top) + 1))


def test_cold_user_gets_the_top_popular_list(
    tiny_pipeline: TinyPipeline, test_window: pd.DataFrame, history: pd.DataFrame
) -> None:
    from musicrec.service_recommendations import OfflineRecs

    paths = tiny_pipeline.paths
    top = pd.read_parquet(paths.top_popular).sort_values(C.Rank)
    offline = OfflineRecs.load(paths)
    cold_in_test = np.setdiff1d(test_window[C.User].unique(), history[C.User].unique())
    never_seen = int(max(history[C.User].max(), test_window[C.User].max())) + 1
    k = 10
    for user in [int(cold_in_test[0]), never_seen]:
        assert offline.users.span(user) is None  # no personal list
        assert offline.offline(user, k) == top[C.Item].head(k).tolist()
    assert cold_start(top[C.Item].tolist(), k) == top[C.Item].head(k).tolist()
    # a warm user gets the ranker's own list instead
    recs = pd.read_parquet(paths.recommendations)
    warm = int(recs[C.User].iloc[0])
    mine = recs[recs[C.User] == warm].sort_values(C.Rank)[C.Item].head(k).tolist()
    assert offline.offline(warm, k) == mine


def test_heard_index_is_the_history_the_served_lists_were_fit_on(
    tiny_pipeline: TinyPipeline, history: pd.DataFrame
) -> None:
    """`recommendations/heard/` holds every (user, track) pair before the test window and
    nothing else: what the services drop from the online part and the popular top-up."""
    index = HeardIndex.load(tiny_pipeline.paths.heard_dir)
    pairs = history[[C.User, C.Item]].drop_duplicates().sort_values([C.User, C.Item])
    assert index.users.tolist() == sorted(history[C.User].unique().tolist())
    got_users = np.repeat(index.users, np.diff(index.offsets))
    assert got_users.tolist() == pairs[C.User].tolist()
    assert np.asarray(index.tracks).tolist() == pairs[C.Item].tolist()

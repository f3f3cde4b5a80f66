"""Candidate generators for the ranker: ALS top-N, popular top-M and tracks similar to the
user's latest listens. Every generator filters already-heard tracks.

`FirstStage` holds the models fitted on one history window; `generate_candidates` merges
the sources into one frame with a row per (user, track) and which sources proposed it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from musicrec.als import ALSModel
from musicrec.columns import Columns as C
from musicrec.config import ALSConfig, RankerConfig, SimilarConfig
from musicrec.matrix import InteractionMatrix, seen_mask
from musicrec.popular import listeners_per_track, recommend_popular
from musicrec.similar import similar_tracks

log = logging.getLogger(__name__)

SRC_ALS, SRC_POP, SRC_SIM = "src_als", "src_pop", "src_sim"


@dataclass
class FirstStage:
    """Models fitted on events strictly before `end` (the start of the predicted window)."""

    history: pd.DataFrame
    end: pd.Timestamp
    matrix: InteractionMatrix
    als: ALSModel
    popular: pd.DataFrame  # listeners_per_track(history)
    similar: pd.DataFrame  # track_id_1, track_id_2, score, rank

    @classmethod
    def fit(
        cls,
        history: pd.DataFrame,
        end: pd.Timestamp,
        als_cfg: ALSConfig,
        sim_cfg: SimilarConfig,
        num_threads: int = 0,
    ) -> FirstStage:
        matrix = InteractionMatrix.from_events(history)
        als = ALSModel.fit(matrix, als_cfg, num_threads=num_threads)
        sim = similar_tracks(als, sim_cfg.k, sim_cfg.batch_size, num_threads=num_threads)
        return cls(history, end, matrix, als, listeners_per_track(history), sim)


def latest_tracks(history: pd.DataFrame, n: int) -> pd.DataFrame:
    """The n most recent (user, track) rows per user, with `recency` 1 = newest."""
    cols = [C.User, C.Item, C.Datetime, C.Seq]
    h = history[cols].sort_values([C.User, C.Datetime, C.Seq], ascending=[True, False, False])
    h = h.groupby(C.User, sort=False).head(n)
    h = h.assign(recency=h.groupby(C.User, sort=False).cumcount() + 1)
    return h[[C.User, C.Item, "recency"]].reset_index(drop=True)


def similar_to_latest(stage: FirstStage, users: np.ndarray, n_latest: int, n: int) -> pd.DataFrame:
    """Tracks similar to each user's latest `n_latest` listens: user, track, best cosine."""
    recent = latest_tracks(stage.history[stage.history[C.User].isin(users)], n_latest)
    sim = stage.similar[[C.Item1, C.Item2, C.Score]]
    pairs = recent.merge(sim, left_on=C.Item, right_on=C.Item1, how="inner")
    pairs = pairs[[C.User, C.Item2, C.Score]].rename(columns={C.Item2: C.Item})
    pairs = pairs.groupby([C.User, C.Item], as_index=False, sort=False).agg({C.Score: "max"})
    seen = seen_mask(
        stage.matrix.csr,
        stage.matrix.users.codes(pairs[C.User].to_numpy()),
        stage.matrix.items.codes(pairs[C.Item].to_numpy()),
    )
    pairs = pairs[~seen]
    pairs = pairs.sort_values([C.User, C.Score], ascending=[True, False], kind="stable")
    pairs = pairs.groupby(C.User, sort=False).head(n).copy()
    pairs[C.Rank] = (pairs.groupby(C.User, sort=False).cumcount() + 1).astype(np.int16)
    return pairs.reset_index(drop=True)


def generate_candidates(stage: FirstStage, users: np.ndarray, cfg: RankerConfig) -> pd.DataFrame:
    """One row per (user, track) proposed by any source, for users with history.

    Columns: user_id, track_id, src_als/src_pop/src_sim (0/1), als_rank, pop_rank, sim_rank
    (NaN when the source did not propose it) and sim_source_score.
    """
    users = np.intersect1d(np.asarray(users), stage.matrix.users.ids)
    parts = []
    als = stage.als.recommend(users, stage.matrix, cfg.als_candidates)
    parts.append(als[[C.User, C.Item, C.Rank]].rename(columns={C.Rank: "als_rank"}))
    if cfg.popular_candidates > 0:
        pop = recommend_popular(stage.popular, stage.matrix, users, cfg.popular_candidates)
        parts.append(pop[[C.User, C.Item, C.Rank]].rename(columns={C.Rank: "pop_rank"}))
    if cfg.similar_candidates > 0:
        sim = similar_to_latest(stage, users, cfg.recent_tracks, cfg.similar_candidates)
        parts.append(
            sim.rename(columns={C.Rank: "sim_rank", C.Score: "sim_source_score"})[
                [C.User, C.Item, "sim_rank", "sim_source_score"]
            ]
        )
    cand = parts[0]
    for p in parts[1:]:
        cand = cand.merge(p, on=[C.User, C.Item], how="outer")
    for src, col in ((SRC_ALS, "als_rank"), (SRC_POP, "pop_rank"), (SRC_SIM, "sim_rank")):
        cand[src] = cand[col].notna().astype(np.int8) if col in cand else np.int8(0)
        if col not in cand:
            cand[col] = np.nan
    if "sim_source_score" not in cand:
        cand["sim_source_score"] = np.nan
    cand[C.User] = cand[C.User].astype(np.int32)
    cand[C.Item] = cand[C.Item].astype(np.int32)
    log.info(
        "candidates: %d rows for %d users (%.1f per user)",
        len(cand),
        len(users),
        len(cand) / max(len(users), 1),
    )
    return cand

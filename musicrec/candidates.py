"""Candidate generators for the ranker: ALS top-N, popular top-M and tracks similar to the
user's latest listens. Every generator filters already-heard tracks.

`FirstStage` holds the models fitted on one history window; `generate_candidates` merges
the sources into one frame with a row per (user, track) and which sources proposed it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from musicrec.als import ALSModel, top_item_codes
from musicrec.columns import Columns as C
from musicrec.config import ALSConfig, RankerConfig, SimilarConfig
from musicrec.matrix import (
    InteractionMatrix,
    pair_keys,
    rows_of_keys,
    seen_mask,
    top_k_per_user,
)
from musicrec.popular import listeners_per_track, recommend_popular
from musicrec.similar import similar_tracks

log = logging.getLogger(__name__)

SRC_ALS, SRC_POP, SRC_SIM = "src_als", "src_pop", "src_sim"


@dataclass
class FirstStage:
    """Models fitted on events strictly before `end` (the start of the predicted window)."""

    history: pd.DataFrame
    end: pd.Timestamp
    matrix: InteractionMatrix  # InteractionMatrix.from_events(history): its binary pairs
    als: ALSModel
    popular: pd.DataFrame  # listeners_per_track(history)
    similar: pd.DataFrame  # track_id_1, track_id_2, score, rank
    #: results derived from the fields above, computed once and reused across the user
    #: batches of the ranker (history statistics, latest tracks, precomputed ALS top-N)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # every feature is computed from `history`: an event on/after `end` would leak
        if len(self.history) and self.history[C.Datetime].max() >= self.end:
            raise ValueError(f"FirstStage history has events on or after its end {self.end}")

    @classmethod
    def from_fitted(
        cls,
        history: pd.DataFrame,
        end: pd.Timestamp,
        matrix: InteractionMatrix,
        als: ALSModel,
        similar: pd.DataFrame,
        scored_items: np.ndarray | None,
    ) -> FirstStage:
        """The first stage from parts already fit on `history`: its `matrix`, the `als`
        model fit on it, the `similar` tracks and `scored_items` (`top_item_codes` of the
        matrix: the tracks ALS scores, None for all). Adds the popular tracks
        (`listeners_per_track(history)`) and keeps `scored_items` in the cache."""
        stage = cls(history, end, matrix, als, listeners_per_track(history), similar)
        stage.cache["scored_items"] = scored_items
        return stage

    @classmethod
    def fit(
        cls,
        history: pd.DataFrame,
        end: pd.Timestamp,
        als_cfg: ALSConfig,
        sim_cfg: SimilarConfig,
        num_threads: int = 0,
        similar_for: tuple[np.ndarray, int] | None = None,
        als: ALSModel | None = None,
    ) -> FirstStage:
        """Fit ALS and similar tracks on `history`. With `similar_for = (users, n)`, similar
        tracks are computed only for the `n` latest tracks of `users` (all a ranker over
        those users' candidates reads), not for every track. `als`: a model already fit on
        this very history (its users and tracks must be the matrix's), used instead of
        fitting one."""
        matrix = InteractionMatrix.from_events(history)
        if als is None:
            als = ALSModel.fit(matrix, als_cfg, num_threads=num_threads)
        elif not als.is_fit_on(matrix):
            raise ValueError("FirstStage: the given ALS model was not fit on this history")
        scored = top_item_codes(matrix, als_cfg.max_scored_items)
        queries, latest = None, None
        if similar_for is not None:
            users, n = similar_for
            latest = latest_tracks(history, n)
            mine = latest[C.Item].to_numpy()[latest[C.User].isin(users).to_numpy()]
            queries = als.items.codes(np.unique(mine))
            queries = queries[queries >= 0]
        sim = similar_tracks(
            als,
            sim_cfg.k,
            sim_cfg.batch_size,
            num_threads=num_threads,
            items=scored,
            queries=queries,
        )
        stage = cls.from_fitted(history, end, matrix, als, sim, scored)
        if similar_for is not None:  # what `latest_for_users` would compute again
            stage.cache[("latest_tracks", similar_for[1])] = latest
        return stage


def latest_tracks(history: pd.DataFrame, n: int) -> pd.DataFrame:
    """The n most recent (user, track) rows per user, with `recency` 1 = newest, sorted by
    user (then recency)."""
    fast = _latest_sorted(history, n)
    if fast is not None:
        return fast
    cols = [C.User, C.Item, C.Datetime, C.Seq]
    h = history[cols].sort_values([C.User, C.Datetime, C.Seq], ascending=[True, False, False])
    h = h.groupby(C.User, sort=False).head(n)
    h = h.assign(recency=h.groupby(C.User, sort=False).cumcount() + 1)
    return h[[C.User, C.Item, "recency"]].reset_index(drop=True)


def _is_sorted_history(u: np.ndarray, d: np.ndarray, s: np.ndarray) -> bool:
    """Whether rows are sorted by (user, datetime, seq), checked in bounded chunks."""
    chunk = 10_000_000  # rows at a time: the diffs of a chunk take a few hundred MB at most
    for a in range(0, max(len(u) - 1, 0), chunk):
        b = min(a + chunk + 1, len(u))
        du, dd, ds = np.diff(u[a:b]), np.diff(d[a:b]), np.diff(s[a:b])
        same = du == 0
        if (du < 0).any() or (same & (dd < np.timedelta64(0))).any():
            return False
        if (same & (dd == np.timedelta64(0)) & (ds < 0)).any():
            return False
    return True


def _latest_sorted(history: pd.DataFrame, n: int) -> pd.DataFrame | None:
    """`latest_tracks` in O(users * n) when the history is sorted by (user, datetime, seq),
    as the prepared events and their time splits are: the last n rows of each user's block,
    newest first. None when it is not sorted (the caller then sorts)."""
    if len(history) == 0:
        return None
    u = history[C.User].to_numpy()
    d = history[C.Datetime].to_numpy()
    s = history[C.Seq].to_numpy()
    if d.dtype.kind != "M" or not _is_sorted_history(u, d, s):
        return None
    ends = np.flatnonzero(np.r_[u[1:] != u[:-1], True])  # last row of each user's block
    starts = np.r_[0, ends[:-1] + 1]
    take = np.minimum(ends - starts + 1, n)
    recency = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)  # 0, 1, ..
    rows = np.repeat(ends, take) - recency
    return pd.DataFrame(
        {
            C.User: u[rows],
            C.Item: history[C.Item].to_numpy()[rows],
            "recency": (recency + 1).astype(np.int64),
        }
    )


def latest_for_users(stage: FirstStage, users: np.ndarray, n: int) -> pd.DataFrame:
    """`latest_tracks` of `users`: the latest tracks of every user are computed once per
    first stage (cached) and filtered here, instead of filtering the history per batch."""
    key = ("latest_tracks", n)
    if key not in stage.cache:
        stage.cache[key] = latest_tracks(stage.history, n)
    latest: pd.DataFrame = stage.cache[key]
    # sorted by user (latest_tracks): a binary search per user instead of a scan of all rows
    rows = rows_of_keys(latest[C.User].to_numpy(), np.unique(np.asarray(users)))
    return latest.iloc[rows].reset_index(drop=True)


def als_top(stage: FirstStage, users: np.ndarray, n: int) -> pd.DataFrame:
    """ALS top-n (user, track, score, rank) of `users`: sliced from the precomputed
    recommendations in `stage.cache["als_recs"]` (the pipeline's `personal_als`, made by the
    same model on the same matrix) when they are deep enough, else scored now.

    With a scored head (`als.max_scored_items`) only lists of exactly depth n are reused: a
    deeper list is not a prefix extension there (a user with fewer than that many unheard
    tracks in the head is scored against every track, so its top n can leave the head),
    and the label windows' candidates, scored at depth n, must be made as the test's."""
    pre = stage.cache.get("als_recs")
    head = stage.cache.get("scored_items")
    if pre is None or pre[1] < n or (head is not None and pre[1] != n):
        return stage.als.recommend(users, stage.matrix, n, items=head)
    recs: pd.DataFrame = pre[0]
    col = recs[C.User].to_numpy()
    out = recs.iloc[rows_of_keys(col, np.unique(np.asarray(users)))]
    return out[out[C.Rank].to_numpy() <= n].reset_index(drop=True)


def set_als_recs(stage: FirstStage, recs: pd.DataFrame, n: int) -> None:
    """Give `stage` ALS top-`n` lists of its users (reused by `generate_candidates`)."""
    col = recs[C.User].to_numpy()
    if len(col) > 1 and (np.diff(col) < 0).any():
        recs = recs.sort_values([C.User, C.Rank], kind="stable")
    stage.cache["als_recs"] = (recs.reset_index(drop=True), n)


def similar_to_latest(stage: FirstStage, users: np.ndarray, n_latest: int, n: int) -> pd.DataFrame:
    """Tracks similar to each user's latest `n_latest` listens: user, track, best cosine."""
    recent = latest_for_users(stage, users, n_latest)
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
    return top_k_per_user(
        pairs[C.User].to_numpy(), pairs[C.Item].to_numpy(), pairs[C.Score].to_numpy(), n
    )


def outer_join_pairs(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Full outer join of frames on (user_id, track_id), each with unique pairs: one row
    per pair present in any part, sorted by (user, track), the other columns of every part
    as float64 (NaN where that part lacks the pair).

    The same rows as chained `merge(how="outer")` calls, faster: one stable sort of the
    parts' int64 (user, track) keys (`pair_keys`) gives every input row its output row,
    instead of pandas' key factorisation per merge."""
    keys = (
        np.concatenate([pair_keys(p[C.User].to_numpy(), p[C.Item].to_numpy()) for p in parts])
        if parts
        else np.zeros(0, np.int64)
    )
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]] if len(keys) else np.zeros(0, bool)
    uniq = sorted_keys[first]
    slot = np.empty(len(keys), dtype=np.int64)  # row of the output for each input row
    slot[order] = np.cumsum(first) - 1
    del order, sorted_keys
    out: dict[str, np.ndarray] = {
        C.User: (uniq >> 32).astype(np.int32),
        C.Item: (uniq & 0xFFFFFFFF).astype(np.uint32).astype(np.int32),
    }
    start = 0
    for part in parts:
        pos = slot[start : start + len(part)]
        start += len(part)
        for col in part.columns:
            if col in (C.User, C.Item):
                continue
            values = np.full(len(uniq), np.nan)
            values[pos] = part[col].to_numpy(dtype=np.float64)
            out[col] = values
    return pd.DataFrame(out)


def generate_candidates(stage: FirstStage, users: np.ndarray, cfg: RankerConfig) -> pd.DataFrame:
    """One row per (user, track) proposed by any source, for users with history.

    Columns: user_id, track_id, src_als/src_pop/src_sim (0/1), als_rank, pop_rank, sim_rank
    (NaN when the source did not propose it) and sim_source_score.
    """
    users = np.intersect1d(np.asarray(users), stage.matrix.users.ids)
    parts = []
    als = als_top(stage, users, cfg.als_candidates)
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
    cand = outer_join_pairs(parts)
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

"""Offline evaluation of recommendation lists, vectorised over users.

Inputs use the package schema (`musicrec.columns.Columns`):

* `recs`: user_id, track_id, rank (1 = best; `score` is not used). A user's top-k is the
  k rows with the smallest ranks; ranks need not be contiguous (gaps left by filtering are
  fine): the position of a row is its 1-based place in the user's list sorted by rank.
* `test`: user_id, track_id - the listens of the test window (the relevant items).
  Repeated (user, track) pairs count once.
* `history`: user_id, track_id - the listens the model could see (for the novelty metrics).
  It is assumed to hold one row per (user, track) pair, as the prepared events do (first
  listens); a track's row count is then its number of listeners.

Every metric is computed per user with merges / numpy on sorted arrays (no Python loop
over users), then averaged over a population of users:

* the population is `users` if given, else the users present in `test`;
* a population user absent from `recs` has zero hits (a model that returns nothing for a
  user is penalised, not skipped);
* a population user with no relevant item scores 0 on every accuracy metric (there is
  nothing to hit), so pass a population of users that have test listens;
* fewer than k recommendations: the missing slots count as misses (precision divides by k);
* duplicate (user, track) rows within a user's top-k are rejected (`DataValidationError`):
  they would count the same hit twice.

Novelty comes in two flavours here, named apart (see `docs`/lessons: "novelty" means
different things across projects):

* `novelty_unseen_at_k` - the original system's Novelty@k: the share of the user's top-k
  the user had not heard in `history`;
* `mean_inverse_user_frequency_at_k` - the standard novelty (mean self-information):
  mean over the top-k of -log2(listeners(track) / users in history).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from musicrec.columns import Columns as C
from musicrec.errors import DataValidationError
from musicrec.matrix import dense_ids

__all__ = [
    "candidate_recall",
    "coverage_at_k",
    "evaluate",
    "hit_rate_at_k",
    "map_at_k",
    "mean_inverse_user_frequency_at_k",
    "metrics_table",
    "ndcg_at_k",
    "novelty_unseen_at_k",
    "paired_difference",
    "paired_text",
    "per_user_metrics",
    "precision_at_k",
    "recall_at_k",
    "summarize",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: rows of `history` processed at once in the membership test (bounds the temporary memory)
_HISTORY_CHUNK = 20_000_000
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


# ------------------------------------------------------------------------------ helpers
def _require(df: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataValidationError(
            name,
            missing[0],
            f"columns {list(columns)}",
            found=f"columns {list(df.columns)}",
        )


def _ids(df: pd.DataFrame, column: str, name: str) -> np.ndarray:
    """An id column as a numpy array; nulls are rejected."""
    s = df[column]
    if s.isna().any():
        raise DataValidationError(
            name, column, "no missing ids", examples=df.loc[s.isna()].head().to_dict("records")
        )
    return s.to_numpy()


def _is_int32_range(a: np.ndarray) -> bool:
    if a.dtype.kind not in "iu":
        return False
    if a.size == 0:
        return True
    return bool(int(a.min()) >= _INT32_MIN and int(a.max()) <= _INT32_MAX)


class _PairEncoder:
    """Encodes (user, track) pairs as one int64 key, consistently across several frames.

    Integer ids within the int32 range (the package schema) are packed as
    `user << 32 | track`, so sorting keys sorts by (user, track); anything else is mapped to
    codes over the union of the ids (slower, for tests and odd inputs).
    """

    def __init__(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        pairs = list(pairs)
        self._packed = all(_is_int32_range(u) and _is_int32_range(t) for u, t in pairs)
        self._users: pd.Index | None = None
        self._tracks: pd.Index | None = None
        if not self._packed:
            self._users = pd.Index(pd.unique(np.concatenate([np.asarray(u) for u, _ in pairs])))
            self._tracks = pd.Index(pd.unique(np.concatenate([np.asarray(t) for _, t in pairs])))

    def keys(self, users: np.ndarray, tracks: np.ndarray) -> IntArray:
        if self._packed:
            u = users.astype(np.int64, copy=False)
            t = tracks.astype(np.int64, copy=False) & 0xFFFFFFFF
            return (u << 32) | t
        assert self._users is not None and self._tracks is not None
        uc = self._users.get_indexer(pd.Index(users)).astype(np.int64)
        tc = self._tracks.get_indexer(pd.Index(tracks)).astype(np.int64)
        return uc * np.int64(len(self._tracks)) + tc

    def users_of(self, keys: IntArray) -> np.ndarray:
        """The user id of each key."""
        if self._packed:
            return keys >> 32
        assert self._users is not None and self._tracks is not None
        return np.asarray(self._users.to_numpy()[keys // np.int64(len(self._tracks))])


# numpy's hash-based np.unique / np.isin are slow at tens of millions of keys: the helpers
# below sort (numpy's int64 sort is fast) and binary-search sorted arrays instead.
def _change_points(sorted_values: np.ndarray) -> BoolArray:
    """True at the first row of each run of equal values."""
    change = np.empty(len(sorted_values), dtype=bool)
    if len(sorted_values):
        change[0] = True
        np.not_equal(sorted_values[1:], sorted_values[:-1], out=change[1:])
    return change


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values."""
    s = np.sort(values)
    return s[_change_points(s)]


def _in_sorted(query: np.ndarray, sorted_ref: np.ndarray) -> BoolArray:
    """Membership of each query value in the sorted array `sorted_ref`."""
    if len(sorted_ref) == 0 or len(query) == 0:
        return np.zeros(len(query), dtype=bool)
    pos = np.searchsorted(sorted_ref, query)
    pos[pos == len(sorted_ref)] = 0
    return np.asarray(sorted_ref[pos] == query, dtype=bool)


def _dense_ints(a: np.ndarray, n_rows: int) -> bool:
    """Non-negative ints small enough to index a table (bincount / lookup) standing in for
    a sort or search of `n_rows` values (`musicrec.matrix.dense_ids`)."""
    return a.dtype.kind in "iu" and (
        len(a) == 0 or (int(a.min()) >= 0 and dense_ids(int(a.max()), n_rows))
    )


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (bincount for dense ints, sort otherwise)."""
    if len(values) and _dense_ints(values, len(values)):
        return np.flatnonzero(np.bincount(values)).astype(values.dtype)
    return _sorted_unique(values)


def _index_in(values: np.ndarray, population: np.ndarray) -> npt.NDArray[np.intp]:
    """Index of each value in the sorted unique `population`, -1 if absent."""
    if len(population) == 0 or len(values) == 0:
        return np.full(len(values), -1, dtype=np.intp)
    if values.dtype.kind in "iu" and _dense_ints(population, len(population) + len(values)):
        table = np.full(int(population.max()) + 1, -1, dtype=np.intp)
        table[population] = np.arange(len(population), dtype=np.intp)
        v = values.astype(np.int64, copy=False)
        ok = (v >= 0) & (v < len(table))
        out = np.full(len(values), -1, dtype=np.intp)
        out[ok] = table[v[ok]]
        return out
    pos = np.searchsorted(population, values)
    pos[pos == len(population)] = 0
    return np.where(population[pos] == values, pos, -1).astype(np.intp)


def _population(users: Any, test: pd.DataFrame) -> np.ndarray:
    """Sorted distinct users: `users` if given, else the users in `test`."""
    if users is None:
        return _distinct(_ids(test, C.User, "test"))
    if isinstance(users, pd.Series | pd.Index):
        arr = users.to_numpy()
    elif isinstance(users, np.ndarray):
        arr = users
    else:
        arr = np.asarray(list(users))
    return _distinct(arr)


# ----------------------------------------------------------------------- the top-k table
@dataclass(frozen=True)
class _TopK:
    """The first `kmax` recommendations of each population user, sorted by (user, position).

    `row_user` indexes `population` (sorted unique user ids); `pos` is 1-based.
    """

    population: np.ndarray
    row_user: npt.NDArray[np.intp]
    pos: IntArray
    tracks: np.ndarray
    kmax: int

    @property
    def n_users(self) -> int:
        return len(self.population)

    def per_user(self, mask: BoolArray, weights: FloatArray | None = None) -> FloatArray:
        """Sum (or count) over the rows in `mask`, per population user."""
        w = None if weights is None else weights[mask]
        return np.bincount(self.row_user[mask], weights=w, minlength=self.n_users).astype(
            np.float64
        )


def _top_k(recs: pd.DataFrame, kmax: int, population: np.ndarray) -> _TopK:
    """Select each population user's first `kmax` recommendations (no loop over users)."""
    if kmax < 1:
        raise ValueError(f"k must be >= 1, got {kmax}")
    _require(recs, [C.User, C.Item, C.Rank], "recommendations")
    users = _ids(recs, C.User, "recommendations")
    ranks = _ids(recs, C.Rank, "recommendations")
    rows, pos = _first_rows(users, ranks, kmax)
    row_user = _index_in(users[rows], population)
    in_pop = row_user >= 0
    top = _TopK(
        population=population,
        row_user=row_user[in_pop],
        pos=pos[in_pop],
        tracks=_ids(recs, C.Item, "recommendations")[rows[in_pop]],
        kmax=kmax,
    )
    _reject_duplicates(top)
    return top


def _first_rows(
    users: np.ndarray, ranks: np.ndarray, kmax: int
) -> tuple[npt.NDArray[np.intp], IntArray]:
    """Rows of the first `kmax` recommendations of every user, ordered by (user, rank),
    and their 1-based positions. Ties in rank keep the input order."""
    n = len(users)
    if n == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.int64)
    same_user = users[1:] == users[:-1]
    in_order = bool(np.all(users[1:] >= users[:-1])) and bool(
        np.all(ranks[1:][same_user] >= ranks[:-1][same_user])
    )
    if in_order:
        # the usual case (every recommender writes sorted output): no sort at all
        starts = np.flatnonzero(np.concatenate([[True], ~same_user]))
        lengths = np.diff(np.append(starts, n))
        return _heads(starts, lengths, kmax)
    # Unsorted: sort only the rows that can be in a top-kmax. Rows with rank <= kmax are
    # enough for a user when they are exactly min(kmax, n_recs) of them (then every other
    # row ranks lower); the other users' rows are all kept.
    codes = users if _dense_ints(users, n) else pd.factorize(users)[0]
    n_recs = np.bincount(codes)
    cand = ranks <= kmax
    n_cand = np.bincount(codes[cand], minlength=len(n_recs))
    incomplete = n_cand != np.minimum(n_recs, kmax)
    if incomplete.any():
        cand |= incomplete[codes]
    subset = np.flatnonzero(cand)
    order = subset[np.lexsort((ranks[subset], users[subset]))]
    su = users[order]
    starts = np.flatnonzero(_change_points(su))
    lengths = np.diff(np.append(starts, len(su)))
    local, pos = _heads(starts, lengths, kmax)
    return order[local], pos


def _heads(
    starts: npt.NDArray[np.intp], lengths: npt.NDArray[np.intp], kmax: int
) -> tuple[npt.NDArray[np.intp], IntArray]:
    """The first min(length, kmax) rows of each run, and their 1-based positions."""
    take = np.minimum(lengths, kmax)
    total = int(take.sum())
    offsets = np.repeat(np.cumsum(take) - take, take)
    pos = np.arange(total, dtype=np.int64) - offsets
    rows = np.repeat(starts, take) + pos
    return rows.astype(np.intp), pos + 1


def _reject_duplicates(top: _TopK) -> None:
    if len(top.tracks) < 2:
        return
    enc = _PairEncoder([(top.row_user, top.tracks)])
    keys = enc.keys(top.row_user, top.tracks)
    s = np.sort(keys)
    dup = s[1:][s[1:] == s[:-1]]
    if len(dup) == 0:
        return
    dup_rows = np.flatnonzero(_in_sorted(keys, dup))[:5]
    examples = [
        {C.User: top.population[top.row_user[i]], C.Item: top.tracks[i], "position": top.pos[i]}
        for i in dup_rows
    ]
    raise DataValidationError(
        "recommendations",
        C.Item,
        "each track at most once in a user's list",
        examples=examples,
        found=f"{len(dup)} duplicate (user, track) rows in the top-{top.kmax}",
    )


@dataclass(frozen=True)
class _Judged:
    """The top-k table with its hits against `test` and each user's relevant count."""

    top: _TopK
    hit: BoolArray
    cum_hits: IntArray  # hits at positions <= pos, within the user
    n_relevant: FloatArray


def _judge(top: _TopK, test: pd.DataFrame) -> _Judged:
    _require(test, [C.User, C.Item], "test")
    tu = _ids(test, C.User, "test")
    tt = _ids(test, C.Item, "test")
    rec_users = top.population[top.row_user]
    enc = _PairEncoder([(tu, tt), (rec_users, top.tracks)])
    test_keys = _sorted_unique(enc.keys(tu, tt))
    # relevant items per population user = distinct test pairs of the user
    idx = _index_in(enc.users_of(test_keys), top.population)
    n_rel = np.bincount(idx[idx >= 0], minlength=top.n_users).astype(np.float64)
    hit = _in_sorted(enc.keys(rec_users, top.tracks), test_keys)
    cs = np.cumsum(hit, dtype=np.int64)
    starts = np.flatnonzero(_change_points(top.row_user))
    lengths = np.diff(np.append(starts, len(top.row_user)))
    base = np.repeat(cs[starts] - hit[starts], lengths)
    return _Judged(top=top, hit=hit, cum_hits=cs - base, n_relevant=n_rel)


# --------------------------------------------------------------------- per-user metrics
def _hits_at(j: _Judged, k: int) -> tuple[BoolArray, FloatArray]:
    mask = j.hit & (j.top.pos <= k)
    return mask, j.top.per_user(mask)


def _safe_div(num: FloatArray, den: FloatArray, empty: float = 0.0) -> FloatArray:
    out = np.full(len(num), empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _precision(j: _Judged, k: int) -> FloatArray:
    return _hits_at(j, k)[1] / k


def _recall(j: _Judged, k: int) -> FloatArray:
    return _safe_div(_hits_at(j, k)[1], j.n_relevant)


def _hit_rate(j: _Judged, k: int) -> FloatArray:
    return (_hits_at(j, k)[1] > 0).astype(np.float64)


def _ndcg(j: _Judged, k: int) -> FloatArray:
    mask, _ = _hits_at(j, k)
    discount = 1.0 / np.log2(j.top.pos.astype(np.float64) + 1.0)
    dcg = j.top.per_user(mask, discount)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = ideal[np.minimum(j.n_relevant, k).astype(np.int64)]
    return _safe_div(dcg, idcg)


def _map(j: _Judged, k: int) -> FloatArray:
    mask, _ = _hits_at(j, k)
    prec_at_r = j.cum_hits / j.top.pos.astype(np.float64)
    return _safe_div(j.top.per_user(mask, prec_at_r), np.minimum(j.n_relevant, k))


def _as_series(values: FloatArray, population: np.ndarray, name: str) -> pd.Series:
    return pd.Series(values, index=pd.Index(population, name=C.User), name=name)


def _judged(recs: pd.DataFrame, test: pd.DataFrame, k: int, users: Any) -> _Judged:
    return _judge(_top_k(recs, k, _population(users, test)), test)


def precision_at_k(recs: pd.DataFrame, test: pd.DataFrame, k: int, users: Any = None) -> pd.Series:
    """Per-user Precision@k = |top-k ∩ relevant| / k.

    Missing slots (fewer than k recommendations) count as misses. Indexed by user_id over
    the population (`users`, default: the users in `test`).
    """
    j = _judged(recs, test, k, users)
    return _as_series(_precision(j, k), j.top.population, f"precision@{k}")


def recall_at_k(recs: pd.DataFrame, test: pd.DataFrame, k: int, users: Any = None) -> pd.Series:
    """Per-user Recall@k = |top-k ∩ relevant| / |relevant| (0 when nothing is relevant)."""
    j = _judged(recs, test, k, users)
    return _as_series(_recall(j, k), j.top.population, f"recall@{k}")


def hit_rate_at_k(recs: pd.DataFrame, test: pd.DataFrame, k: int, users: Any = None) -> pd.Series:
    """Per-user HitRate@k = 1 if |top-k ∩ relevant| > 0 else 0."""
    j = _judged(recs, test, k, users)
    return _as_series(_hit_rate(j, k), j.top.population, f"hit_rate@{k}")


def ndcg_at_k(recs: pd.DataFrame, test: pd.DataFrame, k: int, users: Any = None) -> pd.Series:
    """Per-user NDCG@k with binary gains.

    DCG@k = sum over hits at position r <= k of 1 / log2(r + 1);
    IDCG@k = sum over r = 1..min(|relevant|, k) of 1 / log2(r + 1);
    NDCG@k = DCG@k / IDCG@k (0 when nothing is relevant).
    """
    j = _judged(recs, test, k, users)
    return _as_series(_ndcg(j, k), j.top.population, f"ndcg@{k}")


def map_at_k(recs: pd.DataFrame, test: pd.DataFrame, k: int, users: Any = None) -> pd.Series:
    """Per-user AP@k (their mean over users is MAP@k).

    AP@k = sum over hit positions r <= k of Precision@r / min(|relevant|, k), where
    Precision@r = hits at positions <= r / r (0 when nothing is relevant).
    """
    j = _judged(recs, test, k, users)
    return _as_series(_map(j, k), j.top.population, f"map@{k}")


def coverage_at_k(recs: pd.DataFrame, catalog_size: int, k: int, users: Any = None) -> float:
    """Catalogue coverage@k = |distinct tracks in the users' top-k| / catalog_size.

    Over the recommendations of `users` if given, else of every user in `recs`.
    """
    if catalog_size <= 0:
        raise ValueError(f"catalog_size must be positive, got {catalog_size}")
    population = _recs_population(recs, users)
    top = _top_k(recs, k, population)
    return float(len(_distinct(top.tracks)) / catalog_size)


def _recs_population(recs: pd.DataFrame, users: Any) -> np.ndarray:
    if users is not None:
        return np.asarray(_population(users, recs))
    return _distinct(_ids(recs, C.User, "recommendations"))


# --------------------------------------------------------------------------- novelty
@dataclass(frozen=True)
class _HistoryStats:
    heard: BoolArray  # per top-k row: the user heard the track in history
    listeners: FloatArray  # per top-k row: users who heard the track in history
    n_users: int  # distinct users in history


def _history_stats(top: _TopK, history: pd.DataFrame) -> _HistoryStats:
    """For each top-k row: was it heard by its user, and by how many users in total.

    One pass over `history` in chunks: a track gate (only tracks that are recommended to
    someone), then the chunk's sorted (user, track) keys are searched for the top-k keys.
    """
    _require(history, [C.User, C.Item], "history")
    hu = _ids(history, C.User, "history")
    ht = _ids(history, C.Item, "history")
    rec_users = top.population[top.row_user]
    enc = _PairEncoder([(hu, ht), (rec_users, top.tracks)])
    rec_keys = enc.keys(rec_users, top.tracks)

    listeners, n_users = _listener_counts(hu, ht, top.tracks)

    gate: BoolArray | None = None
    if _is_int32_range(top.tracks) and len(top.tracks) and int(top.tracks.min()) >= 0:
        gate = np.zeros(int(top.tracks.max()) + 1, dtype=bool)
        gate[top.tracks] = True
    heard = np.zeros(len(rec_keys), dtype=bool)
    for start in range(0, len(hu), _HISTORY_CHUNK):
        cu, ct = hu[start : start + _HISTORY_CHUNK], ht[start : start + _HISTORY_CHUNK]
        if gate is not None and ct.dtype.kind in "iu":
            ct64 = ct.astype(np.int64, copy=False)
            ok = (ct64 >= 0) & (ct64 < len(gate))
            ok[ok] = gate[ct64[ok]]
            cu, ct = cu[ok], ct[ok]
        heard |= _in_sorted(rec_keys, np.sort(enc.keys(cu, ct)))
    return _HistoryStats(heard=heard, listeners=listeners, n_users=n_users)


def _listener_counts(
    hist_users: np.ndarray, hist_tracks: np.ndarray, query_tracks: np.ndarray
) -> tuple[FloatArray, int]:
    """Rows of history per query track (= listeners, one row per pair) and distinct users.
    As `popular.listeners_per_track` counts them, looked up for the query tracks here."""
    if len(hist_users) == 0:
        return np.zeros(len(query_tracks)), 0
    if _dense_ints(hist_users, len(hist_users)):
        n_users = int(np.count_nonzero(np.bincount(hist_users)))
    else:
        n_users = int(pd.Series(hist_users).nunique())
    if query_tracks.dtype.kind in "iu" and _dense_ints(hist_tracks, len(hist_tracks)):
        counts = np.bincount(hist_tracks)
        q = query_tracks.astype(np.int64, copy=False)
        ok = (q >= 0) & (q < len(counts))
        out = np.zeros(len(q), dtype=np.float64)
        out[ok] = counts[q[ok]]
        return out, n_users
    vc = pd.Series(hist_tracks).value_counts()
    counts_q = vc.reindex(query_tracks).fillna(0).to_numpy(dtype=np.float64)
    return np.asarray(counts_q, dtype=np.float64), n_users


def _novelty_unseen(top: _TopK, stats: _HistoryStats, k: int) -> FloatArray:
    in_k = top.pos <= k
    return _safe_div(top.per_user(in_k & ~stats.heard), top.per_user(in_k), empty=np.nan)


def _miuf(top: _TopK, stats: _HistoryStats, k: int) -> FloatArray:
    in_k = top.pos <= k
    if stats.n_users == 0:
        return np.full(top.n_users, np.nan)
    info = -np.log2(np.maximum(stats.listeners, 1.0) / stats.n_users)
    return _safe_div(top.per_user(in_k, info), top.per_user(in_k), empty=np.nan)


def novelty_unseen_at_k(
    recs: pd.DataFrame, history: pd.DataFrame, k: int, users: Any = None
) -> pd.Series:
    """Per-user share of the top-k that the user had NOT heard in `history`.

    NoveltyUnseen@k = |{t in top-k : (user, t) not in history}| / |top-k| - the original
    system's Novelty@k (a recommender that filters heard tracks scores 1.0). |top-k| is
    the number of recommendations actually given (at most k); users without any are NaN
    (excluded from the mean). Population: `users`, default every user in `recs`.
    """
    top = _top_k(recs, k, _recs_population(recs, users))
    stats = _history_stats(top, history)
    return _as_series(_novelty_unseen(top, stats, k), top.population, f"novelty_unseen@{k}")


def mean_inverse_user_frequency_at_k(
    recs: pd.DataFrame, history: pd.DataFrame, k: int, users: Any = None
) -> pd.Series:
    """Per-user mean self-information of the top-k, in bits (standard "novelty").

    MIUF@k = mean over t in top-k of -log2(listeners(t) / N), where N is the number of
    distinct users in `history` and listeners(t) the users who heard t there. Smoothing:
    a track nobody heard counts as heard by one user, i.e. it scores log2(N) (the maximum),
    never infinity. Higher = less popular recommendations. Users without recommendations
    are NaN (excluded from the mean).
    """
    top = _top_k(recs, k, _recs_population(recs, users))
    stats = _history_stats(top, history)
    return _as_series(_miuf(top, stats, k), top.population, f"mean_inverse_user_frequency@{k}")


# ------------------------------------------------------------------ all at once + summary
def per_user_metrics(
    recs: pd.DataFrame,
    test: pd.DataFrame,
    history: pd.DataFrame | None = None,
    k_precision: int = 5,
    k_ndcg: int = 10,
    users: Any = None,
) -> pd.DataFrame:
    """Every per-user metric in one pass, indexed by user_id over the population.

    Columns: n_relevant, n_recommended (min(recs given, max k)), precision@k and recall@k
    for both k, hit_rate@k_precision, ndcg@k_ndcg, map@k_ndcg and, when `history` is
    given, novelty_unseen@k_precision and mean_inverse_user_frequency@k_precision (NaN for
    users without recommendations). The population is `users`, default: users in `test`.
    """
    return _per_user(recs, test, history, k_precision, k_ndcg, users)[0]


def _per_user(
    recs: pd.DataFrame,
    test: pd.DataFrame,
    history: pd.DataFrame | None,
    k_precision: int,
    k_ndcg: int,
    users: Any,
) -> tuple[pd.DataFrame, _TopK]:
    kp, kn = int(k_precision), int(k_ndcg)
    population = _population(users, test)
    top = _top_k(recs, max(kp, kn), population)
    j = _judge(top, test)
    cols: dict[str, FloatArray] = {
        "n_relevant": j.n_relevant,
        "n_recommended": top.per_user(np.ones(len(top.pos), dtype=bool)),
    }
    for k in sorted({kp, kn}):
        cols[f"precision@{k}"] = _precision(j, k)
        cols[f"recall@{k}"] = _recall(j, k)
    cols[f"hit_rate@{kp}"] = _hit_rate(j, kp)
    cols[f"ndcg@{kn}"] = _ndcg(j, kn)
    cols[f"map@{kn}"] = _map(j, kn)
    if history is not None:
        stats = _history_stats(top, history)
        cols[f"novelty_unseen@{kp}"] = _novelty_unseen(top, stats, kp)
        cols[f"mean_inverse_user_frequency@{kp}"] = _miuf(top, stats, kp)
    return pd.DataFrame(cols, index=pd.Index(population, name=C.User)), top


def summarize(values: npt.ArrayLike) -> dict[str, float | int | None]:
    """{"mean", "stderr", "n_users"} of per-user values, NaN ignored.

    stderr = std(ddof=1) / sqrt(n); None when n < 2 (mean is None when n = 0).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    n = int(len(v))
    mean = float(v.mean()) if n else None
    stderr = float(v.std(ddof=1) / math.sqrt(n)) if n >= 2 else None
    return {"mean": mean, "stderr": stderr, "n_users": n}


def paired_difference(a: pd.Series, b: pd.Series) -> dict[str, float | int | None]:
    """Mean and standard error of the per-user difference a - b (two models' values of one
    metric, indexed by user), over the users both have (NaN dropped).

    diff_u = a_u - b_u; mean = sum(diff_u) / n; stderr = std(diff, ddof=1) / sqrt(n). The
    two models are scored on the same users, so this is the error of the comparison: with
    correlated per-user values it is much smaller than either model's own stderr.
    """
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    return summarize((joined["a"] - joined["b"]).to_numpy())


def paired_text(d: dict[str, float | int | None]) -> str:
    """A `paired_difference` as "+mean ± stderr" to 4 decimals, nan where undefined (one
    user: no stderr)."""
    mean, se = d.get("mean"), d.get("stderr")
    return f"{np.nan if mean is None else mean:+.4f} ± {np.nan if se is None else se:.4f}"


def evaluate(
    recs: pd.DataFrame,
    test: pd.DataFrame,
    history: pd.DataFrame | None,
    catalog_size: int,
    k_precision: int = 5,
    k_ndcg: int = 10,
    users: Any = None,
) -> dict[str, dict[str, float | int | None]]:
    """Mean, standard error and user count of every metric (see `per_user_metrics`).

    The averaging population is `users` if given (users absent from `recs` count as zero
    hits), else the users in `test`. Also `coverage@k_precision` = distinct tracks in the
    population's top-k / catalog_size: a single number, so its stderr is None and its
    n_users the population users that got at least one recommendation.
    """
    if catalog_size <= 0:
        raise ValueError(f"catalog_size must be positive, got {catalog_size}")
    per_user, top = _per_user(recs, test, history, k_precision, k_ndcg, users)
    out = {
        col: summarize(per_user[col].to_numpy())
        for col in per_user.columns
        if col not in ("n_relevant", "n_recommended")
    }
    in_k = top.pos <= int(k_precision)
    out[f"coverage@{k_precision}"] = {
        "mean": float(len(_distinct(top.tracks[in_k])) / catalog_size),
        "stderr": None,
        "n_users": int((per_user["n_recommended"] > 0).sum()),
    }
    return out


def candidate_recall(candidates: pd.DataFrame, test: pd.DataFrame) -> float:
    """Share of the unique test (user, track) pairs present among `candidates`.

    The ceiling any reranker over these candidates can reach in recall; NaN if `test` is
    empty.
    """
    _require(candidates, [C.User, C.Item], "candidates")
    _require(test, [C.User, C.Item], "test")
    cu, ct = _ids(candidates, C.User, "candidates"), _ids(candidates, C.Item, "candidates")
    tu, tt = _ids(test, C.User, "test"), _ids(test, C.Item, "test")
    enc = _PairEncoder([(cu, ct), (tu, tt)])
    test_keys = _sorted_unique(enc.keys(tu, tt))
    if len(test_keys) == 0:
        return float("nan")
    return float(_in_sorted(test_keys, np.sort(enc.keys(cu, ct))).mean())


def within_user_auc(
    users: npt.ArrayLike, scores: npt.ArrayLike, labels: npt.ArrayLike, nan_high: bool = False
) -> pd.Series:
    """Per user, the probability that one of the user's positive rows outscores one of the
    user's negative rows, ties counting one half (the AUC of the user's rows), indexed by
    user (ascending).

    AUC_u = (#{(p, n): s_p > s_n} + 0.5 #{(p, n): s_p = s_n}) / (n_pos_u * n_neg_u) over
    the pairs of a positive p (label > 0) and a negative n of user u; computed from the
    ranks of the user's scores (ties get their average rank) as
    (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg). NaN scores rank
    below every finite number, or above with `nan_high` (for a rank where NaN means "not
    ranked"), and tie with each other and with -inf (+inf with `nan_high`). Users without a
    positive or without a negative have no AUC and are left out. 0.5 = the score does not
    tell the user's positives from negatives; below 0.5, smaller scores mark the positives
    (e.g. ranks).
    """
    s = np.asarray(scores, dtype=np.float64)
    df = pd.DataFrame(
        {
            "u": np.asarray(users),
            "s": np.where(np.isnan(s), np.inf if nan_high else -np.inf, s),
            "pos": np.asarray(labels) > 0,
        }
    )
    df["r"] = df.groupby("u", sort=False)["s"].rank(method="average")
    g = df.assign(rp=df["r"].where(df["pos"], 0.0)).groupby("u", sort=True)
    n = g.size().astype(np.float64)
    n_pos = g["pos"].sum().astype(np.float64)
    n_neg = n - n_pos
    auc = (g["rp"].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    out = auc[(n_pos > 0) & (n_neg > 0)]
    out.index.name = C.User
    return out.rename("auc")


# ------------------------------------------------------------------------- reporting
def _fmt(mean: float | None, stderr: float | None) -> str:
    """Round to the stderr's second significant digit: 0.01352 ± 0.00012; with 1 to 8
    decimals (so 0.5 ± 12.3, not 0 ± 12, and an error below 5e-9 shows as 0.00000000)."""
    if mean is None:
        return "n/a"
    if stderr is None or not np.isfinite(stderr):
        return f"{mean:.4g}"
    if stderr <= 1e-9 * max(abs(mean), 1.0):  # zero up to floating-point noise
        return f"{mean:.4g} ± 0"
    decimals = min(max(1 - math.floor(math.log10(stderr)), 1), 8)
    return f"{mean:.{decimals}f} ± {stderr:.{decimals}f}"


def metrics_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Models x metrics as "mean ± stderr" strings, plus an `n_users` column.

    `results` maps a model name to `evaluate()`'s output; entries that are not metric
    summaries (dicts without "mean") are ignored. `n_users` is the largest user count of
    the model's metrics (the evaluated population).
    """
    rows: dict[str, dict[str, Any]] = {}
    for model, metrics in results.items():
        row: dict[str, Any] = {}
        n_users = 0
        for name, summary in metrics.items():
            if not isinstance(summary, Mapping) or "mean" not in summary:
                continue
            row[name] = _fmt(summary.get("mean"), summary.get("stderr"))
            n_users = max(n_users, int(summary.get("n_users") or 0))
        row["n_users"] = n_users
        rows[model] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    if "n_users" in table.columns:
        table = table[[c for c in table.columns if c != "n_users"] + ["n_users"]]
    table.index.name = "model"
    return table

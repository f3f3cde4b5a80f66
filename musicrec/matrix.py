"""Users x items CSR matrices with id <-> code maps (users are rows everywhere).

Ids are the raw `user_id` / `track_id` values; codes are 0..n-1 positions in the sorted id
arrays. Lookups go through a dense id -> code table when the ids are compact enough (one
gather), else `np.searchsorted` on the sorted ids: no Python dicts per row.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from musicrec.columns import Columns as C


def pair_keys(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Two int32-range id arrays as one int64 key each: `high` in the upper 32 bits, `low`
    in the lower 32. Keys sort like (high, low) when `low` is non-negative; decode with
    `key >> 32` and `(key & 0xFFFFFFFF).astype(np.uint32).astype(np.int32)`."""
    return (np.asarray(high).astype(np.int64) << 32) | (
        np.asarray(low).astype(np.int64) & 0xFFFFFFFF
    )


def rows_of_keys(sorted_keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of the entries of `sorted_keys` (ascending) equal to one of `wanted`
    (ascending, unique), in order: one binary search per wanted key, no scan."""
    lo = np.searchsorted(sorted_keys, wanted, "left")
    n = np.searchsorted(sorted_keys, wanted, "right") - lo
    # position p of the output belongs to wanted[j] and maps to lo[j] + (p - start of j)
    return np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))


#: ids are dense (`dense_ids`) when the largest is below DENSE_FACTOR * n + DENSE_MIN, n the
#: number of values a table indexed by id stands in for
DENSE_FACTOR = 8
DENSE_MIN = 1 << 20
#: `IdMap`'s table may also go up to DENSE_CAP (at most 128 MiB) for a map of at least BIG_MAP
#: ids: unlike a one-off table it is built once and kept for every lookup of the map. Track ids
#: are sparse (1M tracks with ids up to 20M in the generated `full` data): with the cap their
#: lookups are one gather instead of a binary search over 1M ids (~40 s per 200M listens at
#: full size; 8% of a whole run in its py-spy profile, 2026-12-02)
BIG_MAP = 1 << 16
DENSE_CAP = 1 << 25
#: rows per chunk when marking ids in `IdMap.from_values` (bounds the index temporaries)
MARK_CHUNK = 1 << 24


def dense_ids(top: int, n: int) -> bool:
    """Whether non-negative integer ids up to `top` are compact enough for a table indexed by
    id (`np.bincount`, an id -> code array) in place of a sort or binary search of `n` values.

    `top < DENSE_FACTOR * n + DENSE_MIN`: at most 8 slots per value plus 1M, so ids spread up
    to 2**31 get no table below 268M values. The one rule of `IdMap`'s table (which a big map
    may also have up to DENSE_CAP), of `musicrec.metrics` and of `musicrec.plots`."""
    return top < DENSE_FACTOR * n + DENSE_MIN


@dataclass(frozen=True)
class IdMap:
    """Sorted unique ids; code of an id = its position."""

    ids: np.ndarray
    #: id -> code (int32, -1 for a gap), built on first use when the ids are compact
    _table: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_values(cls, values: np.ndarray | pd.Series) -> IdMap:
        """The sorted unique `values`. Many non-negative integer ids below DENSE_CAP are
        marked in a boolean array (linear) instead of sorted (`np.unique`)."""
        values = np.asarray(values)
        if values.dtype.kind in "iu" and values.size >= DENSE_MIN:
            lo, hi = int(values.min()), int(values.max())
            if lo >= 0 and hi < DENSE_CAP:
                seen = np.zeros(hi + 1, dtype=bool)
                for start in range(0, values.size, MARK_CHUNK):
                    seen[values[start : start + MARK_CHUNK]] = True
                return cls(np.flatnonzero(seen).astype(values.dtype))
        return cls(np.unique(values))

    def __len__(self) -> int:
        return len(self.ids)

    def codes(self, values: np.ndarray | pd.Series) -> np.ndarray:
        """Codes of `values` (int32); -1 where an id is unknown.

        A gather from the dense table when there is one (18x faster than the binary search
        for 8.6M unsorted ids against 100k: 0.08 s vs 1.46 s), else a binary search."""
        values = np.asarray(values)
        table = self._dense_table() if values.dtype.kind in "iu" else None
        if table is not None:
            inside = (values >= 0) & (values < len(table))
            return np.where(inside, table[np.where(inside, values, 0)], -1).astype(np.int32)
        fits = None
        if values.dtype.kind == "u" and self.ids.dtype.kind == "i":
            # unsigned against signed: searchsorted compares them as float64, which rounds
            # ids beyond 2**53; values past the ids' dtype cannot be ids at all
            fits = values <= np.iinfo(self.ids.dtype).max
            values = np.where(fits, values, 0).astype(self.ids.dtype)
        pos = np.searchsorted(self.ids, values)
        pos = np.minimum(pos, len(self.ids) - 1) if len(self.ids) else pos
        known = (len(self.ids) > 0) & (self.ids[pos] == values) if len(self.ids) else False
        if fits is not None:
            known = known & fits
        return np.where(known, pos, -1).astype(np.int32)

    def _dense_table(self) -> np.ndarray | None:
        if self._table is not None:
            return self._table
        ids = self.ids
        if ids.size == 0 or ids.dtype.kind not in "iu" or int(ids[0]) < 0:
            return None
        top = int(ids[-1])
        if not (dense_ids(top, ids.size) or (ids.size >= BIG_MAP and top < DENSE_CAP)):
            return None
        table = np.full(top + 1, -1, dtype=np.int32)
        table[ids] = np.arange(ids.size, dtype=np.int32)
        object.__setattr__(self, "_table", table)  # a cache: the map itself is unchanged
        return table


@dataclass(frozen=True)
class InteractionMatrix:
    """A binary users x items CSR matrix (float32) with its id maps."""

    users: IdMap
    items: IdMap
    csr: sp.csr_matrix

    @classmethod
    def from_events(
        cls, events: pd.DataFrame, users: IdMap | None = None, items: IdMap | None = None
    ) -> InteractionMatrix:
        """Build from (user_id, track_id) rows; rows whose ids are outside the maps are dropped."""
        # `is None`, not `or`: an IdMap with no ids is falsy (len 0) but still a given map
        users = users if users is not None else IdMap.from_values(events[C.User].to_numpy())
        items = items if items is not None else IdMap.from_values(events[C.Item].to_numpy())
        u = users.codes(events[C.User].to_numpy())
        i = items.codes(events[C.Item].to_numpy())
        keep = (u >= 0) & (i >= 0)
        if not keep.all():  # no copies of the codes in the usual case (every id known)
            u, i = u[keep], i[keep]
        del keep
        # COO -> CSR sums duplicate pairs; the COO (which holds u and i) is dropped as soon
        # as the CSR exists: ~1.6 GB less at the peak for the 200M-listen history
        coo = sp.coo_matrix(
            (np.ones(len(u), dtype=np.float32), (u, i)), shape=(len(users), len(items))
        )
        del u, i
        csr = coo.tocsr()  # canonical: duplicates summed, indices sorted
        del coo
        csr.data[:] = 1.0  # first listens are binary; duplicates never count twice
        return cls(users, items, csr)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.users), len(self.items))


def seen_mask(csr: sp.csr_matrix, user_codes: np.ndarray, item_codes: np.ndarray) -> np.ndarray:
    """True where (user_codes[j], item_codes[j]) is a non-zero of `csr`.

    Vectorised: each pair becomes the key row * n_cols + col and is looked up by binary search
    among the keys of the non-zeros of the rows involved.
    """
    user_codes = np.asarray(user_codes, dtype=np.int64)
    item_codes = np.asarray(item_codes, dtype=np.int64)
    out = np.zeros(len(user_codes), dtype=bool)
    # codes beyond the matrix are unseen (an item code past the last column made the key
    # of the next row's first column: a false "seen")
    valid = (
        (user_codes >= 0)
        & (user_codes < csr.shape[0])
        & (item_codes >= 0)
        & (item_codes < csr.shape[1])
    )
    if not valid.any() or csr.nnz == 0:
        return out
    rows = np.unique(user_codes[valid])
    sub = csr[rows]
    if not sub.has_sorted_indices:  # a copy: the caller's matrix is left as it is
        sub.sort_indices()
    n_cols = csr.shape[1]
    row_of_nz = np.repeat(rows.astype(np.int64), np.diff(sub.indptr))
    keys = row_of_nz * n_cols + sub.indices.astype(np.int64)  # sorted: rows sorted, cols sorted
    if len(keys) == 0:  # the queried rows are all empty (keys[-1] below would fail)
        return out
    q = user_codes[valid] * n_cols + item_codes[valid]
    pos = np.searchsorted(keys, q)
    pos = np.minimum(pos, len(keys) - 1)
    out[valid] = keys[pos] == q
    return out


def pair_dots(
    a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray, chunk: int = 8192
) -> np.ndarray:
    """`a[ia[j]] . b[ib[j]]` for every j, as float32.

    In chunks of rows: gathering all the rows at once allocates two (pairs x factors)
    arrays (gigabytes for tens of millions of candidates) and is memory-bound; chunks stay
    in the cache, with the same per-row arithmetic (`einsum` row by row)."""
    out = np.empty(len(ia), dtype=np.float32)
    for s in range(0, len(ia), chunk):
        out[s : s + chunk] = np.einsum("ij,ij->i", a[ia[s : s + chunk]], b[ib[s : s + chunk]])
    return out


TOPK_MARGIN_MIN = 16
#: entries (queries x proposals) `_rescore` handles at once: its ~10 temporaries per entry
#: stay near 20 MiB a thread, whatever the batch and k
RESCORE_CHUNK = 1 << 18
#: float32's unit roundoff
EPS32 = 2.0**-24
#: implicit's proposals (queries x proposals) asked for at once; a row still unsure after
#: proposals of WIDEN_FACTOR x (k + margin) targets is finished against every target
PROPOSE_BUDGET = 1 << 24
WIDEN_FACTOR = 8
#: entries of the full product (queries x targets) `_finish_in_band` holds at once
BAND_CHUNK = 1 << 24


def threads(num_threads: int) -> int:
    """implicit's thread count: `num_threads`, or every CPU this process may use when 0."""
    if num_threads > 0:
        return num_threads
    affinity = getattr(os, "sched_getaffinity", None)  # Linux only
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def stable_topk(
    targets: np.ndarray,
    queries: np.ndarray,
    k: int,
    filter_query_items: sp.csr_matrix | None = None,
    num_threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best targets of each query (rows of a 2-D array) by dot product, the same
    whatever the batch: (ids, scores), (len(queries), min(k, len(targets))) arrays of
    int64 indices into `targets` and float32 scores, best first; -1 and -inf where fewer
    targets are left (`filter_query_items`, a queries x targets CSR, removes targets per
    query; a target with a NaN or infinite factor is never proposed).

    implicit scores a batch with one matrix product, and BLAS picks its kernels and
    blocking by the matrices' shapes: the same pair's score differs in the last bits
    between a batch of one row and one of 4,096, and between columns at a block's edge and
    inside it, so near-tied tracks swapped places or crossed the cut-off with the batch
    size or the other rows of a batch (2026-12-07: 21,696 of 150,000 ranks of a clustered
    model's similar tracks moved between batches of 1 and 4,096). Here implicit proposes
    k + margin targets (margin = max(16, k / 4)), `pair_dots` scores each again (the same
    arithmetic for a pair in any batch: also what `ALSModel.score_pairs` gives), and each
    row keeps its k best by (score desc, target index asc). A target implicit did not
    propose scored at most the last proposal's score in the product, so at most that plus
    twice the rounding bound of a float32 dot product (2 x factors x 2^-24 x |query| x the
    largest |target|) again; a row whose k-th score is not above that (a group of more than
    `margin` near-tied targets at the cut-off: tracks heard by the same few users, once ALS
    converges) is proposed twice as many targets, until it is certain or every target is,
    or past 8 x (k + margin) proposals is finished against the whole product
    (`_finish_in_band`); a zero query (every score 0) gets its k lowest allowed indices.
    The proposals are asked for in groups of queries of at most 2^24 entries.

    The second pass runs in `num_threads` threads (numpy releases the GIL) over chunks of
    queries. The cost (`python bench/stable_topk.py --targets 200000 --k 20 100 200`:
    20,000 clustered queries x 200,000 targets x 64 factors, 2026-12-07 18:51 UTC): 1.11x,
    1.08x and 1.11x implicit's time at k = 20, 100 and 200 (medians of 3 alternated runs).
    """
    from implicit.cpu.topk import topk

    n_queries, n = len(queries), len(targets)
    k = max(0, min(k, n))
    ids = np.full((n_queries, k), -1, dtype=np.int64)
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    if k == 0 or n_queries == 0:
        return ids, scores
    finite = np.isfinite(targets).all(axis=1)
    # a NaN score breaks implicit's heap for every query, not only for that target
    broken = np.flatnonzero(~finite).astype(np.int32) if not finite.all() else None
    squares = np.einsum("ij,ij->i", targets, targets)[finite]
    top = float(np.sqrt(squares.max())) if len(squares) else 0.0
    bound = 2.0 * targets.shape[1] * EPS32 * top
    queries = queries.astype(targets.dtype, copy=False)  # implicit needs one dtype
    err = bound * np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
    # a zero query scores 0 with every target: no tie can be broken by proposing more
    zero = err == 0
    _finish_in_band(
        targets, queries, np.flatnonzero(zero), k, filter_query_items, finite, err, ids, scores
    )
    rows = np.flatnonzero(~zero)
    kk = min(k + max(TOPK_MARGIN_MIN, k // 4), n)
    cap = min(n, WIDEN_FACTOR * kk)
    with ThreadPoolExecutor(threads(num_threads)) as pool:
        while len(rows):
            unsure = []
            step = max(1, PROPOSE_BUDGET // kk)  # implicit's proposals held at once
            for lo in range(0, len(rows), step):
                part = rows[lo : lo + step]
                q = queries[part]
                got_ids, first = topk(
                    targets,
                    q,
                    kk,
                    filter_query_items=None
                    if filter_query_items is None
                    else filter_query_items[part],
                    filter_items=broken,
                    num_threads=num_threads,
                )
                ids[part], scores[part], part_unsure = _rescore_chunks(
                    pool, targets, q, got_ids, first, k, err[part]
                )
                unsure.append(part[part_unsure])
            rows = np.concatenate(unsure)
            if kk == n:  # every target proposed: exact
                break
            if kk >= cap:  # a tie wider than many proposals: through the whole product
                _finish_in_band(
                    targets, queries, rows, k, filter_query_items, finite, err, ids, scores
                )
                break
            kk = min(2 * kk, cap)
    return ids, scores


def _finish_in_band(
    targets: np.ndarray,
    queries: np.ndarray,
    rows: np.ndarray,
    k: int,
    filter_query_items: sp.csr_matrix | None,
    finite: np.ndarray,
    err: np.ndarray,
    ids: np.ndarray,
    scores: np.ndarray,
) -> None:
    """`stable_topk`'s answer for the queries `rows` whose k-th score is still within the
    rounding bound of targets not proposed (`scores[rows, k - 1]` is the k-th best of the
    proposals so far): every target whose product score is at least that minus twice the
    bound may belong to the top k, and no other can; those are scored again by `pair_dots`
    and the k best kept (score desc, index asc). A zero query (`err` 0) scores 0 with every
    finite target: its k lowest allowed indices. Writes into `ids` and `scores`."""
    n = len(targets)
    step = max(1, BAND_CHUNK // n)  # rows of the product held at once
    for lo in range(0, len(rows), step):
        part = rows[lo : lo + step]
        zero = err[part] == 0
        allowed = np.repeat(finite[None, :], len(part), axis=0)
        if not zero.all():
            with np.errstate(invalid="ignore"):
                floor = scores[part, k - 1] - 2 * err[part]
                allowed &= (queries[part] @ targets.T >= floor[:, None]) | zero[:, None]
        if filter_query_items is not None:
            allowed[filter_query_items[part].nonzero()] = False
        for r, row in enumerate(part):
            cand = np.flatnonzero(allowed[r])
            if zero[r]:
                got, got_scores = cand[:k], np.zeros(min(k, len(cand)), dtype=np.float32)
            else:
                s = pair_dots(queries, np.full(len(cand), row), targets, cand)
                order = np.lexsort((cand, -s))[:k]
                got, got_scores = cand[order], s[order]
            ids[row], scores[row] = -1, -np.inf
            ids[row, : len(got)], scores[row, : len(got)] = got, got_scores


def _rescore_chunks(
    pool: ThreadPoolExecutor,
    targets: np.ndarray,
    queries: np.ndarray,
    ids: np.ndarray,
    first: np.ndarray,
    k: int,
    err: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_rescore` over chunks of `RESCORE_CHUNK` entries, in `pool`'s threads."""
    out_ids = np.empty((len(queries), k), dtype=np.int64)
    out_scores = np.empty((len(queries), k), dtype=np.float32)
    unsure = np.empty(len(queries), dtype=bool)
    step = max(1, RESCORE_CHUNK // ids.shape[1])

    def chunk(lo: int) -> None:
        part = slice(lo, lo + step)
        got = _rescore(targets, queries[part], ids[part], first[part], k, err[part])
        out_ids[part], out_scores[part], unsure[part] = got

    list(pool.map(chunk, range(0, len(queries), step)))  # list(): re-raises a chunk's error
    return out_ids, out_scores, unsure


def _rescore(
    targets: np.ndarray,
    queries: np.ndarray,
    ids: np.ndarray,
    first: np.ndarray,
    k: int,
    err: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`stable_topk` for some queries after implicit's proposals `ids` (their scores in the
    product: `first`): the k best ids and scores, and whether each row may miss a target
    that was not proposed (`err`: the rounding bound of each query's dot products)."""
    rows = np.repeat(np.arange(len(queries), dtype=np.int32), ids.shape[1])
    cand = ids.astype(np.int64)
    # implicit returns a filtered target with a -FLT_MAX score (and its real id) when fewer
    # than the asked number are left; a NaN query scores NaN: none is scored again
    ok = np.isfinite(first) & (first > -1e30)
    cand[~ok] = -1
    scores = np.full(ids.shape, -np.inf, dtype=np.float32)
    scores[ok] = pair_dots(queries, rows[ok.ravel()], targets, cand[ok])
    lowest = np.where(ok, first, np.inf).min(axis=1)  # the last proposal's product score
    # each row by target index, then (stable) by score: ties to the lower index; two small
    # sorts per row are 5x faster than one `np.lexsort` of every entry by (row, score, index)
    by_id = np.argsort(np.where(cand >= 0, cand, len(targets)), axis=1)
    cand, scores = np.take_along_axis(cand, by_id, 1), np.take_along_axis(scores, by_id, 1)
    by_score = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    cand, scores = np.take_along_axis(cand, by_score, 1), np.take_along_axis(scores, by_score, 1)
    # a row with a filtered entry had every target it may have proposed to it
    unsure = ok.all(axis=1) & (scores[:, k - 1] <= lowest + 2 * err)
    return cand, scores, unsure


def topk_frame(
    query_codes: np.ndarray,
    ids: np.ndarray,
    scores: np.ndarray,
    query_ids: np.ndarray,
    item_ids: np.ndarray,
    columns: tuple[str, str],
    subset: np.ndarray | None = None,
) -> pd.DataFrame:
    """Long frame (query, item, score, rank) from a batch of `stable_topk` results.

    `ids`/`scores` are (len(query_codes), n) arrays; `ids` index `subset` when the scored
    items were restricted to it. Entries with a -1 id (fewer targets left than asked) or a
    score that is not finite (a diverged query) are dropped; ranks count the rows kept, so
    they stay consecutive wherever a dropped entry sat.
    """
    if subset is not None:
        ids = np.where(ids >= 0, subset[np.maximum(ids, 0)], -1)
    n = ids.shape[1]
    valid = (ids >= 0) & np.isfinite(scores) & (scores > -1e30)
    rows = np.repeat(query_codes, n).reshape(len(query_codes), n)
    ranks = np.cumsum(valid, axis=1, dtype=np.int16)
    return pd.DataFrame(
        {
            columns[0]: query_ids[rows[valid]],
            columns[1]: item_ids[ids[valid]],
            C.Score: scores[valid].astype(np.float32),
            C.Rank: ranks[valid],
        }
    )


def top_k_per_user(
    users: np.ndarray, items: np.ndarray, scores: np.ndarray, k: int
) -> pd.DataFrame:
    """The k best-scored rows of each user: user_id, track_id, score, rank (1 = best);
    users ascending, ties in the input order, NaN scores last.

    One stable `np.lexsort` by (user, -score) and ranks from the user blocks' starts
    (pandas' two-key sort plus two groupbys cost ~10% of the ranker's scoring of every
    user, 2026-12-02)."""
    order = np.lexsort((-scores, users))
    u = users[order]
    block = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.zeros(0, np.int64)
    rank = np.arange(len(u)) - np.repeat(block, np.diff(np.r_[block, len(u)])) + 1
    keep = rank <= k
    sel = order[keep]
    return pd.DataFrame(
        {
            C.User: users[sel],
            C.Item: items[sel],
            C.Score: scores[sel],
            C.Rank: rank[keep].astype(np.int16),
        }
    )

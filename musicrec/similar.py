"""Similar tracks: cosine similarity of ALS item factors, top-k per track, no self-pairs.

Computed for every track the model knows (every track with listens), in batches of
matrix products with implicit's multithreaded top-k.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from musicrec.als import ALSModel
from musicrec.columns import Columns as C
from musicrec.matrix import stable_topk, topk_frame


def similar_tracks(
    model: ALSModel,
    k: int,
    batch_size: int = 4096,
    num_threads: int = 0,
    items: np.ndarray | None = None,
    queries: np.ndarray | None = None,
) -> pd.DataFrame:
    """track_id_1, track_id_2, score (cosine), rank for every item of `model`.

    `items` (sorted item codes), if given, restricts the similar tracks proposed (not the
    tracks queried) to those items (see `musicrec.als.top_item_codes`). `queries` (item
    codes), if given, restricts the tracks queried (track_id_1) to those: a first stage
    that only needs the neighbours of some users' latest tracks computes only those."""
    normed = model.unit_item_factors()
    n = len(normed)
    targets = normed if items is None else np.ascontiguousarray(normed[items])
    # position of each item among the targets (-1: not a target), for the self filter
    target_pos = np.arange(n) if items is None else np.full(n, -1, dtype=np.int64)
    if items is not None:
        target_pos[items] = np.arange(len(items))
    # a query among the targets loses one of them to the self filter; one outside the
    # scored head (with `items`) can have every target
    k = min(k, len(targets) - 1 if items is None else len(targets))
    if k <= 0 or (queries is not None and len(queries) == 0):
        return empty_similar()
    frames = []
    query_codes = np.arange(n) if queries is None else np.unique(np.asarray(queries, np.int64))
    with threadpool_limits(1, "blas"):
        for start in range(0, len(query_codes), batch_size):
            idx = query_codes[start : start + batch_size]
            # filter each query's own item (no self-pairs)
            own = target_pos[idx]
            has = own >= 0
            self_filter = sp.csr_matrix(
                (np.ones(int(has.sum()), dtype=np.float32), (np.flatnonzero(has), own[has])),
                shape=(len(idx), len(targets)),
            )
            ids, scores = stable_topk(
                targets, normed[idx], k, filter_query_items=self_filter, num_threads=num_threads
            )
            sims = topk_frame(
                idx, ids, scores, model.items.ids, model.items.ids, (C.Item1, C.Item2), items
            )
            frames.append(sims.astype({C.Item1: np.int32, C.Item2: np.int32}))
    return pd.concat(frames, ignore_index=True)


def empty_similar() -> pd.DataFrame:
    """No similar pairs, with the columns' usual types (the similar-tracks service refuses
    a `similar.parquet` whose ids are not integers)."""
    return pd.DataFrame(
        {
            C.Item1: np.array([], np.int32),
            C.Item2: np.array([], np.int32),
            C.Score: np.array([], np.float32),
            C.Rank: np.array([], np.int16),
        }
    )

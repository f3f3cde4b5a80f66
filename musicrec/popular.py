"""Top popular: tracks ranked by the number of distinct listeners (the cold-start answer)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from musicrec.columns import Columns as C
from musicrec.matrix import InteractionMatrix


def listeners_per_track(events: pd.DataFrame) -> pd.DataFrame:
    """track_id, listeners: the rows per track, which are its distinct users because each
    row is a user's first listen of the track (a repeated pair would count twice).

    Sorted by listeners descending, then track_id, with a 1-based `rank`. The same count as
    `plots._popularity`, `metrics._listener_counts` and the ranker's `item_listeners`;
    `als.top_item_codes` counts distinct users (equal on prepared data).
    """
    # np.unique (a sort), not plots' bincount: the bincount was 1.1-1.5x slower here for
    # 222M ids up to 20M
    ids, counts = np.unique(events[C.Item].to_numpy(), return_counts=True)
    order = np.lexsort((ids, -counts))
    out = pd.DataFrame(
        {
            C.Item: ids[order].astype(np.int32),
            C.Listeners: counts[order].astype(np.int32),
        }
    )
    out[C.Rank] = np.arange(1, len(out) + 1, dtype=np.int32)
    return out


def top_popular_table(events: pd.DataFrame, items: pd.DataFrame | None, k: int) -> pd.DataFrame:
    """The served list: track_id, rank, listeners and, when `items` is given, names."""
    top = listeners_per_track(events).head(k)
    top = top[[C.Item, C.Rank, C.Listeners]]
    if items is not None:
        names = items[[C.Item, C.TrackName, C.ArtistNames, C.MainGenreName]]
        top = top.merge(names, on=C.Item, how="left")
    return top


def recommend_popular(
    popular: pd.DataFrame, matrix: InteractionMatrix, user_ids: np.ndarray, k: int
) -> pd.DataFrame:
    """For each user: the most popular tracks the user has not heard (user, item, score, rank).

    `popular` is `listeners_per_track` output; `matrix` holds the users' history.

    Without a cross product: a user's heard tracks are "holes" at their positions in the
    popular list, and with the holes sorted (h_0 < h_1 < ...) the j-th unheard position is
    j + #{i : h_i - i <= j} (h_i - i counts the unheard positions before hole i). So the
    cost is the users' history plus users * k, whatever the longest history.
    """
    user_ids = np.asarray(user_ids)
    items = popular[C.Item].to_numpy()
    scores = popular[C.Listeners].to_numpy().astype(np.float32)
    n_u = len(user_ids)
    if n_u == 0 or len(items) == 0 or k <= 0:
        return pd.DataFrame({c: [] for c in C.Recommendations})
    # popularity position of every matrix item (-1: not in the popular list)
    pos_of_code = np.full(len(matrix.items), -1, dtype=np.int64)
    codes = matrix.items.codes(items)
    known = codes >= 0
    pos_of_code[codes[known]] = np.flatnonzero(known)
    csr = matrix.csr
    frames = []
    batch = 200_000  # users at a time: bounds the arrays of their heard tracks' positions
    for start in range(0, n_u, batch):
        users = user_ids[start : start + batch]
        rows = matrix.users.codes(users)
        b = len(users)
        # holes per user: positions of the heard tracks in the popular list, sorted
        lens = np.where(rows >= 0, csr.indptr[rows + 1] - csr.indptr[np.maximum(rows, 0)], 0)
        lo = np.where(rows >= 0, csr.indptr[np.maximum(rows, 0)], 0)
        seg = np.repeat(np.arange(b, dtype=np.int64), lens)
        idx = np.repeat(lo - (np.cumsum(lens) - lens), lens) + np.arange(lens.sum())
        hole = pos_of_code[csr.indices[idx]]
        ok = hole >= 0
        seg, hole = seg[ok], hole[ok]
        order = np.lexsort((hole, seg))
        seg, hole = seg[order], hole[order]
        n_h = np.bincount(seg, minlength=b)
        first = np.cumsum(n_h) - n_h
        rank_in_seg = np.arange(len(seg)) - np.repeat(first, n_h)
        # per user, g = hole - i is non-decreasing; offset users apart to search them all
        span = np.int64(len(items) + 1)
        g = seg * span + (hole - rank_in_seg)
        j = np.tile(np.arange(k, dtype=np.int64), b)
        u_of = np.repeat(np.arange(b, dtype=np.int64), k)
        count = np.searchsorted(g, u_of * span + j, side="right") - first[u_of]
        p = j + count
        keep = p < len(items)
        u_of, p, j = u_of[keep], p[keep], j[keep]
        frames.append(
            pd.DataFrame(
                {
                    C.User: users[u_of],
                    C.Item: items[p],
                    C.Score: scores[p],
                    C.Rank: (j + 1).astype(np.int16),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)

"""Top popular: tracks ranked by the number of distinct listeners (the cold-start answer)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from musicrec.columns import Columns as C
from musicrec.matrix import InteractionMatrix, seen_mask


def listeners_per_track(events: pd.DataFrame) -> pd.DataFrame:
    """track_id, listeners (distinct users; rows are first listens, so a row count).

    Sorted by listeners descending, then track_id, with a 1-based `rank`.
    """
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

    `popular` is `listeners_per_track` output; `matrix` holds the users' history. Each user
    needs at most k + (tracks heard among the top) candidates, so the top list is cut at
    k + the longest history and filtered in one vectorised pass.
    """
    user_ids = np.asarray(user_ids)
    longest = int(np.diff(matrix.csr.indptr).max()) if matrix.csr.nnz else 0
    top = popular.head(k + longest)
    items = top[C.Item].to_numpy()
    scores = top[C.Listeners].to_numpy().astype(np.float32)
    n_u, n_i = len(user_ids), len(items)
    frames = []
    batch = max(1, 20_000_000 // max(n_i, 1))
    for start in range(0, n_u, batch):
        users = user_ids[start : start + batch]
        u = np.repeat(users, n_i)
        it = np.tile(items, len(users))
        sc = np.tile(scores, len(users))
        seen = seen_mask(matrix.csr, matrix.users.codes(u), matrix.items.codes(it))
        df = pd.DataFrame({C.User: u[~seen], C.Item: it[~seen], C.Score: sc[~seen]})
        df = df.groupby(C.User, sort=False).head(k)
        df[C.Rank] = (df.groupby(C.User, sort=False).cumcount() + 1).astype(np.int16)
        frames.append(df)
    if not frames:
        return pd.DataFrame({c: [] for c in C.Recommendations})
    return pd.concat(frames, ignore_index=True)

"""ALS (implicit) personal recommendations and item factors.

The matrix is users x items (CSR, float32 ones: first listens). In implicit 0.7 the
confidence of a listen is `alpha * value`, so `alpha` is the confidence of one listen.
implicit runs its own threads; BLAS is limited to one thread while it runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from musicrec.columns import Columns as C
from musicrec.config import ALSConfig
from musicrec.io import atomic_path
from musicrec.matrix import IdMap, InteractionMatrix, pair_dots, stable_topk, topk_frame

#: file names of a saved model inside its directory (`save`, `load`): the user ids, the
#: track ids, then their factors, row for row
FILES = ("als_user_ids.npy", "als_item_ids.npy", "als_user_factors.npy", "als_item_factors.npy")


class ALSModel:
    """A fitted ALS model: user and item factors plus their id maps."""

    def __init__(
        self, users: IdMap, items: IdMap, user_factors: np.ndarray, item_factors: np.ndarray
    ) -> None:
        self.users = users
        self.items = items
        self.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)

    def is_fit_on(self, matrix: InteractionMatrix) -> bool:
        """Whether this model's users and tracks are `matrix`'s, row for row and column for
        column (a model fit on another history scores the wrong rows)."""
        return np.array_equal(self.users.ids, matrix.users.ids) and np.array_equal(
            self.items.ids, matrix.items.ids
        )

    def unit_item_factors(self) -> np.ndarray:
        """The item factors scaled to unit length (float32; all-zero rows stay zero): their
        dot products are the cosines of the similar tracks and of the ranker's features."""
        f = self.item_factors
        norms = np.linalg.norm(f, axis=1)
        out: np.ndarray = f / np.where(norms > 0, norms, np.float32(1))[:, None]
        return out

    @classmethod
    def fit(
        cls,
        matrix: InteractionMatrix,
        cfg: ALSConfig,
        num_threads: int = 0,
        overrides: dict[str, float] | None = None,
        init: ALSModel | None = None,
        iterations: int | None = None,
    ) -> ALSModel:
        """Fit on `matrix`; `overrides` replace factors/regularization/alpha (for tuning).

        With `init` (a model fit on other data, e.g. an earlier window of the same events),
        the fit starts from its factors for the users and tracks it knows (`warm_factors`)
        instead of random ones, so fewer `iterations` (default `cfg.iterations`) reach the
        same fit. Its factor count must be the fit's."""
        from implicit.cpu.als import AlternatingLeastSquares

        params = {
            "factors": cfg.factors,
            "regularization": cfg.regularization,
            "alpha": cfg.alpha,
            **(overrides or {}),
        }
        if float(matrix.csr.sum()) <= 0:
            raise ValueError("ALS: the interaction matrix is empty")
        factors = int(params["factors"])
        if init is not None and init.user_factors.shape[1] != factors:
            raise ValueError(
                f"ALS: a warm start needs {factors} factors, the initial model "
                f"has {init.user_factors.shape[1]}"
            )
        # one thread for BLAS while the model is built (implicit checks the thread count
        # then: its "OpenBLAS is configured to use N threads" warning is no false alarm)
        # and while it is fit
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=factors,
                regularization=float(params["regularization"]),
                alpha=float(params["alpha"]),
                iterations=cfg.iterations if iterations is None else iterations,
                random_state=cfg.random_state,
                dtype=np.float32,
                num_threads=num_threads,
            )
            if init is not None:
                rng = np.random.default_rng(cfg.random_state)
                # implicit keeps factors it finds set instead of drawing random ones
                model.user_factors = warm_factors(
                    init.users, init.user_factors, matrix.users.ids, rng
                )
                model.item_factors = warm_factors(
                    init.items, init.item_factors, matrix.items.ids, rng
                )
            model.fit(matrix.csr, show_progress=False)
        return cls(matrix.users, matrix.items, model.user_factors, model.item_factors)

    # ---- scoring ----
    def recommend(
        self,
        user_ids: np.ndarray,
        history: InteractionMatrix,
        n: int,
        batch_size: int = 10_000,
        num_threads: int = 0,
        items: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Top-n unheard tracks for each user in `user_ids` known to the model.

        `history` must share this model's id maps (it is the matrix the model was fit on, or
        one built with the same maps); its non-zeros are filtered out. `items` (sorted item
        codes), if given, restricts the tracks scored (see `top_item_codes`); a user who
        heard so much of that head that fewer than n of its tracks are left is scored again
        against every track, so each list holds min(n, unheard tracks) rows either way.
        """
        codes = self.users.codes(np.asarray(user_ids))
        codes = np.unique(codes[codes >= 0])
        n_all = min(n, len(self.item_factors))
        frames = [self._empty_recommendations()]
        with threadpool_limits(1, "blas"):
            for start in range(0, len(codes), batch_size):
                batch = codes[start : start + batch_size]
                frame = self._topk(batch, history, n, num_threads, items)
                if items is not None:
                    frame = self._top_up(frame, batch, history, n_all, num_threads)
                frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def _empty_recommendations(self) -> pd.DataFrame:
        """A frame of no rows with the dtypes of `recommend`'s rows."""
        return pd.DataFrame(
            {
                C.User: self.users.ids[:0],
                C.Item: self.items.ids[:0],
                C.Score: np.empty(0, dtype=np.float32),
                C.Rank: np.empty(0, dtype=np.int16),
            }
        )

    def _topk(
        self,
        batch: np.ndarray,
        history: InteractionMatrix,
        n: int,
        num_threads: int,
        items: np.ndarray | None,
    ) -> pd.DataFrame:
        """`recommend` for one batch of user codes, scored against `items` (None: all)."""
        factors, filt = self.item_factors, history.csr[batch]
        if items is not None:
            factors = np.ascontiguousarray(self.item_factors[items])
            filt = filt[:, items]  # column j of the result is item items[j]
        ids, scores = stable_topk(
            factors,
            self.user_factors[batch],
            min(n, len(factors)),
            filter_query_items=filt,
            num_threads=num_threads,
        )
        return topk_frame(
            batch, ids, scores, self.users.ids, self.items.ids, (C.User, C.Item), subset=items
        )

    def _top_up(
        self,
        frame: pd.DataFrame,
        batch: np.ndarray,
        history: InteractionMatrix,
        n: int,
        num_threads: int,
    ) -> pd.DataFrame:
        """Score again, against every track, the users of `batch` whose head-only list is
        shorter than it could be (min(n, tracks they have not heard)); rare: heavy users."""
        # rows per user of the batch (sorted unique codes, so positions by searchsorted)
        got = np.bincount(
            np.searchsorted(batch, self.users.codes(frame[C.User].to_numpy())),
            minlength=len(batch),
        )
        heard = np.diff(history.csr.indptr)[batch]
        short = batch[got < np.minimum(n, len(self.item_factors) - heard)]
        if len(short) == 0:
            return frame
        redo = self._topk(short, history, n, num_threads, None)
        keep = ~np.isin(frame[C.User].to_numpy(), self.users.ids[short])
        return pd.concat([frame[keep], redo], ignore_index=True).sort_values(
            [C.User, C.Rank], kind="stable", ignore_index=True
        )

    def score_pairs(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Dot product of user and item factors per pair; NaN where either is unknown."""
        u = self.users.codes(np.asarray(user_ids))
        i = self.items.codes(np.asarray(item_ids))
        ok = (u >= 0) & (i >= 0)
        out = np.full(len(u), np.nan, dtype=np.float32)
        out[ok] = pair_dots(self.user_factors, u[ok], self.item_factors, i[ok])
        return out

    # ---- persistence (npy, no pickle) ----
    def save(self, model_dir: str | Path) -> None:
        """The four arrays as `FILES` in `model_dir`, each written atomically."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        arrays = (self.users.ids, self.items.ids, self.user_factors, self.item_factors)
        for name, arr in zip(FILES, arrays, strict=True):
            with atomic_path(model_dir / name) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)

    @classmethod
    def load(cls, model_dir: str | Path) -> ALSModel:
        model_dir = Path(model_dir)

        user_ids, item_ids, user_factors, item_factors = (
            np.load(model_dir / name, allow_pickle=False) for name in FILES
        )
        return cls(IdMap(user_ids), IdMap(item_ids), user_factors, item_factors)


def warm_factors(
    init_ids: IdMap, init_factors: np.ndarray, ids: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Starting factors (float32, one row per id of `ids`) for a warm-started fit: the row of
    `init_factors` with the same id where `init_ids` knows the id, else small uniform
    values in [0, 0.01) (implicit's own random initialisation)."""
    out = rng.random((len(ids), init_factors.shape[1]), dtype=np.float32) * np.float32(0.01)
    codes = init_ids.codes(np.asarray(ids))
    known = codes >= 0
    out[known] = init_factors[codes[known]]
    return out


def top_item_codes(matrix: InteractionMatrix, n: int | None) -> np.ndarray | None:
    """Sorted codes of the `n` items with the most listeners in `matrix` (None: all items).

    Listeners are distinct users (the binary matrix's non-zeros per column), ties to the
    lower code: `popular.listeners_per_track`'s order when no (user, track) pair repeats.

    Scoring every user against every track is the most expensive offline step at scale
    (users x items x factors multiply-adds); the long tail of rarely heard tracks almost
    never reaches a top-100, so `ALSConfig.max_scored_items` restricts scoring to the head.
    """
    if n is None or n >= matrix.csr.shape[1]:
        return None
    counts = np.bincount(matrix.csr.indices, minlength=matrix.csr.shape[1])
    top = np.argsort(-counts, kind="stable")[:n]
    return np.sort(top).astype(np.int64)

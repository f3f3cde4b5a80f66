"""Second stage: label candidates, sample negatives, train and apply the CatBoost ranker.

Training rows come from candidates generated on a history window and labelled by the
listens of the window right after it (the label window); the test window is never used.
The model file is CatBoost's own `.cbm` format (no pickle).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from musicrec.columns import CAT_FEATURES, FEATURES
from musicrec.columns import Columns as C
from musicrec.config import RankerConfig
from musicrec.io import atomic_path
from musicrec.matrix import pair_keys, top_k_per_user

log = logging.getLogger(__name__)
TARGET = "target"
#: which label window a training row comes from (0 = the newest); rows are grouped by
#: (window, user), so one user in two windows is two queries
WINDOW = "label_window"


def group_ids(df: pd.DataFrame) -> np.ndarray:
    """CatBoost query ids: the user, or (window, user) when rows carry `WINDOW`. Rows of a
    query must be contiguous (as `sample_training_rows` leaves them within a window)."""
    users = df[C.User].to_numpy().astype(np.int64)
    if WINDOW not in df:
        return users
    return pair_keys(df[WINDOW].to_numpy(), users)


def label_candidates(cand: pd.DataFrame, window: pd.DataFrame) -> pd.DataFrame:
    """`target` = 1 where the user listened to the candidate in `window`, else 0."""
    pos = window[[C.User, C.Item]].drop_duplicates().assign(**{TARGET: np.int8(1)})
    out = cand.merge(pos, on=[C.User, C.Item], how="left")
    out[TARGET] = out[TARGET].fillna(0).astype(np.int8)
    return out


def sample_training_rows(
    labelled: pd.DataFrame, negatives_per_user: int, max_users: int | None, seed: int
) -> pd.DataFrame:
    """Keep users with at least one positive: all their positives and up to
    `negatives_per_user` random negatives each. With `max_users`, a random subset of those
    users (training cost, not memory, bounds it). Rows end grouped by user."""
    rng = np.random.default_rng(seed)
    has_pos = labelled.groupby(C.User, sort=False)[TARGET].transform("max") > 0
    df = labelled[has_pos.to_numpy()]
    users = df[C.User].unique()
    if max_users is not None and len(users) > max_users:
        keep = rng.choice(users, size=max_users, replace=False)
        df = df[df[C.User].isin(keep)]
    df = df.assign(_r=rng.random(len(df)))
    neg = df[df[TARGET] == 0].sort_values([C.User, "_r"]).groupby(C.User).head(negatives_per_user)
    out = pd.concat([df[df[TARGET] == 1], neg]).drop(columns="_r")
    return out.sort_values([C.User, C.Item], kind="stable").reset_index(drop=True)


def window_weights(df: pd.DataFrame, decay: float) -> np.ndarray | None:
    """Each row's query weight, `decay ** window` (window 0 = the newest label window);
    None (every query alike) when `decay` is 1 or the rows carry no `WINDOW`."""
    if decay == 1.0 or WINDOW not in df:
        return None
    return np.power(decay, df[WINDOW].to_numpy(np.float64))


def _pool(
    df: pd.DataFrame, names: list[str], labelled: bool = False, window_decay: float = 1.0
) -> object:
    """A CatBoost pool of `df`'s `names` columns (the categorical ones marked); with
    `labelled`, the target, the query ids and the queries' window weights too."""
    from catboost import Pool

    cats = [c for c in CAT_FEATURES if c in names]
    if not labelled:
        return Pool(df[names], cat_features=cats)
    return Pool(
        df[names],
        label=df[TARGET].to_numpy(),
        group_id=group_ids(df),
        group_weight=window_weights(df, window_decay),
        cat_features=cats,
    )


class Ranker:
    """A CatBoost ranking model over `cfg.features` (default: all of FEATURES); the model
    file carries the names, so `predict` reads the columns it was trained on."""

    def __init__(self, model: object) -> None:
        self.model = model

    @property
    def features(self) -> list[str]:
        return list(self.model.feature_names_)  # type: ignore[attr-defined]

    @classmethod
    def fit(cls, train: pd.DataFrame, cfg: RankerConfig) -> Ranker:
        """One CatBoost model, or with `cfg.bag_size` > 1 the average of that many fit on
        the same rows with seeds `random_seed`, `random_seed + 1`, ...: CatBoost's
        `sum_models` with weights 1/n merges their trees into one model whose score is the
        mean of theirs (tested against the mean of the separate models' scores)."""
        from catboost import CatBoost, sum_models

        names = cfg.features or FEATURES
        pool = _pool(train, names, labelled=True, window_decay=cfg.window_weight_decay)
        params: dict[str, object] = {
            "loss_function": cfg.loss_function,
            "iterations": cfg.iterations,
            "learning_rate": cfg.learning_rate,
            "depth": cfg.depth,
            "l2_leaf_reg": cfg.l2_leaf_reg,
            "thread_count": cfg.thread_count,
            "verbose": False,
            "allow_writing_files": False,
        }
        if cfg.loss_function in ("Logloss", "CrossEntropy"):
            params["eval_metric"] = "Logloss"
        models = []
        for i in range(cfg.bag_size):
            model = CatBoost({**params, "random_seed": cfg.random_seed + i})
            model.fit(pool)
            models.append(model)
        if len(models) == 1:
            return cls(models[0])
        return cls(sum_models(models, weights=[1.0 / len(models)] * len(models)))

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        pool = _pool(df, self.features)
        return np.asarray(self.model.predict(pool), dtype=np.float32)  # type: ignore[attr-defined]

    def feature_importances(self, data: pd.DataFrame) -> dict[str, float]:
        """Loss change per feature on `data` (labelled, grouped rows), largest first."""
        pool = _pool(data, self.features, labelled=True)
        vals = self.model.get_feature_importance(pool)  # type: ignore[attr-defined]
        pairs = sorted(zip(self.features, map(float, vals), strict=True), key=lambda p: -p[1])
        return dict(pairs)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            self.model.save_model(str(tmp), format="cbm")  # type: ignore[attr-defined]

    @classmethod
    def load(cls, path: str | Path) -> Ranker:
        from catboost import CatBoost

        model = CatBoost()
        model.load_model(str(path), format="cbm")
        return cls(model)


def rank_candidates(df: pd.DataFrame, scores: np.ndarray, k: int) -> pd.DataFrame:
    """Top-k candidates per user by ranker score: user_id, track_id, score, rank; users
    ascending, ties in the candidates' order, NaN scores last (`top_k_per_user`)."""
    return top_k_per_user(df[C.User].to_numpy(), df[C.Item].to_numpy(), np.asarray(scores), k)

"""Second stage: label candidates, sample negatives, train and apply the CatBoost ranker.

Training rows come from candidates generated on a history window and labelled by the
listens of the window right after it (the label window); the test window is never used.
The model file is CatBoost's own `.cbm` format (no pickle).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from musicrec.columns import CAT_FEATURES
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


def label_candidates(cand: pd.DataFrame, window_events: pd.DataFrame) -> pd.DataFrame:
    """`TARGET` = 1 where the user listened to the candidate in `window_events` (a label
    window's events), else 0."""
    pos = window_events[[C.User, C.Item]].drop_duplicates().assign(**{TARGET: np.int8(1)})
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


def catboost_params(cfg: RankerConfig) -> dict[str, object]:
    """CatBoost's training parameters for `cfg`, without the random seed."""
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
    return params


class Ranker:
    """A CatBoost ranking model over `cfg.features` (default: DEFAULT_FEATURES); the model
    file carries the names, so `predict` reads the columns it was trained on."""

    def __init__(self, model: object) -> None:
        self.model = model
        #: the value range of the training rows' features, when this process trained the
        #: model (`pipeline.train_ranker`); scoring compares against it (`FeatureRange`)
        self.training_range: FeatureRange | None = None

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

        names = cfg.feature_names
        pool = _pool(train, names, labelled=True, window_decay=cfg.window_weight_decay)
        params = catboost_params(cfg)
        models = []
        for i in range(cfg.bag_size):
            t0 = time.perf_counter()
            model = CatBoost({**params, "random_seed": cfg.random_seed + i})
            model.fit(pool)
            models.append(model)
            # a fit can take minutes with nothing else in the log (Last.fm: 5 of ~4 min each)
            log.info(
                "ranker: CatBoost model %d of %d (seed %d) fit in %.0f s",
                i + 1,
                cfg.bag_size,
                cfg.random_seed + i,
                time.perf_counter() - t0,
            )
        if len(models) == 1:
            return cls(models[0])
        return cls(sum_models(models, weights=[1.0 / len(models)] * len(models)))

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        pool = _pool(df, self.features)
        return np.asarray(self.model.predict(pool), dtype=np.float32)  # type: ignore[attr-defined]

    def feature_importances(
        self, data: pd.DataFrame, window_decay: float = 1.0
    ) -> dict[str, float]:
        """Loss change per feature on `data` (labelled, grouped rows), largest first; the
        queries weighted as in training (`window_decay`, `window_weights`)."""
        pool = _pool(data, self.features, labelled=True, window_decay=window_decay)
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


class FeatureRange:
    """Running minimum and maximum of numeric feature columns over batches of rows, to find
    the features that take one value over all of them.

    A feature that varies in the training rows but is constant in one label window, or over
    every candidate scored, is a train/serve skew: the model splits on values it never sees
    there. (It happened: on Last.fm, whose events are all dated the 1st of a month, the
    30-day "recent" window before 2010-11-01 held no event, so the recent-popularity
    features were 0 for every test candidate while three of five label windows had them.)
    NaN counts as one more value."""

    def __init__(self, names: list[str]) -> None:
        self.names = [n for n in names if n not in CAT_FEATURES]
        self.lo = dict.fromkeys(self.names, np.inf)
        self.hi = dict.fromkeys(self.names, -np.inf)
        self.has_nan = dict.fromkeys(self.names, False)
        self.rows = 0

    def update(self, df: pd.DataFrame) -> FeatureRange:
        """Take in `df`'s rows (an empty frame, which may lack the columns, adds nothing)."""
        if not len(df):
            return self
        for n in self.names:
            v = df[n].to_numpy(np.float64)
            nan = np.isnan(v)
            if nan.any():
                self.has_nan[n] = True
                v = v[~nan]
            if len(v):
                self.lo[n] = min(self.lo[n], float(v.min()))
                self.hi[n] = max(self.hi[n], float(v.max()))
        self.rows += len(df)
        return self

    def merge(self, other: FeatureRange) -> FeatureRange:
        """A new range over the rows of both."""
        out = FeatureRange([n for n in self.names if n in other.names])
        for n in out.names:
            out.lo[n] = min(self.lo[n], other.lo[n])
            out.hi[n] = max(self.hi[n], other.hi[n])
            out.has_nan[n] = self.has_nan[n] or other.has_nan[n]
        out.rows = self.rows + other.rows
        return out

    def constant(self) -> list[str]:
        """The features with one value (or only NaN) over the rows seen; none if no rows."""
        if not self.rows:
            return []
        values = {n: (self.lo[n] < self.hi[n]) + (self.lo[n] <= self.hi[n]) for n in self.names}
        # values[n]: 0 = no finite value, 1 = one, 2 = several; NaN adds one more
        return [n for n in self.names if values[n] + self.has_nan[n] <= 1]

    def constant_where_varying(self, reference: FeatureRange) -> list[str]:
        """Features constant here that are not constant over `reference`'s rows."""
        varying = set(reference.names) - set(reference.constant())
        return [n for n in self.constant() if n in varying]


def rank_candidates(df: pd.DataFrame, scores: np.ndarray, k: int) -> pd.DataFrame:
    """Top-k candidates per user by ranker score: user_id, track_id, score, rank; users
    ascending, ties in the candidates' order, NaN scores last (`top_k_per_user`)."""
    return top_k_per_user(df[C.User].to_numpy(), df[C.Item].to_numpy(), np.asarray(scores), k)

"""Second stage: labels, training sample, the CatBoost ranker and the final top-k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from musicrec.columns import CAT_FEATURES, DEFAULT_FEATURES, NUMERIC_FEATURES
from musicrec.columns import Columns as C
from musicrec.config import RankerConfig
from musicrec.ranker import (
    TARGET,
    WINDOW,
    FeatureRange,
    Ranker,
    catboost_params,
    group_ids,
    label_candidates,
    rank_candidates,
    sample_training_rows,
    window_weights,
)

FAST = RankerConfig(iterations=40, depth=3, thread_count=2, random_seed=7)


def _cand(pairs: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=[C.User, C.Item]).astype(np.int32)


def synthetic_rows(n_users: int = 60, per_user: int = 25, seed: int = 0) -> pd.DataFrame:
    """Feature rows where `als_score` drives the label (users grouped, unsorted ids)."""
    rng = np.random.default_rng(seed)
    users = rng.choice(np.arange(10, 10_000), size=n_users, replace=False)
    df = pd.DataFrame(
        {
            C.User: np.repeat(users, per_user).astype(np.int32),
            C.Item: rng.integers(0, 5_000, n_users * per_user).astype(np.int32),
        }
    )
    for col in NUMERIC_FEATURES:
        df[col] = rng.normal(size=len(df)).astype(np.float32)
    df["main_genre"] = rng.choice(["1", "2", "-1"], size=len(df))
    p = 1 / (1 + np.exp(-3 * df["als_score"].to_numpy() + 2))
    df[TARGET] = (rng.random(len(df)) < p).astype(np.int8)
    return df


# ------------------------------------------------------------------------- labels


def test_label_candidates() -> None:
    cand = _cand([(1, 10), (1, 11), (2, 10), (3, 12)])
    window = _cand([(1, 11), (1, 11), (2, 99), (3, 12), (4, 10)])
    out = label_candidates(cand, window)
    assert len(out) == len(cand)  # a repeated listen does not duplicate a candidate
    assert out[[C.User, C.Item]].equals(cand)
    assert out[TARGET].tolist() == [0, 1, 0, 1]
    assert out[TARGET].dtype == np.int8


# ---------------------------------------------------------------------- sampling


def _labelled(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in rng.permutation(np.arange(100, 140)):
        n = int(rng.integers(5, 60))
        n_pos = 0 if u % 5 == 0 else int(rng.integers(1, 4))  # every fifth user: no positive
        for j in range(n):
            rows.append((int(u), 1000 + j, int(j < n_pos)))
    df = pd.DataFrame(rows, columns=[C.User, C.Item, TARGET])
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # users interleaved


def test_sample_keeps_positives_bounds_negatives_and_groups_users() -> None:
    lab = _labelled()
    out = sample_training_rows(lab, negatives_per_user=7, max_users=None, seed=1)
    with_pos = set(lab.loc[lab[TARGET] == 1, C.User])
    assert set(out[C.User]) == with_pos  # users without a positive are dropped
    # every positive is kept
    pos = lab[lab[TARGET] == 1]
    assert set(zip(pos[C.User], pos[C.Item], strict=True)) <= set(
        zip(out[C.User], out[C.Item], strict=True)
    )
    negs = out[out[TARGET] == 0].groupby(C.User).size()
    avail = lab[(lab[TARGET] == 0) & lab[C.User].isin(with_pos)].groupby(C.User).size()
    assert (negs <= 7).all()
    assert (negs == avail.clip(upper=7).loc[negs.index]).all()
    # rows are grouped by user (CatBoost's group_id must be contiguous)
    firsts = out[C.User].ne(out[C.User].shift()).sum()
    assert firsts == out[C.User].nunique()
    assert not out.duplicated([C.User, C.Item]).any()
    # rows come from the input, unchanged
    merged = out.merge(lab, on=[C.User, C.Item], suffixes=("", "_in"))
    assert len(merged) == len(out) and (merged[TARGET] == merged[f"{TARGET}_in"]).all()


def test_sample_max_users_and_seed() -> None:
    lab = _labelled(3)
    a = sample_training_rows(lab, 5, max_users=10, seed=4)
    b = sample_training_rows(lab, 5, max_users=10, seed=4)
    assert a[C.User].nunique() == 10
    pd.testing.assert_frame_equal(a, b)
    c = sample_training_rows(lab, 5, max_users=None, seed=5)
    assert c[C.User].nunique() == lab.loc[lab[TARGET] == 1, C.User].nunique()


# ------------------------------------------------------------------------ ranker


@pytest.fixture(scope="module")
def trained() -> tuple[Ranker, pd.DataFrame]:
    train = synthetic_rows()
    train = train.sort_values(C.User, kind="stable").reset_index(drop=True)
    return Ranker.fit(train, FAST), synthetic_rows(seed=1)


def test_ranker_learns_the_signal(trained: tuple[Ranker, pd.DataFrame]) -> None:
    ranker, test = trained
    pred = ranker.predict(test)
    assert pred.dtype == np.float32 and len(pred) == len(test)
    assert np.corrcoef(pred, test["als_score"])[0, 1] > 0.5
    imp = ranker.feature_importances(test.sort_values(C.User, kind="stable"))
    assert set(imp) == set(DEFAULT_FEATURES)  # no ranker.features: the default list
    assert next(iter(imp)) == "als_score"


def test_ranker_save_load_cbm_round_trip(
    trained: tuple[Ranker, pd.DataFrame], tmp_path: Path
) -> None:
    ranker, test = trained
    path = tmp_path / "model" / "ranker.cbm"
    path.parent.mkdir()
    ranker.save(path)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["ranker.cbm"]  # no temporary left
    loaded = Ranker.load(path)
    assert np.array_equal(loaded.predict(test), ranker.predict(test))
    # the features are looked up by name: column order does not matter
    shuffled = test[list(reversed(test.columns))]
    assert np.array_equal(loaded.predict(shuffled), ranker.predict(test))


def test_ranker_logloss_variant() -> None:
    train = synthetic_rows(n_users=30).sort_values(C.User, kind="stable")
    r = Ranker.fit(train, FAST.model_copy(update={"loss_function": "Logloss"}))
    assert np.isfinite(r.predict(train)).all()
    # the model was trained with the loss asked for, not a ranking loss in its place
    assert r.model.get_params()["loss_function"] == "Logloss"  # type: ignore[attr-defined]


@pytest.mark.parametrize("loss", ["PairLogit", "Logloss"])
def test_bag_scores_the_mean_of_its_seeds_models_in_one_file(tmp_path: Path, loss: str) -> None:
    train = synthetic_rows(n_users=40).sort_values(C.User, kind="stable")
    test = synthetic_rows(n_users=20, seed=3)
    cfg = FAST.model_copy(update={"loss_function": loss})
    singles = [
        Ranker.fit(train, cfg.model_copy(update={"random_seed": 7 + i})).predict(test)
        for i in range(3)
    ]
    assert not np.allclose(singles[0], singles[1], atol=1e-3)  # the seeds differ
    bag = Ranker.fit(train, cfg.model_copy(update={"bag_size": 3}))
    pred = bag.predict(test)
    np.testing.assert_allclose(pred, np.mean(singles, axis=0), atol=1e-5)
    path = tmp_path / "ranker.cbm"
    bag.save(path)
    assert np.array_equal(Ranker.load(path).predict(test), pred)
    assert set(bag.feature_importances(train)) == set(DEFAULT_FEATURES)


def test_each_bag_model_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A bag's fits can take minutes each with nothing else in the log (Last.fm: five
    models): one line per model says how far the fit is."""
    train = synthetic_rows(n_users=30).sort_values(C.User, kind="stable")
    with caplog.at_level("INFO", logger="musicrec.ranker"):
        Ranker.fit(train, FAST.model_copy(update={"bag_size": 2, "random_seed": 5}))
    lines = [r.getMessage() for r in caplog.records if r.name == "musicrec.ranker"]
    assert [line.split(" fit in ")[0] for line in lines] == [
        "ranker: CatBoost model 1 of 2 (seed 5)",
        "ranker: CatBoost model 2 of 2 (seed 6)",
    ]


def test_l2_leaf_reg_reaches_catboost() -> None:
    train = synthetic_rows(n_users=30).sort_values(C.User, kind="stable")
    weak = Ranker.fit(train, FAST)
    strong = Ranker.fit(train, FAST.model_copy(update={"l2_leaf_reg": 1000.0}))
    assert strong.model.get_params()["l2_leaf_reg"] == 1000.0  # type: ignore[attr-defined]
    # heavier regularisation shrinks the leaf values, so the scores spread less
    assert np.std(strong.predict(train)) < np.std(weak.predict(train))
    with pytest.raises(ValueError, match="l2_leaf_reg"):
        RankerConfig(l2_leaf_reg=-1.0)


def test_bag_size_is_validated() -> None:
    with pytest.raises(ValueError, match="bag_size"):
        RankerConfig(bag_size=0)


def test_feature_subset_is_all_the_model_reads(tmp_path: Path) -> None:
    train = synthetic_rows(n_users=40).sort_values(C.User, kind="stable")
    subset = ["main_genre", "als_score", "item_listeners"]  # any order in the config
    cfg = RankerConfig.model_validate({**FAST.model_dump(), "features": subset})
    assert cfg.features == ["als_score", "item_listeners", "main_genre"]  # FEATURES' order
    ranker = Ranker.fit(train, cfg)
    assert ranker.features == cfg.features
    assert set(ranker.feature_importances(train)) == set(subset)
    test = synthetic_rows(n_users=20, seed=3)
    pred = ranker.predict(test)
    # the other feature columns are not read: dropping them changes nothing, after a save too
    ranker.save(tmp_path / "ranker.cbm")
    slim = test[[C.User, C.Item, *subset]]
    assert np.array_equal(Ranker.load(tmp_path / "ranker.cbm").predict(slim), pred)
    assert np.corrcoef(pred, test["als_score"])[0, 1] > 0.5


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (["als_score", "no_such_feature"], "unknown features"),
        ([], "non-empty"),
        (["als_score", "als_score"], "without repeats"),
    ],
)
def test_feature_subset_is_validated(features: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RankerConfig(features=features)


def test_cat_features_are_strings(trained: tuple[Ranker, pd.DataFrame]) -> None:
    ranker, test = trained
    assert CAT_FEATURES == ["main_genre"]
    unseen = test.assign(main_genre="123456")  # a genre the model never saw
    assert np.isfinite(ranker.predict(unseen)).all()


# --------------------------------------------------------------------------- top-k


def test_rank_candidates_top_k_per_user() -> None:
    df = _cand([(2, 20), (1, 10), (2, 21), (1, 11), (1, 12), (2, 22), (3, 30)])
    scores = np.array([0.1, 0.5, 0.9, 0.7, 0.5, 0.3, -1.0], dtype=np.float32)
    out = rank_candidates(df, scores, k=2)
    assert list(out.columns) == C.Recommendations
    assert out[C.User].tolist() == [1, 1, 2, 2, 3]
    # ties (0.5) keep the candidates' order: 10 before 12
    assert out[C.Item].tolist() == [11, 10, 21, 22, 30]
    assert out[C.Rank].tolist() == [1, 2, 1, 2, 1]
    assert out[C.Score].tolist() == pytest.approx([0.7, 0.5, 0.9, 0.3, -1.0])


def test_rank_candidates_nan_scores_last_and_empty_input() -> None:
    df = _cand([(1, 10), (1, 11), (1, 12), (2, 20)])
    scores = np.array([np.nan, 0.2, 0.4, np.nan], dtype=np.float32)
    out = rank_candidates(df, scores, k=5)
    assert out[C.Item].tolist() == [12, 11, 10, 20]
    assert out[C.Rank].tolist() == [1, 2, 3, 1]
    empty = rank_candidates(df.iloc[:0], scores[:0], k=5)
    assert list(empty.columns) == C.Recommendations and len(empty) == 0


def test_rank_candidates_equals_a_pandas_sort() -> None:
    rng = np.random.default_rng(7)
    df = _cand(
        list(zip(rng.integers(0, 300, 20_000), rng.integers(0, 10**6, 20_000), strict=True))
    ).drop_duplicates()
    scores = rng.integers(0, 20, len(df)).astype(np.float32)  # many ties
    scores[rng.random(len(df)) < 0.05] = np.nan
    ref = df[[C.User, C.Item]].assign(**{C.Score: scores})
    ref = ref.sort_values([C.User, C.Score], ascending=[True, False], kind="stable")
    ref = ref.groupby(C.User, sort=False).head(7).copy()
    ref[C.Rank] = (ref.groupby(C.User, sort=False).cumcount() + 1).astype(np.int16)
    pd.testing.assert_frame_equal(rank_candidates(df, scores, 7), ref.reset_index(drop=True))


def test_rank_candidates_random_properties() -> None:
    rng = np.random.default_rng(2)
    df = _cand(
        list(zip(rng.integers(0, 50, 3_000), rng.integers(0, 10**6, 3_000), strict=True))
    ).drop_duplicates()
    scores = rng.normal(size=len(df)).astype(np.float32)
    k = 10
    out = rank_candidates(df, scores, k)
    sizes = df.groupby(C.User).size()
    got = out.groupby(C.User).size()
    assert (got == sizes.clip(upper=k)).all()
    full = df.assign(s=scores)
    for u, g in out.groupby(C.User):
        assert g[C.Rank].tolist() == list(range(1, len(g) + 1))
        best = np.sort(full.loc[full[C.User] == u, "s"].to_numpy())[::-1][: len(g)]
        assert np.allclose(g[C.Score].to_numpy(), best)


# ------------------------------------------------------------------ pooled windows


def test_group_ids_separate_one_user_in_two_windows() -> None:
    df = pd.DataFrame({C.User: [5, 5, 9, 5, 5], WINDOW: [0, 0, 0, 1, 1]})
    g = group_ids(df)
    assert g[0] == g[1] and g[3] == g[4]  # same user, same window: one query
    assert g[0] != g[3]  # same user, another window: another query
    assert len(set(g.tolist())) == 3
    # without the column a query is a user
    assert group_ids(df.drop(columns=WINDOW)).tolist() == [5, 5, 9, 5, 5]


def test_pooled_windows_train_one_query_per_window_and_user() -> None:
    a = synthetic_rows(seed=1)
    b = a.copy()  # the same users again, in an earlier window
    b[TARGET] = np.random.default_rng(2).permutation(b[TARGET].to_numpy())
    pooled = pd.concat([a.assign(**{WINDOW: 0}), b.assign(**{WINDOW: 1})], ignore_index=True)
    ranker = Ranker.fit(pooled, FAST)
    imp = ranker.feature_importances(pooled)
    assert set(imp) == set(DEFAULT_FEATURES)
    # CatBoost would reject a query id that is split over non-contiguous rows, and with
    # user-only ids the two windows of a user would merge into one query of 2x the rows
    assert len(np.unique(group_ids(pooled))) == 2 * a[C.User].nunique()


def test_window_weight_decay_lets_the_newest_window_win() -> None:
    """Window 0 says "high als_score is good", the larger window 1 says the opposite: with
    every window alike the model follows window 1; with a steep decay, window 0."""
    new = synthetic_rows(n_users=40, seed=1).assign(**{WINDOW: 0})
    old = synthetic_rows(n_users=120, seed=2).assign(**{WINDOW: 1})
    old["als_score"] = -old["als_score"]
    pooled = pd.concat([new, old], ignore_index=True)
    test = synthetic_rows(n_users=30, seed=3)
    cfg = FAST.model_copy(update={"loss_function": "PairLogit"})

    def corr(decay: float) -> float:
        ranker = Ranker.fit(pooled, cfg.model_copy(update={"window_weight_decay": decay}))
        return float(np.corrcoef(ranker.predict(test), test["als_score"])[0, 1])

    assert corr(1.0) < -0.5
    assert corr(0.01) > 0.5
    assert window_weights(pooled, 0.5).tolist() == [1.0] * 1000 + [0.5] * 3000
    assert (
        window_weights(pooled, 1.0) is None
        and window_weights(new.drop(columns=WINDOW), 0.5) is None
    )
    with pytest.raises(ValueError, match="window_weight_decay"):
        RankerConfig(window_weight_decay=0.0)


def test_feature_importances_weight_the_windows_as_training_does() -> None:
    """With a vanishing decay the older window's queries weigh nothing, so the importances
    over both windows are those over window 0 alone; with every window alike they are not."""
    new = synthetic_rows(n_users=40, seed=1).assign(**{WINDOW: 0})
    old = synthetic_rows(n_users=120, seed=2).assign(**{WINDOW: 1})
    old["als_score"] = -old["als_score"]
    pooled = pd.concat([new, old], ignore_index=True)
    cfg = FAST.model_copy(update={"loss_function": "PairLogit", "window_weight_decay": 0.2})
    ranker = Ranker.fit(pooled, cfg)
    alone = pd.Series(ranker.feature_importances(new))
    weighted = pd.Series(ranker.feature_importances(pooled, window_decay=1e-9))
    equal = pd.Series(ranker.feature_importances(pooled))
    assert np.allclose(weighted[alone.index], alone, rtol=1e-3, atol=1e-9)
    assert not np.allclose(equal[alone.index], alone, rtol=1e-3, atol=1e-9)


def test_feature_range_finds_constant_features_on_a_hand_example() -> None:
    """a: 1 everywhere; b: NaN then 3 (NaN counts as a value); c: 0 and 2; main_genre is
    categorical and never checked."""
    names = ["a", "b", "c", "main_genre"]
    first = pd.DataFrame(
        {"a": [1.0, 1.0], "b": [np.nan, np.nan], "c": [0.0, 2.0], "main_genre": "x"}
    )
    second = pd.DataFrame({"a": [1.0], "b": [3.0], "c": [2.0], "main_genre": "y"})
    r1 = FeatureRange(names).update(first)
    r2 = FeatureRange(names).update(second)
    assert r1.names == ["a", "b", "c"]
    assert r1.constant() == ["a", "b"]
    assert r2.constant() == ["a", "b", "c"]
    both = r1.merge(r2)
    assert (both.rows, both.constant()) == (3, ["a"])
    assert r1.constant_where_varying(both) == ["b"]
    assert r2.constant_where_varying(both) == ["b", "c"]
    # updating in batches gives the merged range; an empty range reports nothing
    assert FeatureRange(names).update(first).update(second).constant() == ["a"]
    assert FeatureRange(names).constant() == []
    assert FeatureRange(names).update(pd.DataFrame({"user_id": []})).constant() == []


def test_sample_training_rows_by_hand() -> None:
    """User 3 has no positive: dropped. Users 1 and 2 keep every row (3 negatives at most
    per user, they have 2 and 1), sorted by (user, track), indexed 0..4, no other column."""
    lab = pd.DataFrame(
        [(2, 30, 1), (1, 20, 0), (3, 1, 0), (1, 5, 1), (2, 10, 0), (1, 7, 0)],
        columns=[C.User, C.Item, TARGET],
    )
    out = sample_training_rows(lab, negatives_per_user=3, max_users=None, seed=0)
    assert list(out.columns) == [C.User, C.Item, TARGET]
    assert out.index.tolist() == [0, 1, 2, 3, 4]
    assert out.to_numpy().tolist() == [[1, 5, 1], [1, 7, 0], [1, 20, 0], [2, 10, 0], [2, 30, 1]]


def test_sample_a_max_users_that_does_not_bind_changes_nothing() -> None:
    """`max_users` equal to the number of users with a positive keeps them all, and the
    same negatives as no cap (no draw is spent on a subset of everybody)."""
    lab = _labelled(2)
    n_users = lab.loc[lab[TARGET] == 1, C.User].nunique()
    capped = sample_training_rows(lab, 3, max_users=n_users, seed=9)
    pd.testing.assert_frame_equal(capped, sample_training_rows(lab, 3, max_users=None, seed=9))


def test_catboost_params_by_hand() -> None:
    """The config's fields under CatBoost's names, silent and writing no files; the
    Logloss eval metric only for the pointwise losses (Logloss, CrossEntropy)."""
    cfg = RankerConfig(
        loss_function="YetiRank", iterations=40, learning_rate=0.1, depth=3, thread_count=2
    )
    expected: dict[str, object] = {
        "loss_function": "YetiRank",
        "iterations": 40,
        "learning_rate": 0.1,
        "depth": 3,
        "l2_leaf_reg": 3.0,
        "thread_count": 2,
        "verbose": False,
        "allow_writing_files": False,
    }
    assert catboost_params(cfg) == expected
    for loss in ("Logloss", "CrossEntropy"):
        pointwise = catboost_params(cfg.model_copy(update={"loss_function": loss}))
        assert pointwise == {**expected, "loss_function": loss, "eval_metric": "Logloss"}


def test_main_genre_is_a_categorical_feature_of_the_model(
    trained: tuple[Ranker, pd.DataFrame],
) -> None:
    """main_genre holds genre ids as strings ("1", "-1"), which CatBoost would also read as
    numbers: the model must have it (and only it) as a categorical feature."""
    ranker, _ = trained
    cats = ranker.model.get_cat_feature_indices()  # type: ignore[attr-defined]
    assert [ranker.features[i] for i in cats] == ["main_genre"]

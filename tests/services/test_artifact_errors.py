"""Missing or corrupt artifacts stop start-up with a message naming the file."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from musicrec.artifacts import ArtifactPaths
from musicrec.blending import blend
from musicrec.errors import ArtifactError
from musicrec.heard import HeardIndex
from musicrec.serve import SERVICES, child_environment, uvicorn_command
from musicrec.service_recommendations import create_app as recs_app
from musicrec.service_similar import create_app as similar_app
from musicrec.settings import Settings

from .conftest import make_settings


@pytest.fixture
def own_artifacts(artifacts: dict[str, Any], tmp_path: Path) -> Path:
    """A private copy of the fake artifacts that a test may break."""
    root = tmp_path / "recsys"
    shutil.copytree(artifacts["root"], root)
    return root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def drop_column(path: Path, column: str) -> None:
    pq.write_table(pq.read_table(path).drop_columns([column]), path)


def string_ids(path: Path, column: str) -> None:
    df = pd.read_parquet(path)
    df[column] = df[column].astype(str)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def null_ids(path: Path, column: str) -> None:
    t = pq.read_table(path)
    col = pa.array([None] + t.column(column).to_pylist()[1:], type=pa.int64())
    pq.write_table(t.set_column(t.schema.get_field_index(column), column, col), path)


Breaker = Callable[[Path], object]
CASES: list[tuple[str, Breaker, str]] = [
    ("missing", lambda p: p.unlink(), "missing"),
    ("truncated", truncate, "parquet"),
    ("garbage", lambda p: p.write_bytes(b"not parquet at all"), "parquet"),
    ("empty file", lambda p: p.write_bytes(b""), "parquet"),
    # the footer's names are UTF-8: a damaged byte was a UnicodeDecodeError traceback
    (
        "name not UTF-8",
        lambda p: p.write_bytes(p.read_bytes().replace(b"rank", b"r\xffnk")),
        "parquet",
    ),
]

APPS: list[tuple[Callable[[Settings], FastAPI], str, str]] = [
    (recs_app, "recommendations.parquet", "user_id"),
    (recs_app, "top_popular.parquet", "track_id"),
    (similar_app, "similar.parquet", "track_id_1"),
]


def start(app: FastAPI) -> None:
    with TestClient(app):
        pass


@pytest.mark.parametrize(("factory", "file", "column"), APPS, ids=[a[1] for a in APPS])
@pytest.mark.parametrize(("label", "breaker", "words"), CASES, ids=[c[0] for c in CASES])
def test_broken_file_stops_start_up_naming_it(
    own_artifacts: Path,
    tmp_path: Path,
    factory: Callable[[Settings], FastAPI],
    file: str,
    column: str,
    label: str,
    breaker: Breaker,
    words: str,
) -> None:
    path = ArtifactPaths(own_artifacts).recs_dir / file
    breaker(path)
    with pytest.raises(ArtifactError) as err:
        start(factory(make_settings(own_artifacts, tmp_path)))
    assert str(path) in str(err.value) and words in str(err.value)


@pytest.mark.parametrize(("factory", "file", "column"), APPS, ids=[a[1] for a in APPS])
def test_wrong_columns_and_types_stop_start_up(
    own_artifacts: Path,
    tmp_path: Path,
    factory: Callable[[Settings], FastAPI],
    file: str,
    column: str,
) -> None:
    path = ArtifactPaths(own_artifacts).recs_dir / file
    cfg = make_settings(own_artifacts, tmp_path)
    original = path.read_bytes()

    drop_column(path, column)
    with pytest.raises(ArtifactError, match=rf"{file}: missing column\(s\) \['{column}'\]"):
        start(factory(cfg))

    path.write_bytes(original)
    string_ids(path, column)
    with pytest.raises(ArtifactError, match=rf"{file}, column '{column}': expected integer"):
        start(factory(cfg))

    path.write_bytes(original)
    null_ids(path, column)
    with pytest.raises(ArtifactError, match=rf"{file}, column '{column}': 1 null"):
        start(factory(cfg))


#: each artifact the services read with a floating-point column, and that column
FLOAT_COLUMNS = [
    (recs_app, "recommendations.parquet", "score"),
    (similar_app, "similar.parquet", "score"),
]


@pytest.mark.parametrize(("factory", "file", "column"), FLOAT_COLUMNS, ids=["recs", "similar"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_a_nan_or_infinite_number_stops_start_up(
    own_artifacts: Path,
    tmp_path: Path,
    factory: Callable[[Settings], FastAPI],
    file: str,
    column: str,
    bad: float,
) -> None:
    """A score that is not a number was served as a JSON null (`"score": [null, ...]`),
    and the recommendation service then refused the similar service's whole batch."""
    path = ArtifactPaths(own_artifacts).recs_dir / file
    t = pq.read_table(path)
    values = t.column(column).to_numpy().astype(np.float64)
    values[[0, 3]] = bad
    i = t.schema.get_field_index(column)
    pq.write_table(t.set_column(i, column, pa.array(values, t.schema.field(i).type)), path)
    with pytest.raises(ArtifactError, match=rf"{file}, column '{column}': 2 NaN or infinite"):
        start(factory(make_settings(own_artifacts, tmp_path)))
    # as a dictionary-encoded column too (read by its values)
    pq.write_table(t.set_column(i, column, pa.array(values).dictionary_encode()), path)
    with pytest.raises(ArtifactError, match=rf"{file}, column '{column}': 2 NaN or infinite"):
        start(factory(make_settings(own_artifacts, tmp_path)))


def test_empty_popular_list_is_an_error(own_artifacts: Path, tmp_path: Path) -> None:
    path = ArtifactPaths(own_artifacts).top_popular
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(ArtifactError, match="top_popular.parquet: no tracks"):
        start(recs_app(make_settings(own_artifacts, tmp_path)))


def test_uvicorn_process_exits_naming_the_missing_file(own_artifacts: Path, tmp_path: Path) -> None:
    path = ArtifactPaths(own_artifacts).similar
    path.unlink()
    cfg = make_settings(own_artifacts, tmp_path)
    spec = next(s for s in SERVICES if s.name == "similar")
    proc = subprocess.run(
        uvicorn_command(spec, cfg, cfg.similar_port),
        env=child_environment(cfg),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert str(path) in proc.stderr.decode()


def object_array(path: Path) -> None:
    """An .npy of Python objects: loading it would unpickle (never allowed)."""
    np.save(path, np.array([1, "x", None], dtype=object), allow_pickle=True)


def swap_two_tracks(path: Path) -> None:
    """The first two tracks of the first user with two or more, swapped."""
    offsets = np.load(path.parent / "offsets.npy")
    tracks = np.load(path)
    i = int(offsets[np.flatnonzero(np.diff(offsets) >= 2)[0]])
    tracks[[i, i + 1]] = tracks[[i + 1, i]]
    np.save(path, tracks)


HEARD_CASES: list[tuple[str, str, Breaker, str]] = [
    ("missing", "tracks.npy", lambda p: p.unlink(), "missing"),
    ("truncated", "tracks.npy", truncate, "not a readable .npy"),
    ("garbage", "users.npy", lambda p: p.write_bytes(b"not npy at all"), "not a readable .npy"),
    ("pickled objects", "users.npy", object_array, "not a readable .npy"),
    ("floats", "tracks.npy", lambda p: np.save(p, np.zeros(3)), "1-d integer array"),
    ("2-d", "users.npy", lambda p: np.save(p, np.zeros((2, 2), np.int64)), "1-d integer"),
    ("offsets short", "offsets.npy", lambda p: np.save(p, np.zeros(1, np.int64)), "users + 1"),
    ("offsets past the end", "offsets.npy", lambda p: np.save(p, np.load(p) * 2), "rise from 0"),
    ("users unsorted", "users.npy", lambda p: np.save(p, np.load(p)[::-1].copy()), "ascending"),
    ("tracks unsorted in a user", "tracks.npy", swap_two_tracks, "not strictly ascending"),
]


@pytest.mark.parametrize(
    ("label", "file", "breaker", "words"), HEARD_CASES, ids=[c[0] for c in HEARD_CASES]
)
def test_a_broken_heard_index_stops_start_up_naming_the_file(
    own_artifacts: Path, tmp_path: Path, label: str, file: str, breaker: Breaker, words: str
) -> None:
    path = ArtifactPaths(own_artifacts).heard_dir / file
    breaker(path)
    with pytest.raises(ArtifactError) as err:
        start(recs_app(make_settings(own_artifacts, tmp_path)))
    assert str(path.parent) in str(err.value) and words in str(err.value)


def test_artifacts_without_a_heard_index_still_serve_with_a_warning(
    own_artifacts: Path, tmp_path: Path, artifacts: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Artifacts of a pipeline run from before the heard index: the service starts, warns,
    and answers as it did then (the popular top-up unfiltered)."""
    shutil.rmtree(ArtifactPaths(own_artifacts).heard_dir)
    user = artifacts["short_user"]
    with (
        caplog.at_level("WARNING"),
        TestClient(recs_app(make_settings(own_artifacts, tmp_path))) as c,
    ):
        got = c.post("/recommendations_offline", params={"user_id": user, "k": 50}).json()
        # upstreams down: the offline list, then the popular list as it is
        blended = c.post("/recommendations", params={"user_id": user, "k": 50}).json()
    assert got["recs"] == artifacts["recs"][user]
    assert blended["recs"] == blend([], artifacts["recs"][user], 50, (), artifacts["popular"])
    assert set(blended["recs"]) & set(artifacts["heard"][user])  # what the index would drop
    assert any("heard" in r.getMessage() and "missing" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("every_user", [False, True])
def test_users_with_a_list_missing_from_the_heard_index_are_warned_of(
    own_artifacts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, every_user: bool
) -> None:
    """The fake index leaves out one user with a list (as an index of an older run
    would); an index holding every such user starts without the warning."""
    paths = ArtifactPaths(own_artifacts)
    users = np.unique(pd.read_parquet(paths.recommendations)["user_id"].to_numpy())
    if every_user:
        empty = np.zeros(users.size + 1, np.int64)
        HeardIndex(users.astype(np.int64), empty, np.empty(0, np.int64)).save(paths.heard_dir)
    with caplog.at_level("WARNING"):
        start(recs_app(make_settings(own_artifacts, tmp_path)))
    warned = [r.getMessage() for r in caplog.records if "not in the heard index" in r.getMessage()]
    if every_user:
        assert warned == []
    else:
        assert len(warned) == 1 and f"1 of the {users.size} users of" in warned[0]


@pytest.mark.parametrize("factory", [recs_app, similar_app], ids=["recs", "similar"])
def test_artifacts_of_a_run_that_did_not_finish_are_served_with_a_warning(
    own_artifacts: Path,
    tmp_path: Path,
    factory: Callable[[Settings], FastAPI],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pipeline run stopped half-way leaves a mix of two runs' files (`RunState`): the
    service starts on them, and says so."""
    from musicrec.artifacts import RunState

    paths = ArtifactPaths(own_artifacts)
    RunState.write(paths, RunState.COMPLETE, stages={})
    caplog.set_level(logging.WARNING, logger="musicrec.services")
    caplog.clear()
    start(factory(make_settings(own_artifacts, tmp_path)))
    assert not [r for r in caplog.records if "reached its end" in r.getMessage()]
    RunState.write(paths, RunState.UNFINISHED, what="stage 'ranker' was recomputed")
    start(factory(make_settings(own_artifacts, tmp_path)))
    warned = [r for r in caplog.records if "no run has reached its end" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "stage 'ranker'" in warned[0].getMessage() and "mix two runs'" in warned[0].getMessage()

"""Bad data for the pipeline, through the real entry point (`python -m musicrec prepare` or
`pipeline` in a subprocess).

Each case damages one raw file of a valid (generated) data set. It must end either

* with a clear error: exit code 2, one `error: ...` line naming the file and the column,
  no `Traceback` anywhere, no temporary file left, the previous artifacts untouched; or
* with a documented cleaning: exit code 0 and a log line giving the count.

`tests/test_raw.py` checks the readers' messages in-process, one defect per check; this is
the end-to-end view of the same kind of input (and of what only the pipeline can see: a
test window whose users are all new, dates that cannot be split). The short run takes the
issue's twelve inputs; `--long` adds the rest and a whole pipeline run on a catalogue
without genres.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from musicrec.artifacts import ArtifactPaths
from musicrec.columns import Columns as C
from musicrec.columns import RawFiles
from musicrec.serve import PROJECT_ROOT

from .conftest import Profile, Report, is_long

TRK, CAT, INT = RawFiles.Tracks, RawFiles.Catalog, RawFiles.Interactions
EVENTS = "events.parquet"  # the prepared events, where the pipeline's split looks
#: the test window of the pipeline cases (the generated data span 2022)
TEST_START = "2022-12-01"
FAST_CONFIG = f"""
top_k = 20
top_popular_k = 200
[split]
test_start = {TEST_START}
[als]
factors = 16
iterations = 5
tune = false
n_recs = 50
[similar]
k = 10
[ranker]
iterations = 30
depth = 4
als_candidates = 30
popular_candidates = 10
similar_candidates = 10
negatives_per_user = 10
thread_count = 1
"""


# --- damage ------------------------------------------------------------------------------


def rewrite(file: str, change: Callable[[pa.Table], pa.Table]) -> Callable[[Path], None]:
    def damage(raw: Path) -> None:
        table = pq.read_table(raw / file)
        pq.write_table(change(table), raw / file)

    return damage


def set_column(name: str, make: Callable[[pa.Table], Any]) -> Callable[[pa.Table], pa.Table]:
    def change(t: pa.Table) -> pa.Table:
        values = make(t)
        array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
        return t.set_column(t.schema.get_field_index(name), name, array)

    return change


def some_rows(t: pa.Table, every: int = 50) -> np.ndarray:
    """A boolean mask hitting every `every`-th row."""
    return np.arange(t.num_rows) % every == 0


def with_nulls(col: str, typ: pa.DataType) -> Callable[[pa.Table], pa.Table]:
    def make(t: pa.Table) -> pa.Array:
        values = t[col].to_numpy(zero_copy_only=False)
        return pa.array(values, type=typ, mask=some_rows(t))

    return set_column(col, make)


def unknown_tracks(share: float) -> Callable[[pa.Table], pa.Table]:
    def make(t: pa.Table) -> pa.Array:
        ids = t[C.Item].to_numpy().copy()
        ids[: int(len(ids) * share)] = 2_000_000_000  # no such track
        return pa.array(ids, pa.int32())

    return set_column(C.Item, make)


def unparseable_dates(t: pa.Table) -> pa.Array:
    text = pc.strftime(t[C.Datetime], format="%Y-%m-%dT%H:%M:%S").to_pylist()
    text[7] = "not a date"
    text[99] = "2022-13-45"
    return pa.array(text)


def dates_as(value: datetime) -> Callable[[pa.Table], pa.Array]:
    def make(t: pa.Table) -> pa.Array:
        stamps = t[C.Datetime].to_numpy().copy()
        stamps[some_rows(t, 100)] = np.datetime64(value, "ns")
        return pa.array(stamps)

    return make


def seconds_read_as_nanoseconds(t: pa.Table) -> pa.Array:
    seconds = t[C.Datetime].to_numpy().astype("datetime64[s]").astype(np.int64)
    return pa.array(seconds, pa.int64()).cast(pa.timestamp("ns"))  # 1970-01-01 + ~1.6 s


def cold_test_window(t: pa.Table) -> pa.Table:
    """Every listen on or after TEST_START comes from a user never seen before."""
    late = pc.greater_equal(t[C.Datetime], pa.scalar(np.datetime64(TEST_START, "ns")))
    users = pc.if_else(late, pc.add(t[C.User], 1_000_000), t[C.User]).cast(t[C.User].type)
    return t.set_column(t.schema.get_field_index(C.User), C.User, users)


def truncate(file: str) -> Callable[[Path], None]:
    def damage(raw: Path) -> None:
        data = (raw / file).read_bytes()
        (raw / file).write_bytes(data[: len(data) // 2])

    return damage


def repeat_rows(n: int) -> Callable[[pa.Table], pa.Table]:
    return lambda t: pa.concat_tables([t, t.slice(0, n)])


# --- the catalogue -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    damage: Callable[[Path], None]
    #: the error must name this file and column; file None: a cleaning, see `log`
    file: str | None = None
    column: str | None = None
    #: for a cleaning: a regex of the log line (group 1: the count) and the expected count
    #: from (rows of interactions.parquet, rows of tracks.parquet)
    log: str | None = None
    count: Callable[[int, int], int] | None = None
    command: str = "prepare"
    short: bool = False


NOT_PARQUET = b"id,type,name\n1,track,Song\n"
CASES = [
    # the twelve (the short run)
    Case("empty file", lambda d: (d / INT).write_bytes(b""), INT, short=True),
    Case("truncated parquet", truncate(TRK), TRK, short=True),
    Case(
        "missing column",
        rewrite(INT, lambda t: t.drop_columns([C.Datetime])),
        INT,
        C.Datetime,
        short=True,
    ),
    Case(
        "wrong dtype",
        rewrite(INT, set_column(C.User, lambda t: pc.cast(t[C.User], pa.string()))),
        INT,
        C.User,
        short=True,
    ),
    Case("null ids", rewrite(TRK, with_nulls(C.Item, pa.int64())), TRK, C.Item, short=True),
    Case(
        "negative ids",
        rewrite(INT, set_column(C.User, lambda t: pc.subtract(t[C.User], 3))),
        INT,
        C.User,
        short=True,
    ),
    Case("duplicate track ids", rewrite(TRK, repeat_rows(3)), TRK, C.Item, short=True),
    Case(
        "unknown tracks (0.5%: dropped)",
        rewrite(INT, unknown_tracks(0.005)),
        log=r"dropped ([\d,]+) interactions with unknown tracks",
        count=lambda interactions, tracks: int(interactions * 0.005),
        short=True,
    ),
    Case(
        "unparseable dates",
        rewrite(INT, set_column(C.Datetime, unparseable_dates)),
        INT,
        C.Datetime,
        short=True,
    ),
    Case(
        "list column holding scalars",
        rewrite(
            TRK, set_column(C.Genres, lambda t: [g[0] if g else 0 for g in t[C.Genres].to_pylist()])
        ),
        TRK,
        C.Genres,
        short=True,
    ),
    Case(
        "all-cold test window",
        rewrite(INT, cold_test_window),
        EVENTS,
        C.Datetime,
        command="pipeline",
        short=True,
    ),
    Case(
        "catalog with no genres",
        rewrite(CAT, lambda t: t.filter(pc.not_equal(t[C.CatalogType], "genre"))),
        log=r"([\d,]+) of [\d,]+ tracks have no named genre",
        count=lambda interactions, tracks: tracks,
        short=True,
    ),
    # more of the same families (long run)
    Case("missing file", lambda d: (d / TRK).unlink(), TRK),
    Case("not parquet", lambda d: (d / CAT).write_bytes(NOT_PARQUET), CAT),
    Case("no rows", rewrite(INT, lambda t: t.slice(0, 0)), INT),
    Case(
        "fractional ids",
        rewrite(INT, set_column(C.Item, lambda t: pc.add(pc.cast(t[C.Item], pa.float64()), 0.5))),
        INT,
        C.Item,
    ),
    Case(
        "ids beyond int32",
        rewrite(TRK, set_column(C.Item, lambda t: pc.add(pc.cast(t[C.Item], pa.int64()), 2**40))),
        TRK,
        C.Item,
    ),
    Case("null user ids", rewrite(INT, with_nulls(C.User, pa.int32())), INT, C.User),
    Case(
        "unknown catalog type",
        rewrite(
            CAT,
            set_column(
                C.CatalogType,
                lambda t: pc.if_else(pa.array(some_rows(t)), "podcast", t[C.CatalogType]),
            ),
        ),
        CAT,
        C.CatalogType,
    ),
    Case("unknown tracks (5%)", rewrite(INT, unknown_tracks(0.05)), INT, C.Item),
    Case(
        "dates in 1970 (wrong unit)",
        rewrite(INT, set_column(C.Datetime, seconds_read_as_nanoseconds)),
        INT,
        C.Datetime,
    ),
    Case(
        "dates in the future",
        rewrite(INT, set_column(C.Datetime, dates_as(datetime(2199, 1, 1)))),
        INT,
        C.Datetime,
    ),
    Case(
        "null dates",
        rewrite(INT, with_nulls(C.Datetime, pa.timestamp("ns"))),
        INT,
        C.Datetime,
    ),
    Case(
        "integer dates",
        rewrite(INT, set_column(C.Datetime, lambda t: pa.array(np.full(t.num_rows, 20220101)))),
        INT,
        C.Datetime,
    ),
    Case(
        "repeated listens (dropped)",
        rewrite(INT, repeat_rows(100)),
        log=r"dropped ([\d,]+) repeated \(user, track\) interactions",
        count=lambda interactions, tracks: 100,
    ),
    Case(
        "all events on one day",
        rewrite(
            INT,
            set_column(
                C.Datetime,
                lambda t: pa.array(np.full(t.num_rows, np.datetime64("2022-05-05", "ns"))),
            ),
        ),
        EVENTS,
        C.Datetime,
        command="pipeline",
    ),
    Case(
        "catalog with no genres (whole pipeline)",
        rewrite(CAT, lambda t: t.filter(pc.not_equal(t[C.CatalogType], "genre"))),
        log=r"([\d,]+) of [\d,]+ tracks have no named genre",
        count=lambda interactions, tracks: tracks,
        command="pipeline",
    ),
]


# --- running --------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    work: Path
    returncode: int
    stdout: str
    stderr: str
    log: str
    before: dict[str, str]
    after: dict[str, str]
    n_interactions: int
    n_tracks: int


def digest(root: Path, protected: list[str]) -> dict[str, str]:
    """sha256 of every file under `root/<protected dir>`."""
    out = {}
    for sub in protected:
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def protected_dirs(case: Case) -> list[str]:
    """What a run must leave as it was: after a failed prepare, all artifacts; the pipeline
    has rewritten the prepared data (complete files) when the split fails, but the served
    artifacts and models are untouched."""
    return (
        ["data", "recommendations", "model"]
        if case.command == "prepare"
        else [
            "recommendations",
            "model",
        ]
    )


def clean_env(work: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MUSICREC_", "S3_", "AWS_")) and k != "PYTHONPATH"
    }
    env.update(
        PYTHONPATH=str(PROJECT_ROOT),
        MUSICREC_LOG_FILE=str(work / "execution_log.txt"),
        MUSICREC_LOG_LEVEL="INFO",
        OPENBLAS_NUM_THREADS="1",
    )
    return env


def run_case(case: Case, raw_base: Path, artifacts_base: Path, root: Path) -> Outcome:
    work = root / re.sub(r"\W+", "_", case.name)
    raw, art = work / "raw", work / "recsys"
    shutil.copytree(raw_base, raw)
    shutil.copytree(artifacts_base, art)
    n_interactions = pq.read_metadata(raw / INT).num_rows
    n_tracks = pq.read_metadata(raw / TRK).num_rows
    case.damage(raw)
    (work / "config.toml").write_text(FAST_CONFIG)
    before = digest(art, protected_dirs(case))
    cmd = [sys.executable, "-m", "musicrec", case.command, "--data-dir", str(raw)]
    cmd += ["--artifacts-dir", str(art), "--config", str(work / "config.toml")]
    proc = subprocess.run(
        cmd, cwd=work, env=clean_env(work), capture_output=True, text=True, timeout=600
    )
    log_file = work / "execution_log.txt"
    return Outcome(
        case,
        work,
        proc.returncode,
        proc.stdout,
        proc.stderr,
        log_file.read_text() if log_file.exists() else "",
        before,
        digest(art, protected_dirs(case)),
        n_interactions,
        n_tracks,
    )


def selected(long: bool) -> list[Case]:
    """The short run's cases, or all of them."""
    return [c for c in CASES if long or c.short]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, profile: Profile) -> dict[str, Outcome]:
    """Every selected case, run as subprocesses three at a time."""
    from services.artifacts_fixture import write_fake_artifacts

    from musicrec.config import DataConfig
    from musicrec.generate import generate_dataset
    from musicrec.prepare import prepare_data

    root = tmp_path_factory.mktemp("bad_data")
    raw_base = root / "raw_base"
    generate_dataset("tiny", seed=5, out_dir=raw_base)
    artifacts_base = root / "recsys_base"  # "the previous artifacts"
    write_fake_artifacts(artifacts_base, n_users=20, n_tracks=100, seed=1)
    prepare_data(raw_base, ArtifactPaths(artifacts_base), DataConfig())
    (artifacts_base / "model").mkdir(exist_ok=True)
    (artifacts_base / "model" / "ranker.cbm").write_bytes(b"previous model")
    cases = selected(profile.long)
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = pool.map(lambda c: run_case(c, raw_base, artifacts_base, root), cases)
        return {o.case.name: o for o in done}


def expected_count(o: Outcome) -> int:
    assert o.case.count is not None
    return o.case.count(o.n_interactions, o.n_tracks)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "name" in metafunc.fixturenames:
        metafunc.parametrize("name", [c.name for c in selected(is_long(metafunc.config))])


def test_bad_input_fails_cleanly_or_is_cleaned(
    name: str, outcomes: dict[str, Outcome], report: Report
) -> None:
    o = outcomes[name]
    case = o.case
    output = o.stdout + o.stderr
    problems = []
    if "Traceback" in output or "Traceback" in o.log:
        problems.append("a traceback was printed")
    leftovers = [str(p) for p in o.work.rglob("*.tmp")]
    if leftovers:
        problems.append(f"temporary files left: {leftovers}")
    if case.file is not None:  # must fail with a clear error
        errors = [line for line in o.stderr.splitlines() if line.startswith("error: ")]
        last = o.stderr.strip().splitlines()[-1] if o.stderr.strip() else ""
        if o.returncode != 2:
            problems.append(f"exit code {o.returncode}, expected 2")
        if len(errors) != 1 or errors[0] != last:
            problems.append(f"expected one final `error:` line, got {errors}")
        elif case.file not in errors[0]:
            problems.append(f"the error does not name {case.file}: {errors[0]}")
        elif case.column and f"column '{case.column}'" not in errors[0]:
            problems.append(f"the error does not name column {case.column}: {errors[0]}")
        if o.before != o.after:
            changed = sorted(
                k for k in o.before.keys() | o.after.keys() if o.before.get(k) != o.after.get(k)
            )
            problems.append(f"previous artifacts changed: {changed}")
    else:  # a documented cleaning, counted in the log
        assert case.log is not None
        match = re.search(case.log, o.log)
        if o.returncode != 0:
            problems.append(f"exit code {o.returncode}: {o.stderr[-500:]}")
        if match is None:
            problems.append(f"no log line matching {case.log!r}")
        elif int(match.group(1).replace(",", "")) != expected_count(o):
            problems.append(f"logged count {match.group(1)}, expected {expected_count(o)}")
    report.add(
        "bad_data",
        cases=1,
        failures=int(bool(problems)),
        errors_clean=int(case.file is not None and not problems),
        cleanings_logged=int(case.file is None and not problems),
    )
    assert not problems, f"{name}: {problems}\n--- stderr ---\n{o.stderr[-2000:]}"

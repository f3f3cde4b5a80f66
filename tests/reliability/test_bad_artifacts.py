"""Bad artifacts for the services, as uvicorn processes (what `python -m musicrec serve` runs).

A missing, truncated or wrongly shaped artifact - the parquet files of the recommendation
and similarity services, the SQLite database of the event service - must stop start-up:
the process exits with a non-zero code within seconds, its output names the file, and it
never answered `/ready` with 200 meanwhile. `tests/services/test_artifact_errors.py`
checks the same errors in-process (the app's lifespan); here it is the real process.

Readiness: a service loads its artifacts before it opens its port, so until they are
loaded `/ready` cannot say yes (connections are refused) and the app itself reports
`{"ready": false}`; the first 200 comes with the data in place.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from services.conftest import ThreadedServer, free_port, make_settings

from musicrec.artifacts import ArtifactPaths
from musicrec.serve import SERVICES, child_environment, is_ready, start_service
from musicrec.settings import Settings

from .conftest import Profile, Report, is_long

#: a service with a broken artifact must have exited within this many seconds
EXIT_LIMIT_S = 30.0


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def drop_column(column: str) -> Callable[[Path], None]:
    return lambda p: pq.write_table(pq.read_table(p).drop_columns([column]), p)


def string_column(column: str) -> Callable[[Path], None]:
    def damage(p: Path) -> None:
        t = pq.read_table(p)
        i = t.schema.get_field_index(column)
        pq.write_table(t.set_column(i, column, t.column(column).cast(pa.string())), p)

    return damage


def garbage_db(path: Path) -> None:
    path.write_bytes(b"SQLite format 2\x00" + b"\x17" * 5000)


def truncated_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, user_id, track_id, ts)")
        rows = [(i % 50, i, 0.0) for i in range(50_000)]
        db.executemany("INSERT INTO events (user_id, track_id, ts) VALUES (?, ?, ?)", rows)
    db.close()
    truncate(path)


def foreign_db(path: Path) -> None:
    """Somebody else's database: an `events` table of other columns."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, user_id, name TEXT)")
    db.close()


@dataclass(frozen=True)
class Case:
    service: str
    file: str  # under recommendations/, or "events.sqlite3" for the event DB
    label: str
    damage: Callable[[Path], None]
    short: bool = False


CASES = [
    Case("recommendations", "recommendations.parquet", "missing", Path.unlink, short=True),
    Case("recommendations", "recommendations.parquet", "truncated", truncate),
    Case("recommendations", "recommendations.parquet", "wrong columns", drop_column("user_id")),
    Case("recommendations", "top_popular.parquet", "missing", Path.unlink),
    Case("recommendations", "top_popular.parquet", "truncated", truncate, short=True),
    Case("recommendations", "top_popular.parquet", "wrong columns", drop_column("track_id")),
    Case("recommendations", "top_popular.parquet", "wrong type", string_column("track_id")),
    Case("similar", "similar.parquet", "missing", Path.unlink),
    Case("similar", "similar.parquet", "truncated", truncate),
    Case("similar", "similar.parquet", "wrong columns", drop_column("score"), short=True),
    Case("similar", "similar.parquet", "empty file", lambda p: p.write_bytes(b"")),
    Case("events", "events.sqlite3", "not a database", garbage_db, short=True),
    Case("events", "events.sqlite3", "truncated", truncated_db),
    Case("events", "events.sqlite3", "wrong columns", foreign_db),
]


@dataclass
class Outcome:
    case: Case
    path: Path
    returncode: int | None
    seconds: float
    output: str
    was_ready: bool


def run_case(case: Case, artifacts_root: Path, work: Path) -> Outcome:
    """Start the service on a broken copy of the artifacts, watch it until it exits."""
    root = work / "recsys"
    shutil.copytree(artifacts_root, root)
    cfg = make_settings(root, work, event_db_path=work / "events.sqlite3")
    path = (
        cfg.event_db_path if case.service == "events" else ArtifactPaths(root).recs_dir / case.file
    )
    case.damage(path)
    spec = next(s for s in SERVICES if s.name == case.service)
    log = work / "service.log"
    with open(log, "wb") as out:
        p = start_service(spec, cfg, child_environment(cfg), stdout=out, stderr=out)
        t0 = time.monotonic()
        was_ready = False
        while p.proc.poll() is None and time.monotonic() - t0 < EXIT_LIMIT_S:
            was_ready = was_ready or is_ready(p.url, timeout_s=0.2)
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        code = p.proc.poll()
        if code is None:
            p.proc.kill()
            p.proc.wait()
    return Outcome(case, path, code, seconds, log.read_text(errors="replace"), was_ready)


def selected(long: bool) -> list[Case]:
    return [c for c in CASES if long or c.short]


def case_id(c: Case) -> str:
    return f"{c.service}: {c.file} {c.label}"


@pytest.fixture(scope="module")
def outcomes(
    fake_artifacts: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, profile: Profile
) -> dict[str, Outcome]:
    """Every selected case, three service processes at a time."""
    root = tmp_path_factory.mktemp("bad_artifacts")
    cases = selected(profile.long)

    def one(i_case: tuple[int, Case]) -> Outcome:
        work = root / f"case{i_case[0]}"
        work.mkdir()
        return run_case(i_case[1], fake_artifacts["root"], work)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return {case_id(o.case): o for o in pool.map(one, enumerate(cases))}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case_name" in metafunc.fixturenames:
        names = [case_id(c) for c in selected(is_long(metafunc.config))]
        metafunc.parametrize("case_name", names)


def test_broken_artifact_stops_start_up_naming_the_file(
    case_name: str, outcomes: dict[str, Outcome], report: Report
) -> None:
    o = outcomes[case_name]
    problems = []
    if o.returncode is None:
        problems.append(f"still running after {EXIT_LIMIT_S:.0f} s")
    elif o.returncode == 0:
        problems.append("exited with code 0")
    if o.was_ready:
        problems.append("answered /ready with 200")
    # the error itself (the last line of the traceback uvicorn prints) names the file
    errors = [line for line in o.output.splitlines() if "ArtifactError: " in line]
    if not errors or str(o.path) not in errors[-1]:
        problems.append(f"no ArtifactError naming {o.path}: {errors}")
    report.add(
        "bad_artifacts",
        cases=1,
        failures=int(bool(problems)),
        exit_s_max=round(o.seconds, 2),
    )
    assert not problems, f"{case_name}: {problems}\n{o.output[-2000:]}"


def test_not_ready_until_the_artifacts_are_loaded(
    fake_artifacts: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report: Report
) -> None:
    """A real uvicorn server whose artifact load is held back: while it loads, `/ready`
    gets no 200 (the port is not open yet) and the app reports `ready: false`; once
    loaded, `/ready` is 200 and the data is served."""
    from musicrec import service_similar

    gate = threading.Event()
    loading = threading.Event()
    real_load = service_similar.SimilarIndex.load

    def slow_load(path: Path) -> service_similar.SimilarIndex:
        loading.set()
        assert gate.wait(30)
        return real_load(path)

    monkeypatch.setattr(service_similar.SimilarIndex, "load", staticmethod(slow_load))
    cfg: Settings = make_settings(fake_artifacts["root"], tmp_path, similar_port=free_port())
    app = service_similar.create_app(cfg)
    server = ThreadedServer(app, cfg.similar_port)
    server.thread.start()
    try:
        assert loading.wait(20)
        probes = []
        for _ in range(10):
            probes.append(is_ready(server.url, timeout_s=0.2))
            time.sleep(0.02)
        transport = httpx.ASGITransport(app=app)  # the app itself, meanwhile

        async def ask() -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
                return await c.get("/ready")

        during = asyncio.run(ask())
        gate.set()
        deadline = time.monotonic() + 20
        while not is_ready(server.url):
            assert time.monotonic() < deadline, "not ready 20 s after loading"
            time.sleep(0.02)
        track = fake_artifacts["similar_tracks"][0]
        r = httpx.post(f"{server.url}/similar_tracks", params={"track_id": track, "k": 3})
    finally:
        gate.set()
        server.stop()
    report.add("bad_artifacts", cases=1, failures=int(any(probes) or during.status_code != 503))
    assert not any(probes), "ready before the artifacts were loaded"
    assert during.status_code == 503 and during.json() == {"ready": False, "service": "similar"}
    assert r.status_code == 200
    assert r.json()["track_id_2"] == fake_artifacts["similar"][track][0][:3]

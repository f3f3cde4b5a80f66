"""Fixtures of the service tests: fake artifacts, settings pointing at them, services run
in-process (uvicorn in a thread) or as real uvicorn subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from musicrec.event_store import RecentCache
from musicrec.serve import ServiceProcess, start_all, stop_all, wait_ready
from musicrec.settings import Settings

from .artifacts_fixture import write_fake_artifacts


def assert_json_413(client: Any, path: str, body: bytes) -> None:
    """`body` over `path`'s size limit gets a JSON 413, as every other error, whether its
    size is announced (Content-Length) or not (chunked)."""
    json_type = {"Content-Type": "application/json"}
    announced = client.post(path, content=body, headers=json_type)
    chunked = client.post(path, content=iter([body[:1000], body[1000:]]), headers=json_type)
    for r in (announced, chunked):
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"detail": "Content Too Large"}
    assert announced.headers["content-length"] == str(len(announced.content))


def distinct_free_ports(n: int) -> list[int]:
    """`n` different free ports (two calls of `free_port` can return the same one)."""
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(artifacts_root: Path, work: Path, **overrides: Any) -> Settings:
    """Settings for tests: the fake artifacts, a private event DB, free ports."""
    values: dict[str, Any] = {
        "artifacts_dir": artifacts_root,
        "event_db_path": work / "e.db",
        "host": "127.0.0.1",
        **dict(
            zip(("recs_port", "similar_port", "events_port"), distinct_free_ports(3), strict=True)
        ),
        "similar_url": None,
        "events_url": None,
        "events_api_key": None,
        "fetch_artifacts_from_s3": False,
        "log_level": "WARNING",
        "upstream_timeout_s": 0.5,
        "request_budget_s": 1.0,
        "online_history_k": 5,
        "online_similar_k": 20,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Fake artifacts shared by every test (read-only)."""
    root = tmp_path_factory.mktemp("artifacts")
    return write_fake_artifacts(root, n_users=40, n_tracks=300, seed=7)


@pytest.fixture
def settings(artifacts: dict[str, Any], tmp_path: Path) -> Settings:
    return make_settings(artifacts["root"], tmp_path)


@pytest.fixture
def fake_s3(
    artifacts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[Settings, Path, list[str]]]:
    """A stand-in for `musicrec.s3` whose `download_artifacts` copies the named files
    (`only`, and those of `optional` that exist) from the fake artifacts; returns the list
    of its calls (settings, folder, files fetched), for the tests of
    `fetch_artifacts_from_s3`."""
    calls: list[tuple[Settings, Path, list[str]]] = []
    fake = types.ModuleType("musicrec.s3")

    def download_artifacts(
        cfg: Settings,
        artifacts_dir: Path,
        *,
        only: list[str],
        optional: Sequence[str] = (),
        reuse: bool = False,
    ) -> None:
        # the files fetched: every one of `only`, those of `optional` the source has
        fetched = [*only, *(rel for rel in optional if (Path(artifacts["root"]) / rel).exists())]
        calls.append((cfg, artifacts_dir, fetched))
        for rel in fetched:
            (artifacts_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(artifacts["root"]) / rel, artifacts_dir / rel)

    fake.download_artifacts = download_artifacts  # type: ignore[attr-defined]
    fake.fetched_copy_is_complete = lambda *args, **kwargs: False  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "musicrec.s3", fake)
    return calls


class ThreadedServer:
    """A real uvicorn server for an app, in a background thread (fast: no new process)."""

    def __init__(self, app: FastAPI, port: int) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", loop="asyncio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout_s: float = 20.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextlib.contextmanager
def running(servers: list[ThreadedServer]) -> Iterator[None]:
    """Start `servers` in order; stop those started, at the end or on a failed start."""
    started = []
    try:
        for s in servers:
            s.start()
            started.append(s)
        yield
    finally:
        for s in started:
            s.stop()


@pytest.fixture
def upstream_settings(settings: Settings) -> Iterator[Settings]:
    """`settings` with the similar and event services running in-process (real HTTP)."""
    from musicrec.service_events import create_app as events_app
    from musicrec.service_similar import create_app as similar_app

    with running(
        [
            ThreadedServer(similar_app(settings), settings.similar_port),
            ThreadedServer(events_app(settings), settings.events_port),
        ]
    ):
        yield settings


def resume_and_stop(procs: list[ServiceProcess]) -> None:
    """Stop service processes, resuming SIGSTOPped ones first."""
    for p in procs:
        if p.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.proc.pid, signal.SIGCONT)
    stop_all(procs, timeout_s=10)


ServiceStarter = Callable[..., list[ServiceProcess]]


@pytest.fixture
def service_processes(tmp_path: Path) -> Iterator[ServiceStarter]:
    """Start real uvicorn subprocesses (`start(settings, names)`); all stopped at the end.
    Their output goes to `tmp_path/<name>.log`."""
    running: list[ServiceProcess] = []
    logs: list[Any] = []

    def start(cfg: Settings, names: list[str] | None = None) -> list[ServiceProcess]:
        out = open(tmp_path / f"services-{len(logs)}.log", "wb")  # noqa: SIM115
        logs.append(out)
        procs = start_all(cfg, names, stdout=out, stderr=out)
        running.extend(procs)
        wait_ready(procs, timeout_s=60)
        return procs

    try:
        yield start
    finally:
        resume_and_stop(running)
        for f in logs:
            f.close()


def queued_behind_a_writer_lock(path: Path, calls: Callable[[], list[Any]]) -> list[Any]:
    """Run the coroutines `calls()` makes while another connection holds the write lock,
    so that all of them wait in the queue and the writer takes them as one batch."""

    async def run() -> list[Any]:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            tasks = [asyncio.ensure_future(c) for c in calls()]
            await asyncio.sleep(0.3)  # the writer takes one, blocks; the rest queue up
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return list(await asyncio.gather(*tasks))

    return asyncio.run(run())


def fail_writes(path: Path, table: str, op: str = "INSERT", why: str = "disk is full") -> None:
    """Make every `op` on `table` of the database at `path` fail in SQLite with the
    message `<why> (test)` (a trigger standing for a full disk or an I/O error), until
    `heal_writes`."""
    with sqlite3.connect(path) as db:
        db.execute(
            f"CREATE TRIGGER fail_writes BEFORE {op} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{why} (test)'); END"
        )


def heal_writes(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER fail_writes")


def hold_fills(cache: RecentCache) -> tuple[threading.Event, threading.Event, Any]:
    """Hold the cache's fills: `read` is set when a reader thread has read SQLite and
    offers its fill, which is installed once `go` is set. Returns (read, go, the real
    `install`, to put back)."""
    real_install = cache.install
    read, go = threading.Event(), threading.Event()

    def held(*args: Any) -> bool:
        read.set()
        go.wait(5)
        return real_install(*args)

    cache.install = held  # type: ignore[method-assign]
    return read, go, real_install


class FailsOnce:
    """Stands in for a cache method (`real`): its first call raises, as a bug in the cache
    would; later calls go through. `calls` counts them."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise TypeError("a bug in the cache")
        return self.real(*args)

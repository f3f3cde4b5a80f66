"""The reliability suite: its size, shared fixtures and the numbers it reports.

Short by default (it is part of `make test`); the long run (`make reliability`) is chosen
by `--long` (`python -m pytest tests/reliability --long`) or by `MUSICREC_LONG=1` (which
also works when this directory is not on the command line, e.g. plain `pytest`).

Every test records what it measured in `report` (cases tried, failures, requests, 5xx,
events acknowledged/found, RSS before/after); the hooks below add the pass/fail count of
each test file. When `MUSICREC_RELIABILITY_RESULTS` names a file, everything is written
there as JSON at the end of the session; `bench/reliability.py` turns it into the table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .procs import ServiceSet

#: environment variable selecting the long run (as `--long` does)
LONG_ENV = "MUSICREC_LONG"
#: environment variable naming the JSON file the results are written to
RESULTS_ENV = "MUSICREC_RELIABILITY_RESULTS"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help=f"run the long reliability suite (same as {LONG_ENV}=1)",
    )


@dataclass(frozen=True)
class Profile:
    """How much each part of the suite does."""

    long: bool
    #: generated requests per operation and generation mode (positive / negative)
    fuzz_examples: int
    #: SIGKILL/restart cycles of the event service and events acknowledged before each kill
    crash_cycles: int
    crash_events_per_cycle: int
    crash_clients: int
    #: requests per phase of the dependency test
    dependency_requests: int
    #: seconds and concurrent connections of the load test
    load_seconds: float
    load_connections: int


SHORT = Profile(
    long=False,
    fuzz_examples=10,
    crash_cycles=2,
    crash_events_per_cycle=200,
    crash_clients=8,
    dependency_requests=3,
    load_seconds=5.0,
    load_connections=50,
)
LONG = Profile(
    long=True,
    fuzz_examples=500,
    crash_cycles=5,
    crash_events_per_cycle=2000,
    crash_clients=16,
    dependency_requests=40,
    load_seconds=60.0,
    load_connections=50,
)


def is_long(config: pytest.Config) -> bool:
    return bool(config.getoption("--long", default=False)) or os.environ.get(LONG_ENV) == "1"


@pytest.fixture(scope="session")
def profile(pytestconfig: pytest.Config) -> Profile:
    return LONG if is_long(pytestconfig) else SHORT


# --- results -------------------------------------------------------------------------


class Report:
    """Numbers per part (`fuzz`, `crash`, ...), merged over the tests of that part."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, Any]] = {}

    def add(self, part: str, **values: Any) -> None:
        """Add numbers to a part: ints and floats are summed (`*_max` keys: the largest
        kept), dicts merged, anything else replaced."""
        entry = self.parts.setdefault(part, {})
        for key, value in values.items():
            old = entry.get(key)
            if isinstance(value, bool) or old is None:
                entry[key] = value
            elif key.endswith("_max"):
                entry[key] = max(old, value)
            elif isinstance(value, int | float) and isinstance(old, int | float):
                entry[key] = old + value
            elif isinstance(value, dict) and isinstance(old, dict):
                entry[key] = {**old, **value}
            else:
                entry[key] = value


REPORT = Report()


@pytest.fixture(scope="session")
def report() -> Report:
    return REPORT


def _part(nodeid: str) -> str | None:
    """`tests/reliability/test_fuzz.py::...` -> `fuzz`."""
    path = nodeid.split("::", 1)[0]
    if "reliability/" not in path:
        return None
    name = Path(path).stem
    return name.removeprefix("test_") if name.startswith("test_") else None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    part = _part(report.nodeid)
    if part is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.skipped:
            return
        REPORT.add(part, tests=1, tests_failed=0 if report.passed else 1)
        if not report.passed:
            REPORT.parts[part].setdefault("failed_tests", []).append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(RESULTS_ENV)
    if not target or not REPORT.parts:
        return
    out = {"long": is_long(session.config), "exit_status": int(exitstatus), "parts": REPORT.parts}
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(json.dumps(out, indent=2, sort_keys=True, default=str))


# --- shared fixtures -----------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The service tests' fake artifacts (read-only; copy them to break them)."""
    from services.artifacts_fixture import write_fake_artifacts

    root = tmp_path_factory.mktemp("rel_artifacts")
    return write_fake_artifacts(root, n_users=60, n_tracks=400, seed=11)


#: the events API key of the shared `stack`
STACK_API_KEY = "stack-api-key-5d1e"


@pytest.fixture(scope="session")
def stack(
    fake_artifacts: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceSet]:
    """The three services, ready, shared by the fuzz and load tests (the event service
    wants `X-API-Key: STACK_API_KEY`)."""
    from pydantic import SecretStr
    from services.conftest import make_settings

    work = tmp_path_factory.mktemp("stack")
    # generous upstream timeouts: these tests are about errors and memory, not about the
    # fallback (test_dependencies.py), which a scheduling hiccup on a busy machine would cause
    cfg = make_settings(
        fake_artifacts["root"],
        work,
        events_api_key=SecretStr(STACK_API_KEY),
        upstream_timeout_s=2.0,
        request_budget_s=4.0,
    )
    s = ServiceSet(work)
    try:
        s.start(cfg)
        yield s
    finally:
        s.stop_all()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[ServiceSet]:
    """Starts real uvicorn service processes on demand; stops them all at the end."""
    s = ServiceSet(tmp_path)
    try:
        yield s
    finally:
        s.stop_all()

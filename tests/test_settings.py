"""Deployment settings (`musicrec.settings`): their checks, and the one-line error that
`get_settings` gives for a bad environment variable."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from musicrec.errors import ConfigError
from musicrec.serve import PROJECT_ROOT
from musicrec.settings import Settings, get_settings


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """`get_settings` read anew, from the environment only (no `.env` of the checkout)."""
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("field", ["recs_port", "similar_port", "events_port"])
def test_ports_are_tcp_ports(field: str) -> None:
    """70000 was bound as 4464 (70000 - 65536) while `serve` waited on 70000; 0 let the
    kernel pick a port nobody could find."""
    for good in (1, 65535):
        assert getattr(Settings(**{field: good}), field) == good
    for bad in (0, -1, 65536, 70000):
        with pytest.raises(ValidationError, match=field):
            Settings(**{field: bad})


@pytest.mark.parametrize("field", ["recs_url", "similar_url", "events_url"])
def test_base_urls_need_a_scheme_and_a_host(field: str) -> None:
    """Any case of http or https, IPv6, a path; empty (a copied `.env`) is unset: the URL
    from host and port."""
    for good in ("https://recs.example:8443", "HTTP://127.0.0.1:8020", "http://[::1]:8000/x"):
        assert getattr(Settings(**{field: good}), field) == good
    assert getattr(Settings(**{field: ""}), field) is None
    assert getattr(Settings(**{field: " "}), field) is None
    for bad in ("localhost:8000", "http://", "ftp://host", "127.0.0.1:8000"):
        with pytest.raises(ValidationError, match="not a base URL: it needs http:// or https://"):
            Settings(**{field: bad})


def test_events_api_key_must_be_sendable() -> None:
    assert Settings(events_api_key=SecretStr("s3cr3t-KEY_1")).events_api_key is not None
    assert Settings(events_api_key=SecretStr("")).events_api_key is not None  # warned of
    assert Settings(events_api_key=SecretStr("!~")).events_api_key is not None  # the range's ends
    for bad in ("two words", "clé", "tab\there", "del\x7f"):
        with pytest.raises(ValidationError, match="printable ASCII without spaces"):
            Settings(events_api_key=SecretStr(bad))


@pytest.mark.usefixtures("fresh_settings")
def test_a_bad_variable_is_one_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICREC_RECS_PORT", "abc")
    monkeypatch.setenv("MUSICREC_EXCLUDE_EVENTS_MAX", "0")
    with pytest.raises(ConfigError) as err:
        get_settings()
    text = str(err.value)
    assert "\n" not in text
    assert "MUSICREC_RECS_PORT='abc': Input should be a valid integer" in text
    assert "MUSICREC_EXCLUDE_EVENTS_MAX='0': Input should be greater than or equal to 1" in text


@pytest.mark.usefixtures("fresh_settings")
def test_a_secret_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICREC_EVENTS_API_KEY", "my secret key")
    with pytest.raises(ConfigError, match="MUSICREC_EVENTS_API_KEY: must be") as err:
        get_settings()
    assert "my secret key" not in str(err.value)


@pytest.mark.usefixtures("fresh_settings")
def test_good_settings_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICREC_RECS_PORT", "18000")
    first = get_settings()
    assert first.recs_port == 18000 and first.recs_base_url == "http://127.0.0.1:18000"
    monkeypatch.setenv("MUSICREC_RECS_PORT", "18001")
    assert get_settings() is first


def _bounds(field: str) -> dict[str, float]:
    """The `ge` / `le` / `gt` / `lt` bounds of a settings field."""
    found: dict[str, float] = {}
    for item in Settings.model_fields[field].metadata:
        for name in ("ge", "le", "gt", "lt"):
            if getattr(item, name, None) is not None:
                found[name] = getattr(item, name)
    return found


BOUNDED = [name for name in Settings.model_fields if _bounds(name)]


@pytest.mark.parametrize("field", BOUNDED)
def test_every_bound_is_enforced_at_its_edge(field: str) -> None:
    """Each bounded setting takes the last value inside each bound and refuses the first
    one outside (the next integer, or the next float), so a bound changed by mistake
    fails here."""
    import math

    integer = Settings.model_fields[field].annotation is int

    def step(x: float, up: bool) -> float:
        if integer:
            return x + 1 if up else x - 1
        return math.nextafter(x, math.inf if up else -math.inf)

    for name, edge in _bounds(field).items():
        last_in, first_out = {
            "ge": (edge, step(edge, up=False)),
            "le": (edge, step(edge, up=True)),
            "gt": (step(edge, up=True), edge),
            "lt": (step(edge, up=False), edge),
        }[name]
        assert getattr(Settings(**{field: last_in}), field) == last_in, (field, name)
        with pytest.raises(ValidationError, match=field):
            Settings(**{field: first_out})


def test_the_bounds_are_the_documented_ones() -> None:
    """The ranges the README's settings table gives (the edge test above reads the bounds
    from the model, so it alone would pass a bound changed by mistake)."""
    port = {"ge": 1, "le": 65535}
    assert {name: _bounds(name) for name in BOUNDED} == {
        "recs_port": port,
        "similar_port": port,
        "events_port": port,
        "recs_workers": {"ge": 1, "le": 16},
        "similar_workers": {"ge": 1, "le": 16},
        "events_cache_users": {"ge": 0},
        "events_cache_events": {"ge": 100},
        "events_key_ttl_s": {"gt": 0},
        "online_history_k": {"ge": 1, "le": 100},
        "exclude_events_max": {"ge": 1, "le": 10_000},
        "online_similar_k": {"ge": 1, "le": 200},
        "upstream_timeout_s": {"gt": 0},
        "request_budget_s": {"gt": 0},
        "fetch_wait_s": {"ge": 0},
    }


@pytest.mark.parametrize(
    ("app", "variable"),
    [
        ("api_main:app", "MUSICREC_EXCLUDE_EVENTS_MAX=0"),
        ("similarity_store:app", "MUSICREC_SIMILAR_PORT=abc"),
        ("event_storage:app", "MUSICREC_EVENTS_API_KEY=a b"),
        # read only by the services' start-up: a traceback and uvicorn's exit code 3
        ("similarity_store:app", "MUSICREC_LOG_LEVEL=bogus"),
    ],
)
def test_uvicorn_on_an_entry_module_with_a_bad_setting_says_so_in_one_line(
    app: str, variable: str, tmp_path: Path
) -> None:
    """`uvicorn api_main:app` (the README's command) with a bad setting: one `error:` line
    naming the variable and exit code 2, as the CLI gives; it was uvicorn's 30-line import
    traceback, the error in its last line (a note of the last sessions)."""
    name, value = variable.split("=", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSICREC_")}
    env |= {name: value, "PYTHONPATH": str(PROJECT_ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "uvicorn", app, "--port", "1"],  # never bound: it stops first
        cwd=tmp_path,  # no `.env` of the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.splitlines() == [run.stderr.strip()]  # one line
    assert run.stderr.startswith("error: invalid settings") and name in run.stderr
    assert "Traceback" not in run.stderr


def test_the_log_level_is_checked_with_the_settings_in_any_case() -> None:
    assert Settings(log_level=" warning ").log_level == "WARNING"
    with pytest.raises(ValidationError, match="unknown log level 'verbose'; one of DEBUG"):
        Settings(log_level="verbose")


def test_a_log_level_set_is_uvicorns_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a plain `uvicorn module:app` (default --log-level info), MUSICREC_LOG_LEVEL=
    WARNING left uvicorn's INFO lines and one access line per request."""
    from musicrec.service_common import UVICORN_LOGGERS, configure_service_logging

    for name in UVICORN_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    configure_service_logging(Settings(_env_file=None))  # not set: uvicorn's own level
    assert {logging.getLogger(n).level for n in UVICORN_LOGGERS} == {logging.INFO}
    monkeypatch.setenv("MUSICREC_LOG_LEVEL", "warning")
    configure_service_logging(Settings(_env_file=None))
    assert {logging.getLogger(n).level for n in UVICORN_LOGGERS} == {logging.WARNING}


def test_a_metrics_directory_that_does_not_exist_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`PROMETHEUS_MULTIPROC_DIR` (README: set it for `uvicorn --workers N`) naming no
    directory: the service reported ready, then logged a traceback after every answer and
    answered /metrics with a 500. Now the one-line error of `app_or_exit`, exit 2."""
    from musicrec.errors import ConfigError
    from musicrec.service_common import ServiceMetrics

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR=.*not a writable directory"):
        ServiceMetrics("similar")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert ServiceMetrics("similar").service == "similar"


@pytest.mark.parametrize("level", [None, "WARNING"])
def test_a_log_level_set_silences_uvicorns_first_lines(level: str | None, tmp_path: Path) -> None:
    """`MUSICREC_LOG_LEVEL=WARNING uvicorn similarity_store:app` still printed uvicorn's
    "Started server process" and "Waiting for application startup": the lifespan that set
    the level runs after them (a README review). Here the start-up then fails (no
    artifacts), which is logged as an error either way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSICREC_")}
    env |= {"PYTHONPATH": str(PROJECT_ROOT), "MUSICREC_ARTIFACTS_DIR": str(tmp_path / "none")}
    if level:
        env["MUSICREC_LOG_LEVEL"] = level
    run = subprocess.run(
        [sys.executable, "-m", "uvicorn", "similarity_store:app", "--port", "1"],
        cwd=tmp_path,  # no `.env` of the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "similar.parquet" in run.stderr  # the start-up error, at any level
    started = "Started server process" in run.stderr
    waiting = "Waiting for application startup" in run.stderr
    assert (started, waiting) == ((False, False) if level else (True, True)), run.stderr


def test_a_metrics_directory_that_is_a_file_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`PROMETHEUS_MULTIPROC_DIR` naming a file (writable and executable, so only "is a
    directory" refuses it) is as bad as naming nothing."""
    from musicrec.errors import ConfigError
    from musicrec.service_common import ServiceMetrics

    file = tmp_path / "metrics"
    file.write_text("")
    file.chmod(0o755)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(file))
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR=.*not a writable directory"):
        ServiceMetrics("similar")


def test_the_defaults_are_the_documented_ones() -> None:
    """The defaults the README's settings table gives: a changed default port, worker
    count, cache size or S3 switch would move or change every service started without
    the variable (the bounds test above pins the ranges, not the defaults)."""
    defaults = {name: info.default for name, info in Settings.model_fields.items()}
    assert defaults == {
        "data_dir": Path("data"),
        "artifacts_dir": Path("recsys"),
        "log_file": Path("execution_log.txt"),
        "log_level": "INFO",
        "config_file": None,
        "host": "127.0.0.1",
        "recs_port": 8000,
        "recs_workers": 1,
        "serve_instance": None,
        "fast_path": True,
        "similar_port": 8010,
        "similar_workers": 1,
        "events_port": 8020,
        "recs_url": None,
        "similar_url": None,
        "events_url": None,
        "event_db_path": Path("data/events.sqlite3"),
        "events_api_key": None,
        "events_cache_users": 50_000,
        "events_cache_events": 5_000_000,
        "events_key_ttl_s": 86_400.0,
        "online_history_k": 5,
        "exclude_events_max": 1_000,
        "online_similar_k": 20,
        "upstream_timeout_s": 0.05,
        "request_budget_s": 0.2,
        "fetch_artifacts_from_s3": False,
        "fetch_wait_s": 300.0,
        "s3_bucket_name": None,
        "aws_access_key_id": None,
        "aws_secret_access_key": None,
        "s3_endpoint_url": None,
        "s3_region": "us-east-1",
        "s3_prefix": "",
    }


@pytest.mark.parametrize(
    ("host", "connect"),
    [
        ("0.0.0.0", "127.0.0.1"),  # every address: connect to the loopback
        ("", "127.0.0.1"),
        ("::", "[::1]"),
        ("fe80::1", "[fe80::1]"),  # IPv6 in brackets, as a URL needs
        ("10.1.2.3", "10.1.2.3"),
        ("recs.internal", "recs.internal"),
    ],
)
def test_each_service_url_comes_from_the_host_and_its_port(host: str, connect: str) -> None:
    """The URLs the recommendation service and the verifier call when no `*_URL` is set:
    the address to connect to for the bind address, and each service's own port."""
    cfg = Settings(host=host, recs_port=1001, similar_port=1002, events_port=1003)
    assert cfg.recs_base_url == f"http://{connect}:1001"
    assert cfg.similar_base_url == f"http://{connect}:1002"
    assert cfg.events_base_url == f"http://{connect}:1003"


def test_a_url_set_wins_over_host_and_port() -> None:
    cfg = Settings(
        host="0.0.0.0",
        recs_url="http://recs:1",
        similar_url="https://similar:2/x",
        events_url="http://events:3",
    )
    assert (cfg.recs_base_url, cfg.similar_base_url, cfg.events_base_url) == (
        "http://recs:1",
        "https://similar:2/x",
        "http://events:3",
    )


def test_the_event_service_key_is_sent_as_x_api_key_only_when_set() -> None:
    """No key, or a key set but empty (the service then runs open, with a warning): no
    header; a key: `X-API-Key` with it."""
    assert Settings(events_api_key=None).events_auth_headers == {}
    assert Settings(events_api_key=SecretStr("")).events_auth_headers == {}
    assert Settings(events_api_key=SecretStr("k3y")).events_auth_headers == {"X-API-Key": "k3y"}


def test_the_config_file_setting_is_a_path_and_empty_is_none() -> None:
    """`MUSICREC_CONFIG_FILE=params.toml` names the file; empty or blank (a copied `.env`)
    is no file."""
    assert Settings(config_file="params.toml").config_file == Path("params.toml")
    assert Settings(config_file="").config_file is None
    assert Settings(config_file="  ").config_file is None
    assert Settings(config_file=None).config_file is None

"""How `musicrec serve` starts its services (`musicrec.serve`): the environment and the
uvicorn command of each child, the port check, the readiness probe, the metrics folders
of a serve killed outright, and `serve_all`'s exit codes and output, without starting a
real service (tests/services/test_e2e.py does, slowly)."""

from __future__ import annotations

import http.server
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

import musicrec.serve as serve
from musicrec.serve import (
    PROJECT_ROOT,
    SERVICES,
    ServeError,
    ServiceProcess,
    StartInterrupted,
    check_ports_free,
    child_environment,
    is_ready,
    remove_orphan_metrics_dirs,
    serve_all,
    settings_env,
    start_service,
    uvicorn_command,
    wait_ready,
)
from musicrec.settings import INSTANCE_HEADER, Settings

SIMILAR, EVENTS, RECS = SERVICES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(_free_port())
    return sorted(ports)


def test_settings_env_gives_a_child_the_parents_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each field under its variable (the first alias for the S3 ones, whose other name is
    removed), booleans as true/false, a secret's value, an unset field removed; read back
    by `Settings()` in the child, the settings are the parent's."""
    cfg = Settings(
        recs_port=1234,
        fast_path=False,
        fetch_artifacts_from_s3=True,
        events_api_key=SecretStr("k3y"),
        s3_bucket_name="bkt",
        upstream_timeout_s=0.25,
    )
    env = settings_env(cfg)
    assert env["MUSICREC_RECS_PORT"] == "1234"
    assert env["MUSICREC_FAST_PATH"] == "false"
    assert env["MUSICREC_FETCH_ARTIFACTS_FROM_S3"] == "true"
    assert env["MUSICREC_EVENTS_API_KEY"] == "k3y"
    assert env["MUSICREC_UPSTREAM_TIMEOUT_S"] == "0.25"
    assert env["MUSICREC_ARTIFACTS_DIR"] == "recsys"
    assert (env["S3_BUCKET_NAME"], env["MUSICREC_S3_BUCKET_NAME"]) == ("bkt", None)
    assert (env["AWS_DEFAULT_REGION"], env["MUSICREC_S3_REGION"]) == ("us-east-1", None)
    assert (env["S3_ENDPOINT_URL"], env["MUSICREC_S3_ENDPOINT_URL"]) == (None, None)
    assert env["MUSICREC_CONFIG_FILE"] is None and env["MUSICREC_SERVE_INSTANCE"] is None
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == cfg


def test_child_environment_is_the_parents_with_the_settings() -> None:
    """The parent's other variables pass through; a settings variable the settings leave
    unset is removed (a stale `MUSICREC_CONFIG_FILE` would otherwise reach the child);
    PYTHONUNBUFFERED is 1 unless the parent set it."""
    cfg = Settings(s3_bucket_name="bkt", config_file=None)
    base = {
        "PATH": "/bin",
        "MUSICREC_CONFIG_FILE": "old.toml",
        "MUSICREC_S3_BUCKET_NAME": "old",
        "PYTHONUNBUFFERED": "0",
    }
    env = child_environment(cfg, base)
    assert env["PATH"] == "/bin" and env["PYTHONUNBUFFERED"] == "0"
    assert "MUSICREC_CONFIG_FILE" not in env and "MUSICREC_S3_BUCKET_NAME" not in env
    assert env["S3_BUCKET_NAME"] == "bkt" and env["MUSICREC_RECS_PORT"] == "8000"
    assert base["MUSICREC_CONFIG_FILE"] == "old.toml"  # the caller's dict is left alone
    assert child_environment(cfg, {})["PYTHONUNBUFFERED"] == "1"
    assert child_environment(cfg)["PATH"] == os.environ["PATH"]  # default: os.environ


def test_uvicorn_command_of_each_service() -> None:
    """`--workers` only above one (and never for the event service), the bind address and
    port, the project root as app dir, the settings' log level in uvicorn's spelling."""
    cfg = Settings(host="0.0.0.0", similar_workers=3, recs_workers=1, log_level="warning")
    tail = [
        "--app-dir",
        str(PROJECT_ROOT),
        "--log-level",
        "warning",
        "--no-access-log",
        "--timeout-keep-alive",
        "30",
        "--timeout-graceful-shutdown",
        "5",
    ]
    head = [sys.executable, "-m", "uvicorn"]
    assert uvicorn_command(SIMILAR, cfg, 1234) == [
        *head,
        "similarity_store:app",
        "--workers",
        "3",
        *["--host", "0.0.0.0", "--port", "1234"],
        *tail,
    ]
    assert uvicorn_command(RECS, cfg, 1235) == [
        *head,
        "api_main:app",
        *["--host", "0.0.0.0", "--port", "1235"],
        *tail,
    ]
    many = cfg.model_copy(update={"recs_workers": 2})
    assert uvicorn_command(RECS, many, 1)[4:6] == ["--workers", "2"]
    assert "--workers" not in uvicorn_command(
        EVENTS, many.model_copy(update={"similar_workers": 4}), 1
    )
    odd = Settings.model_construct(log_level="NOTSET", host="h")  # not uvicorn's: its default
    assert uvicorn_command(EVENTS, odd, 1)[-7:-5] == ["--log-level", "info"]


class _Popen:
    """Stands for `subprocess.Popen`: keeps the command, environment and options."""

    calls: list[_Popen] = []

    def __init__(self, cmd: list[str], env: dict[str, str], **kw: Any) -> None:
        self.cmd, self.env, self.kw = cmd, env, kw
        self.stderr = None
        _Popen.calls.append(self)


@pytest.fixture
def popen(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[_Popen]]:
    _Popen.calls = []
    monkeypatch.setattr(serve.subprocess, "Popen", _Popen)
    yield _Popen.calls


def test_start_service_runs_uvicorn_under_the_parent_guard(popen: list[_Popen]) -> None:
    """With `die_with_parent` the command is `python -m musicrec.parent_guard <serve's pid>
    -m uvicorn ...`, the project root first on PYTHONPATH; an inherited metrics folder is
    not passed on; a session of its own; stderr piped for the tail kept."""
    cfg = Settings(host="0.0.0.0", similar_port=1234)
    env = {"PATH": "/bin", "PYTHONPATH": "/extra", "PROMETHEUS_MULTIPROC_DIR": "/shared"}
    p = start_service(SIMILAR, cfg, env)
    (call,) = popen
    assert call.cmd == [
        sys.executable,
        "-m",
        "musicrec.parent_guard",
        str(os.getpid()),
        *uvicorn_command(SIMILAR, cfg, 1234)[1:],
    ]
    assert call.env == {"PATH": "/bin", "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}/extra"}
    assert call.kw == {"start_new_session": True, "stderr": subprocess.PIPE}
    assert (p.name, p.url, p.scratch) == ("similar", "http://127.0.0.1:1234", None)
    assert p.tail is not None and p.tail.maxlen == serve.TAIL_LINES and p.reader is None
    assert env["PYTHONPATH"] == "/extra"  # the caller's dict is left alone

    q = start_service(EVENTS, cfg, {"PATH": "/bin"}, stderr=subprocess.DEVNULL)
    assert popen[1].env == {"PATH": "/bin", "PYTHONPATH": str(PROJECT_ROOT)}
    assert popen[1].kw == {"start_new_session": True, "stderr": subprocess.DEVNULL}
    assert q.tail is None and q.url == "http://127.0.0.1:8020"

    start_service(RECS, cfg, {"PATH": "/bin"}, die_with_parent=False, start_new_session=False)
    assert popen[2].cmd == uvicorn_command(RECS, cfg, cfg.recs_port)
    assert popen[2].env == {"PATH": "/bin"}
    assert popen[2].kw["start_new_session"] is False


def test_start_service_with_workers_gets_a_fresh_metrics_folder(popen: list[_Popen]) -> None:
    """Several workers share /metrics through a folder of their own, named after the
    service and serve's pid (so that a later serve can find an orphan)."""
    cfg = Settings(similar_workers=2)
    p = start_service(SIMILAR, cfg, {"PROMETHEUS_MULTIPROC_DIR": "/shared"})
    try:
        assert p.scratch is not None and p.scratch.is_dir() and not any(p.scratch.iterdir())
        assert p.scratch.name.startswith(f"musicrec-metrics-similar-{os.getpid()}-")
        assert popen[0].env["PROMETHEUS_MULTIPROC_DIR"] == str(p.scratch)
    finally:
        if p.scratch is not None:
            shutil.rmtree(p.scratch)


def test_start_service_passes_the_stderr_on_and_keeps_its_tail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A child's stderr piped: a thread copies it to serve's stderr and keeps its last
    lines (the cause of an exit is read there); without it the pipe would fill and block
    the service, and an exit would read "(no output)"."""

    class Piped(_Popen):
        def __init__(self, cmd: list[str], env: dict[str, str], **kw: Any) -> None:
            super().__init__(cmd, env, **kw)
            r, w = os.pipe()
            os.write(w, b"INFO: starting\nOSError: boom\n")
            os.close(w)
            self.stderr = os.fdopen(r, "rb")  # type: ignore[assignment]

    monkeypatch.setattr(serve.subprocess, "Popen", Piped)
    p = start_service(EVENTS, Settings(), {}, die_with_parent=False)
    assert p.reader is not None and p.tail is not None
    assert p.reader.daemon  # a worker holding the pipe open never keeps serve from exiting
    p.reader.join(timeout=10)
    assert list(p.tail) == ["INFO: starting", "OSError: boom"]
    assert capsys.readouterr().err == "INFO: starting\nOSError: boom\n"


def test_start_all_starts_the_named_services_once_their_ports_are_free(
    popen: list[_Popen], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """All three by default, in order, each with the settings in its environment; only
    the named ones otherwise (and only their ports checked); none when a port is taken.
    The metrics folders of a serve killed outright are cleaned up first."""
    monkeypatch.setattr(serve, "remove_orphan_metrics_dirs", lambda: 1)
    a, b, c = _ports(3)
    cfg = Settings(similar_port=a, events_port=b, recs_port=c)
    with caplog.at_level("INFO", logger="musicrec.serve"):
        procs = serve.start_all(cfg)
    assert [(p.name, p.url) for p in procs] == [
        ("similar", f"http://127.0.0.1:{a}"),
        ("events", f"http://127.0.0.1:{b}"),
        ("recommendations", f"http://127.0.0.1:{c}"),
    ]
    assert all(call.env["MUSICREC_EVENTS_PORT"] == str(b) for call in popen)
    assert "removed the metrics folders of a serve that was killed outright" in caplog.text
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", b))
        busy.listen(1)
        with pytest.raises(ServeError, match=f"port {b} of the events service is in use"):
            serve.start_all(cfg)
        assert len(popen) == 3
        assert [p.name for p in serve.start_all(cfg, ["recommendations"])] == ["recommendations"]
    assert len(popen) == 4


def test_check_ports_free_names_the_clash(tmp_path: Path) -> None:
    """Two services set to one port, or a port another process listens on: `ServeError`
    naming the services, the port and the variable; only the named services' ports are
    checked."""
    a, b = _ports(2)
    same = Settings(similar_port=a, events_port=b, recs_port=a)
    with pytest.raises(
        ServeError, match=f"the similar and recommendations services are both set to port {a}$"
    ):
        check_ports_free(same)
    check_ports_free(same, ["similar", "events"])  # free, and no clash between them
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", b))
        busy.listen(1)
        with pytest.raises(
            ServeError,
            match=f"port {b} of the events service is in use .*set MUSICREC_EVENTS_PORT$",
        ):
            check_ports_free(same, ["events"])
        check_ports_free(same, ["similar"])  # the busy port is not its


def test_a_port_a_stopped_service_left_in_time_wait_is_free() -> None:
    """Right after a stop the port's closed connections linger in TIME_WAIT: uvicorn binds
    it (SO_REUSEADDR), so the check must not call it in use (a restart was refused)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = server.accept()
            conn.close()  # the server's side closes first: its end waits in TIME_WAIT
            client.recv(1)
    with socket.socket() as plain, pytest.raises(OSError):  # what a bind without it meets
        plain.bind(("127.0.0.1", port))
    check_ports_free(Settings(similar_port=port), ["similar"])


def test_check_ports_free_says_when_the_host_cannot_be_bound() -> None:
    """An address this machine does not have (TEST-NET-1) is not "in use": the message
    points at the host setting."""
    (port,) = _ports(1)
    cfg = Settings(host="192.0.2.1", similar_port=port)
    with pytest.raises(
        ServeError,
        match=f"cannot bind the similar service to 192.0.2.1:{port} .*: check MUSICREC_HOST and "
        "MUSICREC_SIMILAR_PORT$",
    ):
        check_ports_free(cfg, ["similar"])


def test_remove_orphan_metrics_dirs_removes_only_those_of_dead_serves(tmp_path: Path) -> None:
    """A folder whose serve pid no longer runs goes; serve's own, a running process's
    (left running: only asked whether it lives), a file and a name without a pid stay."""
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = [
            tmp_path / f"musicrec-metrics-similar-{os.getpid()}-aaaa",
            tmp_path / f"musicrec-metrics-similar-{live.pid}-bbbb",
            tmp_path / "musicrec-metrics-events-x1-cccc",
        ]
        gone = tmp_path / f"musicrec-metrics-recommendations-{dead.pid}-dddd"
        for path in (*kept, gone):
            path.mkdir()
            (path / "counter_1.db").write_bytes(b"")
        afile = tmp_path / f"musicrec-metrics-similar-{dead.pid}-eeee"
        afile.write_text("")
        assert remove_orphan_metrics_dirs(tmp_path) == 1
        assert not gone.exists()
        assert all(p.is_dir() for p in kept) and afile.is_file()
        assert remove_orphan_metrics_dirs(tmp_path) == 0
        with pytest.raises(subprocess.TimeoutExpired):  # not sent a signal: still running
            live.wait(timeout=0.5)
    finally:
        live.kill()
        live.wait()


class _Ready(http.server.BaseHTTPRequestHandler):
    """`/ok/ready`: 200 with the instance header; `/empty/ready`: 204; else 503."""

    def do_GET(self) -> None:  # noqa: N802 - the handler's name
        status = {"/ok/ready": 200, "/empty/ready": 204}.get(self.path, 503)
        self.send_response(status)
        self.send_header(INSTANCE_HEADER, "run-1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def ready_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_is_ready_only_for_a_200_from_the_instance_asked_for(ready_server: str) -> None:
    url = ready_server
    assert is_ready(f"{url}/ok")
    assert is_ready(f"{url}/ok", instance="run-1")
    assert not is_ready(f"{url}/ok", instance="run-2")  # another server on the port
    assert not is_ready(f"{url}/empty")  # 204: not a ready answer
    assert not is_ready(f"{url}/down")  # 503
    assert not is_ready(f"http://127.0.0.1:{_ports(1)[0]}")  # nothing listening


def _proc(name: str, url: str, returncode: int | None = None) -> ServiceProcess:
    fake = SimpleNamespace(poll=lambda: returncode, returncode=returncode)
    return ServiceProcess(name, url, fake)  # type: ignore[arg-type]


def test_wait_ready_returns_once_all_answer(ready_server: str) -> None:
    wait_ready([_proc("similar", f"{ready_server}/ok"), _proc("events", f"{ready_server}/ok")], 5.0)


def test_wait_ready_polls_each_service_until_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Services that take a few polls to load their artifacts: waited for within the
    timeout (not failed at the first poll), and one that is ready is not asked again."""
    asked: dict[str, int] = {}

    def ready(url: str, instance: str | None = None) -> bool:
        asked[url] = asked.get(url, 0) + 1
        return asked[url] >= {"http://a": 3, "http://b": 1}[url]

    monkeypatch.setattr(serve, "is_ready", ready)
    wait_ready([_proc("similar", "http://a"), _proc("events", "http://b")], 5.0)
    assert asked == {"http://a": 3, "http://b": 1}


def test_wait_ready_fails_on_an_exit_a_timeout_or_a_stop(ready_server: str) -> None:
    """A child that exited: its exit code; time out: the services still pending; the stop
    event (Ctrl-C): `StartInterrupted`, a stop rather than a failure."""
    ok, down = f"{ready_server}/ok", f"{ready_server}/down"
    exited = _proc("events", down, returncode=3)
    with pytest.raises(ServeError, match="^events service exited with code 3 during start-up"):
        wait_ready([_proc("similar", ok), exited], 5.0)
    with pytest.raises(ServeError, match="^not ready after 0s: events, recommendations$") as err:
        wait_ready(
            [_proc("similar", ok), _proc("events", down), _proc("recommendations", down)], 0.3
        )
    assert not isinstance(err.value, StartInterrupted)
    stop = threading.Event()
    stop.set()
    with pytest.raises(StartInterrupted):
        wait_ready([_proc("events", down)], 60.0, stop)


@pytest.fixture
def fake_children(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`serve_all` with its start, wait, stop and verification replaced: what they were
    given, and switches for what they do."""
    import musicrec.verify

    seen: dict[str, Any] = {"procs": [_proc(s.name, f"http://h/{s.name}") for s in SERVICES]}

    def start_all(settings: Settings) -> list[ServiceProcess]:
        seen["started"] = settings
        if "start_error" in seen:
            raise seen["start_error"]
        procs: list[ServiceProcess] = seen["procs"]
        return procs

    def wait(procs: object, timeout_s: float, stop: threading.Event, instance: str) -> None:
        seen["instance"] = instance
        if "wait_error" in seen:
            raise seen["wait_error"]

    def verify(settings: Settings) -> int:
        seen["verified"] = settings
        seen["handlers"] = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
        os.kill(os.getpid(), signal.SIGTERM)  # what an operator's `kill` does
        rc: int = seen.get("verify_rc", 0)
        return rc

    monkeypatch.setattr(serve, "start_all", start_all)
    monkeypatch.setattr(serve, "wait_ready", wait)
    monkeypatch.setattr(serve, "stop_all", lambda procs: seen.__setitem__("stopped", list(procs)))
    monkeypatch.setattr(musicrec.verify, "run_verification", verify)
    return seen


def test_serve_all_verifies_stops_on_sigterm_and_returns_the_verdict(
    fake_children: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A run with `--verify`: the children get a fresh instance token, the verification
    those settings; SIGTERM stops the serving loop, the children are stopped, the signal
    handlers are put back (an ignored SIGHUP stays ignored: `nohup`); the exit code is the
    verification's."""
    seen = fake_children
    seen["verify_rc"] = 1
    before = signal.getsignal(signal.SIGTERM)
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert serve_all(Settings(), run_verify=True) == 1
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous_hup)
    assert signal.getsignal(signal.SIGTERM) is before
    handlers = seen["handlers"]
    assert handlers[signal.SIGHUP] is signal.SIG_IGN and handlers[signal.SIGTERM] is not before
    token = seen["started"].serve_instance
    assert isinstance(token, str) and len(token) == 16 and seen["instance"] == token
    assert seen["verified"] is seen["started"]
    assert seen["stopped"] == seen["procs"]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "        similar: http://h/similar  (docs: http://h/similar/docs)",
        "         events: http://h/events  (docs: http://h/events/docs)",
        "recommendations: http://h/recommendations  (docs: http://h/recommendations/docs)",
        "verification FAILED (exit code 1); details in service_test.log",
        "serving; press Ctrl-C to stop",
        "services stopped",
    ]
    seen["verify_rc"] = 0
    assert serve_all(Settings(), run_verify=True) == 0
    assert "verification PASSED; details in service_test.log" in capsys.readouterr().out


def test_serve_all_without_verify_or_once_stopped_does_not_verify(
    fake_children: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    seen = fake_children
    stop = threading.Event()
    stop.set()  # Ctrl-C during the start-up
    assert serve_all(Settings(), run_verify=True, stop_event=stop) == 0
    assert serve_all(Settings(), run_verify=False, stop_event=stop) == 0
    assert "verified" not in seen
    assert "verification" not in capsys.readouterr().out


def test_serve_all_fails_when_a_child_dies_while_serving(
    fake_children: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    seen = fake_children
    seen["procs"][1] = _proc("events", "http://h/events", returncode=3)
    assert serve_all(Settings()) == 1
    assert "events service exited with code 3 while serving" in caplog.text
    assert seen["stopped"] == seen["procs"]


def test_serve_all_start_failures(
    fake_children: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A service that cannot start: the `error:` line, exit code 1; Ctrl-C while they
    start: a stop, exit code 0. Either way what was started is stopped."""
    seen = fake_children
    seen["wait_error"] = ServeError("similar service exited with code 3")
    assert serve_all(Settings()) == 1
    err = capsys.readouterr()
    assert err.err == "error: similar service exited with code 3\n"
    assert err.out == "services stopped\n"
    assert seen.pop("stopped") == seen["procs"]
    seen["wait_error"] = StartInterrupted("interrupted")
    assert serve_all(Settings()) == 0
    assert capsys.readouterr().err == ""
    seen["start_error"] = ServeError("port 1 of the similar service is in use")
    assert serve_all(Settings()) == 1
    err = capsys.readouterr()
    assert err.err == "error: port 1 of the similar service is in use\n" and err.out == ""
    assert seen["stopped"] == []


class _Flushes(io.StringIO):
    """A stream that logs its writes and flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def write(self, s: str) -> int:
        self.events.append(s)
        return super().write(s)

    def flush(self) -> None:
        self.events.append("<flush>")


def _unflushed_lines(stream: _Flushes) -> list[str]:
    """The lines written but not flushed before the next write (or the end)."""
    out, pending = [], ""
    for event in stream.events:
        if event == "<flush>":
            pending = ""
        elif pending.endswith("\n"):
            out.append(pending)
            pending = event
        else:
            pending += event
    return [*out, pending] if pending else out


def test_serve_all_flushes_each_line(
    fake_children: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a pipe (`musicrec serve | tee`, a container's log) each line is out at once:
    the URLs, the verdict and "serving" were held in the buffer until serve exited."""
    seen = fake_children
    out, err = _Flushes(), _Flushes()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert serve_all(Settings(), run_verify=True) == 0
    seen["wait_error"] = ServeError("boom")
    assert serve_all(Settings()) == 1
    assert "serving; press Ctrl-C to stop\n" in out.getvalue()
    assert err.getvalue() == "error: boom\n"
    assert _unflushed_lines(out) == [] and _unflushed_lines(err) == []

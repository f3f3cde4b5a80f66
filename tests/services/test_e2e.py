"""End to end: the three services as real uvicorn processes, checked by verify_service.py,
and the `serve --verify` command."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pydantic import SecretStr

from musicrec.serve import PROJECT_ROOT, check_ports_free, child_environment, is_ready, stop_all
from musicrec.verify import RESERVED_VERIFY_USER

from .conftest import ServiceStarter, free_port, make_settings

CHECKS_EXPECTED = [
    "/health",
    "/ready",
    "cold user offline",
    "user with history offline",
    "similar tracks, best first",
    "similar tracks batch",
    "without API key -> 401",
    "get_events newest first",
    "get_events batch",
    "event /stats",
    "online = similar",
    "blended",
    "add_event x105: popular tracks",
    "add_event retried with one Idempotency-Key: stored once",
    "delete_events: the user's history deleted",
    "delete_events without API key -> 401",
    "blended, verify user: none of its events, older than the latest 100 too",
    "-> 422",
    "/metrics",
]


def run_verify_service(cfg: Any, tmp_path: Path, passes: bool = True) -> list[str]:
    """Run verify_service.py against the services of `cfg`; assert it passed (or, with
    `passes=False`, that it failed); its log lines."""
    log = tmp_path / "service_test.log"
    run = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "verify_service.py"), "--log", str(log)],
        env=child_environment(cfg),
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    out = run.stdout.decode() + run.stderr.decode()
    lines = log.read_text().splitlines()
    if not passes:
        assert run.returncode != 0, out
        return lines
    assert run.returncode == 0, out
    assert lines[-1].startswith("PASSED")
    assert not [x for x in lines if x.startswith("FAIL")]
    return lines


def test_verify_service_passes_against_real_processes(
    service_processes: ServiceStarter, artifacts: dict[str, Any], tmp_path: Path
) -> None:
    cfg = make_settings(artifacts["root"], tmp_path, events_api_key=SecretStr("e2e-key"))
    service_processes(cfg)
    lines = run_verify_service(cfg, tmp_path)
    for check in CHECKS_EXPECTED:
        assert any(check in x and x.startswith("PASS") for x in lines), check
    # its events stay in the store, under the reserved verifier id: a second run still passes
    events = httpx.post(
        f"http://127.0.0.1:{cfg.events_port}/get_events",
        params={"user_id": RESERVED_VERIFY_USER, "k": 1000},
        headers={"X-API-Key": "e2e-key"},
        timeout=10,
    ).json()
    # 105 popular tracks (once), then an unknown track, the same again sent twice with one
    # Idempotency-Key (stored once), and three similar-track seeds
    assert events["count"] == 110, events
    run_verify_service(cfg, tmp_path)
    events = httpx.post(
        f"http://127.0.0.1:{cfg.events_port}/get_events",
        params={"user_id": RESERVED_VERIFY_USER, "k": 1000},
        headers={"X-API-Key": "e2e-key"},
        timeout=10,
    ).json()
    assert events["count"] == 115, events  # the popular tracks are not added again


@pytest.mark.parametrize(
    ("service", "setting", "route", "param"),
    [
        ("recommendations", "recs_workers", "/recommendations_offline", "user_id"),
        ("similar", "similar_workers", "/similar_tracks", "track_id"),
    ],
)
def test_two_workers_pass_verification_and_share_metrics(
    service_processes: ServiceStarter,
    artifacts: dict[str, Any],
    tmp_path: Path,
    service: str,
    setting: str,
    route: str,
    param: str,
) -> None:
    """`recs_workers=2` / `similar_workers=2`: two uvicorn workers behind one port,
    verification passes, /metrics counts both."""
    cfg = make_settings(artifacts["root"], tmp_path, **{setting: 2})
    procs = service_processes(cfg)
    proc = next(p for p in procs if p.name == service)
    assert proc.scratch is not None and proc.scratch.is_dir()
    assert len(psutil.Process(proc.proc.pid).children()) >= 2  # the workers
    lines = run_verify_service(cfg, tmp_path)
    assert any(x.startswith("PASS") and "blended" in x for x in lines)
    assert not any(x.startswith("FAIL") for x in lines)

    def served() -> float:
        text = httpx.get(f"{proc.url}/metrics", timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("http_requests_total{") and f'"{route}"' in line
        )

    def one(i: int) -> int:  # a new connection each: the workers share the load
        return httpx.post(f"{proc.url}{route}", params={param: i}, timeout=10).status_code

    before = served()
    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(one, range(300))) == {200}
    assert served() - before == 300  # whichever worker answers /metrics counts them all
    pids = {f.stem.rsplit("_", 1)[-1] for f in proc.scratch.glob("*.db")}
    assert len(pids) >= 2, pids  # and both workers did serve
    stop_all(procs)
    assert not proc.scratch.exists()


def test_each_service_gets_its_own_metrics_directory(
    artifacts: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `PROMETHEUS_MULTIPROC_DIR` in the parent's environment is not handed on: a service
    with several workers gets a fresh directory of its own, a single-worker one none (so
    no /metrics adds up another service's requests or an earlier run's)."""
    from musicrec import serve

    started: dict[str, dict[str, str]] = {}

    class FakePopen:
        stderr = None  # (a real one's is the pipe serve reads)

        def __init__(self, cmd: list[str], env: dict[str, str], **kwargs: Any) -> None:
            started[cmd[cmd.index("uvicorn") + 1]] = env

    monkeypatch.setattr(serve.subprocess, "Popen", FakePopen)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "shared"))
    cfg = make_settings(artifacts["root"], tmp_path, recs_workers=2, similar_workers=2)
    procs = serve.start_all(cfg)
    dirs = {p.name: p.scratch for p in procs}
    assert set(started) == {"api_main:app", "similarity_store:app", "event_storage:app"}
    assert "PROMETHEUS_MULTIPROC_DIR" not in started["event_storage:app"]
    for app, name in (("api_main:app", "recommendations"), ("similarity_store:app", "similar")):
        own = dirs[name]
        assert own is not None and own.is_dir() and not any(own.iterdir())
        assert started[app]["PROMETHEUS_MULTIPROC_DIR"] == str(own)
    assert dirs["recommendations"] != dirs["similar"]
    for d in dirs.values():
        if d is not None:
            d.rmdir()


def test_verify_service_fails_when_older_events_come_back(
    service_processes: ServiceStarter, artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """Services that leave out only the latest 100 events (as before) fail the verifier's
    long-history check: the oldest of its 110 events come back."""
    cfg = make_settings(artifacts["root"], tmp_path)
    service_processes(cfg.model_copy(update={"exclude_events_max": 100}))
    lines = run_verify_service(cfg, tmp_path, passes=False)
    assert any(x.startswith("FAIL blended, verify user: none of its events") for x in lines)


def test_verify_service_below_105_skips_the_long_history_check_and_adds_nothing(
    service_processes: ServiceStarter, artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """With MUSICREC_EXCLUDE_EVENTS_MAX=100 on both sides the verifier passes, skips the
    check it cannot make and does not add the 105 popular tracks (run after run)."""
    cfg = make_settings(artifacts["root"], tmp_path).model_copy(update={"exclude_events_max": 100})
    service_processes(cfg)
    for _ in range(2):
        lines = run_verify_service(cfg, tmp_path)
    assert any(x.startswith("SKIP blended, verify user: none of its events") for x in lines)
    events = httpx.post(
        f"http://127.0.0.1:{cfg.events_port}/get_events",
        params={"user_id": RESERVED_VERIFY_USER, "k": 1000},
        timeout=10,
    ).json()
    assert events["count"] == 10, events  # five per run


def test_verify_service_fails_when_services_are_down(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    cfg = make_settings(artifacts["root"], tmp_path)
    dead = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "fail.log"
    run = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "verify_service.py"),
            "--recs-url",
            dead,
            "--similar-url",
            dead,
            "--events-url",
            dead,
            "--log",
            str(log),
        ],
        env=child_environment(cfg),
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert run.returncode != 0
    text = log.read_text()
    assert "FAIL recommendations /health" in text and text.splitlines()[-1].startswith("FAILED")


def start_serve_command(
    cfg: Any, cwd: Path, *args: str, **popen: Any
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m musicrec serve ARGS` as a subprocess, read until it says it is serving;
    the process and its output so far."""
    env = child_environment(cfg)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "musicrec", "serve", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **popen,
    )
    output = b""
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 90
        while b"serving; press Ctrl-C" not in output:
            assert time.monotonic() < deadline, output.decode()
            assert proc.poll() is None, output.decode()
            if sel.select(timeout=0.5):
                output += proc.stdout.read1(65536)  # type: ignore[attr-defined]
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, output.decode()


def service_urls(cfg: Any) -> list[str]:
    return [f"http://127.0.0.1:{p}" for p in (cfg.recs_port, cfg.similar_port, cfg.events_port)]


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP (the terminal closed)"]
)
def test_serve_command_verifies_then_stops_cleanly_on_sigterm(
    artifacts: dict[str, Any], tmp_path: Path, sig: signal.Signals
) -> None:
    """The services run in sessions of their own: a SIGHUP killed serve alone and left all
    three running on their ports."""
    cfg = make_settings(artifacts["root"], tmp_path)

    def terminal_attached() -> None:
        # a test run under nohup would pass on its ignored SIGHUP, which serve keeps
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    proc, text = start_serve_command(cfg, tmp_path, "--verify", preexec_fn=terminal_attached)
    try:
        urls = service_urls(cfg)
        assert all(is_ready(u) for u in urls)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
        text += rest.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, text
    assert "verification PASSED" in text and "services stopped" in text
    assert (tmp_path / "service_test.log").read_text().splitlines()[-1].startswith("PASSED")
    assert not any(is_ready(u) for u in urls)  # all three are gone


def test_serve_under_nohup_keeps_serving_when_the_terminal_closes(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """`nohup musicrec serve &`: serve caught SIGHUP again whatever it inherited, so
    closing the terminal stopped all three services. A signal ignored on entry stays so."""
    cfg = make_settings(artifacts["root"], tmp_path)

    def like_nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc, text = start_serve_command(cfg, tmp_path, preexec_fn=like_nohup)
    try:
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert proc.poll() is None and all(is_ready(u) for u in service_urls(cfg))
        proc.send_signal(signal.SIGTERM)  # still stops on the others
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "services stopped" in text + rest.decode()


def test_a_stop_during_start_up_is_a_stop_not_a_failure(
    artifacts: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C or SIGTERM while the services load (half a minute at the full size) was
    "error: interrupted while waiting for the services" and exit code 1: a supervisor
    recorded a deliberate stop as a failure."""
    import threading

    from musicrec import serve

    cfg = make_settings(artifacts["root"], tmp_path)
    stop = threading.Event()
    stop.set()  # asked before any service is ready
    assert serve.serve_all(cfg, ready_timeout_s=60, stop_event=stop) == 0
    out = capsys.readouterr()
    assert "error:" not in out.err and "services stopped" in out.out
    assert not any(is_ready(u) for u in service_urls(cfg))


def test_a_host_that_is_not_local_is_not_called_a_port_in_use(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """The port check reported every bind error as "in use": MUSICREC_HOST set to an
    address this machine does not have said another serve was running."""
    from musicrec import serve

    cfg = make_settings(artifacts["root"], tmp_path, host="192.0.2.1")  # TEST-NET-1
    with pytest.raises(serve.ServeError, match=r"cannot bind the \w+ service to 192.0.2.1:"):
        serve.check_ports_free(cfg)


def test_an_ipv4_listener_does_not_block_an_ipv6_only_service(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """With MUSICREC_HOST=:: the check bound dual-stack and refused a port an IPv4 server
    held, while uvicorn (asyncio binds IPv6 sockets IPv6-only) starts fine beside it."""
    import socket

    from musicrec import serve

    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    cfg = make_settings(artifacts["root"], tmp_path, host="::")
    with socket.socket() as v4:
        v4.bind(("127.0.0.1", cfg.recs_port))
        v4.listen(1)
        try:
            serve.check_ports_free(cfg)
        except serve.ServeError as exc:
            if "cannot bind" in str(exc):
                pytest.skip(f"no IPv6 here: {exc}")
            raise


def test_services_stop_when_serve_is_killed_outright(
    artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """`serve` killed by SIGKILL (the OOM killer, kill -9) has no chance to stop its
    services, which run in sessions of their own: they kept running on their ports and the
    next `serve` refused to start. The kernel now sends them SIGTERM (parent_guard)."""
    cfg = make_settings(artifacts["root"], tmp_path, recs_workers=2)
    proc, _ = start_serve_command(cfg, tmp_path)
    children = psutil.Process(proc.pid).children(recursive=True)
    try:
        running = [is_ready(u) for u in service_urls(cfg)]
    finally:
        proc.kill()
        proc.wait()
        gone, alive = psutil.wait_procs(children, timeout=20)
        for p in alive:  # not left to the other tests
            p.kill()
    assert running == [True, True, True] and len(children) >= 4  # 3 services, 2 workers
    assert not alive, alive
    assert not any(is_ready(u) for u in service_urls(cfg))
    check_ports_free(cfg)  # a new `serve` can start


def test_verify_service_passes_on_real_pipeline_artifacts(
    service_processes: ServiceStarter, tiny_pipeline: Any, tmp_path: Path
) -> None:
    """The same end-to-end check on artifacts written by a real (tiny) pipeline run."""
    cfg = make_settings(tiny_pipeline.root, tmp_path)
    service_processes(cfg)
    lines = run_verify_service(cfg, tmp_path)
    assert any(x.startswith("PASS") and "user with history offline" in x for x in lines)


def test_serve_refuses_a_port_another_process_listens_on(
    artifacts: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another server on the recommendation port: `serve` starts nothing and says which
    port (it took the other server's `/ready` for its own and verified it before), once,
    and not that services were stopped (none had started)."""
    import socket

    from musicrec import serve

    started: list[list[str]] = []
    monkeypatch.setattr(serve.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    cfg = make_settings(artifacts["root"], tmp_path)
    with socket.socket() as other:
        other.bind(("127.0.0.1", cfg.recs_port))
        other.listen(1)
        with pytest.raises(serve.ServeError, match=f"port {cfg.recs_port} of the recommendations"):
            serve.start_all(cfg)
        capsys.readouterr()
        assert serve.serve_all(cfg, run_verify=True, ready_timeout_s=5) == 1
        out = capsys.readouterr()
        assert out.err.count(f"port {cfg.recs_port} of the recommendations") == 1, out.err
        assert "services stopped" not in out.out
    assert started == []
    serve.check_ports_free(cfg)  # free again
    same = cfg.model_copy(update={"similar_port": cfg.recs_port})
    with pytest.raises(serve.ServeError, match=f"both set to port {cfg.recs_port}"):
        serve.start_all(same)  # the second service would have died binding it
    assert started == []


def test_workers_of_a_dead_supervisor_are_stopped(
    service_processes: ServiceStarter, artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """The uvicorn supervisor of a two-worker service killed (as by the OOM killer): its
    workers, left behind with the port, are stopped with the rest, so a restart can bind."""
    cfg = make_settings(artifacts["root"], tmp_path, recs_workers=2)
    procs = service_processes(cfg, ["recommendations"])
    supervisor = procs[0].proc
    workers = psutil.Process(supervisor.pid).children(recursive=True)
    assert len(workers) >= 2
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    assert is_ready(procs[0].url)  # the orphans still answer on the port
    stop_all(procs)
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, alive
    assert not is_ready(procs[0].url)


def test_serve_takes_only_its_own_childrens_ready(
    service_processes: ServiceStarter, artifacts: dict[str, Any], tmp_path: Path
) -> None:
    """A service started with `serve_instance` echoes it in /ready's header; `wait_ready`
    for another run's token never takes its answer (a server that took the port after the
    port check answers /ready too)."""
    from musicrec.serve import ServeError, wait_ready

    cfg = make_settings(artifacts["root"], tmp_path, serve_instance="run-1")
    procs = service_processes(cfg, ["similar"])
    url = procs[0].url
    ready = httpx.get(f"{url}/ready", timeout=10)
    assert ready.json() == {"ready": True, "service": "similar"}  # the body is unchanged
    assert ready.headers["x-musicrec-instance"] == "run-1"
    assert is_ready(url) and is_ready(url, instance="run-1")
    assert not is_ready(url, instance="run-2")
    with pytest.raises(ServeError, match="not ready after"):
        wait_ready(procs, timeout_s=1.0, instance="run-2")


def test_serve_names_why_a_service_failed_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A service that stops during start-up: `serve` says why in its one error line (the
    exception its traceback ends with; uvicorn's own last line, "Application startup failed.
    Exiting.", names no cause), and the service's own output is still passed on whole."""
    from musicrec import serve

    empty = tmp_path / "no-artifacts"
    empty.mkdir()
    cfg = make_settings(empty, tmp_path)
    assert serve.serve_all(cfg, ready_timeout_s=60) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert errors[0].startswith("error: similar service exited with code "), errors[0]
    assert errors[0].endswith(
        f"during start-up: musicrec.errors.ArtifactError: {empty}/recommendations/"
        "similar.parquet: artifact file is missing (run `python -m musicrec pipeline` first, "
        "or set MUSICREC_ARTIFACTS_DIR / MUSICREC_FETCH_ARTIFACTS_FROM_S3)"
    ), errors[0]
    assert "Traceback (most recent call last)" in err  # the service's output, passed on
    assert "Application startup failed" in err


def test_metrics_folders_of_a_serve_killed_outright_are_removed_by_the_next(
    tmp_path: Path,
) -> None:
    """`serve` killed by SIGKILL never ran `stop_all`: its services' metrics folders (four
    files each) stayed in /tmp for good (77 of them on one host). The next serve removes
    those whose serve is gone."""
    from musicrec import serve

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f"{serve.METRICS_DIR_PREFIX}recommendations-{dead.pid}-abc_12xy"
    alive = tmp_path / f"{serve.METRICS_DIR_PREFIX}similar-{os.getppid()}-def_34zw"
    other = tmp_path / "musicrec-recommendations-metrics-old_form"
    for path in (gone, alive, other):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"x")
    assert serve.remove_orphan_metrics_dirs(tmp_path) == 1
    assert not gone.exists() and alive.exists() and other.exists()

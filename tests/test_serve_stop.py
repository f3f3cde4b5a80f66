"""How `musicrec serve` stops its services' process groups (`musicrec.serve.stop_all`):
a stopped (SIGSTOP) worker is let handle SIGTERM, and zombies left in a group are not
taken for processes that outlived SIGKILL. Linux only (`/proc`, process groups)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from musicrec.serve import ServiceProcess, group_has_live_member, stop_all

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _state(pid: int) -> str | None:
    """The /proc state letter of `pid` (R, S, T, Z, ...), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0].decode()
    except OSError:
        return None


def _wait_state(pid: int, states: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _state(pid) not in states:
        assert time.monotonic() < deadline, f"{pid} stayed {_state(pid)}, not in {states}"
        time.sleep(0.02)


def test_group_has_live_member_tells_a_zombie_from_a_live_process() -> None:
    live = subprocess.Popen(["sleep", "30"], start_new_session=True)
    dead = subprocess.Popen(["true"], start_new_session=True)
    try:
        _wait_state(dead.pid, "Z")  # exited, not yet reaped by its parent (this test)
        assert group_has_live_member(live.pid) is True
        assert group_has_live_member(dead.pid) is False
    finally:
        live.kill()
        live.wait()
        dead.wait()
    assert group_has_live_member(dead.pid) is False  # an empty group


def _handler_script(mark: Path) -> str:
    """A Python program that, on SIGTERM, creates `mark` and exits; prints "ready" first."""
    return (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        f"    open({str(mark)!r}, 'w').close()\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )


def test_stop_all_lets_a_stopped_service_handle_sigterm(tmp_path: Path) -> None:
    """A service process stopped with SIGSTOP is continued after its SIGTERM, so it stops
    as it would (it used to stay stopped until the timeout's SIGKILL)."""
    mark = tmp_path / "terminated"
    service = subprocess.Popen(
        [sys.executable, "-c", _handler_script(mark)],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    assert service.stdout is not None
    assert service.stdout.readline() == b"ready\n"
    service.send_signal(signal.SIGSTOP)
    _wait_state(service.pid, "T")
    stop_all([ServiceProcess("svc", "http://x", service)], timeout_s=5.0)
    assert mark.exists(), "the stopped service never ran its SIGTERM handler"
    assert service.returncode == 0


def test_stop_all_lets_a_stopped_worker_handle_sigterm(tmp_path: Path) -> None:
    """A worker stopped with SIGSTOP gets SIGCONT after SIGTERM, so its handler runs (it
    used to wait, stopped, for the SIGKILL after the timeout)."""
    mark = tmp_path / "terminated"
    worker = _handler_script(mark)
    # a leader that dies at once on SIGTERM, leaving its worker (as uvicorn's supervisor
    # killed first would)
    leader = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -c "$0" & wait', worker],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    assert leader.stdout is not None
    assert leader.stdout.readline() == b"ready\n"
    kid = int(subprocess.check_output(["pgrep", "-P", str(leader.pid)]).split()[0])
    os.kill(kid, signal.SIGSTOP)
    _wait_state(kid, "T")
    started = time.monotonic()
    stop_all([ServiceProcess("worker", "http://x", leader)], timeout_s=5.0)
    assert mark.exists(), "the stopped worker never ran its SIGTERM handler"
    assert time.monotonic() - started < 5.0  # not the timeout's SIGKILL
    assert group_has_live_member(leader.pid) is False


def test_stop_all_does_not_wait_on_zombies_of_the_group(caplog: pytest.LogCaptureFixture) -> None:
    """A group whose only member left is a zombie (a worker no one reaps, as under a
    container's PID 1) is stopped: no wait until after the deadline and no warning that its
    processes outlived SIGKILL."""
    # its own group in this session: another process may join that group
    leader = subprocess.Popen(["sleep", "30"], process_group=0)
    # a member of the leader's group whose parent (this test) does not reap it yet
    zombie = subprocess.Popen(["true"], process_group=leader.pid)
    try:
        _wait_state(zombie.pid, "Z")
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="musicrec.serve"):
            stop_all([ServiceProcess("svc", "http://x", leader)], timeout_s=2.0)
        assert time.monotonic() - started < 2.0
        assert "outlived SIGKILL" not in caplog.text
    finally:
        zombie.wait()


def test_signal_group_signals_a_group_leader_and_never_a_process_sharing_ours() -> None:
    """A service in a session of its own: its whole group gets the signal. A process
    started without one (it shares this process's group): nothing is sent, or `killpg`
    would hit serve itself."""
    from musicrec.serve import _signal_group

    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    leader = subprocess.Popen(sleep, start_new_session=True)
    shared = subprocess.Popen(sleep)
    try:
        assert _signal_group(ServiceProcess("svc", "http://x", shared), signal.SIGTERM) is False
        assert shared.poll() is None
        assert _signal_group(ServiceProcess("svc", "http://x", leader), signal.SIGTERM) is True
        assert leader.wait(timeout=10) == -signal.SIGTERM
        # reaped, its group empty: nothing left to signal
        assert _signal_group(ServiceProcess("svc", "http://x", leader), signal.SIGTERM) is False
    finally:
        for proc in (leader, shared):
            proc.kill()
            proc.wait()


def test_stop_all_continues_a_stopped_worker_of_a_dead_supervisor(tmp_path: Path) -> None:
    """The supervisor already gone (the OOM killer) and its worker stopped (SIGSTOP): the
    group's SIGTERM is followed by SIGCONT, so the worker runs its handler and stops well
    before the timeout's SIGKILL."""
    mark = tmp_path / "terminated"
    leader = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -c "$0" & echo $!', _handler_script(mark)],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    assert leader.stdout is not None
    lines = {leader.stdout.readline().strip() for _ in range(2)}
    (kid,) = (int(x) for x in lines if x.isdigit())
    assert lines == {b"ready", str(kid).encode()}
    leader.wait()
    os.kill(kid, signal.SIGSTOP)
    _wait_state(kid, "T")
    started = time.monotonic()
    stop_all([ServiceProcess("worker", "http://x", leader)], timeout_s=5.0)
    assert mark.exists(), "the stopped worker never ran its SIGTERM handler"
    assert time.monotonic() - started < 5.0


def test_stop_all_removes_the_metrics_folder(tmp_path: Path) -> None:
    """The folder `start_service` made for a service's workers' metrics goes with it (or
    each run would leave one in the temporary directory)."""
    scratch = tmp_path / "musicrec-metrics-similar-1-x"
    scratch.mkdir()
    (scratch / "counter_1.db").write_bytes(b"")
    done = subprocess.Popen(["true"], start_new_session=True)
    done.wait()
    stop_all([ServiceProcess("svc", "http://x", done, scratch)], timeout_s=2.0)
    assert not scratch.exists()


_IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_stop_all_kills_a_service_that_ignores_sigterm_at_the_timeout() -> None:
    """A service that does not stop on SIGTERM is killed once the timeout is over: serve
    never waits on it for ever."""
    import threading

    service = subprocess.Popen(
        [sys.executable, "-c", _IGNORES_SIGTERM], start_new_session=True, stdout=subprocess.PIPE
    )
    try:
        assert service.stdout is not None and service.stdout.readline() == b"ready\n"
        stopper = threading.Thread(
            target=stop_all, args=([ServiceProcess("svc", "http://x", service)], 1.0), daemon=True
        )
        started = time.monotonic()
        stopper.start()
        stopper.join(timeout=15)
        assert not stopper.is_alive(), "stop_all still waiting on a service that ignores SIGTERM"
        assert time.monotonic() - started < 5.0
        assert service.returncode == -signal.SIGKILL
    finally:
        service.kill()
        service.wait()


def test_stop_all_kills_a_worker_that_ignores_sigterm_after_its_supervisor_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The supervisor stops on SIGTERM, its worker ignores it: the worker is sent SIGKILL
    at the timeout, not left running with the port."""
    leader = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -c "$0" & echo $!; wait', _IGNORES_SIGTERM],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    assert leader.stdout is not None
    lines = {leader.stdout.readline().strip() for _ in range(2)}
    (kid,) = (int(x) for x in lines if x.isdigit())
    try:
        with caplog.at_level(logging.WARNING, logger="musicrec.serve"):
            stop_all([ServiceProcess("worker", "http://x", leader)], timeout_s=1.5)
        assert _state(kid) in (None, "Z"), "the worker outlived stop_all"
        assert "outlived SIGKILL" not in caplog.text
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(kid, signal.SIGKILL)

"""How `musicrec serve` stops its services' process groups (`musicrec.serve.stop_all`):
a stopped (SIGSTOP) worker is let handle SIGTERM, and zombies left in a group are not
taken for processes that outlived SIGKILL. Linux only (`/proc`, process groups)."""

from __future__ import annotations

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

"""musicrec.parent_guard: runs a module with the parent-death signal set, or refuses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from musicrec.serve import PROJECT_ROOT

# a module that prints its own parent-death signal (prctl PR_GET_PDEATHSIG) and its argv
PROBE = """
import ctypes, ctypes.util, sys
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
sig = ctypes.c_int(-1)
libc.prctl(2, ctypes.byref(sig), 0, 0, 0)
print(sig.value, sys.argv[1:])
"""


def guard(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pdeath_probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(tmp_path)])}
    return subprocess.run(
        [sys.executable, "-m", "musicrec.parent_guard", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_runs_the_module_with_its_arguments_and_sigterm_on_parent_death(tmp_path: Path) -> None:
    run = guard(str(os.getpid()), "-m", "pdeath_probe", "--port", "8000", tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{int(signal.SIGTERM)} ['--port', '8000']"
    # and without the guard the probe sees no such signal (the check can fail)
    plain = subprocess.run(
        [sys.executable, str(tmp_path / "pdeath_probe.py")], capture_output=True, text=True
    )
    assert plain.stdout.strip() == "0 []"


def test_refuses_to_start_when_its_parent_is_not_the_one_named(tmp_path: Path) -> None:
    """The parent died between the fork and the prctl call (the child was re-parented): the
    service would outlive it, so the guard does not start it."""
    run = guard("1", "-m", "pdeath_probe", tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.stdout == "" and "parent process 1 is gone" in run.stderr


@pytest.mark.parametrize("args", [(), ("123",), ("123", "uvicorn"), ("pid", "-m", "uvicorn")])
def test_usage_errors_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    run = guard(*args, tmp_path=tmp_path)
    assert run.returncode == 2 and "usage: python -m musicrec.parent_guard" in run.stderr

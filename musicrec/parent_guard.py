"""Run a Python module that stops when the process that started it dies, even by SIGKILL.

    python -m musicrec.parent_guard PARENT_PID -m MODULE [ARGS ...]

`serve` starts each service as `python -m musicrec.parent_guard <serve's pid> -m uvicorn
...`. The services run in sessions of their own (so that `stop_all` can find the workers of
a uvicorn supervisor that died first), so nothing else ties them to `serve`: a `serve` killed
outright (the OOM killer, `kill -9`) used to leave them running, holding their ports, and
the next `serve` refused to start. Here the kernel is asked (Linux `prctl(PR_SET_PDEATHSIG)`)
to send SIGTERM when the parent dies; uvicorn stops on it as on Ctrl-C, its workers with it.
If the parent is already gone when this starts (it died between fork and `prctl`), this
exits at once with code 1. Elsewhere than Linux the module just runs (no such call).

The signal goes to this process when the *thread* that started it ends, so start the
children from a thread that lives as long as they should (`serve_all` does).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import runpy
import signal
import sys

#: linux/prctl.h
PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies; False where the
    call does not exist (not Linux) or fails."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "-m" or not argv[0].isdigit():
        print(
            "usage: python -m musicrec.parent_guard PARENT_PID -m MODULE [ARGS ...]",
            file=sys.stderr,
        )
        return 2
    parent, module, args = int(argv[0]), argv[2], argv[3:]
    set_parent_death_signal()
    if os.getppid() != parent:  # the parent died before the signal was asked for
        print(f"parent_guard: parent process {parent} is gone; not starting", file=sys.stderr)
        return 1
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

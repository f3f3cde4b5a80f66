"""Real service processes for the reliability tests: start, kill, restart, measure, read logs.

Each service runs as `python -m uvicorn ...` exactly as `python -m musicrec serve` starts it
(`musicrec.serve`), with its output in a log file of its own (kept for the secret grep).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import psutil

from musicrec.serve import SERVICES, ServiceProcess, child_environment, start_service, wait_ready
from musicrec.settings import Settings

MIB = 1024 * 1024


def rss_mib(pid: int) -> float:
    """Resident set size of a process, in MiB."""
    return float(psutil.Process(pid).memory_info().rss) / MIB


class ServiceSet:
    """Service processes of one test, by name; every output goes to `work/<name>-<n>.log`."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: dict[str, ServiceProcess] = {}
        self.settings: dict[str, Settings] = {}
        self.options: dict[str, dict[str, Any]] = {}
        self.logs: list[Path] = []
        self._files: list[IO[bytes]] = []

    def start(
        self,
        cfg: Settings,
        names: list[str] | None = None,
        *,
        wait: bool = True,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout_s: float = 60.0,
    ) -> dict[str, ServiceProcess]:
        """Start the named services (default: all three) and wait until they are ready;
        `env` adds variables, `cwd` is their working directory (where `.env` is read)."""
        wanted = names or [s.name for s in SERVICES]
        base = child_environment(cfg)
        if env:
            base.update(env)
        started = []
        for spec in SERVICES:
            if spec.name not in wanted:
                continue
            log = self.work / f"{spec.name}-{len(self.logs)}.log"
            out = open(log, "wb")  # noqa: SIM115 - closed in stop_all
            self._files.append(out)
            self.logs.append(log)
            p = start_service(spec, cfg, base, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
            self.procs[spec.name] = p
            self.settings[spec.name] = cfg
            self.options[spec.name] = {"env": env, "cwd": cwd}
            started.append(p)
        if wait:
            wait_ready(started, timeout_s=timeout_s)
        return {p.name: p for p in started}

    def url(self, name: str) -> str:
        return self.procs[name].url

    def pid(self, name: str) -> int:
        return self.procs[name].proc.pid

    def rss_mib(self, name: str) -> float:
        return rss_mib(self.pid(name))

    def signal(self, name: str, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid(name), sig)

    def kill(self, name: str) -> None:
        """SIGKILL a service and reap it."""
        p = self.procs[name].proc
        if p.poll() is None:
            self.signal(name, signal.SIGCONT)  # a stopped process must also die now
            p.kill()
        p.wait(timeout=10)

    def stop(self, name: str) -> None:
        """SIGTERM a service (clean shutdown) and wait for it."""
        p = self.procs[name].proc
        if p.poll() is None:
            self.signal(name, signal.SIGCONT)
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def restart(self, name: str, *, wait: bool = True) -> ServiceProcess:
        """Start a stopped or killed service again with the same settings."""
        return self.start(self.settings[name], [name], wait=wait, **self.options[name])[name]

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for f in self._files:
            f.close()
        self._files.clear()

    def log_text(self) -> str:
        """Everything every service process printed so far."""
        for f in self._files:
            f.flush()
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.02) -> float:
    """Poll `predicate()` until true; return the seconds it took (TimeoutError if never)."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"condition not met within {timeout_s:.1f}s")
        time.sleep(interval_s)

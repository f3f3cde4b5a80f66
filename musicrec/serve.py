"""Start the three services as uvicorn subprocesses and stop them cleanly.

`serve_all(settings, run_verify)` - what `python -m musicrec serve [--verify]` runs:

1. starts `similarity_store:app`, `event_storage:app` and `api_main:app`
   (`python -m uvicorn ... --host settings.host --port ...`), passing the environment
   through plus the given settings as `MUSICREC_*` variables, so the children see exactly
   the parent's configuration;
2. waits until each answers `GET /ready` (a child that exits early fails the start with its
   exit code and the line of its output that says why: each child's stderr is passed on
   to serve's, its last lines kept);
3. with `run_verify`, runs `musicrec.verify.run_verification` and prints the result;
4. serves until Ctrl-C / SIGTERM (or a child dies), then terminates all three, waits, and
   kills what is still running after a timeout. If `serve` itself is killed outright, the
   kernel sends each service SIGTERM (`musicrec.parent_guard`).

The helpers (`start_service`, `wait_ready`, `stop_all`) are reused by the tests.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

from pydantic import AliasChoices, SecretStr

from musicrec.logs import FILE_ONLY
from musicrec.settings import INSTANCE_HEADER, Settings, connect_host

log = logging.getLogger("musicrec.serve")

#: where `api_main.py` and the other entry points live
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its name, uvicorn app, the settings field holding its port and the one
    holding its worker count (None: always one worker)."""

    name: str
    app: str
    port_field: str
    workers_field: str | None


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("similar", "similarity_store:app", "similar_port", "similar_workers"),
    # one worker: its in-memory cache of recent events lives in one process
    ServiceSpec("events", "event_storage:app", "events_port", None),
    ServiceSpec("recommendations", "api_main:app", "recs_port", "recs_workers"),
)


class ServeError(RuntimeError):
    """A service could not be started (exited early or never became ready)."""


class StartInterrupted(ServeError):
    """Ctrl-C or SIGTERM arrived while the services were starting: a stop, not a failure."""


@dataclass
class ServiceProcess:
    """A running service subprocess."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    #: a directory made for this process (its workers' metrics), removed by `stop_all`
    scratch: Path | None = None
    #: its latest stderr lines, when `start_service` passes them on (`pass_on_stderr`)
    tail: deque[str] | None = None
    #: the thread that reads them
    reader: threading.Thread | None = None

    def exit_text(self, when: str = "", *, started: bool = False) -> str:
        """The words "exited with code N" (then `when`) and the cause its stderr gave
        (`exit_cause`), for a process that has exited. Killed by a signal: "killed by
        SIGKILL", no cause read (its last lines are from before). `started` (it was
        serving): only a traceback its output ends with is a cause (an earlier one was
        handled). Waits up to 2 s for the last lines to be read."""
        code = self.proc.returncode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return " ".join(filter(None, (f"killed by {name}", when)))
        text = " ".join(filter(None, (f"exited with code {code}", when)))
        if self.reader is not None:
            # its last lines may still be in the pipe (uvicorn's workers, if any are left,
            # hold it open: then the wait ends at the timeout)
            self.reader.join(timeout=2.0)
        cause = None if self.tail is None else exit_cause(self.tail, last_only=started)
        if cause:
            return f"{text}: {cause}"
        if self.tail is not None and not self.tail:
            return f"{text} (no output)"
        return f"{text} (its last lines above say why)"


#: a service's stderr lines kept for the error that says why it stopped
TAIL_LINES = 50
#: the last line of a Python traceback: `[module.]NameError: message` (or a bare name)
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)\b(?::.*)?$")
#: a terminal's colour codes (uvicorn colours its level names when stdout is a terminal)
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def exit_cause(lines: Iterable[str], last_only: bool = False) -> str | None:
    """The line of a service's last output that says why it stopped: the last exception
    line of a traceback (`musicrec.errors.ArtifactError: ... is missing`), else uvicorn's
    last `ERROR:` line (a port in use, an app that cannot be imported), else the last line;
    None when there is none. uvicorn ends a failed start-up with "Application startup
    failed. Exiting.", which names no cause, so the exception comes first. `last_only`:
    only the last line, and only if it is an exception line (a service that stopped
    while serving: an exception further up was logged and handled). Colour codes are
    removed first."""
    kept = [_COLOURS.sub("", line).strip() for line in lines]
    kept = [line for line in kept if line]
    if last_only:
        return kept[-1] if kept and _EXCEPTION_LINE.match(kept[-1]) else None
    for line in reversed(kept):
        if _EXCEPTION_LINE.match(line):
            return line
    for line in reversed(kept):
        if line.startswith("ERROR:") and "Application startup failed" not in line:
            return " ".join(line.split())
    return kept[-1] if kept else None


def pass_on_stderr(stream: IO[bytes], tail: deque[str], out: TextIO | None) -> None:
    """Copy a child's stderr to `out` line by line, keeping its latest lines in `tail`,
    until the child (and every process that inherited the pipe) closes it. A failing `out`
    is not written to again, but the pipe is still read, so the child never blocks on it."""
    sink = out  # None: serve's own stderr was closed (`2>&-`)
    with stream:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            tail.append(line.rstrip("\n"))
            if sink is not None:
                try:
                    sink.write(line)
                    sink.flush()
                except Exception:  # closed or broken: keep draining
                    sink = None


def base_url(settings: Settings, port: int) -> str:
    """`http://host:port` of a service bound per `settings`."""
    return f"http://{connect_host(settings.host)}:{port}"


def settings_env(settings: Settings) -> dict[str, str | None]:
    """Environment variables that make `Settings()` in a child equal `settings`.

    Values are strings; `None` means "remove the variable" (an unset optional field).
    """
    env: dict[str, str | None] = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names = [str(c) for c in alias.choices]
        else:
            names = [f"MUSICREC_{name.upper()}"]
        value: Any = getattr(settings, name)
        for other in names[1:]:
            env[other] = None
        if value is None:
            env[names[0]] = None
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[names[0]] = str(value)
    return env


def child_environment(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment plus `settings_env(settings)`."""
    env = dict(os.environ if base is None else base)
    for key, value in settings_env(settings).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def service_workers(spec: ServiceSpec, settings: Settings) -> int:
    """uvicorn workers of a service: its `workers_field` setting (`recs_workers`,
    `similar_workers`), else one."""
    return 1 if spec.workers_field is None else int(getattr(settings, spec.workers_field))


def uvicorn_command(spec: ServiceSpec, settings: Settings, port: int) -> list[str]:
    """`python -m uvicorn <app> --host .. --port ..` with production-minded options."""
    level = settings.log_level.lower()
    if level not in ("critical", "error", "warning", "info", "debug", "trace"):
        level = "info"
    workers = service_workers(spec, settings)
    return [
        sys.executable,
        "-m",
        "uvicorn",
        spec.app,
        *(["--workers", str(workers)] if workers > 1 else []),
        "--host",
        settings.host,
        "--port",
        str(port),
        "--app-dir",
        str(PROJECT_ROOT),
        "--log-level",
        level,
        "--no-access-log",  # the services log one structured line per request themselves
        "--timeout-keep-alive",
        "30",  # longer than the client's pool keep-alive (it closes idle sockets first)
        "--timeout-graceful-shutdown",
        "5",
    ]


def start_service(
    spec: ServiceSpec,
    settings: Settings,
    env: dict[str, str],
    *,
    die_with_parent: bool = True,
    **popen: Any,
) -> ServiceProcess:
    """Start one service subprocess (not waiting for it).

    With `die_with_parent` (Linux) the service gets SIGTERM when the thread that started it
    ends, or the whole process dies, even by SIGKILL (`musicrec.parent_guard`): call it
    from a thread that outlives the service. Without a `stderr` in `popen` the service's
    stderr is passed on to this process's by a thread that keeps its last lines
    (`ServiceProcess.tail`), for the error that says why it stopped."""
    port = int(getattr(settings, spec.port_field))
    cmd = uvicorn_command(spec, settings, port)
    if die_with_parent:
        # `python -m uvicorn ...` -> `python -m musicrec.parent_guard PID -m uvicorn ...`;
        # the package is found from the project root, as uvicorn's --app-dir finds the apps
        cmd = [cmd[0], "-m", "musicrec.parent_guard", str(os.getpid()), *cmd[1:]]
        path = env.get("PYTHONPATH")
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, (str(PROJECT_ROOT), path)))}
    scratch = None
    # a directory inherited from the parent would be shared by the three services (each
    # /metrics adding up the others' requests) and hold the files of earlier runs
    env = {key: value for key, value in env.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    if "--workers" in cmd:
        # several workers share one /metrics: prometheus_client's multiprocess mode keeps
        # each worker's values in files of this (fresh, empty) directory
        # the pid in the name: the folders of a serve killed outright are found and
        # removed by the next one (`remove_orphan_metrics_dirs`)
        prefix = f"{METRICS_DIR_PREFIX}{spec.name}-{os.getpid()}-"
        scratch = Path(tempfile.mkdtemp(prefix=prefix))
        env["PROMETHEUS_MULTIPROC_DIR"] = str(scratch)
    log.info("starting %s: %s", spec.name, " ".join(cmd))
    # a process group of its own: uvicorn's workers are its children, and if the uvicorn
    # supervisor dies first (the OOM killer) `stop_all` still finds them by the group
    popen.setdefault("start_new_session", True)
    tail: deque[str] | None = None
    if "stderr" not in popen:
        tail = deque(maxlen=TAIL_LINES)
        popen["stderr"] = subprocess.PIPE
    proc = subprocess.Popen(cmd, env=env, **popen)
    reader = None
    if tail is not None and proc.stderr is not None:
        reader = threading.Thread(
            target=pass_on_stderr,
            args=(proc.stderr, tail, sys.stderr),
            name=f"{spec.name}-stderr",
            daemon=True,
        )
        reader.start()
    return ServiceProcess(spec.name, base_url(settings, port), proc, scratch, tail, reader)


def check_ports_free(settings: Settings, names: Iterable[str] | None = None) -> None:
    """`ServeError` naming the service and port when another process listens on a port the
    named services (default: all three) are to bind: its `/ready` would otherwise be taken
    for the new service's (uvicorn binds only once the artifacts are loaded)."""
    wanted = set(names) if names is not None else {s.name for s in SERVICES}
    taken: dict[int, str] = {}
    for spec in SERVICES:
        if spec.name not in wanted:
            continue
        port = int(getattr(settings, spec.port_field))
        if port in taken:  # the second would die of "address already in use"
            raise ServeError(
                f"the {taken[port]} and {spec.name} services are both set to port {port}"
            )
        taken[port] = spec.name
        try:
            infos = socket.getaddrinfo(
                settings.host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as exc:
            raise ServeError(f"cannot resolve MUSICREC_HOST {settings.host!r}: {exc}") from None
        for family, type_, proto, _, address in infos[:1]:
            with socket.socket(family, type_, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
                if family == socket.AF_INET6:  # asyncio binds IPv6 sockets IPv6-only
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:  # not a local address, no permission
                        raise ServeError(
                            f"cannot bind the {spec.name} service to {settings.host}:{port} "
                            f"({exc.strerror}): check MUSICREC_HOST and "
                            f"MUSICREC_{spec.port_field.upper()}"
                        ) from None
                    raise ServeError(
                        f"port {port} of the {spec.name} service is in use ({exc.strerror}): "
                        "another `musicrec serve` or uvicorn still running? Stop it, or set "
                        f"MUSICREC_{spec.port_field.upper()}"
                    ) from None


#: `<tmp>/musicrec-metrics-<service>-<serve's pid>-XXXXXXXX`: a service's metrics files
#: when it runs several uvicorn workers
METRICS_DIR_PREFIX = "musicrec-metrics-"


def remove_orphan_metrics_dirs(tmp: str | Path | None = None) -> int:
    """Remove the metrics folders of `serve` processes that no longer run (killed outright:
    `stop_all` never ran); returns how many. A folder whose pid runs (another serve, or a
    process that took the pid) is left."""
    removed = 0
    for path in Path(tmp or tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*-*-*"):
        pid_text = path.name[len(METRICS_DIR_PREFIX) :].rsplit("-", 2)[-2]
        if not (path.is_dir() and pid_text.isdigit()) or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def start_all(
    settings: Settings, names: Iterable[str] | None = None, **popen: Any
) -> list[ServiceProcess]:
    """Start the named services (default: all three)."""
    wanted = set(names) if names is not None else {s.name for s in SERVICES}
    check_ports_free(settings, wanted)
    if remove_orphan_metrics_dirs():
        log.info("removed the metrics folders of a serve that was killed outright")
    env = child_environment(settings)
    return [start_service(s, settings, env, **popen) for s in SERVICES if s.name in wanted]


def is_ready(url: str, timeout_s: float = 1.0, instance: str | None = None) -> bool:
    """Whether `GET {url}/ready` answers 200 (with `instance`: from a service started with
    that `serve_instance`, echoed in its header)."""
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=timeout_s) as resp:
            if instance is not None and resp.headers.get(INSTANCE_HEADER) != instance:
                return False
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_ready(
    procs: Sequence[ServiceProcess],
    timeout_s: float = 120.0,
    stop: threading.Event | None = None,
    instance: str | None = None,
) -> None:
    """Wait until every service answers `/ready` (with `instance`: echoing it); `ServeError`
    if one exits or time runs out (or `stop` is set)."""
    deadline = time.monotonic() + timeout_s
    pending = list(procs)
    while pending:
        for p in list(pending):
            if p.proc.poll() is not None:
                raise ServeError(f"{p.name} service {p.exit_text('during start-up')}")
            if is_ready(p.url, instance=instance):
                log.info("%s ready at %s", p.name, p.url)
                pending.remove(p)
        if not pending:
            return
        if stop is not None and stop.is_set():
            raise StartInterrupted("interrupted while waiting for the services")
        if time.monotonic() > deadline:
            names = ", ".join(p.name for p in pending)
            raise ServeError(f"not ready after {timeout_s:.0f}s: {names}")
        time.sleep(0.1)


def _signal_group(p: ServiceProcess, sig: signal.Signals) -> bool:
    """Send `sig` to what is left of the service's process group; False when it is empty
    (or the service was started without a group of its own)."""
    try:
        if os.getpgid(p.proc.pid) != p.proc.pid:
            return False
    except ProcessLookupError:
        pass  # the leader is gone (reaped); its group lives while a member does
    try:
        os.killpg(p.proc.pid, sig)
        if sig == signal.SIGTERM:  # a stopped (SIGSTOP) process acts on it once continued
            os.killpg(p.proc.pid, signal.SIGCONT)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _continue(p: ServiceProcess) -> None:
    """SIGCONT to the service's group (to the service alone without a group of its own): a
    process stopped with SIGSTOP acts on the SIGTERM it was sent (and a supervisor on its
    stopped workers' exit) only once continued."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(p.proc.pid) == p.proc.pid:
            os.killpg(p.proc.pid, signal.SIGCONT)
        else:
            os.kill(p.proc.pid, signal.SIGCONT)


def group_has_live_member(pgid: int) -> bool | None:
    """Whether a process of group `pgid` is alive, not a zombie (Linux `/proc`); None where
    that cannot be read. A killed worker whose parent died first waits as a zombie until the
    system's init reaps it (never, under a container's PID 1 that does not reap): it holds no
    port or memory, but `killpg` still finds it."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def stop_all(procs: Sequence[ServiceProcess], timeout_s: float = 10.0) -> None:
    """SIGTERM every service, wait up to `timeout_s` in total, SIGKILL the rest; then the
    same for what is left of each service's process group (the workers of a uvicorn
    supervisor that died before them would keep its port)."""
    for p in procs:
        if p.proc.poll() is None:
            p.proc.terminate()  # the supervisor stops its own workers
            _continue(p)
        else:
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs: killing it", p.name, timeout_s)
            _signal_group(p, signal.SIGKILL)
            p.proc.kill()
            p.proc.wait()
        while _signal_group(p, signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL):
            if group_has_live_member(p.proc.pid) is False:
                log.debug("%s: only zombies left in its group (init reaps them)", p.name)
                break
            if time.monotonic() >= deadline + 1.0:
                log.warning("%s: processes of its group outlived SIGKILL", p.name)
                break
            time.sleep(0.05)
        if p.scratch is not None:
            shutil.rmtree(p.scratch, ignore_errors=True)


def serve_all(
    settings: Settings,
    run_verify: bool = False,
    *,
    ready_timeout_s: float = 300.0,
    stop_event: threading.Event | None = None,
) -> int:
    """Start the three services, optionally verify them, serve until Ctrl-C / SIGTERM.

    Returns 0 on a clean stop after a passed (or skipped) verification, the verification's
    exit code if it failed, 1 if a service failed to start or died while serving.
    """
    stop = stop_event or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: stopping the services", signal.Signals(signum).name)
            stop.set()

        # SIGHUP (the terminal closed) and SIGQUIT (Ctrl+backslash) too: the services run in
        # sessions of their own, so a signal to serve's process group no longer reaches them
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            # a signal ignored on entry stays ignored: `nohup musicrec serve &` then a
            # closed terminal stopped all three (SIGHUP was caught again)
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, on_signal)

    procs: list[ServiceProcess] = []
    rc = 0
    # a token per run, echoed by each child's /ready: an answer from another server that
    # took a port after the check in start_all is not taken for a child's
    instance = secrets.token_hex(8)
    settings = settings.model_copy(update={"serve_instance": instance})
    try:
        procs = start_all(settings)
        wait_ready(procs, ready_timeout_s, stop, instance=instance)
        for p in procs:
            print(f"{p.name:>15}: {p.url}  (docs: {p.url}/docs)", flush=True)
        if run_verify and not stop.is_set():
            from musicrec.verify import run_verification

            rc = run_verification(settings)
            verdict = "PASSED" if rc == 0 else f"FAILED (exit code {rc})"
            print(f"verification {verdict}; details in service_test.log", flush=True)
        print("serving; press Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            dead = [p for p in procs if p.proc.poll() is not None]
            if dead:
                for p in dead:
                    log.error("%s service %s", p.name, p.exit_text("while serving", started=True))
                rc = rc or 1
                break
    except StartInterrupted:  # Ctrl-C / SIGTERM during start-up: a stop asked for, rc 0
        log.info("stopped while the services were starting")
    except ServeError as exc:
        log.error("%s", exc, extra=FILE_ONLY)  # the console has the `error:` line
        print(f"error: {exc}", file=sys.stderr, flush=True)
        rc = 1
    finally:
        stop_all(procs)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if procs:
        print("services stopped", flush=True)
    return rc

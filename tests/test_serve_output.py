"""How `musicrec serve` reads its services' stderr (`musicrec.serve.exit_cause`,
`pass_on_stderr`); the end-to-end case is tests/services/test_e2e.py
`test_serve_names_why_a_service_failed_to_start`."""

from __future__ import annotations

import io
import os
import threading
from collections import deque

import pytest

from musicrec.serve import ServiceProcess, exit_cause, pass_on_stderr

TRACEBACK = """\
INFO:     Started server process [1]
ERROR:    Traceback (most recent call last):
  File "/x/musicrec/io.py", line 186, in read_artifact
    raise ArtifactError(f"{path}: artifact file is missing")
musicrec.errors.ArtifactError: /a/similar.parquet: artifact file is missing

ERROR:    Application startup failed. Exiting.
"""


@pytest.mark.parametrize(
    ("output", "cause"),
    [
        # a traceback: its exception line, not uvicorn's closing line
        (TRACEBACK, "musicrec.errors.ArtifactError: /a/similar.parquet: artifact file is missing"),
        (
            "Traceback (most recent call last):\n  ...\nOSError: [Errno 28] No space\n",
            "OSError: [Errno 28] No space",
        ),
        ("KeyboardInterrupt\n", "KeyboardInterrupt"),
        # uvicorn's own errors, without a traceback: its last ERROR line, spaces squeezed
        (
            "INFO:     Waiting\nERROR:    [Errno 98] error while attempting to bind on address "
            "('127.0.0.1', 8000): address already in use\nINFO:     Stopping\n",
            "ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): "
            "address already in use",
        ),
        (
            'ERROR:    Error loading ASGI app. Attribute "ap" not found in module "x".\n',
            'ERROR: Error loading ASGI app. Attribute "ap" not found in module "x".',
        ),
        # anything else: the last line; nothing: None
        ("starting\nKilled\n\n", "Killed"),
        (
            "ERROR:    Application startup failed. Exiting.\n",
            "ERROR:    Application startup failed. Exiting.",
        ),
        ("\n  \n", None),
        ("", None),
        # a log line that mentions an error is not an exception line
        ("INFO: ValueError handled\nlast words\n", "last words"),
        # uvicorn on a terminal colours its level names
        (
            "\x1b[31mERROR\x1b[0m:    [Errno 98] address already in use\n"
            "\x1b[32mINFO\x1b[0m:     Application shutdown complete.\n",
            "ERROR: [Errno 98] address already in use",
        ),
    ],
)
def test_exit_cause(output: str, cause: str | None) -> None:
    assert exit_cause(output.splitlines()) == cause


def test_exit_cause_of_a_service_that_was_serving_is_only_a_traceback_it_ends_with() -> None:
    """While serving, a traceback further up was logged and handled (an upstream's bad
    answer); only an exception line the output ends with is the cause."""
    handled = "INFO: running\nTraceback (most recent call last):\n  ...\nKeyError: 'score'\n"
    assert (
        exit_cause((handled + "INFO: Application startup complete.\n").splitlines(), True) is None
    )
    assert exit_cause(handled.splitlines(), last_only=True) == "KeyError: 'score'"
    assert exit_cause([], last_only=True) is None


class _Exited:
    def __init__(self, returncode: int) -> None:
        self.returncode = returncode


def _exited(code: int, output: str) -> ServiceProcess:
    tail: deque[str] = deque(output.splitlines(), maxlen=50)
    return ServiceProcess("similar", "http://x", _Exited(code), tail=tail)  # type: ignore[arg-type]


def test_exit_text_names_the_signal_or_the_cause() -> None:
    """Killed by a signal (the OOM killer's SIGKILL): said so, and no line of its earlier
    output taken for the cause; an exit code: the cause its output gives, or a pointer
    to the output above when no line qualifies."""
    running = "INFO:     Uvicorn running on http://127.0.0.1:8602\n"
    assert _exited(-9, running).exit_text("while serving", started=True) == (
        "killed by SIGKILL while serving"
    )
    assert _exited(-15, TRACEBACK).exit_text("during start-up") == (
        "killed by SIGTERM during start-up"
    )
    assert _exited(3, TRACEBACK).exit_text("during start-up") == (
        "exited with code 3 during start-up: musicrec.errors.ArtifactError: "
        "/a/similar.parquet: artifact file is missing"
    )
    assert _exited(1, running).exit_text("while serving", started=True) == (
        "exited with code 1 while serving (its last lines above say why)"
    )
    assert _exited(1, "").exit_text() == "exited with code 1 (no output)"
    # 0 is an exit code, not a signal
    assert (
        _exited(0, "").exit_text("while serving") == "exited with code 0 while serving (no output)"
    )


class Broken(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError("stderr closed")


def test_pass_on_stderr_copies_keeps_the_tail_and_drains_a_broken_output() -> None:
    for out in (io.StringIO(), Broken(), None):  # None: serve run with `2>&-`
        r, w = os.pipe()
        lines = [f"line {i}\n" for i in range(200)] + ["caf\xe9 \ufffd\n"]
        tail: deque[str] = deque(maxlen=50)
        reader = threading.Thread(target=pass_on_stderr, args=(os.fdopen(r, "rb"), tail, out))
        reader.start()
        with os.fdopen(w, "wb") as pipe:  # more than a pipe buffer: blocks unless drained
            for _ in range(100):
                pipe.write("".join(lines).encode())
        reader.join(timeout=30)
        assert not reader.is_alive()
        assert list(tail) == [line.rstrip("\n") for line in lines[-50:]]
        if isinstance(out, io.StringIO) and not isinstance(out, Broken):
            assert out.getvalue() == "".join(lines) * 100

"""How `musicrec serve` reads its services' stderr (`musicrec.serve.exit_cause`,
`pass_on_stderr`); the end-to-end case is tests/services/test_e2e.py
`test_serve_names_why_a_service_failed_to_start`."""

from __future__ import annotations

import io
import os
import threading
from collections import deque

import pytest

from musicrec.serve import exit_cause, pass_on_stderr

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
    ],
)
def test_exit_cause(output: str, cause: str | None) -> None:
    assert exit_cause(output.splitlines()) == cause


class Broken(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError("stderr closed")


def test_pass_on_stderr_copies_keeps_the_tail_and_drains_a_broken_output() -> None:
    for out in (io.StringIO(), Broken()):
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
        if not isinstance(out, Broken):
            assert out.getvalue() == "".join(lines) * 100

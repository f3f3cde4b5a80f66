"""Logging set-up for the CLI and the notebook (called explicitly, never at import)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from musicrec.settings import LOG_LEVELS

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: `extra` of a record for the log file only: the console shows it otherwise (the CLI's
#: `error:` line says what the record says, once)
FILE_ONLY = {"file_only": True}


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


#: libraries that log request headers - S3 credentials, signatures - at DEBUG: they stay at
#: INFO or above whatever the level, so that secrets never reach a log
QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")


def log_json(obj: Any, digits: int = 4) -> str:
    """`obj` as JSON for a log line, its floats rounded to `digits` significant digits
    (`0.005250622166446824` -> `0.005251`, `1547.96` -> `1548.0`); ints, strings, None and
    non-finite floats as they are. metrics.json keeps every digit; the log is for reading."""

    def rounded(value: Any) -> Any:
        if isinstance(value, float) and math.isfinite(value) and value != 0:
            return round(value, digits - 1 - math.floor(math.log10(abs(value))))
        if isinstance(value, dict):
            return {key: rounded(v) for key, v in value.items()}
        if isinstance(value, list | tuple):
            return [rounded(v) for v in value]
        return value

    return json.dumps(rounded(obj))


def setup_logging(level: str = "INFO", log_file: str | Path | None = None) -> None:
    """Log to stderr and, if given, append to `log_file` (e.g. `execution_log.txt`).

    `QUIET_LIBRARIES` are kept at INFO even at DEBUG level (they would log credentials)."""
    if level.upper() not in LOG_LEVELS:
        from musicrec.errors import ConfigError

        raise ConfigError(f"unknown log level {level!r} (MUSICREC_LOG_LEVEL); one of {LOG_LEVELS}")
    root = logging.getLogger()
    root.setLevel(level.upper())
    for name in QUIET_LIBRARIES:
        library = logging.getLogger(name)
        library.setLevel(max(root.level, logging.INFO))
    for h in list(root.handlers):
        if getattr(h, "_musicrec", False):
            root.removeHandler(h)
    console = logging.StreamHandler()
    console.addFilter(_not_file_only)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(logging.Formatter(_FORMAT))
        h._musicrec = True  # type: ignore[attr-defined]
        root.addHandler(h)

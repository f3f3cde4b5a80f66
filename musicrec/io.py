"""Atomic file writes, checked artifact reads and small JSON helpers.

Every artifact is written to a temporary file in the same directory and then renamed over
the target, so a crash never leaves a half-written file behind. `read_artifact` reads a
parquet artifact back, raising `ArtifactError` naming the file when it is missing or bad.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from musicrec.artifacts import ARTIFACT_COLUMNS
from musicrec.errors import ArtifactError

if TYPE_CHECKING:  # only in annotations: the similar-tracks service imports no pandas
    import pandas as pd

#: Every parquet file the project writes carries a CRC of each page, and every read checks
#: the CRCs a file has (a file without them, such as raw data written elsewhere, reads as
#: before). Without them a damaged page mostly reads through as wrong values: of the 10,823
#: one-bit flips of one int32 column chunk (2,000 rows, Snappy), 10,697 read as other numbers
#: and 98 failed; with them all 10,823 fail (2026-12-08, pyarrow 26).
PARQUET_WRITE_OPTIONS: dict[str, Any] = {"write_page_checksum": True}
PARQUET_READ_OPTIONS: dict[str, Any] = {"page_checksum_verification": True}


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (changing it,
    even briefly, would race with files created by other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it onto `target`, with
    the permissions a plainly created file would have (`mkstemp` makes it 0600: other
    users, such as a service account, could not read the artifact)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:  # made inside the try: an interrupt (Ctrl-C, SIGTERM) right after it still cleans up
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        tmp = Path(tmp_name)
        os.close(fd)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


#: a temporary file of `atomic_path` untouched this long (s) is a killed process's
STALE_TMP_S = 600.0


def remove_stale_temporaries(
    root: str | Path, names: Iterable[str] | None = None, older_than_s: float = STALE_TMP_S
) -> tuple[int, int]:
    """Remove the temporary files `atomic_path` left when its process was killed outright
    (SIGKILL, the OOM killer: no `finally` ran), if untouched for `older_than_s` (a file
    another live process is writing is not one of them): those of the files `names` in
    `root` itself, or with `names` None every one under `root`, recursively.
    Returns (files, bytes) removed."""
    root = Path(root)
    # `.*.tmp.*`: boto3 downloads into a name of its own beside the one it is given
    # (`<tmp>.1F4a8AFd`), which a fetch killed outright leaves too
    found = (
        itertools.chain(root.rglob(".*.tmp"), root.rglob(".*.tmp.*"))
        if names is None
        else (
            path
            for name in names
            for pattern in (f".{name}.*.tmp", f".{name}.*.tmp.*")
            for path in root.glob(pattern)
        )
    )
    files = size = 0
    cutoff = time.time() - older_than_s
    for path in found:
        try:
            st = path.stat()
            if not path.is_file() or st.st_mtime > cutoff:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        files += 1
        size += st.st_size
    return files, size


def write_parquet(df: pd.DataFrame | pa.Table, path: str | Path) -> Path:
    """Write a DataFrame or Arrow table to parquet atomically (no pandas index stored)."""
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **PARQUET_WRITE_OPTIONS)
    return Path(path)


def write_parquet_batches(frames: Iterable[pd.DataFrame], path: str | Path) -> int:
    """Write `frames` (same columns and dtypes) to one parquet file, a row group or more
    per frame, atomically; returns the number of rows. Only one frame is in memory at a
    time, so a result of any size is written without concatenating it first. An empty
    iterable writes nothing and raises ValueError (there is no schema to write)."""
    rows = 0
    with atomic_path(path) as tmp:
        writer: pq.ParquetWriter | None = None
        try:
            for df in frames:
                table = pa.Table.from_pandas(df, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, **PARQUET_WRITE_OPTIONS)
                elif not table.schema.equals(writer.schema, check_metadata=False):
                    raise ValueError(
                        f"{path}: frame schema {table.schema} differs from the first frame's "
                        f"{writer.schema}"
                    )
                writer.write_table(table.replace_schema_metadata(writer.schema.metadata))
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"{path}: no frames to write")
    return rows


def _values(t: pa.DataType) -> pa.DataType:
    """The type of a column's values: a dictionary-encoded column (pandas' `category`) is
    judged by its dictionary's type."""
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_list_of(value_check: Callable[[pa.DataType], bool]) -> Callable[[pa.DataType], bool]:
    """A list type whose values pass `value_check`, or hold nothing (every list empty)."""

    def check(t: pa.DataType) -> bool:
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            value_check(_values(t.value_type)) or pa.types.is_null(t.value_type)
        )

    return check


def is_text(t: pa.DataType) -> bool:
    """A string type, plain or large (the raw reader's check and the artifacts' kind)."""
    return pa.types.is_string(t) or pa.types.is_large_string(t)


#: the kinds of column `ARTIFACT_COLUMNS` names, each with the Arrow types it accepts (of
#: the values: dictionary-encoded columns are accepted by their dictionary's type). A
#: timestamp has no time zone: the stages compare it with naive days (the raw reader
#: turns a zoned one into UTC wall time; a prepared file holding one is not prepare's)
COLUMN_KINDS: dict[str, Callable[[pa.DataType], bool]] = {
    "integer": pa.types.is_integer,
    "number": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    "timestamp": lambda t: pa.types.is_timestamp(t) and t.tz is None,
    "string": is_text,
    "list of strings": _is_list_of(is_text),
    "list of integers": _is_list_of(pa.types.is_integer),
}
#: kinds whose columns may hold no null (an id, a rank, a score, a time)
NOT_NULL_KINDS = frozenset({"integer", "number", "timestamp"})


def read_artifact(path: Path, *, missing_hint: str, all_columns: bool = False) -> pa.Table:
    """Read the parquet artifact at `path`, or raise `ArtifactError` naming the file and
    saying what is wrong: it is missing (the message ends with `missing_hint`, what to run
    or set), it is not a readable parquet file, it lacks required columns (each named, with
    the columns found) or has a column twice, a required column has the wrong kind of type
    (named, with the kind expected and the type found) or nulls where a number or time is
    required (named, with their count), or its data does not read through.

    The required columns and their kinds are `ARTIFACT_COLUMNS[path.name]` (kinds:
    `COLUMN_KINDS`); they are checked in the schema before any data is read, so a stale or
    hand-made file fails here, naming its column, rather than in a stage or a request.
    Only they are read, or every column of the file with `all_columns`.
    """
    kinds = ARTIFACT_COLUMNS[path.name]
    required = list(kinds)
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact file is missing ({missing_hint})")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError, UnicodeError) as exc:  # Unicode: a column's name
        raise ArtifactError(f"{path}: not a readable parquet file (truncated?): {exc}") from exc
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise ArtifactError(
            f"{path}: missing column(s) {missing}; expected {required}, found {schema.names}"
        )
    read = schema.names if all_columns else required
    repeated = sorted({name for name in read if schema.names.count(name) > 1})
    if repeated:
        raise ArtifactError(f"{path}: column(s) {repeated} appear more than once")
    for name, kind in kinds.items():
        found = schema.field(name).type
        if not COLUMN_KINDS[kind](_values(found)):
            raise ArtifactError(f"{path}, column '{name}': expected {kind}, found {found}")
    try:
        table = pq.read_table(
            path, columns=None if all_columns else required, **PARQUET_READ_OPTIONS
        )
    except (pa.ArrowException, OSError) as exc:  # a page's CRC mismatch among them
        raise ArtifactError(f"{path}: corrupt parquet data: {exc}") from exc
    for name, kind in kinds.items():
        column = table.column(name)
        nulls = column.null_count if kind in NOT_NULL_KINDS else 0
        if nulls:
            raise ArtifactError(f"{path}, column '{name}': {nulls} null value(s)")
        if kind == "number" and pa.types.is_floating(_values(column.type)):
            # NaN and infinities: the services would answer them as JSON nulls
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            bad = len(column) - pc.sum(pc.is_finite(column)).as_py() if len(column) else 0
            if bad:
                raise ArtifactError(f"{path}, column '{name}': {bad} NaN or infinite value(s)")
    return table


def write_bytes(data: bytes, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(obj: Any, path: str | Path) -> Path:
    return write_bytes(json.dumps(obj, indent=2, default=str).encode(), path)


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text())

"""Read and validate the three raw files of the Yandex Music schema.

Each reader opens one parquet file with pyarrow, reads only the columns it needs, checks
them and returns them cast to the types the rest of the package relies on:

- `tracks.parquet`: `track_id` int32 (unique), `albums` list<int64>, `artists` and
  `genres` list<int32>; a null list is read as an empty one.
- `catalog_names.parquet`: `id` int64, `type` in CATALOG_TYPES, `name` str (may be null);
  (id, type) is unique.
- `interactions.parquet`: `user_id` and `track_id` int32, `track_seq` int16 (int32 if it
  does not fit), `started_at` timestamp[ns]. Any other column (such as the stored pandas
  index `__index_level_0__`) is never read.

Every problem raises `DataValidationError` naming the file, the column, what was expected
and a few offending rows; pyarrow errors never escape. The checks are vectorised (pyarrow
compute and numpy), so the 222.6M-row interactions file never becomes Python objects.

`read_raw_tables` (what `prepare` calls) reads the three files as Arrow tables and also
cleans the interactions: it drops those whose track is not in tracks.parquet (failing if
their share exceeds `DataConfig.max_unknown_track_share`), sorts them by (user_id,
started_at, track_seq) and drops repeated (user, track) pairs, keeping the first listen.
`read_raw` and the `read_tracks` / `read_catalog` / `read_interactions` readers give the
same as pandas DataFrames, for notebooks and exploration.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from musicrec.columns import CATALOG_TYPES, Columns, RawFiles
from musicrec.config import DataConfig
from musicrec.errors import DataValidationError
from musicrec.io import PARQUET_READ_OPTIONS, is_text

log = logging.getLogger("musicrec.raw")

#: Interactions dated before this day are rejected: such dates come from a wrong time unit
#: (e.g. seconds read as nanoseconds give 1970). MovieLens ratings start in 1996.
MIN_DATE = datetime(1990, 1, 1)

#: How many offending rows an error message shows.
N_EXAMPLES = 5

_INT16_MAX = int(np.iinfo(np.int16).max)


@dataclass
class RawData:
    """The validated raw files as pandas frames (list columns hold numpy arrays);
    interactions sorted by (user_id, started_at, track_seq)."""

    tracks: pd.DataFrame
    catalog: pd.DataFrame
    interactions: pd.DataFrame
    #: rows read and dropped while cleaning the interactions
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class RawTables:
    """The same as RawData but as Arrow tables (what `prepare` works on, without copies)."""

    tracks: pa.Table
    catalog: pa.Table
    interactions: pa.Table
    stats: dict[str, Any] = field(default_factory=dict)

    def to_pandas(self) -> RawData:
        return RawData(
            tracks=self.tracks.to_pandas(),
            catalog=self.catalog.to_pandas(),
            interactions=self.interactions.to_pandas(),
            stats=dict(self.stats),
        )


# --------------------------------------------------------------------------- public API


def missing_raw_files(data_dir: str | Path) -> list[str]:
    """Names of the raw files absent from `data_dir` (empty when all three are there)."""
    return [name for name in RawFiles.All if not (Path(data_dir) / name).is_file()]


def require_raw_files(data_dir: str | Path) -> None:
    """`DataValidationError` naming the first missing raw file, if any is missing."""
    missing = missing_raw_files(data_dir)
    if missing:
        raise DataValidationError(
            str(Path(data_dir) / missing[0]),
            None,
            f"the raw files {', '.join(RawFiles.All)} in {data_dir}",
            found=f"missing: {', '.join(missing)}",
        )


def read_raw(data_dir: str | Path, cfg: DataConfig) -> RawData:
    """Read, validate and clean the three raw files in `data_dir` as pandas frames."""
    return read_raw_tables(data_dir, cfg).to_pandas()


def read_raw_tables(data_dir: str | Path, cfg: DataConfig) -> RawTables:
    """Read, validate and clean the three raw files in `data_dir` as Arrow tables.

    Interactions naming a track absent from tracks.parquet are dropped (an error if their
    share exceeds `cfg.max_unknown_track_share`); the rest are sorted by (user_id, started_at,
    track_seq) and repeated (user, track) pairs keep only the first listen. Both counts are
    logged and returned in `stats`.
    """
    data_dir = Path(data_dir)
    require_raw_files(data_dir)
    tracks = read_tracks_table(data_dir / RawFiles.Tracks)
    catalog = read_catalog_table(data_dir / RawFiles.Catalog)
    interactions_path = data_dir / RawFiles.Interactions
    interactions = read_interactions_table(interactions_path)
    n_read = interactions.num_rows

    interactions, n_unknown = drop_unknown_tracks(
        interactions, tracks[Columns.Item], str(interactions_path), cfg.max_unknown_track_share
    )
    interactions = sort_listens(interactions)
    interactions, n_duplicates = drop_repeated_listens(interactions)
    log.info(
        "read %s tracks, %s catalog names, %s interactions (%s kept)",
        f"{tracks.num_rows:,}",
        f"{catalog.num_rows:,}",
        f"{n_read:,}",
        f"{interactions.num_rows:,}",
    )
    stats = {
        "tracks_read": tracks.num_rows,
        "catalog_rows_read": catalog.num_rows,
        "interactions_read": n_read,
        "dropped_unknown_tracks": n_unknown,
        "dropped_duplicates": n_duplicates,
    }
    return RawTables(tracks, catalog, interactions, stats)


def read_tracks(path: str | Path) -> pd.DataFrame:
    """tracks.parquet as a DataFrame (see `read_tracks_table`)."""
    return read_tracks_table(path).to_pandas()


def read_catalog(path: str | Path) -> pd.DataFrame:
    """catalog_names.parquet as a DataFrame (see `read_catalog_table`)."""
    return read_catalog_table(path).to_pandas()


def read_interactions(path: str | Path) -> pd.DataFrame:
    """interactions.parquet as a DataFrame (see `read_interactions_table`)."""
    return read_interactions_table(path).to_pandas()


def read_tracks_table(path: str | Path) -> pa.Table:
    """Read tracks.parquet: ids whole, non-null, non-negative, int32; `track_id` unique.

    The list columns must be lists of such ids (not scalars); a null list becomes empty.
    `albums` stay int64 (only their names are used); `artists` and `genres` must fit int32.
    """
    path = Path(path)
    file = str(path)
    cols = [Columns.Item, Columns.Albums, Columns.Artists, Columns.Genres]
    with _arrow_errors(file):
        table = _read_columns(path, cols)
        track_ids = _ids(file, Columns.Item, table[Columns.Item], pa.int32())
        _fail_on_duplicates(file, Columns.Item, track_ids)
        albums = _id_lists(file, Columns.Albums, table[Columns.Albums], pa.int64())
        artists = _id_lists(file, Columns.Artists, table[Columns.Artists], pa.int32())
        genres = _id_lists(file, Columns.Genres, table[Columns.Genres], pa.int32())
        return pa.table(dict(zip(cols, [track_ids, albums, artists, genres], strict=True)))


def read_catalog_table(path: str | Path) -> pa.Table:
    """Read catalog_names.parquet: `id` whole, non-null, non-negative, int64; `type` one of
    CATALOG_TYPES; `name` a string (null allowed: treated as no name); (id, type) unique."""
    path = Path(path)
    file = str(path)
    cols = [Columns.CatalogId, Columns.CatalogType, Columns.CatalogName]
    with _arrow_errors(file):
        table = _read_columns(path, cols)
        ids = _ids(file, Columns.CatalogId, table[Columns.CatalogId], pa.int64())
        types = _strings(file, Columns.CatalogType, table[Columns.CatalogType])
        if types.null_count:
            _fail(file, Columns.CatalogType, "no nulls", types, pc.is_null(types))
        unknown = pc.invert(pc.is_in(types, value_set=pa.array(CATALOG_TYPES)))
        if pc.any(unknown).as_py():
            _fail(file, Columns.CatalogType, f"one of {list(CATALOG_TYPES)}", types, unknown)
        names = _strings(file, Columns.CatalogName, table[Columns.CatalogName])
        for type_ in CATALOG_TYPES:
            # ids are unique only within a type
            _fail_on_duplicates(
                file, Columns.CatalogId, ids, within=pc.equal(types, type_), label=type_
            )
        return pa.table(dict(zip(cols, [ids, types, names], strict=True)))


def read_interactions_table(path: str | Path) -> pa.Table:
    """Read interactions.parquet: ids whole, non-null, non-negative, int32; `track_seq`
    likewise, int16 when it fits; `started_at` a date, timestamp (any unit, any time zone:
    read as UTC) or ISO string, not null, not before MIN_DATE and not in the future."""
    path = Path(path)
    file = str(path)
    cols = [Columns.User, Columns.Item, Columns.Seq, Columns.Datetime]
    with _arrow_errors(file):
        table = _read_columns(path, cols)
        users = _ids(file, Columns.User, table[Columns.User], pa.int32())
        tracks = _ids(file, Columns.Item, table[Columns.Item], pa.int32())
        seq = _ids(file, Columns.Seq, table[Columns.Seq], pa.int32())
        max_seq = pc.max(seq).as_py()
        if max_seq is not None and max_seq <= _INT16_MAX:
            seq = seq.cast(pa.int16())
        started = _timestamps(file, Columns.Datetime, table[Columns.Datetime])
        return pa.table(dict(zip(cols, [users, tracks, seq, started], strict=True)))


def drop_unknown_tracks(
    interactions: pa.Table, track_ids: pa.ChunkedArray, file: str, max_share: float
) -> tuple[pa.Table, int]:
    """Drop interactions whose track is not in `track_ids`; fail if their share > max_share."""
    known = pc.is_in(interactions[Columns.Item], value_set=track_ids)
    n_unknown = interactions.num_rows - pc.sum(known).as_py()
    if n_unknown == 0:
        return interactions, 0
    share = n_unknown / interactions.num_rows
    if share > max_share:
        _fail(
            file,
            Columns.Item,
            f"at most {max_share:.2%} of interactions naming tracks absent from "
            f"{RawFiles.Tracks} (DataConfig.max_unknown_track_share)",
            interactions[Columns.Item],
            pc.invert(known),
            found=f"{n_unknown:,} such interactions ({share:.2%})",
        )
    log.warning("%s: dropped %s interactions with unknown tracks", file, f"{n_unknown:,}")
    return interactions.filter(known), n_unknown


def sort_listens(interactions: pa.Table) -> pa.Table:
    """Order the rows by (user_id, started_at, track_seq), unless they already are.

    The order comes from one argsort of a packed int64 key (user, time, track_seq) when the
    three fit in 63 bits, time being counted in the largest step that divides every
    timestamp (a day for the real, day-granular data); otherwise from the slower np.lexsort.
    """
    user = interactions[Columns.User].to_numpy()
    started = interactions[Columns.Datetime].to_numpy().view(np.int64)
    seq = interactions[Columns.Seq].to_numpy()
    if _is_sorted(user, started, seq):
        return interactions
    elapsed = started - started.min()
    step = max(int(np.gcd.reduce(elapsed)), 1)
    elapsed //= step
    seq_bits = int(seq.max()).bit_length()
    time_bits = int(elapsed.max()).bit_length()
    if int(user.max()).bit_length() + time_bits + seq_bits <= 63:
        key = elapsed
        key <<= seq_bits
        key |= seq
        key |= user.astype(np.int64) << (time_bits + seq_bits)
        order = np.argsort(key)
    else:
        order = np.lexsort((seq, started, user))
    return interactions.take(order)


def drop_repeated_listens(interactions: pa.Table) -> tuple[pa.Table, int]:
    """Keep one row per (user, track): the first listen, that is the first row, since rows
    are sorted by (user_id, started_at, track_seq) (see `sort_listens`).

    Sorting one int64 key per row tells quickly whether there is any repeat; only then are
    the rows grouped by pair to find the first of each.
    """
    users = interactions[Columns.User].to_numpy().astype(np.int64)
    pairs = (users << 32) | interactions[Columns.Item].to_numpy().astype(np.int64)
    del users
    sorted_pairs = np.sort(pairs)
    if not np.any(sorted_pairs[1:] == sorted_pairs[:-1]):
        return interactions, 0
    del sorted_pairs
    order = np.argsort(pairs)
    ordered = pairs[order]
    group_starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    first_rows = np.minimum.reduceat(order, group_starts)  # the earliest row of each pair
    keep = np.zeros(len(pairs), dtype=bool)
    keep[first_rows] = True
    n_repeated = len(pairs) - len(first_rows)
    log.warning("dropped %s repeated (user, track) interactions", f"{n_repeated:,}")
    return interactions.filter(pa.array(keep)), n_repeated


def _is_sorted(user: np.ndarray, started: np.ndarray, seq: np.ndarray) -> bool:
    """Whether the rows are already ordered by (user, started, seq)."""
    if len(user) < 2:
        return True
    step_user = np.diff(user)
    if np.any(step_user < 0):
        return False
    same_user = step_user == 0
    del step_user
    step_time = np.diff(started)
    if np.any(same_user & (step_time < 0)):
        return False
    step_seq = np.diff(seq.astype(np.int32))
    return not np.any(same_user & (step_time == 0) & (step_seq < 0))


def list_array_from_parents(values: pa.Array, parents: pa.Array, length: int) -> pa.ListArray:
    """Build a list array of `length` rows where `values[i]` belongs to row `parents[i]`.

    `values` must be grouped by row in order (as `pc.list_flatten` returns them, possibly
    filtered); rows that get no value become empty lists.
    """
    counts = np.bincount(np.asarray(parents, dtype=np.int64), minlength=length)
    offsets = np.zeros(length + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


# --------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _arrow_errors(file: str) -> Iterator[None]:
    """Turn any pyarrow error inside the block into a DataValidationError naming `file`."""
    try:
        yield
    # UnicodeError: a column name in the footer that is not UTF-8
    except (pa.ArrowException, OSError, UnicodeError) as exc:
        raise DataValidationError(
            file, None, "a readable parquet file", found=f"{type(exc).__name__}: {exc}"
        ) from exc


def _read_columns(path: Path, columns: Sequence[str]) -> pa.Table:
    """Read only `columns` of a parquet file (other columns, such as a stored pandas index,
    are never read); a missing, empty (0 bytes) or empty-table file is an error."""
    file = str(path)
    if not path.is_file():
        raise DataValidationError(file, None, "an existing parquet file", found="no such file")
    if path.stat().st_size == 0:
        raise DataValidationError(file, None, "a parquet file", found="an empty file (0 bytes)")
    with pq.ParquetFile(path, **PARQUET_READ_OPTIONS) as parquet:
        present = parquet.schema_arrow.names
        for column in columns:
            if column not in present:
                raise DataValidationError(
                    file, column, f"columns {list(columns)}", found=f"columns {present}"
                )
            if present.count(column) > 1:  # pyarrow and Spark can write such a file
                raise DataValidationError(
                    file, column, "one column of that name", found=f"columns {present}"
                )
        table = parquet.read(columns=list(columns), use_pandas_metadata=False)
    if table.num_rows == 0:
        raise DataValidationError(file, None, "at least one row", found="no rows")
    return table.replace_schema_metadata(None)


# --------------------------------------------------------------------------- checks


def _ids(
    file: str,
    column: str,
    values: pa.ChunkedArray | pa.Array,
    target: pa.DataType,
    rows: np.ndarray | None = None,
) -> pa.ChunkedArray | pa.Array:
    """Check that `values` are ids and cast them to the integer type `target`.

    Ids must have an integer type (a float type is accepted if every value is whole), no
    nulls, no negative values and fit `target` (so int64 -> int32 is fine when in range).
    `rows` maps each value to its row, for list elements.
    """
    type_ = values.type
    if pa.types.is_null(type_) and len(values) == 0:
        return values.cast(target)  # e.g. a list column whose lists are all empty
    if not (pa.types.is_integer(type_) or pa.types.is_floating(type_)):
        _fail(file, column, "integers", values, found=f"type {type_}", rows=rows)
    if pa.types.is_float16(type_):  # Arrow's kernels (trunc, min_max) start at float32
        values = values.cast(pa.float32())
        type_ = values.type
    if values.null_count:
        _fail(file, column, "no nulls", values, pc.is_null(values), rows=rows)
    if pa.types.is_floating(type_):
        fraction = pc.not_equal(values, pc.trunc(values))  # NaN counts as a fraction
        if pc.any(fraction).as_py():
            _fail(file, column, "whole numbers", values, fraction, rows=rows)
    if len(values) == 0:
        return values.cast(target)
    lowest, highest = pc.min_max(values).values()
    if lowest.as_py() < 0:
        _fail(file, column, "non-negative values", values, pc.less(values, 0), rows=rows)
    limit = int(np.iinfo(target.to_pandas_dtype()).max)
    if highest.as_py() > limit:
        # compared in the column's own type: a Python int is taken as int64, which neither
        # a uint64 beyond it nor a float64 beyond 2^53 (inf included) converts to
        if pa.types.is_floating(type_):  # whole numbers here: > limit is >= limit + 1
            too_big = pc.greater_equal(values.cast(pa.float64()), float(limit + 1))
        else:
            too_big = pc.greater(values, pa.scalar(limit, type_))
        _fail(file, column, f"values that fit {target} (<= {limit})", values, too_big, rows=rows)
    return values.cast(target)


def _id_lists(file: str, column: str, lists: pa.ChunkedArray, target: pa.DataType) -> pa.ListArray:
    """Check a list-of-ids column (every element as in `_ids`) and cast it to list<target>.

    A column of scalars is an error; a null list is read as an empty one, and so is a
    column of Arrow's type `null` (what pandas writes for a column of None only).
    """
    type_ = lists.type
    if pa.types.is_null(type_):
        log.info("%s: every '%s' list is null, read as empty", file, column)
        return list_array_from_parents(pa.array([], target), np.empty(0, np.int64), len(lists))
    if not (
        pa.types.is_list(type_)
        or pa.types.is_large_list(type_)
        or pa.types.is_fixed_size_list(type_)
    ):
        _fail(file, column, "a list of integer ids per row", lists, found=f"type {type_}")
    lists = lists.combine_chunks()
    values = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy()
    values = _ids(file, column, values, target, rows=parents)
    if lists.null_count:
        log.info("%s: %s null '%s' lists read as empty", file, lists.null_count, column)
    return list_array_from_parents(values, parents, len(lists))


def _strings(file: str, column: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Check that `values` are strings (plain or dictionary-encoded) and cast them to str.
    A column of Arrow's type `null` (what pandas writes for a column of None only) is all
    null strings; the caller decides whether nulls are allowed."""
    type_ = values.type
    if pa.types.is_null(type_):
        return values.cast(pa.string())
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if not is_text(type_):
        _fail(file, column, "strings", values, found=f"type {values.type}")
    return values.cast(pa.string())


def _timestamps(file: str, column: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Check a date column and cast it to timestamp[ns] (naive, UTC wall time).

    Accepted: timestamps of any unit (with a time zone: converted to UTC), date32/date64 and
    ISO-8601 strings. No nulls; every date between MIN_DATE and now.
    """
    if pa.types.is_dictionary(values.type):  # pandas' `category`: judged by its values
        values = values.cast(values.type.value_type)
    type_ = values.type
    if values.null_count:
        _fail(file, column, "no null dates", values, pc.is_null(values))
    if is_text(type_):
        values = _parse_dates(file, column, values)
    elif pa.types.is_timestamp(type_):
        if type_.tz is not None:
            values = values.cast(pa.timestamp(type_.unit))  # the UTC wall time
    elif not pa.types.is_date(type_):
        expected = "dates (timestamp, date32/date64 or ISO-8601 strings)"
        _fail(file, column, expected, values, found=f"type {type_}")

    now = datetime.now(UTC).replace(tzinfo=None)
    lowest, highest = pc.min_max(values).values()
    low = pc.cast(pa.scalar(MIN_DATE), values.type, safe=False)
    high = pc.cast(pa.scalar(now), values.type, safe=False)
    if pc.less(lowest, low).as_py():
        expected = f"dates on or after {MIN_DATE:%Y-%m-%d}"
        _fail(file, column, expected, values, pc.less(values, low))
    if pc.greater(highest, high).as_py():
        expected = f"dates not in the future (now is {now:%Y-%m-%d %H:%M} UTC)"
        _fail(file, column, expected, values, pc.greater(values, high))
    return values.cast(pa.timestamp("ns"))


def _parse_dates(file: str, column: str, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Parse ISO-8601 strings to naive UTC wall times: without a zone (read as UTC), with
    one (`Z`, `+03:00`: converted), or a mix; on failure, name the unparseable rows."""
    try:
        return values.cast(pa.timestamp("ns"))
    except pa.ArrowInvalid as exc:
        naive_failed = exc
    try:  # every string with a zone offset
        return values.cast(pa.timestamp("ns", "UTC")).cast(pa.timestamp("ns"))
    except pa.ArrowInvalid:
        pass
    # a mix of zoned and naive strings, or bad ones: pandas reads each row on its own
    as_strings = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)
    parsed = pd.to_datetime(as_strings, errors="coerce", format="ISO8601", utc=True)
    bad = parsed.isna().to_numpy()
    if not bad.any():
        # in pandas' own unit: a date beyond timestamp[ns]'s years 1677-2262 (a typo such
        # as 0222-05-01) then fails the caller's range check, naming its rows
        return pa.chunked_array([pa.array(parsed.dt.tz_localize(None))])
    _fail(file, column, "ISO-8601 dates", values, pa.array(bad), found=str(naive_failed))


def _fail_on_duplicates(
    file: str,
    column: str,
    ids: pa.ChunkedArray,
    within: pa.ChunkedArray | None = None,
    label: str = "",
) -> None:
    """Fail if `ids` (only those rows where `within` is true, if given) repeat a value.

    The examples are the repeats (every occurrence after the first).
    """
    rows = np.arange(len(ids)) if within is None else np.flatnonzero(within.to_numpy())
    values = ids.to_numpy()[rows]
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    repeats = rows[order[1:][ordered[1:] == ordered[:-1]]]
    if len(repeats):
        mask = np.zeros(len(ids), dtype=bool)
        mask[repeats] = True
        what = f"unique ids within type '{label}'" if label else "unique ids"
        _fail(file, column, what, ids, pa.array(mask), found=f"{len(repeats):,} repeats")


def _fail(
    file: str,
    column: str,
    expected: str,
    values: pa.ChunkedArray | pa.Array,
    mask: pa.ChunkedArray | pa.Array | None = None,
    found: str | None = None,
    rows: np.ndarray | None = None,
) -> NoReturn:
    """Raise DataValidationError with the first offending rows as examples.

    `mask` marks the offending values (None: all of them); `rows` maps each value to its
    row when `values` are list elements. Without `found`, it says how many values offend.
    """
    if mask is None:
        index = np.arange(min(N_EXAMPLES, len(values)))
        count = len(values)
    else:
        index = _first_true(mask, N_EXAMPLES)
        count = int(pc.sum(mask).as_py() or 0)
    taken = values.take(pa.array(index, type=pa.int64()))
    try:
        picked = taken.to_pylist()
    except (OverflowError, ValueError):  # a date beyond Python's (year 9999): the raw number
        arr = taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken
        raw = arr.view(pa.int32() if arr.type.bit_width == 32 else pa.int64()).to_pylist()
        picked = [f"{v} ({arr.type} counts)" for v in raw]
    row_numbers = index if rows is None else rows[index]
    examples = [{"row": int(r), column: v} for r, v in zip(row_numbers, picked, strict=True)]
    unit = "rows" if rows is None else "list elements"
    found = found or f"{count:,} of {len(values):,} {unit}"
    raise DataValidationError(file, column, expected, examples, found)


def _first_true(mask: pa.ChunkedArray | pa.Array, k: int) -> np.ndarray:
    """Positions of the first `k` true values of a boolean array (nulls count as false)."""
    chunks = mask.chunks if isinstance(mask, pa.ChunkedArray) else [mask]
    found: list[np.ndarray] = []
    offset, n_found = 0, 0
    for chunk in chunks:
        hits = np.flatnonzero(chunk.fill_null(False).to_numpy(zero_copy_only=False))
        found.append(hits[: k - n_found] + offset)
        n_found += len(found[-1])
        offset += len(chunk)
        if n_found >= k:
            break
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

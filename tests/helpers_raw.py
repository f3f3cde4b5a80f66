"""Tiny raw files in the Yandex Music schema, for the raw-reading and prepare tests.

`valid_tables()` gives three small Arrow tables that pass every check; tests replace one
column (or one table) with a malformed version and write them with `write_raw`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from musicrec.columns import Columns as C
from musicrec.columns import RawFiles


def _real_datasets() -> Path:
    """The team's public data sets (`../shared/datasets/`): MUSICREC_DATASETS_DIR when set,
    else `shared/datasets` beside the checkout, else where the team's machines keep it (a
    clone elsewhere, as CI's fresh checkout in a temporary folder)."""
    if os.environ.get("MUSICREC_DATASETS_DIR"):
        return Path(os.environ["MUSICREC_DATASETS_DIR"])
    beside = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return beside if beside.is_dir() else Path("/work/shared/datasets")


REAL_DATASETS = _real_datasets()
LASTFM = REAL_DATASETS / "lastfm-hetrec2k"
MOVIELENS = REAL_DATASETS / "ml-latest-small"

IDS = pa.list_(pa.int64())


def tracks_table() -> pa.Table:
    """Four tracks: track 4 has no name, album 12 and genre 99 have none either; empty lists."""
    return pa.table(
        {
            C.Item: pa.array([1, 2, 3, 4], pa.int64()),
            C.Albums: pa.array([[10], [10, 11], [], [12]], IDS),
            C.Artists: pa.array([[20], [21, 20], [20], []], IDS),
            C.Genres: pa.array([[30, 31], [], [99, 31], [31]], IDS),
        }
    )


def catalog_table() -> pa.Table:
    """Names for tracks 1-3, albums 10-11, artists 20-21, genres 30-31; id 1 is also an
    artist (ids are unique only within a type)."""
    rows = [
        (1, "track", "Song One"),
        (2, "track", "Song Two"),
        (3, "track", "Song Three"),
        (10, "album", "Album Ten"),
        (11, "album", "Album Eleven"),
        (20, "artist", "Artist Twenty"),
        (21, "artist", "Artist Twenty-One"),
        (1, "artist", "Artist One"),
        (30, "genre", "rock"),
        (31, "genre", "pop"),
    ]
    ids, types, names = zip(*rows, strict=True)
    return pa.table(
        {
            C.CatalogId: pa.array(ids, pa.int64()),
            C.CatalogType: pa.array(types, pa.string()),
            C.CatalogName: pa.array(names, pa.string()),
        }
    )


def interactions_frame() -> pd.DataFrame:
    """Three users, not sorted, with a non-trivial index (stored by pandas)."""
    df = pd.DataFrame(
        {
            C.User: pd.array([1, 0, 0, 0, 2, 1], dtype="int32"),
            C.Item: pd.array([2, 3, 1, 2, 4, 1], dtype="int32"),
            C.Seq: pd.array([2, 2, 1, 3, 1, 1], dtype="int16"),
            C.Datetime: pd.to_datetime(
                ["2022-01-05", "2022-01-02", "2022-01-01", "2022-01-02", "2022-03-01", "2022-01-04"]
            ).astype("datetime64[ns]"),
        }
    )
    df.index = pd.Index([10, 11, 12, 13, 14, 15])
    return df


def interactions_table() -> pa.Table:
    """`interactions_frame` as written by pandas: with the `__index_level_0__` column."""
    return pa.Table.from_pandas(interactions_frame(), preserve_index=True)


def replace_column(table: pa.Table, name: str, values: pa.Array | list) -> pa.Table:
    """`table` with column `name` replaced by `values` (other columns cut to its length)."""
    array = values if isinstance(values, pa.Array) else pa.array(values)
    table = table.slice(0, len(array))
    return table.set_column(table.column_names.index(name), name, array)


def write_raw(
    data_dir: Path,
    tracks: pa.Table | None = None,
    catalog: pa.Table | None = None,
    interactions: pa.Table | None = None,
) -> Path:
    """Write the three raw files into `data_dir` (valid ones unless given)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        RawFiles.Tracks: tracks if tracks is not None else tracks_table(),
        RawFiles.Catalog: catalog if catalog is not None else catalog_table(),
        RawFiles.Interactions: interactions if interactions is not None else interactions_table(),
    }
    for name, table in tables.items():
        pq.write_table(table, data_dir / name)
    return data_dir


def day(text: str) -> datetime:
    return datetime.fromisoformat(text)


def flipped_copies(path: Path, column: str, step: int = 7) -> Iterator[bytes]:
    """The file's bytes with one bit flipped, at every `step`-th byte of `column`'s chunk
    in the first row group (its pages: headers, dictionary and values)."""
    data = path.read_bytes()
    meta = pq.ParquetFile(path).metadata
    chunk = meta.row_group(0).column(meta.schema.to_arrow_schema().get_field_index(column))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    for pos in range(start, start + chunk.total_compressed_size, step):
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        yield bytes(damaged)

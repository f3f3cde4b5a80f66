"""Reading and validating the raw files: one malformed file per check, plus real data."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_raw import (
    IDS,
    LASTFM,
    MOVIELENS,
    catalog_table,
    day,
    interactions_table,
    replace_column,
    tracks_table,
    write_raw,
)

from musicrec.columns import Columns as C
from musicrec.columns import RawFiles
from musicrec.config import DataConfig
from musicrec.errors import DataValidationError
from musicrec.raw import (
    MIN_DATE,
    RawData,
    _first_true,
    missing_raw_files,
    read_catalog,
    read_interactions,
    read_raw,
    read_tracks,
    sort_listens,
)

TRK, CAT, INT = RawFiles.Tracks, RawFiles.Catalog, RawFiles.Interactions


def _tracks(column: str, values: pa.Array | list) -> dict[str, pa.Table]:
    return {"tracks": replace_column(tracks_table(), column, values)}


def _catalog(column: str, values: pa.Array | list) -> dict[str, pa.Table]:
    return {"catalog": replace_column(catalog_table(), column, values)}


def _interactions(column: str, values: pa.Array | list) -> dict[str, pa.Table]:
    return {"interactions": replace_column(interactions_table(), column, values)}


# Each case: a malformed input -> (file, column) the error must name.
MALFORMED: dict[str, tuple[dict[str, pa.Table], str, str | None]] = {
    "missing column": ({"tracks": tracks_table().drop_columns([C.Genres])}, TRK, C.Genres),
    "float ids with fractions": (_interactions(C.Item, [1.0, 2.5, 3.0]), INT, C.Item),
    "string ids": (_catalog(C.CatalogId, ["1", "2", "x"]), CAT, C.CatalogId),
    "int32 overflow": (_tracks(C.Item, pa.array([1, 2**40], pa.int64())), TRK, C.Item),
    "user id overflow": (_interactions(C.User, pa.array([0, 2**31], pa.int64())), INT, C.User),
    "list column of scalars": (_tracks(C.Artists, pa.array([20, 21, 20, 20])), TRK, C.Artists),
    "list of strings": (_tracks(C.Albums, [["a"], [], [], []]), TRK, C.Albums),
    "null track id": (_tracks(C.Item, pa.array([1, None, 3, 4], pa.int64())), TRK, C.Item),
    "null user id": (_interactions(C.User, pa.array([1, None], pa.int32())), INT, C.User),
    "null id in a list": (
        _tracks(C.Genres, pa.array([[30, None], [], [], []], IDS)),
        TRK,
        C.Genres,
    ),
    "null catalog type": (_catalog(C.CatalogType, ["track", None]), CAT, C.CatalogType),
    "negative track id": (_tracks(C.Item, pa.array([1, -2, 3, 4], pa.int64())), TRK, C.Item),
    "negative genre id": (_tracks(C.Genres, pa.array([[30], [-5], [], []], IDS)), TRK, C.Genres),
    "negative track_seq": (_interactions(C.Seq, pa.array([1, -1], pa.int16())), INT, C.Seq),
    "duplicate track_id": (_tracks(C.Item, pa.array([1, 2, 1, 4], pa.int64())), TRK, C.Item),
    "duplicate (id, type)": (
        {"catalog": pa.concat_tables([catalog_table(), catalog_table().slice(5, 1)])},
        CAT,
        C.CatalogId,
    ),
    "unknown catalog type": (_catalog(C.CatalogType, ["track", "podcast"]), CAT, C.CatalogType),
    "non-string names": (_catalog(C.CatalogName, [1, 2]), CAT, C.CatalogName),
    "unknown tracks above the share": (_interactions(C.Item, [2, 3, 1, 2, 4, 777]), INT, C.Item),
    "unparseable date strings": (
        _interactions(C.Datetime, ["2022-01-01", "yesterday", "2022-01-03"]),
        INT,
        C.Datetime,
    ),
    "dates in 1970 (wrong unit)": (
        _interactions(C.Datetime, pa.array([1_640_995_200, 5], pa.timestamp("ns"))),
        INT,
        C.Datetime,
    ),
    "dates before MIN_DATE": (
        _interactions(C.Datetime, pa.array([date(1980, 5, 1)], pa.date32())),
        INT,
        C.Datetime,
    ),
    "dates in the future": (
        _interactions(C.Datetime, pa.array([day("2022-01-01"), day("2199-01-01")])),
        INT,
        C.Datetime,
    ),
    "null dates": (
        _interactions(C.Datetime, pa.array([day("2022-01-01"), None], pa.timestamp("ns"))),
        INT,
        C.Datetime,
    ),
    "integer dates": (_interactions(C.Datetime, [20220101, 20220102]), INT, C.Datetime),
    "no rows": ({"interactions": interactions_table().slice(0, 0)}, INT, None),
    # checks that themselves failed (a traceback, or "not a readable parquet file"):
    "uint64 id beyond int64": (
        _catalog(C.CatalogId, pa.array([1, 2**63 + 5], pa.uint64())),
        CAT,
        C.CatalogId,
    ),
    "infinite float id": (_catalog(C.CatalogId, [1.0, float("inf")]), CAT, C.CatalogId),
    "float id beyond 2^53": (_tracks(C.Item, [1.0, 2.0**60, 3.0, 4.0]), TRK, C.Item),
    "dates beyond year 9999 (ns counts as us)": (
        _interactions(C.Datetime, pa.array([1_640_995_200_000_000_000], pa.timestamp("us"))),
        INT,
        C.Datetime,
    ),
    "date32 beyond year 9999": (
        _interactions(C.Datetime, pa.array([3_000_000], pa.int32()).cast(pa.date32())),
        INT,
        C.Datetime,
    ),
    "a column twice": (
        {"interactions": interactions_table().append_column(C.Item, pa.array([1] * 6))},
        INT,
        C.Item,
    ),
}
#: errors about the file's layout, with no offending rows to show
NO_EXAMPLES = {"missing column", "a column twice"}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_names_file_and_column(tmp_path: Path, case: str) -> None:
    tables, file, column = MALFORMED[case]
    write_raw(tmp_path, **tables)
    with pytest.raises(DataValidationError) as info:
        read_raw(tmp_path, DataConfig())
    error = info.value
    assert error.file.endswith(file) and file in str(error)
    assert error.column == column
    if column is not None:
        assert f"'{column}'" in str(error)
    if case not in NO_EXAMPLES and column is not None:
        assert error.examples, "a few offending rows are shown"


def _write_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("name", "damage", "found"),
    [
        (TRK, lambda path: path.unlink(), "missing"),
        (CAT, _write_bytes(b""), "0 bytes"),
        (CAT, _write_bytes(b"track_id,albums\n1,[]\n"), "ArrowInvalid"),
        (INT, _truncate, "ArrowInvalid"),
    ],
    ids=["missing file", "empty file", "not parquet", "truncated"],
)
def test_unreadable_file_is_named(
    tmp_path: Path, name: str, damage: Callable[[Path], None], found: str
) -> None:
    write_raw(tmp_path)
    damage(tmp_path / name)
    with pytest.raises(DataValidationError, match=name) as info:
        read_raw(tmp_path, DataConfig())
    assert found in str(info.value)


@pytest.mark.parametrize(
    ("reader", "name"), [(read_tracks, TRK), (read_catalog, CAT), (read_interactions, INT)]
)
def test_each_reader_names_a_missing_file(
    tmp_path: Path, reader: Callable[[Path], pd.DataFrame], name: str
) -> None:
    with pytest.raises(DataValidationError, match=name):
        reader(tmp_path / name)


def test_missing_raw_files(tmp_path: Path) -> None:
    assert missing_raw_files(tmp_path) == list(RawFiles.All)
    write_raw(tmp_path)
    assert missing_raw_files(tmp_path) == []
    (tmp_path / CAT).unlink()
    assert missing_raw_files(tmp_path) == [CAT]


def test_error_shows_offending_rows(tmp_path: Path) -> None:
    write_raw(tmp_path, **_tracks(C.Genres, pa.array([[30], [31], [31, -5], []], IDS)))
    with pytest.raises(DataValidationError) as info:
        read_raw(tmp_path, DataConfig())
    assert info.value.examples == [{"row": 2, C.Genres: -5}]
    assert "non-negative" in info.value.expected


def test_valid_files_types(tmp_path: Path) -> None:
    raw = read_raw(write_raw(tmp_path), DataConfig())
    assert isinstance(raw, RawData)
    assert raw.tracks[C.Item].dtype == np.int32
    assert isinstance(raw.tracks[C.Albums].iloc[0], np.ndarray)
    assert len(raw.tracks[C.Albums].iloc[2]) == 0  # empty list kept
    assert raw.catalog[C.CatalogId].dtype == np.int64
    inter = raw.interactions
    assert list(inter.columns) == [C.User, C.Item, C.Seq, C.Datetime]
    assert [str(t) for t in inter.dtypes] == ["int32", "int32", "int16", "datetime64[ns]"]
    assert isinstance(inter.index, pd.RangeIndex)
    assert raw.stats["interactions_read"] == 6


def test_stored_pandas_index_is_ignored(tmp_path: Path) -> None:
    path = write_raw(tmp_path) / INT
    assert "__index_level_0__" in pq.read_schema(path).names
    df = read_interactions(path)
    assert "__index_level_0__" not in df.columns
    assert df.index.equals(pd.RangeIndex(6))


@pytest.mark.parametrize(
    "started_at",
    [
        pa.array([date(2022, 1, d) for d in range(1, 7)], pa.date32()),
        pa.array([date(2022, 1, d) for d in range(1, 7)], pa.date64()),
        pa.array([day(f"2022-01-0{d}") for d in range(1, 7)], pa.timestamp("s")),
        pa.array([day(f"2022-01-0{d}") for d in range(1, 7)], pa.timestamp("us", tz="UTC")),
        pa.array([f"2022-01-0{d}" for d in range(1, 7)], pa.string()),
    ],
    ids=["date32", "date64", "timestamp[s]", "timestamp[us, UTC]", "ISO strings"],
)
def test_other_date_types_are_accepted(tmp_path: Path, started_at: pa.Array) -> None:
    write_raw(tmp_path, **_interactions(C.Datetime, started_at))
    inter = read_raw(tmp_path, DataConfig()).interactions
    assert inter[C.Datetime].dtype == "datetime64[ns]"
    assert inter[C.Datetime].min() == pd.Timestamp("2022-01-01")


@pytest.mark.parametrize(
    "strings",
    [
        ["2022-01-01T01:00:00Z", "2022-01-02T00:00:00Z"],
        ["2022-01-01T04:00:00+03:00", "2022-01-02T03:00:00+03:00"],
        ["2022-01-01T01:00:00Z", "2022-01-02T03:00:00+03:00"],
        ["2022-01-01T01:00:00", "2022-01-02T03:00:00+03:00"],
    ],
    ids=["Z", "+03:00", "mixed zones", "naive and zoned"],
)
def test_iso_strings_with_zones_are_read_as_utc(tmp_path: Path, strings: list[str]) -> None:
    """ISO-8601 strings with a zone offset are converted to UTC (naive strings are UTC)."""
    values = pa.array(strings + [f"2022-01-0{d}" for d in range(3, 7)], pa.string())
    write_raw(tmp_path, **_interactions(C.Datetime, values))
    got = read_raw(tmp_path, DataConfig()).interactions[C.Datetime]
    assert got.dtype == "datetime64[ns]"
    assert sorted(got)[:2] == [pd.Timestamp("2022-01-01 01:00"), pd.Timestamp("2022-01-02")]


def test_safe_casts_are_accepted(tmp_path: Path) -> None:
    """int64 ids in range, whole floats and int32 track_seq all read fine."""
    inter = interactions_table()
    inter = replace_column(inter, C.User, pa.array([1, 0, 0, 0, 2, 1], pa.int64()))
    inter = replace_column(inter, C.Item, pa.array([2.0, 3, 1, 2, 4, 1], pa.float64()))
    inter = replace_column(inter, C.Seq, pa.array([2, 2, 1, 3, 1, 1], pa.int64()))
    write_raw(tmp_path, interactions=inter)
    df = read_raw(tmp_path, DataConfig()).interactions
    assert [str(t) for t in df.dtypes[:3]] == ["int32", "int32", "int16"]
    assert sorted(df[C.Item].tolist()) == [1, 1, 2, 2, 3, 4]


def test_half_precision_whole_numbers_are_accepted(tmp_path: Path) -> None:
    """float16 has no Arrow kernel of its own for the checks: read as float32."""
    write_raw(tmp_path, **_interactions(C.Seq, pa.array([2, 2, 1, 3, 1, 1], pa.float16())))
    seqs = read_raw(tmp_path, DataConfig()).interactions[C.Seq]
    assert sorted(seqs.tolist()) == [1, 1, 1, 2, 2, 3]
    write_raw(tmp_path, **_interactions(C.Seq, pa.array([2, 2.5, 1, 3, 1, 1], pa.float16())))
    with pytest.raises(DataValidationError, match="whole numbers"):
        read_raw(tmp_path, DataConfig())


def test_a_name_column_of_only_nulls_is_no_names(tmp_path: Path) -> None:
    """pandas writes a column of None only as Arrow's type null: names may be null."""
    names = pa.nulls(len(catalog_table()))
    write_raw(tmp_path, catalog=catalog_table().set_column(2, C.CatalogName, names))
    catalog = read_raw(tmp_path, DataConfig()).catalog
    assert len(catalog) == len(catalog_table()) and catalog[C.CatalogName].isna().all()


def test_long_histories_keep_int32_track_seq(tmp_path: Path) -> None:
    seq = pa.array([2, 40_000, 1, 3, 1, 1], pa.int32())
    write_raw(tmp_path, **_interactions(C.Seq, seq))
    seqs = read_raw(tmp_path, DataConfig()).interactions[C.Seq]
    assert seqs.dtype == np.int32 and 40_000 in set(seqs.tolist())  # not wrapped by int16


def test_null_list_is_read_as_empty(tmp_path: Path) -> None:
    write_raw(tmp_path, **_tracks(C.Artists, pa.array([[20], None, [20], []], IDS)))
    tracks = read_raw(tmp_path, DataConfig()).tracks
    assert [len(a) for a in tracks[C.Artists]] == [1, 0, 1, 0]


def test_a_list_column_of_only_nulls_is_all_empty(tmp_path: Path) -> None:
    """pandas writes `df["genres"] = None` as Arrow's type null (no list type at all): read
    like a null list, as empty (it was refused as "found type null")."""
    write_raw(tmp_path, **_tracks(C.Genres, pa.nulls(4)))
    tracks = read_raw(tmp_path, DataConfig()).tracks
    assert [len(g) for g in tracks[C.Genres]] == [0, 0, 0, 0]
    assert [list(a) for a in tracks[C.Artists]] == [[20], [21, 20], [20], []]


def test_dictionary_encoded_dates_are_read_by_their_values(tmp_path: Path) -> None:
    """pandas' `category` of date strings (the names in catalog_names already were)."""
    strings = pa.array([f"2022-01-0{d}" for d in range(1, 7)]).dictionary_encode()
    write_raw(tmp_path, **_interactions(C.Datetime, strings))
    got = read_raw(tmp_path, DataConfig()).interactions[C.Datetime]
    assert got.dtype == "datetime64[ns]" and got.min() == pd.Timestamp("2022-01-01")


@pytest.mark.parametrize("typo", ["0222-05-01", "3000-01-01", "0222-05-01T10:00:00+03:00"])
def test_an_iso_date_beyond_nanosecond_years_names_its_row(tmp_path: Path, typo: str) -> None:
    """A string date outside 1677-2262 used to fail the cast to nanoseconds and came out as
    "expected a readable parquet file", naming no column and no row."""
    values = pa.array(["2022-01-01T00:00:00Z", typo] + [f"2022-01-0{d}" for d in range(3, 7)])
    write_raw(tmp_path, **_interactions(C.Datetime, values))
    with pytest.raises(DataValidationError) as info:
        read_raw(tmp_path, DataConfig())
    assert info.value.column == C.Datetime
    assert "on or after" in str(info.value) or "not in the future" in str(info.value)
    assert [e["row"] for e in info.value.examples] == [1]


def test_a_column_name_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    """The footer's names are decoded as UTF-8: a damaged byte was a UnicodeDecodeError
    traceback."""
    write_raw(tmp_path)
    path = tmp_path / TRK
    data = path.read_bytes()
    assert data.count(b"albums") >= 1
    path.write_bytes(data.replace(b"albums", b"alb\xffms"))
    with pytest.raises(DataValidationError, match=TRK) as info:
        read_raw(tmp_path, DataConfig())
    assert "UnicodeDecodeError" in str(info.value)


def test_all_empty_lists_of_null_type(tmp_path: Path) -> None:
    """pandas writes a column of only empty lists as list<null>."""
    empty = pa.array([[], [], [], []], pa.list_(pa.null()))
    write_raw(tmp_path, **_tracks(C.Albums, empty))
    tracks = read_raw(tmp_path, DataConfig()).tracks
    assert all(len(a) == 0 for a in tracks[C.Albums])


def test_unknown_tracks_below_the_share_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_raw(tmp_path, **_interactions(C.Item, [2, 3, 1, 2, 4, 777]))
    with caplog.at_level(logging.WARNING, logger="musicrec.raw"):
        raw = read_raw(tmp_path, DataConfig(max_unknown_track_share=0.2))
    assert 777 not in raw.interactions[C.Item].tolist()
    assert len(raw.interactions) == 5
    assert raw.stats["dropped_unknown_tracks"] == 1
    assert "dropped 1 interactions with unknown tracks" in caplog.text


def test_repeated_pairs_keep_the_first_listen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """User 1 listens to track 2 again on 2022-01-03, before the stored listen of 01-05."""
    inter = interactions_table()
    again = inter.slice(0, 1)  # user 1, track 2
    again = replace_column(again, C.Datetime, pa.array([day("2022-01-03")], pa.timestamp("ns")))
    again = replace_column(again, C.Seq, pa.array([1], pa.int16()))
    write_raw(tmp_path, interactions=pa.concat_tables([inter, again.cast(inter.schema)]))
    with caplog.at_level(logging.WARNING, logger="musicrec.raw"):
        raw = read_raw(tmp_path, DataConfig())
    pairs = raw.interactions[[C.User, C.Item]]
    assert not pairs.duplicated().any()
    kept = raw.interactions[(pairs[C.User] == 1) & (pairs[C.Item] == 2)]
    assert kept[C.Datetime].tolist() == [pd.Timestamp("2022-01-03")]
    assert raw.stats["dropped_duplicates"] == 1
    assert "dropped 1 repeated" in caplog.text


def test_interactions_come_back_sorted(tmp_path: Path) -> None:
    inter = read_raw(write_raw(tmp_path), DataConfig()).interactions
    assert inter[C.User].tolist() == [0, 0, 0, 1, 1, 2]
    assert inter[C.Item].tolist() == [1, 3, 2, 1, 2, 4]


def _listens(user: list[int], days: list[int], seq: list[int]) -> pa.Table:
    started = np.datetime64("2022-01-01", "ns") + np.array(days).astype("timedelta64[D]")
    return pa.table(
        {
            C.User: pa.array(user, pa.int32()),
            C.Item: pa.array(range(len(user)), pa.int32()),
            C.Seq: pa.array(seq, pa.int32()),
            C.Datetime: pa.array(started),
        }
    )


@pytest.mark.parametrize("big_ids", [False, True], ids=["packed key", "lexsort fallback"])
def test_sort_listens_matches_pandas(big_ids: bool) -> None:
    rng = np.random.default_rng(0)
    n = 2_000
    user = rng.integers(0, 50, n) + (2**31 - 100 if big_ids else 0)
    seq = rng.integers(0, 5, n) + (2**31 - 10 if big_ids else 0)
    table = _listens(user.tolist(), rng.integers(0, 30, n).tolist(), seq.tolist())
    got = sort_listens(table).to_pandas()
    expected = table.to_pandas().sort_values([C.User, C.Datetime, C.Seq], ignore_index=True)
    pd.testing.assert_frame_equal(got.drop(columns=C.Item), expected.drop(columns=C.Item))


def test_sort_listens_keeps_sorted_tables() -> None:
    table = _listens([0, 0, 1], [0, 1, 0], [1, 2, 1])
    assert sort_listens(table) is table


def test_min_date_allows_movielens() -> None:
    assert MIN_DATE.year <= 1996


# ----------------------------------------------------------------- real data, read in place


def test_lastfm_reads_as_documented() -> None:
    raw = read_raw(LASTFM, DataConfig())
    assert len(raw.interactions) == 70_295
    assert len(raw.tracks) == 17_632
    assert raw.interactions[C.User].nunique() == 1_891
    assert raw.tracks[C.Albums].map(len).eq(0).all()
    assert raw.tracks[C.Genres].map(len).eq(0).sum() == 8_143
    assert raw.stats["dropped_unknown_tracks"] == 0
    assert raw.stats["dropped_duplicates"] == 0


def test_movielens_reads_as_documented() -> None:
    raw = read_raw(MOVIELENS, DataConfig())
    assert len(raw.interactions) == 100_836
    assert len(raw.tracks) == 9_742
    assert raw.tracks[C.Artists].map(len).eq(0).all()
    assert raw.tracks[C.Genres].map(len).eq(0).sum() == 34
    assert raw.interactions[C.Datetime].min() == pd.Timestamp("1996-03-29")
    assert set(raw.catalog[C.CatalogType]) == {"genre", "track"}


# --- found by a mutation review of raw.py ---


def _listens(user: list[int], started_ns: list[int], seq: list[int]) -> pa.Table:
    base = np.datetime64("2022-01-01", "ns").astype(np.int64)
    return pa.table(
        {
            C.User: pa.array(user, pa.int32()),
            C.Item: pa.array(range(len(user)), pa.int32()),
            C.Seq: pa.array(seq, pa.int32()),
            C.Datetime: pa.array(np.array(started_ns, np.int64) + base, pa.timestamp("ns")),
        }
    )


def _day(d: int) -> int:
    return d * 86_400 * 10**9


def _pandas_order(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas().sort_values([C.User, C.Datetime, C.Seq], ignore_index=True)


@pytest.mark.parametrize(
    ("user", "started", "seq"),
    [
        ([1, 0], [_day(0), _day(0)], [1, 1]),  # two rows, users out of order
        ([0, 0, 0], [_day(2), _day(1), _day(3)], [1, 1, 1]),  # one user, times out of order
        ([0, 0, 1], [_day(1), _day(1), _day(0)], [2, 1, 1]),  # same time, seq out of order
        ([0, 0, 0], [1, 0, 2], [1, 2, 3]),  # 1 ns apart: the time step is 1 ns
    ],
    ids=["two rows", "times", "seq at one time", "nanoseconds"],
)
def test_sort_listens_sorts_every_kind_of_disorder(
    user: list[int], started: list[int], seq: list[int]
) -> None:
    table = _listens(user, started, seq)
    got = sort_listens(table).to_pandas()
    pd.testing.assert_frame_equal(got, _pandas_order(table))


def test_sort_listens_keeps_sorted_tables_with_ties() -> None:
    """Equal times, equal seqs, and a seq that drops at a new user at the same time are
    still sorted: the table comes back as it is, with no sort."""
    table = _listens(
        [0, 0, 0, 1, 2], [_day(1), _day(1), _day(2), _day(0), _day(0)], [1, 1, 2, 1, 0]
    )
    assert sort_listens(table) is table


def test_sort_listens_with_ids_that_fill_64_bits() -> None:
    """user (31 bits) + time (2 bits) + seq (31 bits) = 64 bits: no packed int64 key."""
    top = 2**31 - 1
    table = _listens([top, 0, top, 0], [_day(3), _day(0), _day(1), _day(2)], [top, 5, 1, top])
    pd.testing.assert_frame_equal(sort_listens(table).to_pandas(), _pandas_order(table))


def test_sort_listens_of_one_instant_warns_nothing() -> None:
    table = _listens([1, 0, 0], [0, 0, 0], [1, 2, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sort_listens(table)
    pd.testing.assert_frame_equal(got.to_pandas(), _pandas_order(table))


def test_a_pair_repeated_in_every_row_keeps_one(tmp_path: Path) -> None:
    inter = interactions_table().slice(0, 2)
    inter = replace_column(inter, C.User, pa.array([0, 0], pa.int32()))
    inter = replace_column(inter, C.Item, pa.array([1, 1], pa.int32()))
    raw = read_raw(write_raw(tmp_path, interactions=inter), DataConfig())
    assert len(raw.interactions) == 1 and raw.stats["dropped_duplicates"] == 1


def test_dates_from_1990_01_01_on_are_accepted(tmp_path: Path) -> None:
    inter = interactions_table()
    values = [datetime(1990, 1, 1)] + [datetime(2022, 1, d) for d in range(1, 6)]
    write_raw(tmp_path, interactions=replace_column(inter, C.Datetime, pa.array(values)))
    assert read_raw(tmp_path, DataConfig()).interactions[C.Datetime].min() == pd.Timestamp(
        "1990-01-01"
    )
    values[0] = datetime(1989, 12, 31, 23, 59)
    write_raw(tmp_path, interactions=replace_column(inter, C.Datetime, pa.array(values)))
    with pytest.raises(DataValidationError, match="on or after 1990-01-01"):
        read_raw(tmp_path, DataConfig())


def test_ids_at_the_type_limits_are_accepted(tmp_path: Path) -> None:
    """The largest int32 track id is an id; a track_seq of 32767 is still int16."""
    tracks = replace_column(tracks_table(), C.Item, pa.array([1, 2, 3, 2**31 - 1], pa.int64()))
    inter = replace_column(interactions_table(), C.Seq, pa.array([2, 2, 1, 32767, 1, 1]))
    data = write_raw(tmp_path, tracks=tracks, interactions=inter)
    raw = read_raw(data, DataConfig(max_unknown_track_share=0.5))  # track 4 is gone
    assert raw.tracks[C.Item].max() == 2**31 - 1
    assert raw.interactions[C.Seq].dtype == np.int16


@pytest.mark.parametrize("column", [C.Item, C.User])
def test_an_id_column_of_only_nulls_is_refused(tmp_path: Path, column: str) -> None:
    """pandas writes a column of None only as Arrow's type null: not ids."""
    if column == C.Item:
        tables = {"tracks": replace_column(tracks_table(), C.Item, pa.nulls(4))}
    else:
        tables = {"interactions": replace_column(interactions_table(), C.User, pa.nulls(6))}
    with pytest.raises(DataValidationError) as info:
        read_raw(write_raw(tmp_path, **tables), DataConfig())
    assert info.value.column == column and "integers" in info.value.expected


def test_error_counts_and_shows_the_first_offenders_across_row_groups(tmp_path: Path) -> None:
    """A file of several row groups is read as several chunks: the examples are the first
    five offending rows (numbered in the file), and `found` counts them all."""
    user = [-1, -1, 5, -1, 5, -1, 5, -1, 5, -1, -1, -1]
    n = len(user)
    inter = pa.table(
        {
            C.User: pa.array(user, pa.int32()),
            C.Item: pa.array([1] * n, pa.int32()),
            C.Seq: pa.array(range(1, n + 1), pa.int16()),
            C.Datetime: pa.array([datetime(2022, 1, 1)] * n, pa.timestamp("ns")),
        }
    )
    write_raw(tmp_path)
    pq.write_table(inter, tmp_path / RawFiles.Interactions, row_group_size=2)
    with pytest.raises(DataValidationError) as info:
        read_raw(tmp_path, DataConfig())
    assert [e["row"] for e in info.value.examples] == [0, 1, 3, 5, 7]
    assert info.value.found == "8 of 12 rows"


def test_list_element_errors_count_elements_and_show_only_the_offenders(tmp_path: Path) -> None:
    genres = pa.array([[30, 0], [-5], [0, -6], []], IDS)
    write_raw(tmp_path, tracks=replace_column(tracks_table(), C.Genres, genres))
    with pytest.raises(DataValidationError) as info:
        read_raw(tmp_path, DataConfig())
    assert info.value.examples == [{"row": 1, C.Genres: -5}, {"row": 2, C.Genres: -6}]
    assert info.value.found == "2 of 5 list elements"


def test_float_ids_beyond_int32_show_only_those_rows(tmp_path: Path) -> None:
    ids = pa.array([2147483646.0, 2147483647.0, 2147483648.0, 4.0])
    write_raw(tmp_path, tracks=replace_column(tracks_table(), C.Item, ids))
    with pytest.raises(DataValidationError) as info:
        read_raw(tmp_path, DataConfig())
    assert [e["row"] for e in info.value.examples] == [2]


def test_a_one_byte_file_is_not_called_empty(tmp_path: Path) -> None:
    write_raw(tmp_path)
    (tmp_path / RawFiles.Catalog).write_bytes(b"P")
    with pytest.raises(DataValidationError) as info:
        read_raw(tmp_path, DataConfig())
    assert "empty file" not in str(info.value)


def test_first_true_stops_at_k_across_chunks() -> None:
    mask = pa.chunked_array(
        [[True, True], [False, True], [False, True], [True, True], [True, False]]
    )
    assert _first_true(mask, 5).tolist() == [0, 1, 3, 5, 6]
    assert _first_true(mask, 2).tolist() == [0, 1]

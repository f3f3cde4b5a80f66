"""Building items.parquet and events.parquet from the raw files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers_raw import (
    LASTFM,
    MOVIELENS,
    catalog_table,
    interactions_table,
    replace_column,
    tracks_table,
    write_raw,
)

from musicrec.artifacts import ArtifactPaths
from musicrec.columns import Columns as C
from musicrec.config import DataConfig
from musicrec.errors import ArtifactError, DataValidationError
from musicrec.prepare import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    PreparedData,
    load_prepared,
    prepare_data,
    sample_users,
)


@pytest.fixture
def paths(tmp_path: Path) -> ArtifactPaths:
    return ArtifactPaths(tmp_path / "recsys")


@pytest.fixture
def prepared(tmp_path: Path, paths: ArtifactPaths) -> PreparedData:
    return prepare_data(write_raw(tmp_path / "data"), paths, DataConfig())


def _lists(series: pd.Series) -> list[list[Any]]:
    return [list(v) for v in series]


# ------------------------------------------------------------------------------ items


def test_items_one_row_per_track_with_names(prepared: PreparedData) -> None:
    items = prepared.items
    assert list(items.columns) == ITEM_COLUMNS
    assert items[C.Item].tolist() == [1, 2, 3, 4]
    assert items[C.TrackName].tolist() == ["Song One", "Song Two", "Song Three", "track 4"]
    assert _lists(items[C.ArtistNames]) == [
        ["Artist Twenty"],
        ["Artist Twenty-One", "Artist Twenty"],
        ["Artist Twenty"],
        [],
    ]
    # album 12 has no name: left out of the names
    assert _lists(items[C.AlbumNames]) == [["Album Ten"], ["Album Ten", "Album Eleven"], [], []]


def test_items_genres_without_name_keep_their_id(prepared: PreparedData) -> None:
    items = prepared.items
    assert _lists(items[C.GenreIds]) == [[30, 31], [], [99, 31], [31]]
    assert _lists(items[C.GenreNames]) == [["rock", "pop"], [], ["pop"], ["pop"]]
    assert items[C.MainGenre].tolist() == [30, -1, 99, 31]
    assert items[C.MainGenreName].tolist() == ["rock", "unknown", "unknown", "pop"]
    assert items[C.MainArtist].tolist() == [20, 21, 20, -1]


def test_items_dtypes(prepared: PreparedData, paths: ArtifactPaths) -> None:
    schema = pq.read_schema(paths.items)
    assert schema.field(C.Item).type == pa.int32()
    assert schema.field(C.TrackName).type == pa.string()
    for column in (C.ArtistNames, C.AlbumNames, C.GenreNames):
        assert schema.field(column).type == pa.list_(pa.string())
    for column in (C.ArtistIds, C.GenreIds):
        assert schema.field(column).type == pa.list_(pa.int32())
    for column in (C.MainGenre, C.MainArtist):
        assert schema.field(column).type == pa.int32()
    assert prepared.items[C.ArtistIds].iloc[0].dtype == np.int32


# ------------------------------------------------------------------------------ events


def test_events_sorted_and_typed(prepared: PreparedData, paths: ArtifactPaths) -> None:
    events = prepared.events
    assert list(events.columns) == EVENT_COLUMNS
    assert [str(t) for t in events.dtypes] == ["int32", "int32", "datetime64[ns]", "int16"]
    expected = events.sort_values(EVENT_COLUMNS[:1] + [C.Datetime, C.Seq], ignore_index=True)
    pd.testing.assert_frame_equal(events, expected)
    assert events[C.User].tolist() == [0, 0, 0, 1, 1, 2]
    assert events[C.Item].tolist() == [1, 3, 2, 1, 2, 4]
    on_disk = pd.read_parquet(paths.events)
    pd.testing.assert_frame_equal(on_disk, events)


def test_events_only_known_tracks(tmp_path: Path, paths: ArtifactPaths) -> None:
    inter = replace_column(interactions_table(), C.Item, [2, 3, 1, 2, 4, 777])
    data = write_raw(tmp_path / "data", interactions=inter)
    result = prepare_data(data, paths, DataConfig(max_unknown_track_share=0.5))
    assert 777 not in result.events[C.Item].tolist()
    assert result.stats["dropped_unknown_tracks"] == 1
    assert result.stats["events"] == 5
    assert "1 unknown tracks" in result.summary()


def test_stats_and_summary(prepared: PreparedData) -> None:
    stats = prepared.stats
    assert stats["interactions_read"] == 6
    assert stats["events"] == 6
    assert stats["users"] == 3
    assert stats["tracks"] == 4
    assert (stats["date_min"], stats["date_max"]) == ("2022-01-01", "2022-03-01")
    summary = prepared.summary()
    assert "4 tracks" in summary and "6 from 3 users" in summary


def test_sample_users_is_deterministic(tmp_path: Path, paths: ArtifactPaths) -> None:
    users = pa.array(np.arange(10_000, dtype=np.int32))
    half = sample_users(users, 0.5, seed=1)
    assert 4_700 < len(half) < 5_300
    assert half.equals(sample_users(users, 0.5, seed=1))
    assert not half.equals(sample_users(users, 0.5, seed=2))
    # the same user is kept whatever other users are present
    subset = pa.array(np.arange(0, 10_000, 7, dtype=np.int32))
    assert set(sample_users(subset, 0.5, seed=1).to_pylist()) <= set(half.to_pylist())


def test_prepare_with_user_sampling(paths: ArtifactPaths) -> None:
    full = prepare_data(LASTFM, paths, DataConfig())
    sampled = prepare_data(LASTFM, paths, DataConfig(sample_users_share=0.3, seed=7))
    again = prepare_data(LASTFM, paths, DataConfig(sample_users_share=0.3, seed=7))
    assert 0.2 < sampled.stats["users"] / full.stats["users"] < 0.4
    pd.testing.assert_frame_equal(sampled.events, again.events)
    assert sampled.stats["dropped_by_sampling"] == len(full.events) - len(sampled.events)
    assert len(sampled.items) == len(full.items)  # the catalogue is not sampled


# ------------------------------------------------------------------------------ writing


def test_failed_write_leaves_no_half_written_artifact(
    tmp_path: Path, paths: ArtifactPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_raw(tmp_path / "data")
    prepare_data(data, paths, DataConfig())
    before = {p: p.read_bytes() for p in (paths.items, paths.events)}

    def broken_write(table: pa.Table, where: Any, **kwargs: Any) -> None:
        Path(where).write_bytes(b"PAR1 half a file")  # some bytes, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        prepare_data(data, paths, DataConfig())
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in paths.data_dir.iterdir()) == ["events.parquet", "items.parquet"]


def test_failed_first_write_creates_nothing(
    tmp_path: Path, paths: ArtifactPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_write(table: pa.Table, where: Any, **kwargs: Any) -> None:
        Path(where).write_bytes(b"PAR1")
        raise OSError("disk full")

    data = write_raw(tmp_path / "data")
    monkeypatch.setattr(pq, "write_table", broken_write)
    with pytest.raises(OSError):
        prepare_data(data, paths, DataConfig())
    assert list(paths.data_dir.iterdir()) == []


def test_invalid_raw_data_writes_nothing(tmp_path: Path, paths: ArtifactPaths) -> None:
    inter = replace_column(interactions_table(), C.User, pa.array([1, -1], pa.int32()))
    with pytest.raises(DataValidationError, match="interactions.parquet"):
        prepare_data(write_raw(tmp_path / "data", interactions=inter), paths, DataConfig())
    assert not paths.items.exists() and not paths.events.exists()


def test_nothing_left_to_prepare_is_an_error_saying_why(
    tmp_path: Path, paths: ArtifactPaths
) -> None:
    """A sample share that keeps no user, or a tolerance that lets every track be unknown,
    left 0 events: prepare wrote them and the split then failed with a misleading cause
    ("need events on at least two distinct days")."""
    data = write_raw(tmp_path / "data")
    with pytest.raises(DataValidationError, match=r"no.*left.*sample_users_share") as err:
        prepare_data(data, paths, DataConfig(sample_users_share=1e-9))
    assert "interactions.parquet: expected at least one event left" in str(err.value)
    assert "6 interactions read" in str(err.value)
    unknown = replace_column(interactions_table(), C.Item, [701, 702, 703, 704, 705, 706])
    data = write_raw(tmp_path / "unknown", interactions=unknown)
    with pytest.raises(DataValidationError, match="every one of a track not in tracks.parquet"):
        prepare_data(data, paths, DataConfig(max_unknown_track_share=1.0))
    assert not paths.items.exists() and not paths.events.exists()


# ------------------------------------------------------------------------------ loading


def test_load_prepared_round_trip(prepared: PreparedData, paths: ArtifactPaths) -> None:
    loaded = load_prepared(paths)
    pd.testing.assert_frame_equal(loaded.events, prepared.events)
    assert loaded.items[C.TrackName].tolist() == prepared.items[C.TrackName].tolist()
    # every column comes back, not only the ones a load requires (the stages use them all)
    assert list(loaded.items.columns) == ITEM_COLUMNS
    assert loaded.stats["users"] == prepared.stats["users"]
    assert "6 from 3 users" in loaded.summary()


def test_load_prepared_missing_file(prepared: PreparedData, paths: ArtifactPaths) -> None:
    paths.events.unlink()
    with pytest.raises(ArtifactError, match="events.parquet"):
        load_prepared(paths)


def test_load_prepared_corrupt_file(prepared: PreparedData, paths: ArtifactPaths) -> None:
    paths.items.write_bytes(paths.items.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="items.parquet"):
        load_prepared(paths)


def test_load_prepared_missing_column(prepared: PreparedData, paths: ArtifactPaths) -> None:
    pq.write_table(pq.read_table(paths.items).drop_columns([C.TrackName]), paths.items)
    with pytest.raises(ArtifactError, match=f"items.parquet.*{C.TrackName}"):
        load_prepared(paths)


def test_load_prepared_missing_column_lists_the_columns_found(
    prepared: PreparedData, paths: ArtifactPaths
) -> None:
    """The error names the missing column and what the file holds instead (the services'
    message, which `load_prepared` shares since it reads through `musicrec.io.read_artifact`)."""
    pq.write_table(
        pq.read_table(paths.events).rename_columns([C.User, "item", *EVENT_COLUMNS[2:]]),
        paths.events,
    )
    with pytest.raises(ArtifactError) as err:
        load_prepared(paths)
    assert str(err.value) == (
        f"{paths.events}: missing column(s) ['{C.Item}']; expected {EVENT_COLUMNS}, "
        f"found {[C.User, 'item', *EVENT_COLUMNS[2:]]}"
    )


@pytest.mark.parametrize(
    ("file", "column", "bad", "kind"),
    [
        ("events", C.User, pa.array(["u1"], pa.string()), "integer"),
        ("events", C.Datetime, pa.array(["2022-01-01"]), "timestamp"),
        ("events", C.Seq, pa.array([1.5], pa.float64()), "integer"),
        # a zoned time: the stages compare it with naive days (a TypeError in the split)
        ("events", C.Datetime, pa.array([0], pa.timestamp("ns", tz="UTC")), "timestamp"),
        ("items", C.TrackName, pa.array([7], pa.int64()), "string"),
        ("items", C.GenreIds, pa.array([["pop"]]), "list of integers"),
        ("items", C.ArtistNames, pa.array([[1]], pa.list_(pa.int32())), "list of strings"),
        ("items", C.MainGenre, pa.array(["rock"]), "integer"),
    ],
)
def test_load_prepared_wrong_column_type_names_the_column(
    prepared: PreparedData,
    paths: ArtifactPaths,
    file: str,
    column: str,
    bad: pa.Array,
    kind: str,
) -> None:
    """A prepared file with a column of the wrong type (hand-made, or written by another
    tool) loaded and failed later, inside a stage, with no word of the file. Now it is an
    `ArtifactError` naming the file, the column, the kind expected and the type found."""
    path = paths.events if file == "events" else paths.items
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    n = table.num_rows
    bad_column = pa.concat_arrays([bad] * n) if n > 1 else bad
    pq.write_table(table.set_column(i, column, bad_column), path)
    found = pq.read_schema(path).field(column).type  # as stored (lists' items are renamed)
    assert found.equals(bad.type, check_metadata=False) or str(found).startswith("list<")
    with pytest.raises(ArtifactError) as err:
        load_prepared(paths)
    assert str(err.value) == f"{path}, column '{column}': expected {kind}, found {found}"


def test_load_prepared_accepts_other_widths_and_empty_lists(
    prepared: PreparedData, paths: ArtifactPaths
) -> None:
    """The kinds, not the exact types, are checked: int64 ids, a large_string name and
    lists that are all empty (`list<null>`, as pandas writes them) load."""
    table = pq.read_table(paths.items)
    n = table.num_rows
    for name, arr in [
        (C.Item, table[C.Item].cast(pa.int64())),
        (C.TrackName, table[C.TrackName].cast(pa.large_string())),
        (C.AlbumNames, pa.array([[]] * n, pa.list_(pa.null()))),
    ]:
        table = table.set_column(table.schema.get_field_index(name), name, arr)
    pq.write_table(table, paths.items)
    loaded = load_prepared(paths)
    assert len(loaded.items) == n and loaded.items[C.AlbumNames].map(len).eq(0).all()


@pytest.mark.parametrize("name", [C.User, "extra"])
def test_load_prepared_refuses_a_repeated_column(
    prepared: PreparedData, paths: ArtifactPaths, name: str
) -> None:
    """A required column twice, or any column twice in a file read whole (an extra one
    was reported as corrupt data, with the whole schema dumped)."""
    table = pq.read_table(paths.events)
    twice = table.append_column(name, table[C.User]).append_column(name, table[C.User])
    pq.write_table(twice, paths.events)
    with pytest.raises(ArtifactError) as err:
        load_prepared(paths)
    assert str(err.value) == f"{paths.events}: column(s) ['{name}'] appear more than once"


@pytest.mark.parametrize("column", [C.User, C.Datetime, C.Seq])
def test_load_prepared_refuses_nulls_in_ids_and_times(
    prepared: PreparedData, paths: ArtifactPaths, column: str
) -> None:
    """A null user id failed in the ALS stage with "Invalid integer data type 'f'", a null
    time passed silently; now an `ArtifactError` naming the column and the count."""
    table = pq.read_table(paths.events)
    i = table.schema.get_field_index(column)
    values = table[column].to_pylist()
    values[0] = values[2] = None
    pq.write_table(table.set_column(i, column, pa.array(values, table[column].type)), paths.events)
    with pytest.raises(ArtifactError) as err:
        load_prepared(paths)
    assert str(err.value) == f"{paths.events}, column '{column}': 2 null value(s)"


def test_load_prepared_accepts_dictionary_encoded_columns(
    prepared: PreparedData, paths: ArtifactPaths
) -> None:
    """pandas writes a `category` column dictionary-encoded: judged by its values."""
    table = pq.read_table(paths.items)
    i = table.schema.get_field_index(C.MainGenreName)
    encoded = table[C.MainGenreName].dictionary_encode()
    pq.write_table(table.set_column(i, C.MainGenreName, encoded), paths.items)
    assert pa.types.is_dictionary(pq.read_schema(paths.items).field(C.MainGenreName).type)
    loaded = load_prepared(paths)
    assert list(loaded.items[C.MainGenreName]) == table[C.MainGenreName].to_pylist()


# ------------------------------------------------------------------------------ real data


def test_prepare_lastfm(paths: ArtifactPaths) -> None:
    result = prepare_data(LASTFM, paths, DataConfig())
    items, events = result.items, result.events
    assert len(items) == 17_632 and items[C.Item].is_unique
    assert len(events) == 70_295
    assert result.stats["users"] == 1_891
    assert result.stats["tracks_with_events"] == 12_133
    assert items[C.AlbumNames].map(len).eq(0).all()  # albums are empty lists
    no_genre = items[C.GenreIds].map(len).eq(0)
    assert no_genre.sum() == 8_143
    assert (items.loc[no_genre, C.MainGenre] == -1).all()
    assert (items.loc[no_genre, C.MainGenreName] == "unknown").all()
    assert (items[C.TrackName] != "").all()
    assert events[C.Datetime].min() == pd.Timestamp("2005-08-01")


def test_prepare_movielens(paths: ArtifactPaths) -> None:
    result = prepare_data(MOVIELENS, paths, DataConfig())
    items, events = result.items, result.events
    assert len(items) == 9_742
    assert len(events) == 100_836
    assert items[C.ArtistNames].map(len).eq(0).all()
    assert (items[C.MainArtist] == -1).all()
    assert items[C.GenreIds].map(len).eq(0).sum() == 34
    named = items[C.GenreIds].map(len) == items[C.GenreNames].map(len)
    assert named.all()  # every MovieLens genre has a name
    assert not events.duplicated([C.User, C.Item]).any()
    assert (result.stats["date_min"], result.stats["date_max"]) == ("1996-03-29", "2018-09-24")


# --- found by a mutation review of prepare.py ---


def test_tracks_without_a_genre_name_are_counted_and_logged(
    tmp_path: Path, paths: ArtifactPaths, caplog: pytest.LogCaptureFixture
) -> None:
    """Tracks 2 (no genre) and 3 (genre 99, unnamed) get 'unknown': counted, logged at
    INFO; a catalogue without genre names makes it every track, a WARNING; with a named
    genre for every track the count is 0 and nothing is logged."""
    with caplog.at_level(logging.INFO, logger="musicrec.prepare"):
        result = prepare_data(write_raw(tmp_path / "a"), paths, DataConfig())
    assert result.stats["tracks_without_genre_name"] == 2
    [record] = [r for r in caplog.records if "no named genre" in r.getMessage()]
    assert record.levelno == logging.INFO

    caplog.clear()
    no_genres = catalog_table().filter(pc.not_equal(catalog_table()[C.CatalogType], "genre"))
    with caplog.at_level(logging.INFO, logger="musicrec.prepare"):
        result = prepare_data(write_raw(tmp_path / "b", catalog=no_genres), paths, DataConfig())
    assert result.stats["tracks_without_genre_name"] == 4
    [record] = [r for r in caplog.records if "no named genre" in r.getMessage()]
    assert record.levelno == logging.WARNING

    caplog.clear()
    named = replace_column(tracks_table(), C.Genres, pa.array([[30], [31], [30], [31]]))
    with caplog.at_level(logging.INFO, logger="musicrec.prepare"):
        result = prepare_data(write_raw(tmp_path / "c", tracks=named), paths, DataConfig())
    assert result.stats["tracks_without_genre_name"] == 0
    assert "no named genre" not in caplog.text


def test_dropped_by_sampling_leaves_out_unknown_and_repeated_listens(
    tmp_path: Path, paths: ArtifactPaths
) -> None:
    """7 read: one unknown track, one repeated (user, track), no sampling: 0 by sampling."""
    inter = interactions_table()
    again = inter.slice(0, 1)  # user 1, track 2 again
    inter = replace_column(inter, C.Item, [2, 3, 1, 2, 777, 1])
    inter = pa.concat_tables([inter, again.cast(inter.schema)])
    data = write_raw(tmp_path / "data", interactions=inter)
    result = prepare_data(data, paths, DataConfig(max_unknown_track_share=0.2))
    s = result.stats
    assert (s["interactions_read"], s["dropped_unknown_tracks"], s["dropped_duplicates"]) == (
        7,
        1,
        1,
    )
    assert s["events"] == 5 and s["dropped_by_sampling"] == 0


def test_sample_users_draws_the_same_users_as_ever() -> None:
    """The hash is part of the data: a config's seed must keep selecting the same users
    from one version to the next (the values below are splitmix64 as written today)."""
    users = pa.array(np.arange(10_000, dtype=np.int32))
    golden = {1: (2_958, 14_570_208), 2: (2_967, 14_876_684), 7: (2_924, 14_663_045)}
    for seed, (n, total) in golden.items():
        kept = sample_users(users, 0.3, seed=seed).to_numpy()
        assert (len(kept), int(kept.sum())) == (n, total), seed


def test_load_prepared_refuses_a_repeated_column_in_items(
    tmp_path: Path, paths: ArtifactPaths
) -> None:
    prepare_data(write_raw(tmp_path / "data"), paths, DataConfig())
    table = pq.read_table(paths.items)
    extra = table[C.MainGenre]
    pq.write_table(table.append_column("extra", extra).append_column("extra", extra), paths.items)
    with pytest.raises(ArtifactError, match=r"\['extra'\] appear more than once"):
        load_prepared(paths)

"""Build the prepared artifacts from the raw files: `items.parquet` and `events.parquet`.

items.parquet has one row per track of tracks.parquet, in its order, with the names looked
up in catalog_names.parquet:

- `track_name` (fallback "track <id>"), `artist_names`, `album_names`, `genre_names`
  (ids without a name are left out of the name lists but kept in the id lists);
- `artist_ids`, `genre_ids` (list<int32>); `main_genre` and `main_artist` (the first id,
  -1 if none); `main_genre_name` ("unknown" if no genre or no name; how many tracks got it
  is logged and kept in the stats as `tracks_without_genre_name`, e.g. 100% for a
  catalogue without genre names).

events.parquet holds the interactions with known tracks, one per (user, track), sorted by
(user_id, started_at, track_seq). Everything is built with vectorised pyarrow / numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from musicrec.artifacts import ARTIFACT_COLUMNS, ArtifactPaths
from musicrec.columns import Columns as C
from musicrec.columns import RawFiles
from musicrec.config import DataConfig
from musicrec.errors import DataValidationError
from musicrec.io import read_artifact, write_parquet
from musicrec.raw import list_array_from_parents, read_raw_tables

log = logging.getLogger("musicrec.prepare")

#: the columns of items.parquet and events.parquet, in order (their kinds: ARTIFACT_COLUMNS)
ITEM_COLUMNS = list(ARTIFACT_COLUMNS["items.parquet"])
EVENT_COLUMNS = list(ARTIFACT_COLUMNS["events.parquet"])
UNKNOWN_GENRE = "unknown"
#: what to do when a prepared file is missing (the end of `load_prepared`'s error)
MISSING_HINT = "run `python -m musicrec prepare` first"


@dataclass
class PreparedData:
    """The prepared catalogue and events, with the counts of how they were built."""

    items: pd.DataFrame
    events: pd.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for the CLI and the log."""
        s = self.stats
        lines = [
            f"items: {len(self.items):,} tracks",
            f"events: {len(self.events):,} from {s.get('users', 0):,} users on "
            f"{s.get('tracks_with_events', 0):,} tracks, "
            f"{s.get('date_min')} .. {s.get('date_max')}",
        ]
        if "interactions_read" in s:
            lines.append(
                f"interactions read: {s['interactions_read']:,}; dropped: "
                f"{s['dropped_unknown_tracks']:,} unknown tracks, "
                f"{s['dropped_duplicates']:,} repeated (user, track), "
                f"{s['dropped_by_sampling']:,} by user sampling"
            )
        return "\n".join(lines)


def prepare_data(
    data_dir: str | Path,
    paths: ArtifactPaths,
    cfg: DataConfig,
    before_write: Callable[[], None] | None = None,
) -> PreparedData:
    """Read and validate the raw files, build items and events, write them atomically
    (`before_write()` first, once everything is checked: `prepare` alone marks the
    artifacts folder unfinished then, not for data it refuses)."""
    raw = read_raw_tables(Path(data_dir), cfg)
    items = build_items(raw.tracks, raw.catalog)
    events = build_events(raw.interactions, cfg)
    if events.num_rows == 0:  # the raw reader refuses an empty file; this is what is left
        raise DataValidationError(
            str(Path(data_dir) / RawFiles.Interactions),
            None,
            "at least one event left to prepare",
            found=(
                f"{raw.stats['interactions_read']:,} interactions read, "
                f"{raw.stats['dropped_unknown_tracks']:,} dropped as unknown tracks, "
                f"none left after keeping a share of {cfg.sample_users_share:g} of the users "
                "(data.sample_users_share)"
                if raw.stats["interactions_read"] > raw.stats["dropped_unknown_tracks"]
                else f"{raw.stats['interactions_read']:,} interactions read, every one "
                "of a track not in tracks.parquet (data.max_unknown_track_share)"
            ),
        )

    stats = dict(raw.stats)
    stats["dropped_by_sampling"] = raw.stats["interactions_read"] - (
        raw.stats["dropped_unknown_tracks"] + raw.stats["dropped_duplicates"] + events.num_rows
    )
    stats.update(_event_stats(events, items.num_rows))
    stats["tracks_without_genre_name"] = _count_without_genre_name(items)

    if before_write is not None:
        before_write()
    write_parquet(items, paths.items)
    write_parquet(events, paths.events)
    log.info(
        "wrote %s (%s tracks) and %s (%s events, %s users, %s .. %s)",
        paths.items,
        f"{items.num_rows:,}",
        paths.events,
        f"{events.num_rows:,}",
        f"{stats['users']:,}",
        stats["date_min"],
        stats["date_max"],
    )
    log.info(
        "dropped %s interactions with unknown tracks, %s repeated, %s by user sampling",
        f"{stats['dropped_unknown_tracks']:,}",
        f"{stats['dropped_duplicates']:,}",
        f"{stats['dropped_by_sampling']:,}",
    )
    if stats["tracks_without_genre_name"]:
        # a warning when no track has one (a catalogue without genres), else informative
        level = (
            logging.WARNING
            if stats["tracks_without_genre_name"] == items.num_rows
            else logging.INFO
        )
        log.log(
            level,
            "%s of %s tracks have no named genre (no genre id, or no catalogue name for it): "
            "main_genre_name '%s'",
            f"{stats['tracks_without_genre_name']:,}",
            f"{items.num_rows:,}",
            UNKNOWN_GENRE,
        )
    return PreparedData(items=items.to_pandas(), events=events.to_pandas(), stats=stats)


def _count_without_genre_name(items: pa.Table) -> int:
    """Tracks whose main genre has no name (or that have no genre at all)."""
    return int(pc.sum(pc.equal(items[C.MainGenreName], UNKNOWN_GENRE)).as_py() or 0)


def load_prepared(paths: ArtifactPaths) -> PreparedData:
    """Read items.parquet and events.parquet back; ArtifactError if missing or corrupt."""
    items = read_artifact(paths.items, missing_hint=MISSING_HINT, all_columns=True)
    events = read_artifact(paths.events, missing_hint=MISSING_HINT, all_columns=True)
    stats = _event_stats(events, items.num_rows)
    return PreparedData(items=items.to_pandas(), events=events.to_pandas(), stats=stats)


# --------------------------------------------------------------------------- items


def build_items(tracks: pa.Table, catalog: pa.Table) -> pa.Table:
    """One row per track: names from the catalogue, id lists, main genre and artist."""
    track_ids = tracks[C.Item].combine_chunks()
    artists = tracks[C.Artists].combine_chunks()
    genres = tracks[C.Genres].combine_chunks()

    track_names = _lookup(track_ids, catalog, "track")
    fallback = pc.binary_join_element_wise("track ", track_ids.cast(pa.string()), "")
    main_genre = _first_or(genres, -1)
    main_genre_name = pc.fill_null(_lookup(main_genre, catalog, "genre"), UNKNOWN_GENRE)

    columns = {
        C.Item: track_ids,
        C.TrackName: pc.coalesce(track_names, fallback),
        C.ArtistNames: _name_lists(artists, catalog, "artist"),
        C.AlbumNames: _name_lists(tracks[C.Albums].combine_chunks(), catalog, "album"),
        C.GenreNames: _name_lists(genres, catalog, "genre"),
        C.ArtistIds: artists,
        C.GenreIds: genres,
        C.MainGenre: main_genre,
        C.MainGenreName: main_genre_name,
        C.MainArtist: _first_or(artists, -1),
    }
    return pa.table(columns)


def _lookup(ids: pa.Array, catalog: pa.Table, type_: str) -> pa.Array:
    """The catalogue name of each id of the given type (null where there is none)."""
    of_type = catalog.filter(pc.equal(catalog[C.CatalogType], type_))
    position = pc.index_in(ids.cast(pa.int64()), value_set=of_type[C.CatalogId])
    return of_type[C.CatalogName].combine_chunks().take(position)


def _name_lists(id_lists: pa.ListArray, catalog: pa.Table, type_: str) -> pa.ListArray:
    """The names of each row's ids, in list order; ids without a name are left out."""
    names = _lookup(pc.list_flatten(id_lists), catalog, type_)
    parents = pc.list_parent_indices(id_lists)
    named = pc.is_valid(names)
    return list_array_from_parents(
        names.filter(named), parents.filter(named).to_numpy(), len(id_lists)
    )


def _first_or(id_lists: pa.ListArray, default: int) -> pa.Array:
    """The first id of each list as int32, `default` for an empty list."""
    lengths = pc.list_value_length(id_lists).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(id_lists).to_numpy()
    first = np.full(len(lengths), default, dtype=np.int32)
    non_empty = lengths > 0
    starts = np.cumsum(lengths) - lengths
    first[non_empty] = values[starts[non_empty]]
    return pa.array(first)


# --------------------------------------------------------------------------- events


def build_events(interactions: pa.Table, cfg: DataConfig) -> pa.Table:
    """The events: `interactions` as `read_raw_tables` returns them (known tracks, one per
    (user, track), sorted by (user_id, started_at, track_seq)), keeping only a share of the
    users if `cfg.sample_users_share` < 1."""
    events = interactions.select(EVENT_COLUMNS)
    if cfg.sample_users_share < 1:
        users = events[C.User]
        kept = sample_users(pc.unique(users), cfg.sample_users_share, cfg.seed)
        events = events.filter(pc.is_in(users, value_set=kept))
    return events


def sample_users(users: pa.Array, share: float, seed: int) -> pa.Array:
    """The users whose hash (splitmix64 of id and seed) falls below `share`: the same users
    for the same seed, whatever else is in the data."""
    mask64 = (1 << 64) - 1
    x = np.asarray(users, dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) & mask64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    uniform = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return users.filter(pa.array(uniform < share))


def _event_stats(events: pa.Table, n_items: int) -> dict[str, Any]:
    """Counts and date range of the events."""
    days = pc.min_max(events[C.Datetime].cast(pa.date32(), safe=False)).values()
    lowest, highest = (day.as_py() for day in days)
    return {
        "tracks": n_items,
        "events": events.num_rows,
        "users": pc.count_distinct(events[C.User]).as_py(),
        "tracks_with_events": pc.count_distinct(events[C.Item]).as_py(),
        "date_min": None if lowest is None else str(lowest),
        "date_max": None if highest is None else str(highest),
    }


__all__ = [
    "EVENT_COLUMNS",
    "ITEM_COLUMNS",
    "PreparedData",
    "build_events",
    "build_items",
    "load_prepared",
    "prepare_data",
    "sample_users",
]

"""Synthetic raw data in exactly the Yandex Music schema.

Writes `tracks.parquet`, `catalog_names.parquet` and `interactions.parquet` with the real
files' Arrow schemas (see `/work/shared/datasets/README.md`), at any scale from a unit-test
`tiny` preset to the `full` size of the real data (222.6M events), in bounded memory.

The model of the data
---------------------
Catalogue
    * ~170 genres with a Zipf-like share (genre 0, "pop", is the biggest); about 30 genre ids
      used by tracks have no name, and a few named genres are used by no track.
    * Artists have a main genre (drawn by genre share), sometimes a related secondary genre,
      a log-normal popularity and a heavy-tailed number of tracks (bigger artists are more
      popular). Each artist has albums (many singles); every track belongs to one album of
      its artist, some also to a compilation album, some have a featured second artist.
    * A track's base weight is its artist's popularity times a log-normal factor, so track
      popularity is power-law-like. About 15% of albums are released during 2022 (on
      Fridays); their tracks cannot be listened to before the release day.
    * Blemishes of the real data: ~1.5% of tracks without artist, a handful without album,
      ~0.4% without genre; ids are sparse and unique only within a catalogue type.
Users
    * Join day (8% present from 1 January, the rest uniformly over the year) and, for a
      quarter of them, an earlier last day (churn). Activity (number of distinct tracks) is
      log-normal, scaled by the length of the active window and capped (16,637 as in the real
      data), then rescaled so the total hits the preset's target.
    * Taste: 1-3 favourite genres (the first dominant), a number of favourite artists
      growing with activity (mostly from the favourite genres, by artist popularity), each
      discovered on some day of the user's window, and a per-user Dirichlet mixture over
      five sources of listens (SOURCES).
Listens
    * Each user's listening days are drawn from a day curve restricted to the user's active
      window. The curve is fitted (iterative proportional fitting over all users' windows)
      so that the monthly totals follow the real growth: 2.3M events in January to 32.9M in
      November (scaled to the preset), with a mild weekly pattern.
    * For a (user, day) slot a source is drawn from the user's mixture:
      artist -> one of the favourite artists discovered by that day (recent discoveries
      preferred), then a track of that artist by weight; genre -> a track of a favourite
      genre by weight; popular -> any track by weight; trending -> a track released within
      an exponentially distributed window (mean 21 days) before the day, by weight (so
      recent popularity differs from all-time popularity); explore -> any track by the
      square root of its weight (the long tail).
    * A drawn track is rejected if it is not yet released on that day or the user already
      has it (one row per (user, track): first listens only); rejected slots keep their day
      and draw again (vectorised rounds, the last two from global popularity; the slots
      still empty after them are dropped: 0.7-5.0% of the target on `tiny` over seeds
      0-20, 1.2% at the default seed 42, measured by a review on 2026-12-07; an earlier
      review's "3-4.5% over 21 seeds" was not reproduced; not measured at larger presets).
    * `track_seq` numbers each user's listens 1..n in day order (random order within a day);
      the stored pandas index `__index_level_0__` is `track_seq - 1` as in the reference files.

Everything is vectorised numpy per chunk of users (about `chunk_events` listens per chunk,
written as one or more bounded row groups), deterministic for a given (preset, seed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from musicrec.columns import Columns, RawFiles
from musicrec.errors import ConfigError, MusicRecError
from musicrec.io import PARQUET_WRITE_OPTIONS, atomic_path, remove_stale_temporaries
from musicrec.memory import peak_rss_gib

log = logging.getLogger("musicrec.generate")

N_DAYS = 365
YEAR_START = np.datetime64("2022-01-01", "ns")
#: the real data's longest user history (fits int16)
REAL_MAX_TRACK_SEQ = 16_637
#: monthly listens of the real data in millions (Jan 2.3 .. Nov 32.9, total 222.6)
MONTH_EVENTS_M = (2.3, 4.5, 7.5, 11.0, 14.5, 18.0, 21.5, 24.5, 27.5, 30.5, 32.9, 27.9)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
#: listening sources, in the order of the per-user mixture
SOURCES = ("artist", "genre", "popular", "trending", "explore")


def _words(text: str) -> tuple[str, ...]:
    """The whitespace-separated words of `text`."""
    return tuple(text.split())


@dataclass(frozen=True)
class Preset:
    """Size of a synthetic data set and the knobs of its model (defaults fit every size)."""

    name: str
    n_users: int
    n_tracks: int
    n_artists: int
    n_albums: int
    target_events: int
    #: named genres in catalog_names (some of them used by no track)
    n_genres: int = 166
    #: genre ids used by tracks (n_unnamed_genres of them have no name)
    n_genre_ids: int = 173
    n_unnamed_genres: int = 30
    max_events_per_user: int = REAL_MAX_TRACK_SEQ
    #: listens per chunk of users (memory bound: ~100 bytes per listen at peak)
    chunk_events: int = 4_000_000
    row_group_size: int = 1 << 20
    # --- catalogue ---
    genre_zipf: float = 1.0
    artist_pop_sigma: float = 1.8
    track_pop_sigma: float = 1.0
    new_album_share: float = 0.15
    feat_share: float = 0.06
    no_artist_share: float = 0.0154
    no_genre_share: float = 0.0037
    no_album_per_million: float = 18.0
    # --- users ---
    activity_sigma: float = 1.3
    churn_share: float = 0.25
    start_share: float = 0.08
    #: mean of the per-user mixture over SOURCES and its Dirichlet concentration
    source_mix: tuple[float, ...] = (0.24, 0.16, 0.29, 0.15, 0.16)
    mix_concentration: float = 8.0
    trend_days: float = 21.0
    max_rounds: int = 10

    def __post_init__(self) -> None:
        named_used = self.n_genre_ids - self.n_unnamed_genres
        if not 0 < named_used <= self.n_genres <= len(GENRE_NAMES):
            raise ValueError(f"inconsistent genre counts in preset {self.name!r}")
        if not self.n_genre_ids <= self.n_artists <= min(self.n_tracks, self.n_albums):
            raise ValueError(f"preset {self.name!r} needs n_genre_ids <= n_artists <= n_tracks")
        if int(0.9 * self.n_albums) < self.n_artists:  # ~90% of the albums are artists' own
            raise ValueError(
                f"preset {self.name!r} needs n_albums >= n_artists / 0.9 (one own album per "
                f"artist at least): {self.n_albums} albums for {self.n_artists} artists"
            )
        if self.max_events_per_user > np.iinfo(np.int16).max:
            raise ValueError("max_events_per_user must fit track_seq int16")


GENRE_NAMES: tuple[str, ...] = _words(
    """
    pop rock rap electronics dance rusrap ruspop rusrock indie alternative metal hiphop
    rnb soundtrack jazz classical folk house techno trance dnb dubstep ambient lounge
    relax soul funk blues reggae ska punk hardrock numetal posthardcore metalcore
    deathmetal blackmetal thrashmetal doommetal progmetal folkmetal symphonicmetal
    powermetal industrial postpunk newwave synthpop shoegaze dreampop postrock mathrock
    grunge britpop emo poppunk garagerock psychedelic stonerrock progrock artrock
    rocknroll rockabilly surf country americana bluegrass gospel disco eurodance
    italodisco hardstyle hardcore breakbeat triphop downtempo chillout lofi idm glitch
    electro electropop futurebass deephouse techhouse progressivehouse tropicalhouse
    minimal acidhouse ukgarage grime drill trap phonk cloudrap boombap foreignrap
    rusindie kpop jpop cpop latinpop reggaeton salsa bachata samba bossanova flamenco
    tango afrobeat afropop highlife dancehall dub world celtic balkan klezmer arabic
    indian bollywood turkish caucasian estrada shanson bard romance chanson opera
    baroque romantic modern minimalism vocal choral chamber orchestral piano guitar
    acoustic singersongwriter newage meditation sleep nature children fairytales lullaby
    films tvseries animated videogame musical anime smoothjazz bebop swing bigband
    fusion latinjazz acidjazz nujazz neosoul contemporaryrnb motown hyperpop witchhouse
    vaporwave synthwave darkwave coldwave ebm gothic noise experimental avantgarde
    spokenword comedy holiday christmas workout party
    """
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny",
            n_users=300,
            n_tracks=2_000,
            n_artists=300,
            n_albums=1_300,
            target_events=25_000,
            n_genres=36,
            n_genre_ids=40,
            n_unnamed_genres=8,
            max_events_per_user=600,
            row_group_size=10_000,
        ),
        Preset(
            "demo",
            n_users=20_000,
            n_tracks=50_000,
            n_artists=7_700,
            n_albums=33_000,
            target_events=1_500_000,
            max_events_per_user=5_000,
        ),
        Preset(
            "full10",
            n_users=137_322,
            n_tracks=100_000,
            n_artists=15_358,
            n_albums=65_872,
            target_events=22_262_990,
        ),
        Preset(
            "full",
            n_users=1_373_221,
            n_tracks=1_000_000,
            n_artists=153_581,
            n_albums=658_724,
            target_events=222_629_898,
        ),
    )
}

# --- word lists for readable fake names ------------------------------------------------------
_SYLLABLES = _words(
    """
    ka lo mi ra ven tor sil an del mar no ri zu bel cor dan el fa gor hal is jin kel lum
    mo nar or pel qui ros sa tem ul vi wen xo yar zel bro chi dra fen gla ith jo kra lei
    mun nys ost pra rho sky tal ur vex wyn yo
    """
)
_ADJECTIVES = _words(
    """
    golden silent broken electric lonely endless wild cold burning hidden neon velvet
    midnight crystal distant fading bright dark sweet bitter secret paper silver lost
    blue red black white summer winter northern falling rising empty heavy gentle savage
    quiet loud little last first new old strange perfect
    """
)
_NOUNS = _words(
    """
    night heart dream fire rain river city road sky ocean star light shadow storm moon
    sun love time world song dance wave echo ghost garden mirror window train island
    mountain forest desert story memory promise kiss smile tears voice signal engine
    horizon summer morning highway radio paradise
    """
)


# --- small numerical helpers -----------------------------------------------------------------
def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator for one stage (and chunk) of the generation."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _cumsum0(w: np.ndarray) -> np.ndarray:
    """Cumulative sums with a leading 0 (float64): segment [lo, hi) weighs cum[hi] - cum[lo]."""
    out = np.empty(len(w) + 1, dtype=np.float64)
    out[0] = 0.0
    np.cumsum(w, out=out[1:])
    return out


def _sample_segments(
    cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """For each i, a position in [lo[i], hi[i]) drawn proportionally to the weights behind
    `cum`. Vectorised: a uniform point in the segment's cumulative range and a binary search.
    Every segment must be non-empty."""
    a = cum[lo]
    u = a + rng.random(len(lo)) * (cum[hi] - a)
    idx = np.searchsorted(cum, u, side="right") - 1
    return np.clip(idx, lo, hi - 1)


def _segment_starts(keys: np.ndarray, n_segments: int) -> np.ndarray:
    """Start offsets (length n_segments + 1) of each key's block in `keys` sorted."""
    starts = np.zeros(n_segments + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=n_segments), out=starts[1:])
    return starts


def _sparse_ids(n: int, spread: int, rng: np.random.Generator) -> np.ndarray:
    """`n` increasing int64 ids starting near 1 with random gaps of mean `spread`."""
    return np.cumsum(rng.integers(1, 2 * spread, n, dtype=np.int64))


def _names(rng: np.random.Generator, n: int, words: tuple[str, ...], k: int) -> pa.Array:
    """`n` names made of `k` capitalised words drawn from `words`, joined by spaces."""
    vocab = pa.array(words)
    parts = [pc.utf8_capitalize(vocab.take(rng.integers(0, len(words), n))) for _ in range(k)]
    return pc.binary_join_element_wise(*parts, " ")


def _syllable_names(rng: np.random.Generator, n: int) -> pa.Array:
    """Artist-like names: one or two capitalised words of 2-3 syllables."""
    vocab = pa.array(_SYLLABLES)

    def word() -> pa.Array:
        syl = [vocab.take(rng.integers(0, len(_SYLLABLES), n)) for _ in range(3)]
        third = pc.if_else(pa.array(rng.random(n) < 0.4), syl[2], "")
        return pc.utf8_capitalize(pc.binary_join_element_wise(syl[0], syl[1], third, ""))

    first, second = word(), word()
    two = pa.array(rng.random(n) < 0.5)
    return pc.if_else(two, pc.binary_join_element_wise(first, second, " "), first)


def _list_array(rows: np.ndarray, values: np.ndarray, n_rows: int) -> pa.ListArray:
    """A list<element: int64> column of `n_rows` rows from (row, value) pairs (pairs are kept
    in the given order within a row)."""
    order = np.argsort(rows, kind="stable")
    offsets = _segment_starts(rows, n_rows).astype(np.int32)
    return pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.array(values[order].astype(np.int64)),
        type=pa.list_(pa.field("element", pa.int64())),
    )


# --- schemas ---------------------------------------------------------------------------------
def tracks_schema() -> pa.Schema:
    lst = pa.list_(pa.field("element", pa.int64()))
    return pa.schema(
        [
            (Columns.Item, pa.int64()),
            (Columns.Albums, lst),
            (Columns.Artists, lst),
            (Columns.Genres, lst),
        ]
    )


def catalog_schema() -> pa.Schema:
    return pa.schema(
        [
            (Columns.CatalogId, pa.int64()),
            (Columns.CatalogType, pa.string()),
            (Columns.CatalogName, pa.string()),
        ]
    )


def interactions_schema() -> pa.Schema:
    """user_id int32, track_id int32, track_seq int16, started_at timestamp[ns] and the stored
    pandas index `__index_level_0__` int64, with the pandas metadata (as the real file)."""
    df = pd.DataFrame(
        {
            Columns.User: np.zeros(1, np.int32),
            Columns.Item: np.zeros(1, np.int32),
            Columns.Seq: np.ones(1, np.int16),
            Columns.Datetime: np.array([YEAR_START], dtype="datetime64[ns]"),
        },
        index=pd.Index(np.zeros(1, np.int64)),
    )
    return pa.Table.from_pandas(df, preserve_index=True).schema


# --- catalogue -------------------------------------------------------------------------------
@dataclass
class Catalog:
    """The generated catalogue. Tracks are indexed internally 0..T-1, grouped by artist."""

    track_ids: np.ndarray  # external track id per internal track (int64)
    release: np.ndarray  # release day (int16), -1 for tracks released before 2022
    artist_start: np.ndarray  # tracks of artist a: [artist_start[a], artist_start[a + 1])
    cum_track: np.ndarray  # cumulative track weights in internal order
    cum_explore: np.ndarray  # cumulative flattened weights (exploration of the long tail)
    genre_order: np.ndarray  # internal tracks sorted by main genre
    genre_start: np.ndarray
    cum_genre: np.ndarray
    new_order: np.ndarray  # 2022 releases sorted by release day
    new_release: np.ndarray
    cum_new: np.ndarray
    artist_genre_order: np.ndarray  # internal artists sorted by main genre
    artist_genre_start: np.ndarray
    cum_artist_genre: np.ndarray  # cumulative taste weight of artists in that order
    cum_artist: np.ndarray  # cumulative taste weight of artists by internal index
    cum_user_genre: np.ndarray  # how likely a genre is a user's favourite
    tracks_table: pa.Table
    catalog_table: pa.Table
    n_genres_used: int


def build_catalog(p: Preset, seed: int) -> Catalog:
    """Genres, artists, albums and tracks with their weights, release days and tables."""
    rng = _rng(seed, 1)
    n_t, n_a, n_g = p.n_tracks, p.n_artists, p.n_genre_ids

    # genres: internal index = popularity rank
    genre_share = 1.0 / np.arange(1, n_g + 1) ** p.genre_zipf
    genre_share /= genre_share.sum()

    # artists: main genre, popularity, number of tracks (bigger artists are more popular)
    artist_genre = rng.choice(n_g, size=n_a, p=genre_share).astype(np.int32)
    covering = rng.permutation(n_a)[:n_g]  # every genre id has at least one artist
    artist_genre[covering] = np.arange(n_g)
    has_second = rng.random(n_a) < 0.3
    second_genre = ((artist_genre + rng.integers(1, 4, n_a)) % n_g).astype(np.int32)
    artist_pop = rng.lognormal(0.0, p.artist_pop_sigma, n_a)
    size_w = np.sqrt(artist_pop) * rng.lognormal(0.0, 1.0, n_a)
    artist_size = 1 + rng.multinomial(n_t - n_a, size_w / size_w.sum())
    artist_start = np.zeros(n_a + 1, dtype=np.int64)
    np.cumsum(artist_size, out=artist_start[1:])
    track_artist = np.repeat(np.arange(n_a, dtype=np.int32), artist_size)
    pos_in_artist = np.arange(n_t) - artist_start[track_artist]

    # albums: ~90% are the artists' own albums (at most one per track), the rest compilations
    want = 1 + rng.multinomial(int(0.9 * p.n_albums) - n_a, (artist_size - 1) / (n_t - n_a))
    artist_albums = np.minimum(want, artist_size)
    album_start = np.zeros(n_a + 1, dtype=np.int64)
    np.cumsum(artist_albums, out=album_start[1:])
    n_own = int(album_start[-1])
    n_comp = p.n_albums - n_own
    local = np.where(
        pos_in_artist < artist_albums[track_artist],
        pos_in_artist,
        (rng.random(n_t) * artist_albums[track_artist]).astype(np.int64),
    )
    track_album = album_start[track_artist] + local

    # release days: 2022 albums come out on Fridays (2022-01-07 is day 6)
    album_release = np.where(
        rng.random(n_own) < p.new_album_share, 6 + 7 * rng.integers(0, 52, n_own), -1
    ).astype(np.int16)
    release = album_release[track_album]

    # weights: artist popularity x log-normal track factor
    track_w = artist_pop[track_artist] * rng.lognormal(0.0, p.track_pop_sigma, n_t)
    track_genre = artist_genre[track_artist]

    # compilations: 2+ tracks of one artist with at least two tracks
    multi = np.flatnonzero(artist_size >= 2)
    comp_pairs_t = np.zeros(0, np.int64)
    comp_pairs_a = np.zeros(0, np.int64)
    if n_comp > 0 and len(multi):
        cw = artist_size[multi] * artist_pop[multi] ** 0.3  # about even per track
        comp_artist = multi[
            _sample_segments(
                _cumsum0(cw), np.zeros(n_comp, np.int64), np.full(n_comp, len(multi)), rng
            )
        ]
        comp_k = np.minimum(2 + rng.poisson(3, n_comp), artist_size[comp_artist])
        owner = np.repeat(np.arange(n_comp), comp_k)
        a = comp_artist[owner]
        tr = artist_start[a] + (rng.random(len(owner)) * artist_size[a]).astype(np.int64)
        key = np.unique(tr * n_comp + owner)
        comp_pairs_t, comp_pairs_a = key // n_comp, n_own + key % n_comp

    # external ids: sparse, unique within a type; old tracks first, 2022 releases by date
    track_ids = np.empty(n_t, np.int64)
    ids = _sparse_ids(n_t, 20, rng)
    is_new = release >= 0
    old = rng.permutation(np.flatnonzero(~is_new))
    new = np.flatnonzero(is_new)
    new = new[np.argsort(release[new], kind="stable")]
    track_ids[old] = ids[: len(old)]
    track_ids[new] = ids[len(old) :]
    artist_ids = rng.permutation(_sparse_ids(n_a, 3, rng))
    album_ids = rng.permutation(_sparse_ids(p.n_albums, 2, rng))
    n_named_unused = p.n_genres - (n_g - p.n_unnamed_genres)
    genre_ids = rng.permutation(_sparse_ids(n_g + n_named_unused, 2, rng))
    unnamed = rng.choice(np.arange(n_g // 3, n_g), size=p.n_unnamed_genres, replace=False)

    # tracks.parquet rows in track_id order
    row_of = np.empty(n_t, np.int64)
    out_order = np.argsort(track_ids)
    row_of[out_order] = np.arange(n_t)
    all_t = np.arange(n_t)
    # albums: own album then compilations; a handful of tracks have none
    no_album = rng.choice(
        n_t, size=max(3, round(p.no_album_per_million * n_t / 1e6)), replace=False
    )
    alb_t = np.concatenate([all_t, comp_pairs_t])
    alb_v = np.concatenate([track_album, comp_pairs_a])
    keep = ~np.isin(alb_t, no_album)
    albums_col = _list_array(row_of[alb_t[keep]], album_ids[alb_v[keep]], n_t)
    # artists: main artist (missing for ~1.5%), sometimes a featured one
    feat_t = np.flatnonzero(rng.random(n_t) < p.feat_share)
    feat_a = _sample_segments(
        _cumsum0(artist_pop), np.zeros(len(feat_t), np.int64), np.full(len(feat_t), n_a), rng
    )
    feat_ok = feat_a != track_artist[feat_t]
    art_t = np.concatenate([all_t, feat_t[feat_ok]])
    art_v = np.concatenate([track_artist, feat_a[feat_ok]])
    no_artist = rng.random(n_t) < p.no_artist_share
    keep = ~no_artist[art_t]
    artists_col = _list_array(row_of[art_t[keep]], artist_ids[art_v[keep]], n_t)
    # genres: main genre, the artist's second genre for some tracks; ~0.4% have none
    sec_t = np.flatnonzero(has_second[track_artist] & (rng.random(n_t) < 0.7))
    gen_t = np.concatenate([all_t, sec_t])
    gen_v = np.concatenate([track_genre, second_genre[track_artist[sec_t]]])
    no_genre = rng.random(n_t) < p.no_genre_share
    no_genre[artist_start[covering]] = False  # ... and keeps at least one track
    keep = ~no_genre[gen_t]
    genres_col = _list_array(row_of[gen_t[keep]], genre_ids[gen_v[keep]], n_t)
    tracks_table = pa.Table.from_arrays(
        [pa.array(track_ids[out_order]), albums_col, artists_col, genres_col],
        schema=tracks_schema(),
    )

    # catalog_names: album, artist, genre, track blocks
    named_genres = np.concatenate(
        [np.setdiff1d(np.arange(n_g), unnamed), np.arange(n_g, n_g + n_named_unused)]
    )
    album_names = pc.if_else(
        pa.array(rng.random(p.n_albums) < 0.5),
        _names(rng, p.n_albums, _NOUNS, 1),
        _names(rng, p.n_albums, _ADJECTIVES, 1),
    )
    album_names = pc.if_else(
        pa.array(np.arange(p.n_albums) >= n_own),
        pc.binary_join_element_wise("Best of", _syllable_names(rng, p.n_albums), " "),
        pc.binary_join_element_wise(album_names, _names(rng, p.n_albums, _NOUNS, 1), " "),
    )
    track_names = pc.binary_join_element_wise(
        _names(rng, n_t, _ADJECTIVES, 1), _names(rng, n_t, _NOUNS, 1), " "
    )
    remix = pa.array(rng.random(n_t) < 0.05)
    track_names = pc.if_else(
        remix, pc.binary_join_element_wise(track_names, "(Remix)", " "), track_names
    )
    blocks = [
        ("album", album_ids, album_names),
        ("artist", artist_ids, _syllable_names(rng, n_a)),
        ("genre", genre_ids[named_genres], pa.array(GENRE_NAMES[: len(named_genres)])),
        ("track", track_ids, track_names),
    ]
    catalog_table = pa.concat_tables(
        pa.Table.from_arrays(
            [pa.array(ids_, pa.int64()), pa.array([kind] * len(ids_), pa.string()), names],
            schema=catalog_schema(),
        )
        for kind, ids_, names in blocks
    )

    # sampling structures
    genre_order = np.argsort(track_genre, kind="stable")
    new_order = new  # already sorted by release
    artist_taste = artist_pop**0.8
    artist_genre_order = np.argsort(artist_genre, kind="stable")
    user_genre = np.bincount(track_genre, weights=track_w, minlength=n_g) ** 0.7
    return Catalog(
        track_ids=track_ids,
        release=release,
        artist_start=artist_start,
        cum_track=_cumsum0(track_w),
        cum_explore=_cumsum0(np.sqrt(track_w)),
        genre_order=genre_order,
        genre_start=_segment_starts(track_genre, n_g),
        cum_genre=_cumsum0(track_w[genre_order]),
        new_order=new_order,
        new_release=release[new_order],
        cum_new=_cumsum0(track_w[new_order]),
        artist_genre_order=artist_genre_order,
        artist_genre_start=_segment_starts(artist_genre, n_g),
        cum_artist_genre=_cumsum0(artist_taste[artist_genre_order]),
        cum_artist=_cumsum0(artist_taste),
        cum_user_genre=_cumsum0(user_genre),
        tracks_table=tracks_table,
        catalog_table=catalog_table,
        n_genres_used=int(np.count_nonzero(np.bincount(gen_v[keep], minlength=n_g))),
    )


# --- users -----------------------------------------------------------------------------------
@dataclass
class Users:
    """Per-user activity window and number of listens; the day curve fitted to them."""

    join: np.ndarray  # int16 first active day
    leave: np.ndarray  # int16 last active day
    n_events: np.ndarray  # int32 target number of distinct tracks
    cum_day: np.ndarray  # cumulative day weights (length N_DAYS + 1)


def target_day_curve() -> np.ndarray:
    """Share of listens per day of 2022: the real monthly totals, a mild weekly pattern."""
    per_day = np.repeat(np.array(MONTH_EVENTS_M) / np.array(_DAYS_IN_MONTH), _DAYS_IN_MONTH)
    weekday = (np.arange(N_DAYS) + 5) % 7  # 2022-01-01 was a Saturday (Mon = 0)
    curve = per_day * np.where(weekday >= 5, 0.92, 1.03)
    curve *= np.repeat(
        np.bincount(np.repeat(np.arange(12), _DAYS_IN_MONTH), weights=per_day)
        / np.bincount(np.repeat(np.arange(12), _DAYS_IN_MONTH), weights=curve),
        _DAYS_IN_MONTH,
    )
    return curve / curve.sum()


#: the smallest share of all listens a day can get in `fit_day_weights` (1e-6 of a mean day)
DAY_WEIGHT_FLOOR = 1e-6 / N_DAYS


def fit_day_weights(
    join: np.ndarray, leave: np.ndarray, n: np.ndarray, iters: int = 60
) -> np.ndarray:
    """Day weights w such that, when every user draws n_u days from w restricted to
    [join_u, leave_u], the expected listens per day follow `target_day_curve()`
    (iterative proportional fitting; users are aggregated by window, 365 x 365)."""
    a = np.bincount(
        join.astype(np.int64) * N_DAYS + leave, weights=n.astype(np.float64), minlength=N_DAYS**2
    ).reshape(N_DAYS, N_DAYS)
    target = target_day_curve() * n.sum()
    w = target.copy()
    for _ in range(iters):
        c = _cumsum0(w)
        win = c[None, 1:] - c[:-1, None]  # win[j, l] = weight of days j..l
        vals = np.divide(a, win, out=np.zeros_like(a), where=a > 0)
        s = np.cumsum(vals, axis=0)
        s = np.cumsum(s[:, ::-1], axis=1)[:, ::-1]
        coef = np.diagonal(s)  # sum over windows containing day d of n / weight
        expected = w * coef
        w = np.where(coef > 0, w * target / np.maximum(expected, 1e-300), w)
        # a floor far above the rounding error of the cumulative sums (~1e-16): without it
        # a day pushed to ~1e-17 made a window's weight c[l+1] - c[j] round to 0, and the
        # division above turned every weight into NaN (27 of 2,000 `tiny` seeds)
        w /= w.sum()
        if w.min() < DAY_WEIGHT_FLOOR:
            w = np.maximum(w, DAY_WEIGHT_FLOOR)
            w /= w.sum()
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise RuntimeError("fitting the day weights failed (a weight is not positive)")
    return w


def build_users(p: Preset, seed: int) -> Users:
    """Join/leave days and activity of every user, rescaled to the preset's target."""
    rng = _rng(seed, 2)
    n_u = p.n_users
    join = np.where(rng.random(n_u) < p.start_share, 0, rng.integers(1, N_DAYS, n_u))
    churn = rng.random(n_u) < p.churn_share
    leave = np.where(churn, join + (rng.random(n_u) * (N_DAYS - join)).astype(np.int64), N_DAYS - 1)
    tenure = ((leave - join + 1) / N_DAYS) ** 0.5
    base = rng.lognormal(0.0, p.activity_sigma, n_u) * tenure
    cap = min(p.max_events_per_user, p.n_tracks // 3)

    def counts(f: float) -> np.ndarray:
        return np.clip(np.rint(base * f), 1, cap)

    lo, hi = 1e-6, 1e9
    for _ in range(100):  # bisection on the scale so that the total hits the target
        mid = np.sqrt(lo * hi)
        if counts(mid).sum() < p.target_events:
            lo = mid
        else:
            hi = mid
    n_events = counts(hi).astype(np.int32)
    w = fit_day_weights(join, leave, n_events)
    return Users(join.astype(np.int16), leave.astype(np.int16), n_events, _cumsum0(w))


# --- listens ---------------------------------------------------------------------------------
def generate_chunk(
    cat: Catalog, users: Users, first: int, last: int, p: Preset, seed: int, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Listens of users [first, last): (user_id, internal track, day, track_seq), sorted by
    user and track_seq."""
    rng = _rng(seed, 3, chunk)
    n_u = last - first
    n_ev = users.n_events[first:last].astype(np.int64)
    join = users.join[first:last].astype(np.int64)
    leave = users.leave[first:last].astype(np.int64)
    n_t = len(cat.track_ids)

    # taste: favourite genres (first dominant), favourite artists, source mixture
    n_fav_g = 1 + rng.binomial(2, 0.35, n_u)
    zeros = np.zeros(3 * n_u, np.int64)
    fav_g = _sample_segments(
        cat.cum_user_genre, zeros, np.full(3 * n_u, len(cat.cum_user_genre) - 1), rng
    )
    fav_g = fav_g.reshape(n_u, 3)
    n_fav_a = np.clip(np.rint(1 + 0.6 * np.sqrt(n_ev)), 2, 80).astype(np.int64)
    fav_start = _cumsum0(n_fav_a).astype(np.int64)
    owner_a = np.repeat(np.arange(n_u), n_fav_a)
    g_slot = (n_fav_g[owner_a] * rng.random(len(owner_a)) ** 1.5).astype(np.int64)
    g = fav_g[owner_a, g_slot]
    in_genre = _sample_segments(
        cat.cum_artist_genre, cat.artist_genre_start[g], cat.artist_genre_start[g + 1], rng
    )
    anywhere = _sample_segments(
        cat.cum_artist, np.zeros(len(g), np.int64), np.full(len(g), len(cat.cum_artist) - 1), rng
    )
    fav_a = np.where(rng.random(len(g)) < 0.85, cat.artist_genre_order[in_genre], anywhere)
    # discovery: the first favourite from the join day, the others found during the window
    span = leave[owner_a] - join[owner_a] + 1
    disc = join[owner_a] + (rng.random(len(owner_a)) * span).astype(np.int64)
    disc[fav_start[:-1]] = join
    disc_key = owner_a * 512 + disc
    order = np.argsort(disc_key, kind="stable")
    fav_a, disc_key = fav_a[order], disc_key[order]
    gam = rng.gamma(np.array(p.source_mix) * p.mix_concentration, size=(n_u, len(SOURCES)))
    mix_cum = np.cumsum(gam / gam.sum(axis=1, keepdims=True), axis=1)[:, :-1]

    # slots: (user, day) pairs, days from the fitted curve within the user's window
    owner = np.repeat(np.arange(n_u, dtype=np.int64), n_ev)
    cd = users.cum_day
    a = cd[join[owner]]
    u = a + rng.random(len(owner)) * (cd[leave[owner] + 1] - a)
    day = np.clip(np.searchsorted(cd, u, side="right") - 1, join[owner], leave[owner])

    got_u: list[np.ndarray] = []
    got_t: list[np.ndarray] = []
    got_d: list[np.ndarray] = []
    taken: list[np.ndarray] = []  # sorted keys user * n_t + track accepted so far
    for rnd in range(p.max_rounds):
        if len(owner) == 0:
            break
        m = len(owner)
        if rnd < p.max_rounds - 2:
            src = (rng.random(m)[:, None] > mix_cum[owner]).sum(axis=1)
        else:  # the last rounds fill what is left from global popularity
            src = np.full(m, 2)
        track = np.full(m, -1, np.int64)
        # favourite artist
        i = np.flatnonzero(src == 0)
        if len(i):
            o = owner[i]
            # among the artists discovered by that day, recent discoveries preferred
            c = np.searchsorted(disc_key, o * 512 + day[i], side="right") - fav_start[o]
            k = fav_start[o] + c - 1 - (c * rng.random(len(i)) ** 2).astype(np.int64)
            art = fav_a[k]
            track[i] = _sample_segments(
                cat.cum_track, cat.artist_start[art], cat.artist_start[art + 1], rng
            )
        # favourite genre
        i = np.flatnonzero(src == 1)
        if len(i):
            o = owner[i]
            gs = fav_g[o, (n_fav_g[o] * rng.random(len(i)) ** 1.5).astype(np.int64)]
            pos = _sample_segments(cat.cum_genre, cat.genre_start[gs], cat.genre_start[gs + 1], rng)
            track[i] = cat.genre_order[pos]
        # global popularity
        i = np.flatnonzero(src == 2)
        if len(i):
            track[i] = _sample_segments(
                cat.cum_track, np.zeros(len(i), np.int64), np.full(len(i), n_t), rng
            )
        # trending: released within an exponential window before the day
        i = np.flatnonzero(src == 3)
        if len(i):
            d = day[i]
            window = 1 + rng.exponential(p.trend_days, len(i)).astype(np.int64)
            lo = np.searchsorted(cat.new_release, d - window, side="left")
            hi = np.searchsorted(cat.new_release, d, side="right")
            ok = hi > lo
            pos = _sample_segments(cat.cum_new, lo[ok], hi[ok], rng)
            track[i[ok]] = cat.new_order[pos]
        # exploration: any track, by a flattened weight (the long tail)
        i = np.flatnonzero(src == 4)
        if len(i):
            track[i] = _sample_segments(
                cat.cum_explore, np.zeros(len(i), np.int64), np.full(len(i), n_t), rng
            )
        valid = track >= 0
        valid[valid] = cat.release[track[valid]] <= day[valid]
        key = owner * n_t + track
        for t_keys in taken:
            iv = np.flatnonzero(valid)
            pos = np.searchsorted(t_keys, key[iv])
            pos = np.minimum(pos, len(t_keys) - 1)
            valid[iv[t_keys[pos] == key[iv]]] = False
        iv = np.flatnonzero(valid)
        uniq, first_idx = np.unique(key[iv], return_index=True)
        acc = np.zeros(m, bool)
        acc[iv[first_idx]] = True
        if len(uniq):  # an empty round's keys broke the next round's lookup (IndexError)
            taken.append(uniq)
        got_u.append(owner[acc])
        got_t.append(track[acc])
        got_d.append(day[acc])
        owner, day = owner[~acc], day[~acc]

    uu = np.concatenate(got_u)
    tt = np.concatenate(got_t)
    dd = np.concatenate(got_d)
    # order by user, day, random within a day -> track_seq 1..n
    order = np.argsort((uu << 40) | (dd << 31) | rng.integers(0, 1 << 31, len(uu)))
    uu, tt, dd = uu[order], tt[order], dd[order]
    starts = _segment_starts(uu, n_u)
    seq = np.arange(len(uu)) - starts[uu] + 1
    return (uu + first).astype(np.int32), tt, dd, seq.astype(np.int16)


def _interactions_table(
    user: np.ndarray, track_ids: np.ndarray, day: np.ndarray, seq: np.ndarray, schema: pa.Schema
) -> pa.Table:
    started = (YEAR_START + day.astype("timedelta64[D]")).astype("datetime64[ns]")
    return pa.Table.from_arrays(
        [
            pa.array(user, pa.int32()),
            pa.array(track_ids.astype(np.int32), pa.int32()),
            pa.array(seq, pa.int16()),
            pa.array(started, pa.timestamp("ns")),
            pa.array(seq.astype(np.int64) - 1, pa.int64()),
        ],
        schema=schema,
    )


def _chunks(n_events: np.ndarray, chunk_events: int) -> list[tuple[int, int]]:
    """Consecutive user ranges holding about `chunk_events` listens each."""
    cum = np.cumsum(n_events, dtype=np.int64)
    bounds = np.searchsorted(cum, np.arange(chunk_events, cum[-1], chunk_events), side="right")
    edges = np.unique(np.concatenate([[0], bounds, [len(n_events)]]))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


#: the key of interactions.parquet's schema metadata that says which preset and seed the
#: generator wrote it with (JSON {"preset": ..., "seed": ..., "params": ...}); the real
#: files have none
GENERATED_KEY = b"musicrec.generated"


def preset_params(p: Preset) -> str:
    """A digest of every parameter of `p` but its name and `row_group_size` (the files'
    layout, not their rows): a preset of one's own made with
    `dataclasses.replace(PRESETS["tiny"], n_users=...)` keeps the name "tiny", and only
    its parameters tell its data set apart from the built-in one's."""
    fields = {k: v for k, v in asdict(p).items() if k not in ("name", "row_group_size")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def generated_with(data_dir: str | Path) -> dict[str, Any] | None:
    """{"preset": name, "seed": n, "params": digest or None} when `data_dir`'s
    interactions.parquet was written by `generate_dataset` (sets written before the digest
    was added, 2026-12-07, have none: None); None for any other file (the real data, Last.fm, a
    user's own), an older generated set without the mark, or one that cannot be read."""
    try:
        meta = pq.read_schema(Path(data_dir) / RawFiles.Interactions).metadata or {}
        mark = json.loads(meta[GENERATED_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
    if not isinstance(mark, dict) or not {"preset", "seed"} <= mark.keys():
        return None
    return {"preset": mark["preset"], "seed": mark["seed"], "params": mark.get("params")}


def describe_raw_data(data_dir: str | Path) -> str:
    """How the log names the raw set in `data_dir`: "the generated preset 'tiny' (seed
    1)" or "files without the generator's mark (...)"."""
    return _describe_mark(generated_with(data_dir))


def _describe_mark(mark: dict[str, Any] | None) -> str:
    """`describe_raw_data` of a set whose mark (`generated_with`) was read already."""
    if mark is None:
        return (
            "files without the generator's mark: the real data, your own, or generated "
            "before the mark existed"
        )
    built_in = PRESETS.get(mark["preset"])
    if mark["params"] is not None and (
        built_in is None or mark["params"] != preset_params(built_in)
    ):
        return f"a generated preset of one's own named {mark['preset']!r} (seed {mark['seed']})"
    return f"the generated preset {mark['preset']!r} (seed {mark['seed']})"


def raw_data_present(data_dir: str | Path) -> bool:
    """True when the three raw files exist in `data_dir`."""
    return all((Path(data_dir) / name).is_file() for name in RawFiles.All)


def refuse_partial_raw_data(data_dir: str | Path) -> None:
    """Raise MusicRecError when `data_dir` holds some of the three raw files but not all:
    they are the user's (a download that stopped half-way, say), and writing a synthetic
    set would replace them. Nothing is written; the message names what is missing."""
    here = [name for name in RawFiles.All if (Path(data_dir) / name).is_file()]
    if here and len(here) < len(RawFiles.All):
        missing = [name for name in RawFiles.All if name not in here]
        raise MusicRecError(
            f"{data_dir} holds {', '.join(here)} but not {', '.join(missing)}: add the "
            "missing file, or remove the others to generate a synthetic set (`python -m "
            f"musicrec generate --out {data_dir} --force` replaces them); nothing was written"
        )


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}") from None


class _HeldSignals:
    """SIGINT and SIGTERM held back from `hold()` until `release()`, which puts the previous
    handlers back and raises the first signal that came meanwhile through them. Python
    runs its handlers in the main thread only, so this swaps the handlers there (a signal
    mask would not do: another thread, e.g. one of pyarrow's, takes a process-wide signal
    whatever the main thread's mask); called from another thread, it holds nothing."""

    def __init__(self) -> None:
        self._before: dict[int, Any] = {}
        self._received: list[int] = []

    def hold(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is None:  # a handler set outside Python: left alone
                continue
            self._before[sig] = signal.signal(sig, self._record)

    def _record(self, signum: int, _frame: Any) -> None:
        self._received.append(signum)

    def release(self) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        self._before = {}
        if self._received:
            signal.raise_signal(self._received[0])


def generate_dataset(
    preset: str | Preset, seed: int = 42, out_dir: str | Path = "data", overwrite: bool = False
) -> dict[str, Any]:
    """Write tracks.parquet, catalog_names.parquet and interactions.parquet to `out_dir`.

    Does nothing (returns {"skipped": True, ...}) if the three files exist and not
    `overwrite`. Files are written under temporary names and renamed at the end, so a crash
    leaves no partial file. Returns statistics (rows, users, tracks, seconds, peak RSS).
    """
    p = get_preset(preset)
    if seed < 0:
        raise ConfigError(f"the seed must be a non-negative integer, got {seed}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the output folder {out} is a file, not a directory")
    if out.is_symlink() and not out.exists():  # mkdir's "File exists" named no cause
        raise ConfigError(
            f"the output folder {out} is a symbolic link to {os.readlink(out)}, which does "
            "not exist: create that folder, or give another --out"
        )
    if not overwrite:
        if raw_data_present(out):
            log.info(
                "raw files already in %s (%s); not generating (`generate --force` replaces them)",
                out,
                describe_raw_data(out),
            )
            return {"skipped": True, "preset": p.name, "out_dir": str(out)}
        refuse_partial_raw_data(out)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    out.mkdir(parents=True, exist_ok=True)
    # half-written files of a run that was killed (SIGKILL), if untouched for ten minutes:
    # a younger one may be another live run's (removing it failed that run at its rename)
    files, _ = remove_stale_temporaries(out, RawFiles.All)
    if files:
        log.info("removed %d temporary files in %s, left by an interrupted run", files, out)
    log.info("generating preset %s (seed %d) into %s", p.name, seed, out)
    cat = build_catalog(p, seed)
    users = build_users(p, seed)
    t_cat = time.perf_counter() - t0
    schema = interactions_schema()
    # which preset and seed made the files, read back by `generated_with` (a folder that
    # holds another preset's set is used as it is, with a warning)
    mark = json.dumps({"preset": p.name, "seed": seed, "params": preset_params(p)}).encode()
    schema = schema.with_metadata({**(schema.metadata or {}), GENERATED_KEY: mark})
    rows = 0
    n_users = 0
    max_seq = 0
    listened = np.zeros(len(cat.track_ids), np.int64)
    month = np.zeros(12, np.int64)
    month_of_day = np.repeat(np.arange(12), _DAYS_IN_MONTH)
    with contextlib.ExitStack() as stack:
        # the three renames (on leaving this block) go together: Ctrl-C or SIGTERM between
        # two left a partial raw set, which every later run refused until removed by hand.
        # Held until the last rename (and delivered then); SIGKILL can still split them
        held = _HeldSignals()
        stack.callback(held.release)
        tmp = {name: stack.enter_context(atomic_path(out / name)) for name in RawFiles.All}
        with pq.ParquetWriter(
            tmp[RawFiles.Interactions], schema, **PARQUET_WRITE_OPTIONS
        ) as writer:
            for chunk, (first, last) in enumerate(_chunks(users.n_events, p.chunk_events)):
                user, track, day, seq = generate_chunk(cat, users, first, last, p, seed, chunk)
                table = _interactions_table(user, cat.track_ids[track], day, seq, schema)
                writer.write_table(table, row_group_size=p.row_group_size)
                rows += len(user)
                n_users += int(np.count_nonzero(seq == 1))
                max_seq = max(max_seq, int(seq.max(initial=0)))
                listened += np.bincount(track, minlength=len(listened))
                month += np.bincount(month_of_day[day], minlength=12)
                log.debug("chunk %d: users %d..%d, %d rows", chunk, first, last, len(user))
        pq.write_table(cat.tracks_table, tmp[RawFiles.Tracks], **PARQUET_WRITE_OPTIONS)
        pq.write_table(cat.catalog_table, tmp[RawFiles.Catalog], **PARQUET_WRITE_OPTIONS)
        held.hold()
    top = np.sort(listened)[::-1]
    stats: dict[str, Any] = {
        "skipped": False,
        "preset": p.name,
        "seed": seed,
        "out_dir": str(out),
        "rows": rows,
        "users": n_users,
        "tracks": len(cat.track_ids),
        "tracks_listened": int(np.count_nonzero(listened)),
        "artists": p.n_artists,
        "albums": p.n_albums,
        "genres_named": p.n_genres,
        "genre_ids_used": cat.n_genres_used,
        "catalog_rows": cat.catalog_table.num_rows,
        "max_track_seq": max_seq,
        "top1pct_share": round(float(top[: max(1, len(top) // 100)].sum() / max(rows, 1)), 4),
        "events_by_month": month.tolist(),
        "catalog_seconds": round(t_cat, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 2),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "bytes": sum((out / name).stat().st_size for name in RawFiles.All),
    }
    log.info(
        "generated %s: %d rows, %d users, %d tracks in %.1f s (peak RSS %.2f GiB)",
        p.name,
        rows,
        n_users,
        stats["tracks"],
        stats["seconds"],
        stats["peak_rss_gib"],
    )
    return stats


def ensure_raw_data(
    data_dir: str | Path, preset: str | Preset = "demo", seed: int | None = None
) -> bool:
    """Generate the raw files into `data_dir` when none of the three is there (with `seed`,
    or 42 when None).

    Returns True if data was generated, False if the three files were already there (left
    untouched; a WARNING when the generator wrote them with another preset (by name, or by
    parameters: `preset_params`), or another seed when `seed` is given: the run would
    otherwise train on another data set than the one asked for without a word). Some but
    not all of them: MusicRecError (`refuse_partial_raw_data`), as they may be the user's
    own.
    """
    p = get_preset(preset)
    if raw_data_present(data_dir):
        mark = generated_with(data_dir)
        # a set without the parameters' digest (an older one) is told apart by its name
        other_params = mark is not None and mark["params"] not in (None, preset_params(p))
        if mark is not None and (
            mark["preset"] != p.name or other_params or (seed is not None and mark["seed"] != seed)
        ):
            built_in = PRESETS.get(p.name) == p
            asked = repr(p.name) + ("" if seed is None else f" (seed {seed})")
            if other_params and mark["preset"] == p.name:  # one name, two parameter sets
                asked = f"the built-in preset {asked}" if built_in else f"your preset {asked}"
            # the command only for a preset the command line knows by its name
            fix = (
                f" (`python -m musicrec generate --preset {p.name}"
                + (f" --seed {seed}" if seed is not None else "")
                + f" --out {data_dir} --force` replaces them)"
                if built_in
                else ""
            )
            log.warning(
                "%s holds %s, not %s as asked: not generating, the files are used as they are%s",
                data_dir,
                _describe_mark(mark),
                asked,
                fix,
            )
        else:
            log.info("raw data present in %s (%s); not generating", data_dir, _describe_mark(mark))
        return False
    refuse_partial_raw_data(data_dir)
    seed = 42 if seed is None else seed
    log.info("raw data missing in %s; generating preset %s (seed %d)", data_dir, p.name, seed)
    generate_dataset(p, seed=seed, out_dir=data_dir, overwrite=True)
    return True


__all__ = [
    "PRESETS",
    "Preset",
    "generate_dataset",
    "describe_raw_data",
    "ensure_raw_data",
    "generated_with",
    "raw_data_present",
]

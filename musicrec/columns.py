"""The one place that names columns, the raw files and the ranker's features.

Raw files (Yandex Music schema) and the artifacts written under `recsys/` all use these
names; every recommender returns the same output schema (user, item, score, rank). Where
each artifact lives and which columns it must have: `musicrec.artifacts`.
"""

from __future__ import annotations


class Columns:
    """Column names shared by every module."""

    User = "user_id"
    Item = "track_id"
    Datetime = "started_at"
    Seq = "track_seq"
    Score = "score"
    Rank = "rank"
    # tracks.parquet list columns
    Albums = "albums"
    Artists = "artists"
    Genres = "genres"
    # catalog_names.parquet
    CatalogId = "id"
    CatalogType = "type"
    CatalogName = "name"
    # items.parquet (prepared catalogue)
    TrackName = "track_name"
    ArtistNames = "artist_names"
    AlbumNames = "album_names"
    GenreNames = "genre_names"
    MainGenre = "main_genre"
    MainGenreName = "main_genre_name"
    MainArtist = "main_artist"
    GenreIds = "genre_ids"
    ArtistIds = "artist_ids"
    # top_popular.parquet
    Listeners = "listeners"
    # similar.parquet
    Item1 = "track_id_1"
    Item2 = "track_id_2"

    #: the output schema of every recommender
    Recommendations = [User, Item, Score, Rank]


class RawFiles:
    """File names of the raw input (as in the Yandex Music data set)."""

    Tracks = "tracks.parquet"
    Catalog = "catalog_names.parquet"
    Interactions = "interactions.parquet"
    All = (Tracks, Catalog, Interactions)


#: catalog_names `type` values
CATALOG_TYPES = ("album", "artist", "genre", "track")


# The ranker's feature columns (computed by musicrec.features.collect_features).
#: numeric features, in the order the model sees them
NUMERIC_FEATURES = [
    "als_score",
    "als_rank",
    "pop_rank",
    "sim_rank",
    "sim_source_score",
    "src_als",
    "src_pop",
    "src_sim",
    "n_sources",
    "sim_max_latest",
    "sim_mean_latest",
    "profile_sim",
    "item_pop_vs_user",
    "item_listeners",
    "item_listeners_recent",
    "item_recent_share",
    "item_age_days",
    "item_days_since_last",
    "user_listens",
    "user_listens_recent",
    "user_days_since_last",
    "user_tenure_days",
    "user_genre_share",
    "user_genre_cosine",
    "user_artist_share",
    "user_artist_listens",
]
#: categorical features (CatBoost handles them natively)
CAT_FEATURES = ["main_genre"]
FEATURES = NUMERIC_FEATURES + CAT_FEATURES
#: used by the ranker, and computed on its scoring path, only when `ranker.features` names
#: them (training rows and `collect_features(features=None)` still get every column):
#: user_genre_cosine lowered the default ranker's NDCG@10 by 0.00023 ± 0.00007 on
#: full10 (paired over 94,429 users, docs/benchmarks.md); the Last.fm config names it
OPT_IN_FEATURES = ["user_genre_cosine"]
#: what the ranker is fit on when `ranker.features` is not set
DEFAULT_FEATURES = [f for f in FEATURES if f not in OPT_IN_FEATURES]

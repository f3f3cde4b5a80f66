"""EDA and metrics pictures: drawn on small synthetic frames, opened and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from musicrec import plots as P


def make_items(n: int = 60) -> pd.DataFrame:
    genres = ["pop", "rock", "электроника", "jazz"]
    rows = []
    for i in range(n):
        g = i % 5 - 1  # -1 = no genre
        rows.append(
            {
                "track_id": i,
                "track_name": f"Песня {i}" if i % 2 else f"Track {i} with a fairly long title",
                # every 7th item has no artist, every 5th no genre (empty lists)
                "artist_names": [] if i % 7 == 0 else [f"Artist {i % 9}", "feat."],
                "album_names": [f"Album {i % 4}"],
                "genre_names": [] if g < 0 else [genres[g]],
                "genre_ids": [] if g < 0 else [g],
                "artist_ids": [] if i % 7 == 0 else [i % 9],
                "main_genre": g,
                "main_genre_name": None if g < 0 else genres[g],
                "main_artist": None if i % 7 == 0 else f"Artist {i % 9}",
            }
        )
    return pd.DataFrame(rows).astype({"track_id": "int32", "main_genre": "int32"})


def make_events(n_items: int = 60, n_users: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pairs = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, 6000),
            "track_id": np.minimum(rng.zipf(1.5, 6000) - 1, n_items + 4),  # some not in items
        }
    ).drop_duplicates()
    start = np.datetime64("2022-01-01T00:00:00", "s")
    offsets = rng.integers(0, 330 * 86400, len(pairs)).astype("timedelta64[s]")
    ev = pairs.assign(started_at=(start + offsets).astype("datetime64[ns]"))
    ev = ev.astype({"user_id": "int32", "track_id": "int32"})
    ev["track_seq"] = ev.groupby("user_id").cumcount().astype("int16") + 1
    return ev.reset_index(drop=True)


def check_png(path: Path, min_side: int = 400) -> None:
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        w, h = img.size
        assert w > min_side and h > min_side, (path.name, img.size)
        px = np.asarray(img.convert("L"), dtype=np.float64)
    # not blank: a real share of non-white pixels and some contrast
    assert (px < 250).mean() > 0.01, path.name
    assert px.std() > 10, path.name


RESULTS = {
    "top_popular": {
        "precision@5": {"mean": 0.004, "stderr": 0.0002, "n_users": 100},
        "ndcg@10": {"mean": 0.006, "stderr": 0.0003, "n_users": 100},
        "coverage@5": {"mean": 0.0001, "stderr": None, "n_users": 100},
    },
    "als": {
        "precision@5": {"mean": 0.013, "stderr": 0.0004, "n_users": 100},
        "ndcg@10": {"mean": 0.016, "stderr": 0.0005, "n_users": 100},
        "coverage@5": {"mean": 0.12, "stderr": None, "n_users": 100},
    },
}


def test_draw_eda_writes_readable_pngs(tmp_path: Path) -> None:
    paths = P.draw_eda(make_items(), make_events(), tmp_path / "pictures")
    assert [p.name for p in paths] == list(P.EDA_FILES)
    for p in paths:
        check_png(p)
    # atomic writes leave no temporary files behind
    assert sorted(x.name for x in (tmp_path / "pictures").iterdir()) == sorted(P.EDA_FILES)


def test_single_plot_functions(tmp_path: Path) -> None:
    items, events = make_items(), make_events()
    for path in (
        P.plot_user_activity(events, tmp_path / "a.png"),
        P.plot_top_tracks(items, events, tmp_path / "b.png", n=5),
        P.plot_top_genres(items, events, tmp_path / "c.png"),
        P.plot_long_tail(events, tmp_path / "d.png"),
        P.plot_user_history_length(events, tmp_path / "e.png"),
    ):
        check_png(path)


def test_history_length_bars_are_users_per_listen_count() -> None:
    """Five users at every length 1..300: every bar is 5 high (with users per bin, bins of
    1, 2 and 3 counts drew 5, 10 and 15: peaks and dips the data does not have); the bars'
    area is the number of users, and each bin's edges sit between whole counts."""
    lengths = np.repeat(np.arange(1, 301), 5)
    edges, heights = P.history_length_bars(lengths)
    widths = np.diff(edges)
    assert len(set(widths.tolist())) > 3  # bins of several widths
    np.testing.assert_allclose(heights, 5.0)
    assert float((heights * widths).sum()) == len(lengths)
    np.testing.assert_array_equal(edges % 1, 0.5)
    edges, heights = P.history_length_bars(np.array([1, 1, 2, 7, 7, 7]))
    by_count = {c: heights[np.searchsorted(edges, c) - 1] for c in (1, 2, 7)}
    assert by_count[1] == 2.0 and by_count[2] == 1.0
    assert by_count[7] == 3.0 / widths_of(edges, 7)


def widths_of(edges: np.ndarray, count: int) -> float:
    """How many whole counts the bin holding `count` spans."""
    i = np.searchsorted(edges, count) - 1
    return float(edges[i + 1] - edges[i])


def test_empty_lists_and_missing_names_are_handled(tmp_path: Path) -> None:
    # the most listened track has empty artist/genre lists, no name and no main artist;
    # list cells as numpy arrays, as they come back from parquet
    items = make_items()
    items.at[0, "track_name"] = None
    items["artist_names"] = items["artist_names"].map(np.asarray)
    items["genre_names"] = items["genre_names"].map(np.asarray)
    assert len(items.at[0, "artist_names"]) == 0 and items.at[0, "main_genre"] == -1
    events = make_events()
    assert events.track_id.value_counts().index[0] == 0
    labels = P._track_labels(items, np.array([0, 1, 999]))
    assert labels[0] == "track 0 — unknown"
    assert labels[1] == "Песня 1 — Artist 1"
    assert labels[2] == "track 999 — unknown"  # not in items at all
    names = P._genre_names(items)
    assert names[0] == "(no genre)" and names[1] == "pop"
    for p in P.draw_eda(items, events, tmp_path):
        check_png(p)


def test_genre_names_fall_back_to_genre_lists() -> None:
    items = make_items().drop(columns=["main_genre_name", "main_genre"])
    names = P._genre_names(items)
    assert names[0] == "(no genre)" and names[1] == "pop" and names[3] == "электроника"


def test_user_activity_counts_by_month() -> None:
    ev = pd.DataFrame(
        {
            "user_id": np.array([1, 1, 2, 3, 3, 3], dtype=np.int32),
            "track_id": np.array([1, 2, 1, 1, 2, 3], dtype=np.int32),
            "started_at": pd.to_datetime(
                [
                    "2022-01-31 23:59",
                    "2022-01-01 00:00",
                    "2022-01-15 12:00",
                    "2022-03-01 00:00",
                    None,
                    "2022-03-02 08:30",
                ]
            ),
        }
    )
    m = P._monthly(ev)
    assert [str(x) for x in m.months] == ["2022-01", "2022-02", "2022-03"]
    assert m.listens.tolist() == [3, 0, 2]  # the NaT row is skipped
    assert m.active_users.tolist() == [2, 0, 1]


def test_empty_events_draw_placeholders(tmp_path: Path) -> None:
    events = make_events().iloc[:0]
    for p in P.draw_eda(make_items(), events, tmp_path):
        assert p.exists()
        with Image.open(p) as img:
            assert min(img.size) > 400


def test_draw_metrics(tmp_path: Path) -> None:
    path = P.draw_metrics(RESULTS, tmp_path / "metrics_comparison.png")
    check_png(path)
    # a metric that only some models have, and a None mean, are drawn as n/a
    results = {**RESULTS, "empty": {"precision@5": {"mean": None, "stderr": None}}}
    check_png(P.draw_metrics(results, tmp_path / "m2.png", metrics=["precision@5", "recall@5"]))


def test_import_has_no_pyplot_side_effect() -> None:
    import subprocess
    import sys

    code = "import sys, musicrec.plots; assert 'matplotlib.pyplot' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("tz", [None, "Europe/Moscow"])
def test_datetime_variants(tmp_path: Path, tz: str | None) -> None:
    ev = make_events()
    ev["started_at"] = ev["started_at"].astype("datetime64[us]")
    if tz:
        ev["started_at"] = ev["started_at"].dt.tz_localize(tz)
    check_png(P.plot_user_activity(ev, tmp_path / "a.png"))


@pytest.mark.parametrize("top", [1, 2, 3, 7])
def test_small_counts_get_whole_number_ticks(top: int) -> None:
    """A linear count axis up to a few listens has ticks at whole numbers only, each label
    different (ticks at 0.5 steps read `0 0 1 1 2`); a log axis keeps its own ticks."""
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    ax.bar(["a", "b"], [0, top])
    P._thousands(ax.yaxis)
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    labels = [P._short(lbl.get_text()) for lbl in ax.get_yticklabels()]
    assert all(float(t).is_integer() for t in ticks), ticks
    shown = [label for label in labels if label]
    assert len(shown) == len(set(shown)), shown
    log_ax = fig.add_subplot(2, 1, 2)
    log_ax.set_yscale("log")
    log_ax.plot([1, 10, 1000])
    P._thousands(log_ax.yaxis)
    assert type(log_ax.yaxis.get_major_locator()).__name__ == "LogLocator"


def test_genre_shares_leave_out_genres_nobody_heard() -> None:
    """The top-genres chart drew genres without a listen as 0.0% bars filling the top n,
    and crashed (NaN axis limit) on an empty catalogue."""
    items = make_items()
    events = make_events()
    pop_tracks = set(items.loc[items["main_genre"].isin([0, 1]), "track_id"])
    heard = events[events["track_id"].isin(pop_tracks)]  # listens of two genres only
    share = P.genre_shares(items, P._popularity(heard), 20)
    assert list(share.index) == sorted(share.index, key=lambda g: -share[g])
    assert set(share.index) == {"pop", "rock"} and (share > 0).all()
    expected = heard.merge(items, on="track_id")["main_genre_name"].value_counts(normalize=True)
    assert np.allclose(share.sort_index(), expected.sort_index())
    assert len(P.genre_shares(items.iloc[:0], P._popularity(events), 20)) == 0


def test_empty_catalogue_draws_every_picture(tmp_path: Path) -> None:
    for p in P.draw_eda(make_items().iloc[:0], make_events(), tmp_path):
        check_png(p)


@pytest.mark.parametrize(("months", "labels"), [(12, 12), (24, 24), (70, 24), (271, 23)])
def test_month_axis_labels_at_most_24(months: int, labels: int) -> None:
    """One label per month overlapped over Last.fm's 70 months and MovieLens' 271."""
    names = [f"m{i}" for i in range(months)]
    x, shown = P._month_ticks(names)
    assert len(shown) == labels and shown[0] == "m0"
    assert shown == [names[i] for i in x] and len(set(np.diff(x))) <= 1


def test_count_labels_below_one_keep_their_value() -> None:
    """A log axis's 0.1 tick was labelled `0`."""
    assert [P._count_label(v) for v in (0.1, 0, 1, 1234.0)] == ["0.1", "0", "1", "1,234"]


@pytest.mark.parametrize("ids", [[5_000_000, 3_000_000, 5_000_000], [2**40, 7, 2**40]])
def test_counts_are_by_id_whichever_way_they_are_counted(ids: list[int]) -> None:
    """Ids too sparse for a bincount were counted in first-seen order, so the top-tracks
    chart broke ties by appearance for them and by id for the others."""
    uniq, counts = P._counts(np.array(ids, dtype=np.int64))
    assert uniq.tolist() == sorted(set(ids))
    assert counts.tolist() == [ids.count(i) for i in sorted(set(ids))]


def test_names_with_dollar_signs_are_drawn_as_written(tmp_path: Path) -> None:
    """Matplotlib reads text between two `$` as a formula: such a name stopped the EDA
    stage with a parse error ('Ca$h 100%' by 'A$AP Ferg') or was drawn in italics without
    its dollar signs ('$uicideboy$')."""
    from matplotlib.text import Text

    items = make_items()
    events = make_events()
    counts = events.track_id.value_counts()
    top = counts.index[counts.index.isin(items.track_id)][:3].to_numpy()
    names = {top[0]: "Ca$h 100%", top[1]: "$uicideboy$", top[2]: r"$\bad{$"}
    for t, name in names.items():
        items.loc[items.track_id == t, "track_name"] = name
        items.loc[items.track_id == t, "main_artist"] = "A$AP Ferg"
        items.loc[items.track_id == t, "main_genre_name"] = name  # a genre name too
    for p in P.draw_eda(items, events, tmp_path):
        check_png(p)
    labels = P._track_labels(items, top)
    text = Text()
    for label, name in zip(labels, names.values(), strict=True):
        assert text._preprocess_math(label) == (f"{name} — A$AP Ferg", False)


# --- what the pictures say (a mutation review: the PNGs alone hid their numbers) ---


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure the plots module saves, in order (the PNG alone hides its numbers)."""
    drawn: list[Any] = []
    real = P._save

    def spy(fig: Any, path: str | Path) -> Path:
        drawn.append(fig)
        return real(fig, path)

    monkeypatch.setattr(P, "_save", spy)
    return drawn


def test_long_tail_annotates_the_top_shares(tmp_path: Path, figures: list[Any]) -> None:
    """200 tracks, track t with t + 1 listeners: the top 1% (2 tracks) hold 399 of 20,100
    listens, the top 10% (20 tracks) 3,810; each line marked at its rank's count."""
    counts = np.arange(1, 201)
    ev = pd.DataFrame(
        {
            "user_id": np.arange(counts.sum(), dtype=np.int32),
            "track_id": np.repeat(np.arange(200, dtype=np.int32), counts),
        }
    )
    P.plot_long_tail(ev, tmp_path / "tail.png")
    ax = figures[0].axes[0]
    assert ax.get_title() == "200 tracks with at least one listen, 20,100 listens"
    notes = {t.get_text(): tuple(t.xy) for t in ax.texts}
    assert notes == {
        f"top 1% of tracks (2):\n{399 / 20100:.1%} of listens": (2, 199),
        f"top 10% of tracks (20):\n{3810 / 20100:.1%} of listens": (20, 181),
    }


def test_top_charts_draw_20_bars_by_default(tmp_path: Path, figures: list[Any]) -> None:
    """30 tracks, each of its own genre, track t with t + 1 listeners: the top-tracks and
    top-genres charts (alone with their default n, and in draw_eda) draw the top 20."""
    items = make_items(30).assign(main_genre=np.arange(30, dtype=np.int32))
    items["main_genre_name"] = [f"genre {i}" for i in range(30)]
    counts = np.arange(1, 31)
    events = pd.DataFrame(
        {
            "user_id": np.arange(counts.sum(), dtype=np.int32),
            "track_id": np.repeat(np.arange(30, dtype=np.int32), counts),
            "started_at": pd.Timestamp("2022-01-01"),
        }
    )
    top20 = list(range(30, 10, -1))
    P.plot_top_tracks(items, events, tmp_path / "tracks.png")
    P.plot_top_genres(items, events, tmp_path / "genres.png")
    P.draw_eda(items, events, tmp_path / "eda")
    tracks, genres = figures[0], figures[1]
    eda_tracks, eda_genres = figures[3], figures[4]  # after draw_eda's user activity
    for fig in (tracks, eda_tracks):
        assert fig.axes[0].containers[0].datavalues.tolist() == top20
    for fig in (genres, eda_genres):
        shares = fig.axes[0].containers[0].datavalues
        np.testing.assert_allclose(shares, np.array(top20) / counts.sum() * 100)


def test_long_names_are_cut_to_the_limit() -> None:
    assert P._short("x" * 50, 40) == "x" * 39 + "…"
    items = make_items()
    items.loc[items.track_id == 1, "track_name"] = "y" * 60
    assert P._track_labels(items, np.array([1]))[0] == "y" * 39 + "… — Artist 1"


def test_history_length_counts_listens_per_user() -> None:
    """The history-length picture's data: one count per user (the default of
    `_popularity`), each that user's rows."""
    events = make_events()
    per_user = events.groupby("user_id").size().sort_index().to_numpy()
    assert P._popularity(events).user_listens.tolist() == per_user.tolist()


def test_monthly_counts_without_the_user_matrix_are_the_same() -> None:
    """Ids too sparse for the (month, user) bool matrix (> 1e9 cells) take the sorted-key
    path; it counts the same listens and distinct active users."""
    events = make_events()
    sparse = events.assign(user_id=events["user_id"].astype(np.int64) * 10**7)
    assert (
        len(np.unique(events["started_at"].to_numpy().astype("datetime64[M]")))
        * (int(sparse["user_id"].max()) + 1)
        > 1_000_000_000
    )  # the fallback is taken
    want, got = P._monthly(events), P._monthly(sparse)
    assert got.months.tolist() == want.months.tolist()
    assert got.listens.tolist() == want.listens.tolist()
    assert got.active_users.tolist() == want.active_users.tolist()

"""EDA and result pictures (PNG), drawn with matplotlib's object-oriented API.

No pyplot and no global backend state: every figure is a `matplotlib.figure.Figure` with
its own Agg canvas, written atomically (`musicrec.io.atomic_path`). matplotlib is
imported inside the functions, so importing this module is cheap and has no side effects.

Inputs are the prepared frames:

* `items`: track_id, track_name, artist_names (list of str), main_genre (-1 = none),
  main_genre_name, main_artist (a name if it is a string, else the first artist name is
  used); list columns may come back from parquet as numpy arrays;
* `events`: user_id, track_id, started_at - one row per (user, track) pair (first
  listens), so a track's row count is its number of listeners.

Aggregates are computed with numpy (bincount on the int32 id columns, datetime64[M]
casting in chunks) so that 200M events take seconds, never a Python loop over rows.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from musicrec.columns import Columns as C
from musicrec.io import atomic_path
from musicrec.matrix import dense_ids

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "EDA_FILES",
    "draw_eda",
    "draw_metrics",
    "plot_long_tail",
    "plot_top_genres",
    "plot_top_tracks",
    "plot_user_activity",
    "plot_user_history_length",
]

log = logging.getLogger(__name__)

DPI = 110
#: file names written by `draw_eda`, in order
EDA_FILES = (
    "user_activity.png",
    "top_tracks.png",
    "top_genres.png",
    "long_tail.png",
    "user_history_length.png",
)
_CHUNK = 20_000_000  # event rows processed at once (bounds temporary memory)
_BAR = "#3b75af"
_ACCENT = "#d1495b"
_GREY = "#9a9a9a"
_NO_GENRE = "(no genre)"


# ---------------------------------------------------------------------------- aggregates
def _counts(ids: np.ndarray) -> tuple[np.ndarray, npt.NDArray[np.int64]]:
    """(distinct ids, rows per id), by bincount for dense non-negative ints
    (`musicrec.matrix.dense_ids`)."""
    if len(ids) == 0:
        return ids[:0], np.zeros(0, dtype=np.int64)
    if ids.dtype.kind in "iu" and int(ids.min()) >= 0 and dense_ids(int(ids.max()), len(ids)):
        bc = np.bincount(ids)
        nz = np.flatnonzero(bc)
        return nz.astype(ids.dtype), bc[nz].astype(np.int64)
    # sorted ids, as from the bincount: the order (and the charts' ties) does not depend
    # on which way was taken
    uniq, counts = np.unique(ids, return_counts=True)
    return uniq, counts.astype(np.int64)


def _user_codes(users: np.ndarray) -> tuple[np.ndarray, int]:
    """Non-negative int codes for the users and their span (max code + 1)."""
    if len(users) == 0:
        return users.astype(np.int64), 0
    if users.dtype.kind in "iu" and int(users.min()) >= 0:
        return users, int(users.max()) + 1
    codes, uniques = pd.factorize(users)
    return codes, len(uniques)


def _datetimes(events: pd.DataFrame) -> np.ndarray:
    s = events[C.Datetime]
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    arr = s.to_numpy()
    if arr.dtype.kind != "M":
        arr = pd.to_datetime(s).to_numpy()
    return arr


@dataclass(frozen=True)
class _Monthly:
    months: np.ndarray  # datetime64[M], consecutive
    listens: npt.NDArray[np.int64]
    active_users: npt.NDArray[np.int64]


def _monthly(events: pd.DataFrame) -> _Monthly:
    """Listens and distinct active users per calendar month (numpy datetime64[M])."""
    ts = _datetimes(events)
    users, span = _user_codes(events[C.User].to_numpy())
    series = pd.Series(ts, copy=False)
    first, last = series.min(), series.max()  # NaT skipped
    if len(ts) == 0 or pd.isna(first):
        empty = np.zeros(0, dtype=np.int64)
        return _Monthly(np.zeros(0, dtype="datetime64[M]"), empty, empty)
    m0 = np.datetime64(first, "M").astype(np.int64)
    n_months = int(np.datetime64(last, "M").astype(np.int64) - m0) + 1
    listens = np.zeros(n_months, dtype=np.int64)
    use_matrix = n_months * span <= 1_000_000_000  # bytes of a bool (month, user) matrix
    seen = np.zeros((n_months, span), dtype=bool) if use_matrix else None
    pair_keys: list[np.ndarray] = []
    for start in range(0, len(ts), _CHUNK):
        m = ts[start : start + _CHUNK].astype("datetime64[M]")
        ok = ~np.isnat(m)
        mi = m[ok].astype(np.int64) - m0
        u = users[start : start + _CHUNK][ok]
        listens += np.bincount(mi, minlength=n_months)
        if seen is not None:
            seen[mi, u] = True
        else:
            keys = np.sort(mi.astype(np.int64) * span + u.astype(np.int64))
            pair_keys.append(keys[np.concatenate([[True], keys[1:] != keys[:-1]])])
    if seen is not None:
        active = seen.sum(axis=1).astype(np.int64)
    else:
        keys = np.sort(np.concatenate(pair_keys))
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        active = np.bincount(keys // span, minlength=n_months).astype(np.int64)
    months = (np.arange(n_months) + m0).astype("datetime64[M]")
    return _Monthly(months, listens, active)


@dataclass(frozen=True)
class _Popularity:
    track_ids: np.ndarray
    listeners: npt.NDArray[np.int64]
    user_listens: npt.NDArray[np.int64]


def _popularity(events: pd.DataFrame, users: bool = True) -> _Popularity:
    """Rows per track (its listeners, one row per pair) and per user; the track counts are
    `popular.listeners_per_track`'s (see there for the other places that count them)."""
    tracks, listeners = _counts(events[C.Item].to_numpy())
    per_user = _counts(events[C.User].to_numpy())[1] if users else np.zeros(0, dtype=np.int64)
    return _Popularity(tracks, listeners, per_user)


# ------------------------------------------------------------------------------- drawing
def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


@contextmanager
def _quiet_glyphs() -> Iterator[None]:
    """Track names in scripts the font lacks draw as boxes; don't warn per glyph."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from")
        warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support")
        yield


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with _quiet_glyphs(), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    log.info("Wrote %s", path)
    return path


def _thousands(ax_axis: Any) -> None:
    """Counts with thousands separators; on a linear axis, ticks at whole numbers only
    (small counts got ticks at 0.5 steps, labelled `0 0 1 1 2`); below 1 (a log axis's
    0.1) as the number itself, not rounded to `0`."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if ax_axis.get_scale() == "linear":
        ax_axis.set_major_locator(MaxNLocator(integer=True))
    ax_axis.set_major_formatter(FuncFormatter(_count_label))


def _count_label(x: float, _pos: Any = None) -> str:
    return f"{x:,.0f}" if abs(x) >= 1 or x == 0 else f"{x:g}"


#: at most this many month labels on the activity chart (more overlap on a 10-inch figure)
MAX_MONTH_LABELS = 24


def _month_ticks(months: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """Positions and labels of the month axis: every month up to `MAX_MONTH_LABELS`, else
    every k-th (Last.fm spans 70 months, MovieLens 271: one label each overlapped)."""
    step = max(1, math.ceil(len(months) / MAX_MONTH_LABELS))
    x = np.arange(0, len(months), step)
    return x, [str(months[int(i)]) for i in x]


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", fontsize=14, color=_GREY)
    ax.set_xticks([])
    ax.set_yticks([])


def _short(text: str, limit: int = 42) -> str:
    """A name as a label: on one line, at most `limit` characters, drawn as written.
    Matplotlib reads the text between two `$` as a formula: 'Ca$h 100%' with an artist
    'A$AP Ferg' stopped the EDA stage with a parse error, and '$uicideboy$' was drawn in
    italics without its `$`; an escaped `\\$` is a plain dollar sign."""
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _first(value: Any) -> str | None:
    """The first name of a list-like cell (list, numpy array, None/NaN)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        if len(value) == 0:
            return None
        first = value[0]
    except TypeError:
        return str(value)
    return None if first is None or str(first) == "" else str(first)


def _draw_user_activity(monthly: _Monthly, path: str | Path) -> Path:
    fig = _figure(10, 5.2)
    ax = fig.add_subplot()
    if len(monthly.months) == 0:
        _no_data(ax, "events")
    else:
        x = np.arange(len(monthly.months))
        ax.bar(x, monthly.listens, color=_BAR, label="listens")
        ax.set_xticks(*_month_ticks(list(monthly.months)), rotation=45, ha="right")
        ax.set_xlabel("month")
        ax.set_ylabel("listens", color=_BAR)
        _thousands(ax.yaxis)
        ax2 = ax.twinx()
        ax2.plot(x, monthly.active_users, color=_ACCENT, marker="o", label="active users")
        ax2.set_ylabel("active users", color=_ACCENT)
        _thousands(ax2.yaxis)
        # head-room above the bars for the legend
        ax.set_ylim(0, float(monthly.listens.max()) * 1.2)
        ax2.set_ylim(0, float(monthly.active_users.max()) * 1.2)
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper left", ncols=2)
        ax.grid(axis="y", alpha=0.3)
    ax.set_title("Listens and active users per month")
    return _save(fig, path)


def _track_labels(items: pd.DataFrame, track_ids: np.ndarray) -> list[str]:
    """'track name — artist' for a few tracks (a short Python loop over <= n rows)."""
    idx = items.drop_duplicates(C.Item).set_index(C.Item)
    labels = []
    for t in track_ids:
        name = artist = None
        if t in idx.index:
            row = idx.loc[t]
            name = _first(row.get(C.TrackName))
            main_artist = row.get(C.MainArtist)
            artist = main_artist if isinstance(main_artist, str) and main_artist else None
            artist = artist or _first(row.get(C.ArtistNames))
        labels.append(f"{_short(name or f'track {t}', 40)} — {_short(artist or 'unknown', 28)}")
    return labels


def _draw_top_tracks(items: pd.DataFrame, pop: _Popularity, path: str | Path, n: int) -> Path:
    fig = _figure(10, 7.5)
    ax = fig.add_subplot()
    if len(pop.listeners) == 0:
        _no_data(ax, "events")
    else:
        top = np.argsort(-pop.listeners, kind="stable")[:n]
        values = pop.listeners[top]
        labels = _track_labels(items, pop.track_ids[top])
        y = np.arange(len(top))
        bars = ax.barh(y, values, color=_BAR)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3, fontsize=8)
        ax.set_xlim(0, values.max() * 1.15)
        ax.set_xlabel("listeners")
        _thousands(ax.xaxis)
        ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Top {n} tracks by listeners (all events, the test window included)")
    return _save(fig, path)


def _genre_names(items: pd.DataFrame) -> pd.Series:
    """Main genre name per item, '(no genre)' where there is none."""
    if C.MainGenreName in items.columns:
        names = items[C.MainGenreName].astype("object")
    elif C.GenreNames in items.columns:
        names = items[C.GenreNames].map(_first)
    else:
        names = pd.Series(None, index=items.index, dtype="object")
    if C.MainGenre in items.columns:
        names = names.where(items[C.MainGenre].to_numpy() != -1, None)
    names = names.where(names.notna() & (names.astype(str).str.strip() != ""), _NO_GENRE)
    return names.astype(str)


def genre_shares(items: pd.DataFrame, pop: _Popularity, n: int) -> pd.Series:
    """The `n` genres with the largest share of listens (by the track's main genre), largest
    first; genres nobody listened to are left out (they were drawn as 0.0% bars filling
    the top n). Empty without listens."""
    total = int(pop.listeners.sum())
    if total == 0:
        return pd.Series(dtype=np.float64)
    it = items.drop_duplicates(C.Item)
    listens = pd.Series(pop.listeners, index=pop.track_ids)
    per_item = listens.reindex(it[C.Item].to_numpy()).fillna(0).to_numpy()
    by_genre = pd.Series(per_item, index=_genre_names(it).to_numpy()).groupby(level=0).sum()
    return (by_genre[by_genre > 0] / total).sort_values(ascending=False).head(n)


def _draw_top_genres(items: pd.DataFrame, pop: _Popularity, path: str | Path, n: int) -> Path:
    fig = _figure(10, 7)
    ax = fig.add_subplot()
    total = int(pop.listeners.sum())
    share = genre_shares(items, pop, n)
    if len(share) == 0:  # no events, or only of tracks the catalogue does not hold
        _no_data(ax, "events" if total == 0 else "genres of the listened tracks")
    else:
        y = np.arange(len(share))
        colors = [_GREY if g in (_NO_GENRE, "unknown") else _BAR for g in share.index]
        bars = ax.barh(y, share.to_numpy() * 100, color=colors)
        ax.set_yticks(y, [_short(g, 30) for g in share.index])
        ax.invert_yaxis()
        ax.bar_label(bars, labels=[f"{v:.1%}" for v in share], padding=3, fontsize=8)
        ax.set_xlim(0, float(share.max()) * 100 * 1.15)
        ax.set_xlabel("share of listens, %")
        ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Top {n} genres by share of listens (main genre of the track)")
    return _save(fig, path)


def _draw_long_tail(pop: _Popularity, path: str | Path) -> Path:
    fig = _figure(9, 6)
    ax = fig.add_subplot()
    counts = np.sort(pop.listeners)[::-1]
    if len(counts) == 0:
        _no_data(ax, "events")
    else:
        n = len(counts)
        ranks = np.arange(1, n + 1)
        # ~3000 log-spaced points draw the same curve as a million
        sample = np.unique(np.geomspace(1, n, num=min(n, 3000)).astype(np.int64)) - 1
        ax.loglog(ranks[sample], counts[sample], color=_BAR, lw=2)
        total = counts.sum()
        cum = np.cumsum(counts)
        drawn: set[int] = set()
        for frac, color in ((0.01, _ACCENT), (0.10, "#edae49")):
            k = max(1, int(math.ceil(n * frac)))
            if k in drawn:  # fewer than 100 tracks: the 10% line is the 1% one
                continue
            drawn.add(k)
            share = cum[k - 1] / total
            ax.axvline(k, color=color, ls="--", lw=1.2)
            ax.annotate(
                f"top {frac:.0%} of tracks ({k:,}):\n{share:.1%} of listens",
                xy=(k, counts[k - 1]),
                xytext=(8, 10),
                textcoords="offset points",
                color=color,
                fontsize=10,
                fontweight="bold",
            )
        ax.set_xlabel("track popularity rank (log)")
        ax.set_ylabel("listeners (log)")
        _thousands(ax.xaxis)
        _thousands(ax.yaxis)
        ax.grid(which="major", alpha=0.3)
        ax.set_title(
            f"{n:,} tracks with at least one listen, {total:,} listens",
            fontsize=9,
            color="#444444",
        )
    fig.suptitle("Long tail: listeners per track by popularity rank", fontsize=12)
    return _save(fig, path)


def history_length_bars(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bins of the history-length picture: (edges, height of each bin).

    Log-spaced bins with edges at x.5, so each holds whole listen counts, 1 to several
    hundred of them; a bin's height is its users divided by the counts it holds (users per
    listen count), so bins of different widths compare: the raw count per bin made a bin
    of three counts tower over its neighbours of one or two.
    """
    lengths = np.asarray(lengths)
    starts = np.unique(np.round(np.geomspace(1, float(lengths.max()), num=50)))
    edges = np.append(starts - 0.5, starts[-1] + 0.5)
    users, _ = np.histogram(lengths, bins=edges)
    return edges, users / np.diff(edges)


def _draw_user_history_length(pop: _Popularity, path: str | Path) -> Path:
    fig = _figure(9, 5.5)
    ax = fig.add_subplot()
    lengths = pop.user_listens
    if len(lengths) == 0:
        _no_data(ax, "events")
    else:
        edges, heights = history_length_bars(lengths)
        ax.stairs(heights, edges, fill=True, color=_BAR)
        ax.set_xscale("log")
        med = float(np.median(lengths))
        ax.axvline(med, color=_ACCENT, ls="--", lw=1.5, label=f"median {med:,g} listens")
        ax.legend(loc="upper right", title=f"{len(lengths):,} users, mean {lengths.mean():,.1f}")
        ax.set_xlabel("listens per user (log)")
        ax.set_ylabel("users per listen count")
        _thousands(ax.xaxis)
        _thousands(ax.yaxis)
        ax.grid(axis="y", alpha=0.3)
    ax.set_title("User history length")
    return _save(fig, path)


# ---------------------------------------------------------------------------- public API
def plot_user_activity(events: pd.DataFrame, out_path: str | Path) -> Path:
    """Bars of listens per month, with active (distinct) users per month on a twin axis."""
    return _draw_user_activity(_monthly(events), out_path)


def plot_top_tracks(
    items: pd.DataFrame, events: pd.DataFrame, out_path: str | Path, n: int = 20
) -> Path:
    """Horizontal bars of the `n` tracks with most listeners, "track name — artist"."""
    return _draw_top_tracks(items, _popularity(events, users=False), out_path, n)


def plot_top_genres(
    items: pd.DataFrame, events: pd.DataFrame, out_path: str | Path, n: int = 20
) -> Path:
    """Horizontal bars of the `n` main genres with the largest share of listens."""
    return _draw_top_genres(items, _popularity(events, users=False), out_path, n)


def plot_long_tail(events: pd.DataFrame, out_path: str | Path) -> Path:
    """Listeners vs popularity rank on log-log axes, the top 1% / 10% shares annotated."""
    return _draw_long_tail(_popularity(events, users=False), out_path)


def plot_user_history_length(events: pd.DataFrame, out_path: str | Path) -> Path:
    """Histogram of listens per user on a log x axis (log-spaced bins), median marked."""
    return _draw_user_history_length(_popularity(events), out_path)


def draw_eda(items: pd.DataFrame, events: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Draw every EDA picture (`EDA_FILES`) into `out_dir`; return their paths.

    The per-track and per-user counts are computed once and shared by the pictures.
    """
    out = Path(out_dir)
    pop = _popularity(events)
    paths = [
        _draw_user_activity(_monthly(events), out / EDA_FILES[0]),
        _draw_top_tracks(items, pop, out / EDA_FILES[1], 20),
        _draw_top_genres(items, pop, out / EDA_FILES[2], 20),
        _draw_long_tail(pop, out / EDA_FILES[3]),
        _draw_user_history_length(pop, out / EDA_FILES[4]),
    ]
    return paths


def draw_metrics(
    results: Mapping[str, Mapping[str, Any]],
    out_path: str | Path,
    metrics: Sequence[str] | None = None,
    title: str = "Offline metrics by model (mean ± standard error over users)",
) -> Path:
    """Compare models on every metric: one panel per metric (their scales differ by orders
    of magnitude), a bar per model (colours in the legend) with its ± stderr error bar
    (none for a metric without one, such as coverage) and value.

    `results` maps a model name to `musicrec.metrics.evaluate()` output
    ({metric: {"mean", "stderr", "n_users"}}). `metrics` picks and orders the panels
    (default: every metric found, in first-seen order).
    """
    models = list(results)
    if metrics is None:
        names: dict[str, None] = {}
        for m in models:
            for name, summary in results[m].items():
                if isinstance(summary, Mapping) and summary.get("mean") is not None:
                    names[name] = None
        metrics = list(names)
    n = len(metrics)
    ncols = min(4, max(n, 1))
    nrows = max(1, math.ceil(n / ncols))
    fig = _figure(3.3 * ncols + 0.5, 3.2 * nrows + 0.8)
    colors = [f"C{i % 10}" for i in range(len(models))]
    if n == 0:
        _no_data(fig.add_subplot(), "metrics")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        means, errs = [], []
        for m in models:
            s = results[m].get(metric) or {}
            means.append(np.nan if s.get("mean") is None else float(s["mean"]))
            errs.append(np.nan if s.get("stderr") is None else float(s["stderr"]))
        x = np.arange(len(models))
        bars = ax.bar(x, np.nan_to_num(means), yerr=errs, color=colors, capsize=4)
        ax.bar_label(
            bars,
            labels=["n/a" if np.isnan(v) else f"{v:.3g}" for v in means],
            padding=2,
            fontsize=8,
        )
        tops = np.asarray(means, dtype=np.float64) + np.nan_to_num(
            np.asarray(errs, dtype=np.float64)
        )
        tops = tops[np.isfinite(tops)]
        top = float(tops.max()) if tops.size and tops.max() > 0 else 1.0
        ax.set_ylim(0, top * 1.2)
        ax.set_xticks([])
        ax.set_title(metric, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=13)
    if models and n:
        from matplotlib.patches import Patch

        handles = [Patch(color=c, label=m) for m, c in zip(models, colors, strict=True)]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(models), 5))
    return _save(fig, out_path)

"""Global time split: a test window at the end, a label window before it.

Every window starts at a day boundary. Models that feed evaluation only ever see events
strictly before the window they are evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from musicrec.columns import Columns as C


def choose_window_start(dates: pd.Series | np.ndarray, tail_share: float) -> pd.Timestamp:
    """The day boundary whose tail (events on or after it) share is closest to `tail_share`.

    Days are counted with one `np.unique` over day-truncated dates, so this is linear in the
    number of events. The first day is never chosen (the window before it would be empty).
    """
    days = np.asarray(dates, dtype="datetime64[ns]").astype("datetime64[D]")
    uniq, counts = np.unique(days, return_counts=True)
    if len(uniq) < 2:
        raise ValueError("need events on at least two distinct days to split by time")
    tail = np.cumsum(counts[::-1])[::-1] / counts.sum()  # tail[i] = share on/after uniq[i]
    best = 1 + int(np.argmin(np.abs(tail[1:] - tail_share)))
    return pd.Timestamp(uniq[best])


def serving_end(dates: pd.Series | np.ndarray, test_start: pd.Timestamp) -> pd.Timestamp:
    """Where the features of models refit on every event (`final_fit = "all"`) are computed:
    one period after the last event, as the test window started one period after the
    history. The ranker was trained on windows starting right after their history, so
    "days since" and "recent" features then keep the ranges it learned. On data dated by
    month (every event on a month's 1st at midnight: Last.fm) the period is a calendar
    month: the next month's 1st, where the day after the last event made every user
    active that month "1 day since" (28 or more in training) and stretched the recent
    window over one month more. On data dated by day (every event at midnight: the real
    data) it is the day after the last event, whatever gap came before `test_start` (days
    without events there made it that many days later, every recently active user "3 days
    since" or more where training saw 1). Otherwise (times of day) it is the gap between
    the last event before `test_start` and `test_start`."""
    times = np.asarray(dates, dtype="datetime64[ns]")
    start = np.datetime64(test_start, "ns")
    before = times[times < start]
    if len(before) == 0:
        raise ValueError("serving_end needs events before the test window's start")
    last = times.max()
    months = times.astype("datetime64[M]")
    if (months.astype("datetime64[ns]") == times).all():
        return pd.Timestamp((last.astype("datetime64[M]") + 1).astype("datetime64[ns]"))
    days = times.astype("datetime64[D]")
    if (days.astype("datetime64[ns]") == times).all():
        return pd.Timestamp((last.astype("datetime64[D]") + 1).astype("datetime64[ns]"))
    return pd.Timestamp(last + (start - before.max()))


@dataclass(frozen=True)
class Split:
    """Events before `start` (history) and on/after it (`window_events`: the test or
    label window)."""

    history: pd.DataFrame
    window_events: pd.DataFrame
    start: pd.Timestamp
    frame: pd.DataFrame  # every row, history then window: both sides are slices of it

    def facts(self, name: str) -> dict[str, object]:
        hist_users = self.history[C.User].unique()
        tgt_users = self.window_events[C.User].unique()
        cold = np.setdiff1d(tgt_users, hist_users, assume_unique=True)
        return {
            f"{name}_start": str(self.start.date()),
            f"{name}_end": str(self.window_events[C.Datetime].max().date())
            if len(self.window_events)
            else None,
            "history_rows": len(self.history),
            "history_users": len(hist_users),
            f"{name}_rows": len(self.window_events),
            f"{name}_users": len(tgt_users),
            f"{name}_warm_users": len(tgt_users) - len(cold),
            f"{name}_cold_users": len(cold),
        }


def split_by_time(
    events: pd.DataFrame, start: date | pd.Timestamp | None = None, tail_share: float = 0.1
) -> Split:
    """Split `events` at `start` (or at the day boundary chosen by `choose_window_start`)."""
    ts = (
        pd.Timestamp(start)
        if start is not None
        else choose_window_start(events[C.Datetime].to_numpy(), tail_share)
    )
    mask = (events[C.Datetime] >= ts).to_numpy()
    # One reordered copy, history rows first, each side in the input's order (a stable
    # partition). Both sides are views of it (copy-on-write slices), so the split costs one
    # copy of the events instead of a boolean-mask copy per side, and the caller can drop
    # `events` and keep `Split.frame` (every row) in its place.
    order = np.argsort(mask, kind="stable")
    frame = events.take(order).reset_index(drop=True)
    del order
    n_hist = len(mask) - int(np.count_nonzero(mask))
    hist, tgt = frame.iloc[:n_hist], frame.iloc[n_hist:]
    if len(hist) == 0 or len(tgt) == 0:
        raise ValueError(f"split at {ts.date()} leaves an empty side ({len(hist)}/{len(tgt)} rows)")
    return Split(hist, tgt, ts, frame)

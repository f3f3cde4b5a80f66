"""The global time split: window start at a day boundary, history/target sides, facts."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from musicrec.columns import Columns as C
from musicrec.split import choose_window_start, serving_end, split_by_time


def _events(rows: list[tuple[int, int, str]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=[C.User, C.Item, C.Datetime])
    df[C.Datetime] = pd.to_datetime(df[C.Datetime])
    return df


def _day_counts(counts: dict[str, int]) -> pd.Series:
    """`n` events on each day, at varying times of the day."""
    stamps: list[pd.Timestamp] = []
    for day, n in counts.items():
        stamps += [pd.Timestamp(day) + pd.Timedelta(minutes=37 * j) for j in range(n)]
    return pd.Series(stamps)


# ------------------------------------------------------------------ window start


def test_window_start_closest_tail_share() -> None:
    # 10 events: 5 on day 1, 3 on day 2, 2 on day 3 -> tails 1.0, 0.5, 0.2
    dates = _day_counts({"2022-03-01": 5, "2022-03-02": 3, "2022-03-03": 2})
    assert choose_window_start(dates, 0.25) == pd.Timestamp("2022-03-03")
    assert choose_window_start(dates, 0.40) == pd.Timestamp("2022-03-02")
    assert choose_window_start(dates, 0.10) == pd.Timestamp("2022-03-03")
    # the first day is never chosen (the history before it would be empty)
    assert choose_window_start(dates, 0.99) == pd.Timestamp("2022-03-02")


def test_window_start_is_midnight_and_ignores_order() -> None:
    dates = _day_counts({"2022-05-10": 1, "2022-05-11": 6, "2022-05-14": 3})
    shuffled = dates.sample(frac=1.0, random_state=1).to_numpy()
    start = choose_window_start(shuffled, 0.3)
    assert start == pd.Timestamp("2022-05-14")  # tails 1.0, 0.9, 0.3
    assert start == start.normalize()


def test_window_start_on_exactly_two_days_is_the_second_day() -> None:
    """Two distinct days are enough: the window starts on the second (the first is never
    chosen), whatever the share asked for."""
    dates = _day_counts({"2022-03-01": 3, "2022-03-02": 1})
    for share in (0.1, 0.25, 0.9):
        assert choose_window_start(dates, share) == pd.Timestamp("2022-03-02")
    ev = _events([(1, 10, "2022-03-01 10:00"), (2, 11, "2022-03-02 18:00")])
    s = split_by_time(ev, None, 0.5)
    assert s.start == pd.Timestamp("2022-03-02")
    assert s.history[C.Item].tolist() == [10] and s.window_events[C.Item].tolist() == [11]


def test_window_start_needs_two_days() -> None:
    with pytest.raises(ValueError, match="two distinct days"):
        choose_window_start(_day_counts({"2022-01-01": 5}), 0.1)


# ------------------------------------------------------------------------ split


def test_split_with_explicit_date_and_facts() -> None:
    ev = _events(
        [
            (1, 10, "2022-06-01 10:00"),
            (1, 11, "2022-06-02 23:59"),
            (2, 10, "2022-06-02 08:00"),
            (1, 12, "2022-06-03 00:00"),  # exactly at the start: target
            (2, 13, "2022-06-04 12:00"),
            (3, 10, "2022-06-05 09:00"),  # user 3 only in the target: cold
            (3, 11, "2022-06-05 10:00"),
        ]
    )
    s = split_by_time(ev, date(2022, 6, 3))
    assert s.start == pd.Timestamp("2022-06-03")
    assert len(s.history) == 3 and len(s.window_events) == 4
    assert (s.history[C.Datetime] < s.start).all()
    assert (s.window_events[C.Datetime] >= s.start).all()
    facts = s.facts("test")
    assert facts == {
        "test_start": "2022-06-03",
        "test_end": "2022-06-05",
        "history_rows": 3,
        "history_users": 2,
        "test_rows": 4,
        "test_users": 3,
        "test_warm_users": 2,
        "test_cold_users": 1,
    }


def test_split_by_share_sides_partition_the_events() -> None:
    rng = np.random.default_rng(3)
    n = 5_000
    ev = pd.DataFrame(
        {
            C.User: rng.integers(0, 300, n),
            C.Item: rng.integers(0, 1_000, n),
            C.Datetime: pd.Timestamp("2022-01-01")
            + pd.to_timedelta(rng.integers(0, 90 * 86_400, n), unit="s"),
        }
    )
    s = split_by_time(ev, None, tail_share=0.2)
    assert s.start == s.start.normalize()
    assert s.history[C.Datetime].max() < s.start <= s.window_events[C.Datetime].min()
    assert len(s.history) + len(s.window_events) == n
    assert abs(len(s.window_events) / n - 0.2) < 0.01  # one day holds ~1.1% of the events
    # facts are consistent with a direct count
    facts = s.facts("label")
    hist_users = set(s.history[C.User])
    tgt_users = set(s.window_events[C.User])
    assert facts["label_users"] == len(tgt_users)
    assert facts["label_cold_users"] == len(tgt_users - hist_users)
    assert facts["label_warm_users"] == len(tgt_users & hist_users)
    assert facts["history_users"] == len(hist_users)


@pytest.mark.parametrize("start", [date(2022, 1, 1), date(2022, 7, 1)])
def test_split_leaving_an_empty_side_fails(start: date) -> None:
    ev = _events([(1, 10, "2022-03-01 10:00"), (2, 11, "2022-04-01 10:00")])
    with pytest.raises(ValueError, match="empty side"):
        split_by_time(ev, start)


def test_split_single_day_fails() -> None:
    ev = _events([(1, 10, "2022-03-01 10:00"), (2, 11, "2022-03-01 18:00")])
    with pytest.raises(ValueError):
        split_by_time(ev, None, 0.5)


def test_split_is_one_copy_with_sides_as_views_in_input_order() -> None:
    # events sorted by user (as prepared), windows interleaved: the split keeps each side in
    # the input's order, and both sides are slices of one frame holding every row
    ev = _events(
        [
            (1, 10, "2022-06-01"),
            (1, 11, "2022-06-04"),
            (2, 12, "2022-06-02"),
            (2, 13, "2022-06-05"),
            (3, 14, "2022-06-01"),
        ]
    )
    s = split_by_time(ev, date(2022, 6, 3))
    assert s.history[C.Item].tolist() == [10, 12, 14]
    assert s.window_events[C.Item].tolist() == [11, 13]
    assert s.frame is not None
    assert s.frame[C.Item].tolist() == [10, 12, 14, 11, 13]
    items = s.frame[C.Item].to_numpy()
    assert np.shares_memory(s.history[C.Item].to_numpy(), items)
    assert np.shares_memory(s.window_events[C.Item].to_numpy(), items)
    # the input is left as it was
    assert ev[C.Item].tolist() == [10, 11, 12, 13, 14]


def test_serving_end_keeps_the_spacing_of_the_test_window() -> None:
    """Models refit on every event compute features as far after the last event as the
    test window started after the history: by day, the day after; by month (Last.fm),
    the next month's 1st. It was always the day after the last event, which on monthly
    data made every user active in the last month "1 day since" (at least 28 in training)."""
    months = pd.to_datetime(["2010-08-01", "2010-09-01", "2010-10-01", "2010-11-01", "2011-05-01"])
    assert serving_end(pd.Series(months), pd.Timestamp("2010-11-01")) == pd.Timestamp("2011-06-01")
    # a calendar month, whatever the number of days before the test window (28 here) or
    # in the last month (30 in April)
    months = pd.to_datetime(["2011-01-01", "2011-02-01", "2011-03-01", "2011-04-01"])
    assert serving_end(months, pd.Timestamp("2011-03-01")) == pd.Timestamp("2011-05-01")
    days = pd.to_datetime(["2022-12-14", "2022-12-15", "2022-12-16", "2022-12-31"])
    assert serving_end(days, pd.Timestamp("2022-12-16")) == pd.Timestamp("2023-01-01")
    # by day, the day after the last event even when days without events came before the
    # test window (it was last + the 3-day gap: 2023-01-03)
    gap = pd.to_datetime(["2022-12-10", "2022-12-13", "2022-12-16", "2022-12-31"])
    assert serving_end(gap, pd.Timestamp("2022-12-16")) == pd.Timestamp("2023-01-01")
    # time of day kept: the test window began 2 s after the last history event
    seconds = pd.to_datetime(["2022-12-15 23:59:58", "2022-12-16 00:00:00", "2022-12-20 08:00:00"])
    assert serving_end(seconds, pd.Timestamp("2022-12-16")) == pd.Timestamp("2022-12-20 08:00:02")
    with pytest.raises(ValueError, match="before the test window"):
        serving_end(days, pd.Timestamp("2022-12-01"))


def test_split_sides_have_exactly_the_input_columns() -> None:
    """The reordered frame is renumbered without keeping the old index as a column: both
    sides (and `frame`) have the input's columns, no `index`."""
    ev = _events([(1, 10, "2022-06-01"), (1, 11, "2022-06-04"), (2, 12, "2022-06-02")])
    s = split_by_time(ev, date(2022, 6, 3))
    want = [C.User, C.Item, C.Datetime]
    assert list(s.history.columns) == want
    assert list(s.window_events.columns) == want
    assert list(s.frame.columns) == want
    assert s.frame.index.tolist() == [0, 1, 2]

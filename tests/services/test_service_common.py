"""Helpers of `musicrec.service_common` that the route tests reach only in part: what a 422
echoes of the client's input (`json_safe`), its one-line message (`validation_message`),
`RateLimitedLog`, the artifact helpers (`float_column`, `compact_ids`, `sort_order`) and
the start-up fetch's retries (`fetch_artifacts_if_configured`), the batch limits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from musicrec import service_common
from musicrec.service_common import (
    MAX_ECHO_CHARS,
    RateLimitedLog,
    compact_ids,
    float_column,
    json_safe,
    sort_order,
    validation_message,
)
from musicrec.settings import Settings

from .conftest import make_settings


def test_json_safe_keeps_64_bit_integers_and_turns_bigger_ones_into_text() -> None:
    """A 422 echoes an integer input as a number while orjson can render it (64 bits),
    as text beyond."""
    for n in (0, 5, -7, 2**62, 2**63 - 1, -(2**63)):
        assert json_safe(n) == n
    assert json_safe(2**63) == "9223372036854775808"
    assert json_safe(-(2**63) - 1) == "-9223372036854775809"


def test_json_safe_echoes_bytes_as_their_clipped_repr() -> None:
    """A body that is not UTF-8 is echoed as the repr of its bytes (at most 2 x
    MAX_ECHO_CHARS bytes read, MAX_ECHO_CHARS characters kept)."""
    assert json_safe(b"ab\xff") == "b'ab\\xff'"
    assert json_safe(bytearray(b"x")) == "b'x'"
    long = json_safe(b"\xff" * 1000)
    assert long == ("b'" + "\\xff" * 1000)[:MAX_ECHO_CHARS] + "..."


def test_json_safe_cuts_nesting_at_three_levels() -> None:
    """Containers are copied for three levels; below, the value is its (clipped) repr."""
    assert json_safe({"a": {"b": {"c": {"d": 1}}}}) == {"a": {"b": {"c": "{'d': 1}"}}}
    assert json_safe([[[[1, 2]]]]) == [[["[1, 2]"]]]


def test_json_safe_turns_other_values_into_their_text() -> None:
    """What pydantic puts in an error's `ctx` (an exception, ...) is echoed as its text."""
    assert json_safe({"error": ValueError("must be a JSON integer")}) == {
        "error": "must be a JSON integer"
    }
    assert json_safe(Path("a/b")) == "a/b"


def test_validation_message_counts_only_the_errors_left_out() -> None:
    """`... and N more error(s)` only when the list was cut: not for a complete list."""
    err = {"loc": ("query", "k"), "msg": "bad", "input": "0"}
    assert validation_message([err]) == "invalid request: query k: bad (got '0')"
    assert validation_message([err], total=1) == "invalid request: query k: bad (got '0')"
    assert validation_message([err], total=3) == (
        "invalid request: query k: bad (got '0'); ... and 2 more error(s)"
    )


def test_float_column_keeps_float32_and_widens_the_rest() -> None:
    """float32 scores stay float32 (orjson then writes 0.1, not 0.10000000149011612);
    other numbers become float64."""
    table = pa.table(
        {
            "f32": pa.array([0.1], pa.float32()),
            "f64": pa.array([0.1], pa.float64()),
            "i": pa.array([3], pa.int32()),
        }
    )
    f32 = float_column(table, "f32")
    assert f32.dtype == np.float32 and f32[0] == np.float32(0.1)
    assert float_column(table, "f64").dtype == np.float64
    i = float_column(table, "i")
    assert i.dtype == np.float64 and i.tolist() == [3.0]


def test_compact_ids_narrows_only_what_fits_in_int32() -> None:
    """Ids in 0 .. 2**31-1 become int32; one id outside keeps int64 and every value."""
    small = compact_ids(np.array([0, 2**31 - 1], np.int64))
    assert small.dtype == np.int32 and small.tolist() == [0, 2**31 - 1]
    for values in ([1, 2**31], [-1, 5], [2**40, 3]):
        wide = compact_ids(np.array(values, np.int64))
        assert wide.dtype == np.int64 and wide.tolist() == values
    assert compact_ids(np.array([], np.int64)).dtype == np.int32


def test_sort_order_sorts_by_key_then_rank_from_two_rows() -> None:
    """Rows out of (key, rank) order get the order that sorts them, however few; rows in
    order need none."""
    assert sort_order(np.array([1, 1]), np.array([2, 1])).tolist() == [1, 0]
    assert sort_order(np.array([2, 1]), np.array([1, 1])).tolist() == [1, 0]
    assert sort_order(np.array([1, 1, 2]), np.array([1, 2, 1])) is None
    assert sort_order(np.array([7]), np.array([3])) is None
    # unsigned ranks: 1 - 2 must not wrap around to a huge positive step
    ranks = np.array([2, 1], np.uint32)
    assert sort_order(np.array([4, 4], np.uint64), ranks).tolist() == [1, 0]


def test_rate_limited_log_counts_the_messages_it_held_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One warning per interval; the ones in between go to DEBUG and are counted in the
    next warning logged."""
    clock = [1000.0]
    monkeypatch.setattr(service_common.time, "monotonic", lambda: clock[0])
    logger = logging.getLogger("musicrec.services.test_rate")
    limited = RateLimitedLog(logger, interval_s=10.0)
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        limited.warning("upstream down: %s", 1)
        clock[0] = 1005.0
        limited.warning("upstream down: %s", 2)
        limited.warning("upstream down: %s", 3)
        clock[0] = 1010.0
        limited.warning("upstream down: %s", 4)
        clock[0] = 1020.0
        limited.warning("upstream down: %s", 5)
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger.name]
    assert got == [
        (logging.WARNING, "upstream down: 1"),
        (logging.DEBUG, "upstream down: 2"),
        (logging.DEBUG, "upstream down: 3"),
        (logging.WARNING, "upstream down: 4 (2 similar messages suppressed)"),
        (logging.WARNING, "upstream down: 5"),
    ]


def test_the_start_up_fetch_tries_again_only_within_fetch_wait_s(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bucket in the middle of an upload is tried again every FETCH_RETRY_S (5 s), and
    not once more when the next try would start after `fetch_wait_s` (12 s): tries at 0, 5
    and 10 s, then the error (no earlier copy). A fake clock: no real wait."""
    from musicrec import s3
    from musicrec.errors import UploadInProgressError

    clock = [0.0]
    tries: list[float] = []

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    def download(*args: Any, **kwargs: Any) -> None:
        tries.append(clock[0])
        raise UploadInProgressError("upload under way")

    monkeypatch.setattr(service_common.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(service_common.time, "sleep", sleep)
    monkeypatch.setattr(s3, "download_artifacts", download)
    monkeypatch.setattr(s3, "fetched_copy_is_complete", lambda *args: False)
    cfg = make_settings(tmp_path, tmp_path, fetch_artifacts_from_s3=True, fetch_wait_s=12)
    with pytest.raises(UploadInProgressError):
        service_common.fetch_artifacts_if_configured(cfg, [tmp_path / "similar.parquet"])
    assert tries == [0.0, 5.0, 10.0]


def test_the_batch_limits_are_the_readmes(settings: Settings) -> None:
    """README: a 422 for more than 200 `track_ids` in `/similar_tracks_batch` and more
    than 500 `user_ids` in `/get_events_batch`; exactly that many are answered."""
    from fastapi.testclient import TestClient

    from musicrec.service_events import create_app as events_app
    from musicrec.service_similar import create_app as similar_app

    for make_app, path, field, limit in (
        (similar_app, "/similar_tracks_batch", "track_ids", 200),
        (events_app, "/get_events_batch", "user_ids", 500),
    ):
        with TestClient(make_app(settings)) as client:
            ok = client.post(path, json={field: list(range(limit)), "k": 1})
            assert ok.status_code == 200, (path, ok.text)
            over = client.post(path, json={field: list(range(limit + 1)), "k": 1})
            assert over.status_code == 422, path

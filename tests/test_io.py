"""Batch parquet writer and the memory helper used by the ranker stage."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from musicrec import io
from musicrec.io import (
    read_artifact,
    read_json,
    remove_stale_temporaries,
    write_json,
    write_parquet,
    write_parquet_batches,
)
from musicrec.memory import release_free_memory, rss_gib


def frames(n: int, rows: int) -> Iterator[pd.DataFrame]:
    for b in range(n):
        yield pd.DataFrame(
            {
                "user_id": np.full(rows, b, dtype=np.int32),
                "track_id": np.arange(rows, dtype=np.int32) + 100 * b,
                "score": np.linspace(1, 0, rows, dtype=np.float32),
                "rank": np.arange(1, rows + 1, dtype=np.int16),
            }
        )


def test_batches_make_the_same_file_content_as_one_write(tmp_path: Path) -> None:
    rows = write_parquet_batches(frames(4, 7), tmp_path / "b.parquet")
    write_parquet(pd.concat(frames(4, 7), ignore_index=True), tmp_path / "one.parquet")
    assert rows == 28
    batched = pd.read_parquet(tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(batched, pd.read_parquet(tmp_path / "one.parquet"))
    assert pq.ParquetFile(tmp_path / "b.parquet").num_row_groups == 4  # one per frame
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failing_batch_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "recs.parquet"
    write_parquet(next(frames(1, 3)), target)

    def broken() -> Iterator[pd.DataFrame]:
        yield from frames(2, 5)
        raise RuntimeError("scoring failed")

    with pytest.raises(RuntimeError, match="scoring failed"):
        write_parquet_batches(broken(), target)
    assert len(pd.read_parquet(target)) == 3  # the old file, not a half-written one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.parquet"]


def test_mismatched_or_missing_frames_are_refused(tmp_path: Path) -> None:
    first = next(frames(1, 3))
    other = first.assign(score=first["score"].astype(np.float64))
    with pytest.raises(ValueError, match="differs from the first frame"):
        write_parquet_batches(iter([first, other]), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="no frames"):
        write_parquet_batches(iter([]), tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_release_free_memory_reports_the_resident_set(caplog: pytest.LogCaptureFixture) -> None:
    big = np.ones(50_000_000, dtype=np.uint8)  # 50 MB, touched
    held = rss_gib()
    del big
    with caplog.at_level("INFO", logger="musicrec.memory"):
        after = release_free_memory("in a test")
    assert 0 < after < held  # the freed 50 MB left the resident set
    assert "memory in a test: RSS" in caplog.text


def test_release_free_memory_logs_at_the_level_asked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="musicrec.memory"):
        release_free_memory("quietly", logging.DEBUG)
    assert "quietly" not in caplog.text
    with caplog.at_level("DEBUG", logger="musicrec.memory"):
        release_free_memory("quietly", logging.DEBUG)
    assert "memory quietly: RSS" in caplog.text


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_permissions_of_a_plain_file(
    tmp_path: Path, umask: int, mode: int
) -> None:
    """Artifacts written through a temporary file have the mode the umask gives any new
    file (they were always 0600: unreadable by a service running as another user)."""
    old = os.umask(umask)
    try:
        written = [
            write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "x.parquet"),
            write_json({"a": 1}, tmp_path / "m.json"),
        ]
    finally:
        os.umask(old)
    for path in written:
        assert path.stat().st_mode & 0o777 == mode, path


def test_release_free_memory_collects_and_hands_both_pools_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the release does, not only what it reports: the garbage collector runs,
    pyarrow's pool releases its unused memory and glibc's malloc_trim(0) is called (a
    50 MB numpy array leaves the resident set on `del` by itself, so the RSS test above
    cannot tell)."""
    import gc

    import pyarrow as pa

    from musicrec import memory

    calls: list[str] = []
    trims: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("gc") or 0)

    class Pool:
        def release_unused(self) -> None:
            calls.append("pyarrow")

    monkeypatch.setattr(pa, "default_memory_pool", lambda: Pool())
    monkeypatch.setattr(memory, "_libc_malloc_trim", lambda: trims.append)
    memory.release_free_memory("in a test")
    assert calls == ["gc", "pyarrow"] and trims == [0]


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """What a process killed outright left: `.name.XXXX.tmp` files untouched for ten
    minutes go, in sub-folders too; a fresh one (a live writer's), other hidden files and
    the artifacts stay."""
    import time

    from musicrec.io import remove_stale_temporaries

    old = [
        tmp_path / ".a.parquet.x1.tmp",
        tmp_path / "model" / ".f.npy.x2.tmp",
        tmp_path / "recommendations" / ".s.parquet.x4.tmp.1F4a8AFd",  # boto3's, in a fetch's
    ]
    fresh = tmp_path / ".b.parquet.x3.tmp"
    keep = [tmp_path / "a.parquet", tmp_path / ".s3-fetched.json", tmp_path / "notes.tmp"]
    for path in [*old, fresh, *keep]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"12345")
    hour_ago = time.time() - 3600
    for path in [*old, *keep]:
        os.utime(path, (hour_ago, hour_ago))
    assert remove_stale_temporaries(tmp_path) == (3, 15)
    assert not any(p.exists() for p in old)
    assert fresh.exists() and all(p.exists() for p in keep)


def test_read_artifact_reads_the_required_columns_unless_asked_for_all(tmp_path: Path) -> None:
    """The services read only the columns they use (a file may carry more); the prepared
    data is read whole (`all_columns`), since the stages use its further columns."""
    path = tmp_path / "recommendations.parquet"
    frame = next(frames(1, 3)).assign(extra=[1.0, 2.0, 3.0])
    write_parquet(frame, path)
    assert read_artifact(path, missing_hint="-").column_names == [
        "user_id",
        "track_id",
        "score",
        "rank",
    ]
    assert read_artifact(path, missing_hint="-", all_columns=True).column_names == list(
        frame.columns
    )


def test_read_json_gives_the_default_for_a_missing_file(tmp_path: Path) -> None:
    assert read_json(tmp_path / "none.json", default={"a": 1}) == {"a": 1}
    write_json({"b": [1, 2]}, tmp_path / "x.json")
    assert read_json(tmp_path / "x.json", default=None) == {"b": [1, 2]}


def test_a_damaged_page_is_an_error_never_other_values(tmp_path: Path) -> None:
    """Artifacts are written with a CRC per page and read back checking it: without, a flip
    of one bit in a page mostly read through as other numbers (served, or scored)."""
    from helpers_raw import flipped_copies

    from musicrec.errors import ArtifactError

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(40, dtype=np.int32), 50),
            "track_id": rng.integers(0, 10**6, 2000).astype(np.int32),
            "score": rng.random(2000).astype(np.float32),
            "rank": np.tile(np.arange(1, 51, dtype=np.int32), 40),
        }
    )
    path = write_parquet(df, tmp_path / "recommendations.parquet")
    expected = read_artifact(path, missing_hint="-")
    silent = errors = 0
    for damaged in flipped_copies(path, "track_id", step=5):
        path.write_bytes(damaged)
        try:
            got = read_artifact(path, missing_hint="-")
        except ArtifactError:
            errors += 1
            continue
        silent += not got.equals(expected)
    assert errors > 100 and silent == 0, (errors, silent)


# --- found by a mutation review of io.py ---


def _mode_with_umask(path: Path, umask: int) -> int:
    old = os.umask(umask)
    try:
        write_json({"a": 1}, path)
    finally:
        os.umask(old)
    return path.stat().st_mode & 0o777


def test_the_umask_is_read_without_being_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where /proc shows it, the umask is read there: setting it, even briefly, races
    with files other threads create."""
    real_umask = os.umask
    old = real_umask(0o027)
    try:

        def no_umask(mask: int) -> int:
            raise AssertionError("os.umask called")

        monkeypatch.setattr(io.os, "umask", no_umask)
        write_json({"a": 1}, tmp_path / "m.json")
    finally:
        monkeypatch.undo()
        real_umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o640


def test_without_proc_the_umask_is_still_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Path.read_text

    def no_proc(self: Path, *a: object, **kw: object) -> str:
        if str(self) == "/proc/self/status":
            raise OSError("no /proc here")
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", no_proc)
    assert _mode_with_umask(tmp_path / "m.json", 0o027) == 0o640


def test_a_temporary_exactly_as_old_as_the_limit_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file untouched for exactly `older_than_s` is stale (the docstring: "if untouched
    for `older_than_s`")."""
    stale = tmp_path / ".a.parquet.x1.tmp"
    stale.write_bytes(b"123")
    os.utime(stale, (9_400, 9_400))
    monkeypatch.setattr(io.time, "time", lambda: 10_000.0)
    assert remove_stale_temporaries(tmp_path, older_than_s=600) == (1, 3)


def test_batches_differing_only_in_pandas_metadata_are_written(tmp_path: Path) -> None:
    """Only the Arrow schema must match (the file keeps the first frame's metadata):
    strings held as `object` in one frame and as `string` in the next are one column."""
    first = pd.DataFrame(
        {"id": np.arange(2, dtype=np.int32), "name": pd.Series(["a", "b"], dtype=object)}
    )
    second = first.assign(name=first["name"].astype("string[python]"))
    assert pa.Table.from_pandas(first, preserve_index=False).schema.equals(
        pa.Table.from_pandas(second, preserve_index=False).schema, check_metadata=False
    )
    assert write_parquet_batches(iter([first, second]), tmp_path / "x.parquet") == 4
    assert pd.read_parquet(tmp_path / "x.parquet")["name"].tolist() == ["a", "b", "a", "b"]

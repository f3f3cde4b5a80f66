"""The heard index (`musicrec.heard`): built from a fit's matrix, saved as plain .npy files,
read memory-mapped, and the lookups the recommendation service runs per request."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import overload

import numpy as np
import pandas as pd
import pytest

from musicrec import heard as heard_module
from musicrec.blending import blend
from musicrec.columns import Columns as C
from musicrec.errors import ArtifactError
from musicrec.heard import TOP_UP_CHUNK, HeardIndex, drop_heard, heard_mask, unheard
from musicrec.matrix import InteractionMatrix


def events(pairs: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=[C.User, C.Item])


def test_from_matrix_by_hand() -> None:
    """Rows are users in id order, each with its distinct tracks ascending."""
    matrix = InteractionMatrix.from_events(
        events([(5, 30), (9, 20), (5, 10), (7, 10), (5, 10), (5, 2**31 - 1)])
    )
    index = HeardIndex.from_matrix(matrix)
    assert index.users.tolist() == [5, 7, 9]
    assert index.offsets.tolist() == [0, 3, 4, 5]
    assert index.tracks.tolist() == [10, 30, 2**31 - 1, 10, 20]
    assert index.tracks_of(5).tolist() == [10, 30, 2**31 - 1]
    assert index.tracks_of(9).tolist() == [20]
    assert index.tracks_of(6).tolist() == [] and index.tracks_of(10).tolist() == []
    assert len(index) == 3


@pytest.mark.parametrize("mmap", [True, False])
def test_save_and_load_round_trip(tmp_path: Path, mmap: bool) -> None:
    rng = np.random.default_rng(0)
    pairs = [(int(u), int(t)) for u, t in rng.integers(0, 50, size=(400, 2))]
    index = HeardIndex.from_matrix(InteractionMatrix.from_events(events(pairs)))
    back = HeardIndex.load(index.save(tmp_path / "heard"), mmap=mmap)
    # mapped: a plain ndarray view whose buffer is the file's mapping
    assert type(back.tracks) is np.ndarray
    assert isinstance(back.tracks.base, np.memmap) == mmap
    for a, b in zip(
        (index.users, index.offsets, index.tracks),
        (back.users, back.offsets, back.tracks),
        strict=True,
    ):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    expected = events(pairs).drop_duplicates().groupby(C.User)[C.Item].agg(sorted)
    for user, tracks in expected.items():
        assert back.tracks_of(int(user)).tolist() == tracks


ORDER_CASES = [
    # (offsets, tracks, first position out of order or None)
    ([0, 2, 4], [1, 5, 2, 3], None),  # the drop at 2 is where the second user begins
    ([0, 2, 2, 4], [1, 5, 2, 3], None),  # a user with no tracks in between
    ([0, 3, 4], [1, 5, 3, 4], 2),  # 3 after 5 inside the first user
    ([0, 2, 4], [1, 5, 7, 7], 3),  # a repeat inside the second user
    ([0, 4], [9, 8, 7, 6], 1),
    ([0, 1, 2, 3, 4], [9, 8, 7, 6], None),  # one track each
    ([0], [], None),
]


@pytest.mark.parametrize("chunk", [1 << 24, 2, 1])
@pytest.mark.parametrize(("offsets", "tracks", "at"), ORDER_CASES)
def test_load_finds_tracks_out_of_order_within_a_user(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    offsets: list[int],
    tracks: list[int],
    at: int | None,
    chunk: int,
) -> None:
    """By hand, in one chunk and across chunk edges; the error names the user."""
    monkeypatch.setattr(heard_module, "CHECK_CHUNK", chunk)
    users = np.arange(100, 100 + len(offsets) - 1, dtype=np.int64)
    index = HeardIndex(users, np.array(offsets, np.int64), np.array(tracks, np.int32))
    where = index.save(tmp_path / "heard")
    if at is None:
        assert HeardIndex.load(where).tracks.tolist() == tracks
        return
    user = users[np.searchsorted(offsets, at, side="right") - 1]
    words = (
        rf"tracks.npy: the track ids of user {user} are not strictly ascending \(position {at}\)"
    )
    with pytest.raises(ArtifactError, match=words):
        HeardIndex.load(where)


@pytest.mark.parametrize(
    ("users", "offsets", "named"),
    [
        (np.array([10, 30, 20], np.uint32), np.array([0, 1, 2, 3], np.int64), "users.npy"),
        (np.array([1, 2, 3], np.int64), np.array([0, 2, 1, 3], np.uint64), "offsets.npy"),
    ],
    ids=["unsigned users going down", "unsigned offsets going down"],
)
def test_load_refuses_unsigned_arrays_out_of_order(
    tmp_path: Path, users: np.ndarray, offsets: np.ndarray, named: str
) -> None:
    """Unsigned ids or offsets that go down are refused like signed ones (a difference of
    unsigned values wraps around, and they loaded: lookups then missed users)."""
    where = HeardIndex(users, offsets, np.array([5, 6, 7], np.int32)).save(tmp_path / "heard")
    with pytest.raises(ArtifactError, match=named):
        HeardIndex.load(where)


def test_heard_mask_by_hand() -> None:
    heard = np.array([3, 8, 20], dtype=np.int32)
    items = np.array([8, 1, 20, 21, 3, -4], dtype=np.int64)
    assert heard_mask(heard, items).tolist() == [True, False, True, False, True, False]
    # ids beyond the index's int32 range are never heard (cast naively, 2**32 + 8 is 8)
    assert heard_mask(heard, np.array([2**32 + 8, -(2**32) + 3])).tolist() == [False, False]
    assert heard_mask(heard[:0], items).tolist() == [False] * 6
    assert heard_mask(heard, items[:0]).tolist() == []


def test_drop_heard_keeps_the_order() -> None:
    heard = np.array([2, 4, 6])
    assert drop_heard([9, 4, 1, 2, 7, 6], heard) == [9, 1, 7]
    assert drop_heard([9, 4], heard[:0]) == [9, 4]
    assert drop_heard([], heard) == []


class CountingList(Sequence[int]):
    """A list that remembers the highest position read."""

    def __init__(self, items: list[int]) -> None:
        self.items = items
        self.read_to = 0

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> list[int]: ...
    def __getitem__(self, i: int | slice) -> int | list[int]:
        stop = i.stop if isinstance(i, slice) else i + 1
        self.read_to = max(self.read_to, min(stop or len(self.items), len(self.items)))
        return self.items[i]


def test_unheard_top_up_reads_the_popular_list_only_as_far_as_needed() -> None:
    popular = CountingList(list(range(100, 10_100)))
    heard = np.array([100, 102, 103])
    got = blend([], [1, 2], 5, (), unheard(popular, heard))
    assert got == [1, 2, 101, 104, 105]
    assert popular.read_to == TOP_UP_CHUNK  # one chunk checked, not 10,000 tracks
    # without history the popular list is passed through as it is
    assert unheard(popular, heard[:0]) is popular
    # the whole list when it must: everything but the heard tracks
    assert list(unheard(popular, heard)) == [t for t in popular.items if t not in {100, 102, 103}]


def test_tracks_of_an_id_outside_the_users_dtype_is_empty() -> None:
    """The key is searched in the ids' own dtype: an id int32 cannot hold is unknown, never
    wrapped onto another user (2**32 + 5 would be 5)."""
    index = HeardIndex(
        np.array([5, 7], dtype=np.int32),
        np.array([0, 2, 3], dtype=np.int64),
        np.array([1, 2, 3], dtype=np.int32),
    )
    assert index.tracks_of(5).tolist() == [1, 2] and index.tracks_of(7).tolist() == [3]
    for user in (2**32 + 5, -(2**32) + 7, 2**31, -1, 6):
        assert index.tracks_of(user).tolist() == [], user


def test_load_refuses_a_user_id_written_twice(tmp_path: Path) -> None:
    """User ids must be strictly ascending: with a repeated id the binary search finds one
    of the two rows, and the other user's heard tracks are never seen."""
    index = HeardIndex(
        np.array([3, 5, 5], np.int64), np.array([0, 1, 2, 3], np.int64), np.array([7, 8, 9])
    )
    with pytest.raises(ArtifactError, match="users.npy: user ids are not ascending"):
        HeardIndex.load(index.save(tmp_path / "heard"))

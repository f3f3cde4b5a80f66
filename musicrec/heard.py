"""What each user heard before the served lists were fit: the services' "never recommend a
heard track" rule for the parts the pipeline did not rank.

The ranker's stored lists already leave out every track of the user's history. Two parts
of `/recommendations` do not come from those lists: the online part (tracks similar to the
latest events) and the popular top-up when `k` is near or above the stored `top_k`. The
event service only knows the events added to it, so without this index those parts could
return a track the user heard before the pipeline ran.

`HeardIndex` is the served fit's users x tracks matrix in CSR form, written as three plain
`.npy` files (no pickle) under `recsys/recommendations/heard/`:

* `users.npy`   - the user ids, ascending (int64 or int32);
* `offsets.npy` - int64, `len(users) + 1`: user `users[i]` heard `tracks[offsets[i]:offsets[i+1]]`;
* `tracks.npy`  - the track ids, ascending within each user.

The services open them memory-mapped: the pages are read on demand and shared by every
worker process through the OS page cache (200M listens at the full size: 0.8 GB of
int32 track ids, read once however many workers there are).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musicrec.errors import ArtifactError
from musicrec.io import atomic_path
from musicrec.matrix import InteractionMatrix

#: file names inside the heard directory
FILES = ("users.npy", "offsets.npy", "tracks.npy")
#: popular tracks checked against the user's history per step of a lazy top-up
TOP_UP_CHUNK = 256
#: track ids compared per step of the load-time order check (bounds its scratch memory)
CHECK_CHUNK = 1 << 24


@dataclass(frozen=True)
class HeardIndex:
    """Users -> the sorted track ids they heard (CSR: `users`, `offsets`, `tracks`)."""

    users: np.ndarray
    offsets: np.ndarray
    tracks: np.ndarray
    #: the user ids the dtype of `users` can hold (set in __post_init__)
    _bounds: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_bounds", _int_bounds(self.users.dtype))

    @classmethod
    def from_matrix(cls, matrix: InteractionMatrix) -> HeardIndex:
        """The index of a fit's matrix: its rows are the users, its non-zeros the heard
        tracks. The item map's ids are ascending and a canonical CSR's column indices are
        sorted within each row, so the track ids come out sorted per user with no sort."""
        csr = matrix.csr
        if not csr.has_sorted_indices:
            csr = csr.sorted_indices()
        return cls(
            np.asarray(matrix.users.ids),
            csr.indptr.astype(np.int64),
            np.asarray(matrix.items.ids)[csr.indices],
        )

    def __len__(self) -> int:
        return int(self.users.size)

    def save(self, directory: str | Path) -> Path:
        """Write the three files (each atomically); returns `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, arr in zip(FILES, (self.users, self.offsets, self.tracks), strict=True):
            with atomic_path(directory / name) as tmp, open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
        return directory

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> HeardIndex:
        """Open the files (memory-mapped by default) and check them, or raise
        `ArtifactError` naming the file and what is wrong: shapes and dtypes, offsets
        rising from 0 to the number of tracks, users ascending, and each user's tracks
        strictly ascending (the lookups are binary searches: an unsorted list would let
        heard tracks through without a sound). The order check reads `tracks.npy` once,
        in chunks; with a mapping, that also brings its pages into the page cache before
        the first request needs them."""
        directory = Path(directory)
        arrays = []
        for name in FILES:
            path = directory / name
            if not path.is_file():
                raise ArtifactError(f"{path}: artifact file is missing")
            try:
                arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise ArtifactError(f"{path}: not a readable .npy array ({exc})") from None
            # a plain ndarray view of the mapping: np.memmap's slicing runs Python code
            # (__getitem__, __array_finalize__) on every lookup
            arr = np.asarray(arr)
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise ArtifactError(
                    f"{path}: expected a 1-d integer array, found {arr.dtype} {arr.shape}"
                )
            arrays.append(arr)
        users, offsets, tracks = arrays
        where = directory / "offsets.npy"
        if offsets.size != users.size + 1:
            raise ArtifactError(
                f"{where}: {offsets.size} offsets for {users.size} users (expected users + 1)"
            )
        # neighbours compared, not np.diff: on unsigned arrays a difference wraps around
        if offsets[0] != 0 or offsets[-1] != tracks.size or np.any(offsets[1:] < offsets[:-1]):
            raise ArtifactError(
                f"{where}: offsets must rise from 0 to the {tracks.size} tracks of tracks.npy"
            )
        if users.size > 1 and np.any(users[1:] <= users[:-1]):
            raise ArtifactError(f"{directory / 'users.npy'}: user ids are not ascending")
        at = first_out_of_order(tracks, offsets)
        if at is not None:
            user = users[int(np.searchsorted(offsets, at, side="right")) - 1]
            raise ArtifactError(
                f"{directory / 'tracks.npy'}: the track ids of user {user} are not strictly "
                f"ascending (position {at})"
            )
        return cls(users, offsets, tracks)

    def tracks_of(self, user_id: int) -> np.ndarray:
        """The sorted track ids the user heard (empty for an unknown user)."""
        lo, hi = self._bounds
        if not lo <= user_id <= hi:
            return self.tracks[:0]
        # the key in the array's own dtype: a Python int against int32 ids makes numpy
        # convert the whole array first (210 us per call for 1.28M users, not 1 us)
        i = int(self.users.searchsorted(self.users.dtype.type(user_id)))
        if i < self.users.size and int(self.users[i]) == user_id:
            return self.tracks[int(self.offsets[i]) : int(self.offsets[i + 1])]
        return self.tracks[:0]


#: the heard tracks of a user no index knows
NOTHING_HEARD = np.empty(0, dtype=np.int64)


def heard_by(index: HeardIndex | None, user_id: int) -> np.ndarray:
    """The sorted tracks `user_id` heard before the served fit; empty without an index
    (artifacts written before it existed) or for a user it does not know."""
    return NOTHING_HEARD if index is None else index.tracks_of(user_id)


def heard_mask(heard: np.ndarray, items: np.ndarray) -> np.ndarray:
    """True where `items[j]` is in `heard` (sorted ascending): a binary search per item."""
    if heard.size == 0 or items.size == 0:
        return np.zeros(items.size, dtype=bool)
    lo, hi = _int_bounds(heard.dtype)
    # searched in the index's own dtype: a wider key would make numpy convert the heard
    # array (a copy of the user's history) on every call
    if lo <= int(items.min()) and int(items.max()) <= hi:
        keys = items.astype(heard.dtype, copy=False)
        pos = heard.searchsorted(keys)
        np.minimum(pos, heard.size - 1, out=pos)
        return np.asarray(heard[pos] == keys)
    # some ids the index's dtype cannot hold: never heard (a cast would wrap them)
    inside = (items >= lo) & (items <= hi)
    out = np.zeros(items.size, dtype=bool)
    out[inside] = heard_mask(heard, items[inside])
    return out


def drop_heard(items: Sequence[int], heard: np.ndarray) -> list[int]:
    """`items` without the ones in `heard` (sorted), order kept."""
    if heard.size == 0 or not items:
        return list(items)
    arr = np.array(items, dtype=np.int64)
    return arr[~heard_mask(heard, arr)].tolist()  # type: ignore[no-any-return]


def first_out_of_order(tracks: np.ndarray, offsets: np.ndarray) -> int | None:
    """The first position `p` where `tracks[p] <= tracks[p - 1]` inside one user's list
    (not at the start of a user's list), or None; `CHECK_CHUNK` positions at a time."""
    starts = offsets[1:-1]  # where the lists after the first one begin
    for a in range(1, tracks.size, CHECK_CHUNK):
        b = min(a + CHECK_CHUNK, tracks.size)
        down = np.flatnonzero(tracks[a:b] <= tracks[a - 1 : b - 1]) + a
        if down.size == 0:
            continue
        i = np.minimum(np.searchsorted(starts, down), max(starts.size - 1, 0))
        bad = down if starts.size == 0 else down[starts[i] != down]
        if bad.size:
            return int(bad[0])
    return None


@functools.cache
def _int_bounds(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def unheard(popular: Sequence[int], heard: np.ndarray) -> Iterable[int]:
    """`popular` without the tracks in `heard`, checked lazily `TOP_UP_CHUNK` at a time:
    a top-up that needs three tracks checks one chunk, not the whole list."""
    if heard.size == 0:
        return popular

    def chunks() -> Iterator[int]:
        for start in range(0, len(popular), TOP_UP_CHUNK):
            yield from drop_heard(popular[start : start + TOP_UP_CHUNK], heard)

    return chunks()

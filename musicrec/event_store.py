"""Durable listening history in embedded SQLite, safe to use from an asyncio service.

* WAL journal, `synchronous=FULL` by default: a commit is fsync'ed before it is
  acknowledged, so acknowledged events survive SIGKILL of the process and power loss
  (`NORMAL` would survive a process crash only).
* One writer thread owns the write connection and does **group commit**: it takes every
  event queued while the previous commit was running and writes them in one transaction
  (one fsync). `add()` resolves only after that commit.
* Reads run on a small pool of reader threads, each with its own read-only connection (WAL
  lets them read while the writer writes). Nothing blocks the event loop.
* The whole history is kept; `(user_id, id)` is indexed, `id` grows with insertion order,
  so "latest k of a user" is an index range scan.
* `RecentCache` keeps the latest events of up to `cache_users` recently read users in
  memory (LRU, `cache_events` in all): at least `cache_depth` of each, as many as the
  read that filled the entry asked for, or the whole history when it found fewer. So the
  hot read path (`latest`) is a dict lookup on the event loop instead of a thread hop and
  a query for every user read before at the same depth. SQLite stays the only record: the
  cache is filled from it on a miss and updated by the writer after each commit, and is
  rebuilt from it after a restart.
* **Idempotent adds** (`add_once`): an event sent with a client's key (the HTTP
  `Idempotency-Key` header) is stored once per (user, key) within `key_ttl_s`; a retry
  (after a timeout, a lost answer, a 503 whose commit SQLite kept after all) gets the
  first event's id back instead of a second event. The key row is written in the same
  transaction as its event: a key row is only ever written with its event (a failed commit
  keeps neither).
* **A user's history can be deleted** (`delete_user`: a privacy request): in the writer's
  order, so a listen added before the call is deleted with the rest and one added after
  it is kept. Event ids are never given twice, not even the deleted ones (the highest id
  ever given is kept in `event_meta`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from musicrec.artifacts import LockHeld, release_flock, take_flock
from musicrec.errors import ArtifactError

log = logging.getLogger("musicrec.event_store")


class KeyReused(Exception):
    """`add_once` with a key the user already sent with another track (within the key's
    lifetime): a client bug, not a retry. Nothing is stored."""


class StoreUnavailable(RuntimeError):
    """The store cannot take or answer the call right now: it is closed (shutting down),
    its write queue is full, or the commit holding the event failed (disk full, read-only
    file). An `add` that raises this stored nothing, so the client may retry it."""


_TABLE = """
CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY,
    user_id  INTEGER NOT NULL,
    track_id INTEGER NOT NULL,
    ts       REAL    NOT NULL
)"""
#: a user's latest events are one range of this index, track ids included (covering)
_INDEX_NAME = "events_user_recent"
_INDEX = f"CREATE INDEX IF NOT EXISTS {_INDEX_NAME} ON events (user_id, id, track_id)"
#: the index of databases written before `events_user_recent` (no track_id in it: a user's
#: read looked every row up in the table, 2-3x slower cold); replaced at `open`
_OLD_INDEX = "events_user_id"
#: a client's idempotency key per (user, key), kept `key_ttl_s` after its event: the
#: event it stored and its track (a retry answers with that event's id, a reuse with
#: another track is refused); `ts` orders the expiry
_KEYS_TABLE = """
CREATE TABLE IF NOT EXISTS event_keys (
    user_id  INTEGER NOT NULL,
    key      TEXT    NOT NULL,
    event_id INTEGER NOT NULL,
    track_id INTEGER NOT NULL,
    ts       REAL    NOT NULL,
    PRIMARY KEY (user_id, key)
) WITHOUT ROWID"""
_KEYS_INDEX = "CREATE INDEX IF NOT EXISTS event_keys_ts ON event_keys (ts)"
_KEY_TYPES = {
    "user_id": "INTEGER",
    "key": "TEXT",
    "event_id": "INTEGER",
    "track_id": "INTEGER",
    "ts": "REAL",
}
#: named integers of the store: `high_water` = the id the latest deletion used up (written
#: by deletions only; the next id is after it and after the table's highest, so a deleted
#: user's ids are not given again, across restarts too)
_META_TABLE = """
CREATE TABLE IF NOT EXISTS event_meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID"""
#: the newest id a read snapshot has seen: its highest event, or the id a deletion used up
#: (a deletion can remove the highest events; the snapshots after it must still count as
#: newer than every commit before it, or the cache refuses their fills: `RecentCache`)
_SNAPSHOT_MAX = (
    "SELECT max(coalesce((SELECT MAX(id) FROM events), 0), "
    "coalesce((SELECT value FROM event_meta WHERE name = 'high_water'), 0))"
)
#: (user, key) pairs looked up per query (two parameters each: under SQLite's oldest
#: limit of 999)
_KEYS_PER_QUERY = 400
#: the longest key `add_once` takes (the HTTP header is checked to the same bound)
KEY_MAX_LEN = 255
#: a key: printable ASCII without spaces (what an HTTP header carries unchanged)
KEY_CHARS = r"[\x21-\x7e]"
_KEY_RE = re.compile(f"{KEY_CHARS}{{1,{KEY_MAX_LEN}}}")
#: the writer deletes expired keys at most this often (`_prune_keys`), at most
#: `_PRUNE_CHUNK` of them per commit (a backlog, after downtime or a shorter TTL, goes
#: chunk by chunk at the following commits instead of stalling one for seconds)
_PRUNE_EVERY_S = 60.0
_PRUNE_CHUNK = 5_000
_COLUMNS = ("id", "user_id", "track_id", "ts")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: the declared type of each column, as `_TABLE` makes them (an `id` that is not the
#: INTEGER PRIMARY KEY would be NULL: the ids order each user's events)
_TYPES = {"id": "INTEGER", "user_id": "INTEGER", "track_id": "INTEGER", "ts": "REAL"}

Synchronous = Literal["FULL", "NORMAL", "EXTRA"]


class Added(NamedTuple):
    """What `add_once` stored: the event's id, and whether it was stored by an earlier
    call with the same key (`replayed`: nothing new was written)."""

    id: int
    replayed: bool


@dataclass
class _Pending:
    user_id: int
    track_id: int
    ts: float
    key: str | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Added]


@dataclass
class _Delete:
    """A queued `delete_user`: the writer deletes the user's events in queue order."""

    user_id: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[int]


@dataclass
class StoreStats:
    """Counters of the store (kept in memory, counted once at open)."""

    events: int = 0
    users: int = 0
    commits: int = 0
    committed_events: int = 0
    max_batch: int = 0
    failed_commits: int = 0
    refused_full: int = 0
    replayed: int = 0
    key_conflicts: int = 0
    deleted_users: int = 0
    deleted_events: int = 0
    opened_at: float = field(default_factory=time.time)


@dataclass
class _Recent:
    """Cached latest events of one user: track ids oldest -> newest (always the user's
    latest `len(tracks)` events; a packed int64 array, 8 bytes an event against ~42 in a
    list of Python ints), the id of the newest event applied, whether `tracks` is the
    user's whole history, and how many the entry keeps when it is trimmed."""

    tracks: array[int]
    last_id: int
    complete: bool
    keep: int


class RecentCache:
    """The latest events of up to `max_users` users, `max_events` in all, in memory,
    LRU-evicted. Each entry holds at least the user's latest `depth` events, or as many as
    the read that filled it asked for, or the user's whole history when that read found
    fewer; so a read of any depth for a user whose history is short, or who was read as
    deep before, is answered from memory.

    Consistency with the database (every method takes one lock, briefly; it is used from
    the event loop, the reader threads and the writer thread):

    * the writer calls `apply(committed)` after every COMMIT (before the `add()` callers
      are resumed, so a read after an acknowledged add sees it); events of cached users
      are appended when their id is newer than the entry's `last_id` (ids grow with
      insertion order), so an event the entry was filled with is never added twice;
    * a miss is read from SQLite together with the highest event id of the same snapshot
      (`snapshot_max`) and offered to `install`. If the writer has applied an event of
      this user newer than the snapshot meanwhile, the snapshot lacks it (and `apply`
      skipped it, as the user was not cached yet): the fill is refused and the next read
      tries again. Otherwise every later commit reaches the entry by `apply`. The user's
      newest applied event id is kept for the `written_users` most recently written users;
      a fill from a snapshot older than the newest id forgotten that way is refused too
      (any commit then refused every fill that overlapped it, so under steady writes to
      other users the cache hardly filled: 2,900 of 3,000 reads refused in a review);
    * a deletion of a user's events (`forget`) drops the user's entry and refuses that
      user's fills from snapshots older than the deletion, which used up an id of its own
      (`stamp`) that every later snapshot counts as its newest (`_SNAPSHOT_MAX`): the
      stamp is kept as the user's newest written id, so the refusal lasts as long as any
      write's (a reader may offer a fill from a snapshot taken before the deletion long
      after it; the refusal used to end at the next commit of any user, and the deleted
      events came back from memory).
    """

    def __init__(
        self,
        max_users: int,
        depth: int,
        max_events: int = 5_000_000,
        written_users: int = 65_536,
    ) -> None:
        if max_users < 1 or depth < 1 or max_events < depth or written_users < 1:
            raise ValueError(
                "RecentCache needs max_users >= 1, depth >= 1, max_events >= depth, "
                "written_users >= 1"
            )
        self.max_users = max_users
        self.depth = depth
        self.max_events = max_events
        self.written_users = written_users
        self._users: OrderedDict[int, _Recent] = OrderedDict()
        self._lock = threading.Lock()
        #: user -> the newest event id applied for it (or the id its deletion used up),
        #: the most recently written last
        self._written: OrderedDict[int, int] = OrderedDict()
        #: fills from snapshots older than this are refused: the newest id of a user
        #: dropped from `_written`, or of a commit `reset` could not apply
        self._floor = 0
        #: track ids held in all entries
        self.events = 0
        self.hits = 0
        self.misses = 0
        self.refused_fills = 0

    def __len__(self) -> int:
        return len(self._users)

    def get(self, user_id: int, k: int) -> list[int] | None:
        """The user's latest `k` track ids, newest first, or None when the cache cannot
        tell them (the user is not cached, or `k` is deeper than its entry and the entry
        is not the whole history)."""
        with self._lock:
            entry = self._users.get(user_id)
            if entry is None or (k > len(entry.tracks) and not entry.complete):
                self.misses += 1
                return None
            self._users.move_to_end(user_id)
            self.hits += 1
            return entry.tracks[-1 : -k - 1 : -1].tolist()

    def install(
        self, user_id: int, rows: Sequence[tuple[int, int]], snapshot_max: int, limit: int
    ) -> bool:
        """Cache a user read from SQLite: `rows` = (id, track_id) newest first, read with
        `LIMIT limit` (>= `depth`) in the snapshot whose highest event id is
        `snapshot_max`; fewer rows than `limit` are the user's whole history. False if
        refused (see the class docstring) or larger than the whole cache."""
        if limit < self.depth:
            raise ValueError(f"a fill needs at least the latest {self.depth} rows")
        complete = len(rows) < limit
        with self._lock:
            old = self._users.get(user_id)
            if old is not None and (
                old.complete or (len(old.tracks) >= len(rows) and not complete)
            ):
                return False  # cached as deep and kept current by `apply`
            if self._written.get(user_id, 0) > snapshot_max or self._floor > snapshot_max:
                self.refused_fills += 1
                return False
            if len(rows) > self.max_events:
                return False
            if old is not None:  # a deeper read of a cached user replaces its entry
                self.events -= len(self._users.pop(user_id).tracks)
            self._users[user_id] = _Recent(
                array("q", [track for _, track in reversed(rows)]),
                rows[0][0] if rows else 0,
                complete=complete,
                keep=max(self.depth, len(rows)),
            )
            self.events += len(rows)
            self._evict()
            return True

    def apply(self, committed: Sequence[tuple[int, int, int]]) -> None:
        """Committed events `(id, user_id, track_id)` in id order (the writer's batch)."""
        if not committed:
            return
        with self._lock:
            for event_id, user_id, track_id in committed:
                self._written[user_id] = event_id
                self._written.move_to_end(user_id)
                entry = self._users.get(user_id)
                if entry is None or event_id <= entry.last_id:
                    continue
                entry.tracks.append(track_id)
                entry.last_id = event_id
                self.events += 1
                if len(entry.tracks) > 2 * entry.keep:
                    self.events -= len(entry.tracks) - entry.keep
                    del entry.tracks[: -entry.keep]
                    entry.complete = False
            self._trim_written()
            self._evict()

    def forget(self, user_id: int, next_id: int) -> None:
        """Drop `user_id`'s entry (its events were deleted) and refuse fills of that user
        from snapshots older than the deletion, i.e. without an event id of `next_id` or
        more (they may hold the deleted events); other users' fills are not affected. The
        refusal is kept as a write of `next_id` is: until `written_users` later-written
        users push it out, and then as the floor every fill's snapshot must reach."""
        with self._lock:
            entry = self._users.pop(user_id, None)
            if entry is not None:
                self.events -= len(entry.tracks)
            self._written[user_id] = max(self._written.get(user_id, 0), next_id)
            self._written.move_to_end(user_id)
            self._trim_written()

    def reset(self, applied_id: int) -> None:
        """Forget every entry, and refuse fills from snapshots older than `applied_id` (the
        newest committed event): the writer's way out when `apply` failed half-way."""
        with self._lock:
            self._users.clear()
            self.events = 0
            self._floor = max(self._floor, applied_id)

    def _trim_written(self) -> None:
        """Keep the newest ids of the `written_users` most recently written users; an id
        dropped raises the floor every fill's snapshot must reach (lock held)."""
        while len(self._written) > self.written_users:
            _, event_id = self._written.popitem(last=False)
            self._floor = max(self._floor, event_id)

    def _evict(self) -> None:
        """Drop least recently used entries until both limits hold (lock held)."""
        while self._users and (len(self._users) > self.max_users or self.events > self.max_events):
            _, entry = self._users.popitem(last=False)
            self.events -= len(entry.tracks)


class EventStore:
    """SQLite event history with a single group-committing writer thread.

    Call `open()` (blocking) before use and `close()` (blocking) at the end; in a service
    run both through `asyncio.to_thread` in the lifespan.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        max_batch: int = 1000,
        readers: int = 2,
        cache_users: int = 50_000,
        cache_depth: int = 100,
        cache_events: int = 5_000_000,
        max_pending: int = 100_000,
        owner_wait_s: float = 10.0,
        key_ttl_s: float = 86_400.0,
    ) -> None:
        self.path = Path(path)
        #: how long an idempotency key holds (`add_once`): a retry later than this stores
        #: the event again. Expired keys are ignored at once and deleted by the writer
        #: (`_prune_keys`, at most once a minute)
        self.key_ttl_s = key_ttl_s
        self._pruned_at = 0.0
        #: how long `open` waits for another store to let go of the database (a restart
        #: whose old process is still closing) before refusing it
        self.owner_wait_s = owner_wait_s
        self._owner_fd: int | None = None
        self.synchronous = synchronous
        self.max_batch = max_batch
        #: events waiting for the writer beyond which `add` is refused (backpressure: an
        #: overloaded disk answers 503 at once instead of an ever longer wait)
        self.max_pending = max_pending
        self.n_readers = readers
        self._cache_args = (cache_users, cache_depth, cache_events)
        #: None when `cache_users` is 0: every read goes to SQLite (made again at `open`:
        #: what a closed store held may have changed in the file meanwhile)
        self.cache = (
            RecentCache(cache_users, cache_depth, cache_events) if cache_users > 0 else None
        )
        self.stats = StoreStats()
        self._queue: queue.SimpleQueue[_Pending | _Delete | None] = queue.SimpleQueue()
        #: the id the next stored event gets (the writer's; set at `open`)
        self._next_id = 1
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._rconns: list[sqlite3.Connection] = []
        self._rconns_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        #: held by `add` from its closed check to its put and by `close` to set the flag
        self._submit_lock = threading.Lock()
        self._closed = True

    # --- lifecycle (blocking) -------------------------------------------------------------

    def open(self) -> None:
        """Create or open the database, count what is there, start the threads.

        Refused with an `ArtifactError` naming the file (sqlite3's own message does not),
        before anything is written to it: a file that is not an SQLite database or is
        damaged (the table and the index are read whole to count the events); another
        application's database (tables, but no `events`); an `events` table of another
        layout; a file this process cannot write (every `/add_event` would fail); a
        database another process holds locked; a database another `EventStore` has open
        (see `_own`); SQLite's in-memory name `:memory:` (every event lost at exit)."""
        if str(self.path) == ":memory:":
            raise ArtifactError(
                ":memory: is SQLite's in-memory database: every event would be lost when the "
                "service stops; give the event database a file (MUSICREC_EVENT_DB_PATH)"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only file system, no permission
            raise ArtifactError(
                f"{self.path}: cannot create its folder ({exc.strerror}): check "
                "MUSICREC_EVENT_DB_PATH"
            ) from exc
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            self._prepare(conn)
            n_events, n_users, next_id = self._count(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            self._disown()
            text = str(exc)
            # SQLite says "unable to open database file" on a read-only mount or folder:
            # that was "not a usable ... database", and a good file could be thrown away
            read_only = not os.access(self.path.parent, os.W_OK) or (
                self.path.exists() and not os.access(self.path, os.W_OK)
            )
            why = (
                "the file (or its folder) is read-only"
                if "readonly" in text or read_only
                else "another process holds it locked"
                if "locked" in text
                else "not a usable SQLite event database"
            )
            raise ArtifactError(f"{self.path}: {why} ({type(exc).__name__}: {text})") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            self._disown()
            raise
        self._wconn = conn
        self._next_id = next_id
        users, depth, events = self._cache_args
        self.cache = RecentCache(users, depth, events) if users > 0 else None
        self.stats = StoreStats(events=int(n_events), users=int(n_users))
        self._readers = ThreadPoolExecutor(self.n_readers, thread_name_prefix="events-read")
        self._writer = threading.Thread(target=self._writer_loop, name="events-write", daemon=True)
        self._closed = False
        self._writer.start()
        log.info(
            "event store %s opened: %d events, %d users (WAL, synchronous=%s)",
            self.path,
            n_events,
            n_users,
            self.synchronous,
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check the file is this service's (or empty), take it (`_own`), switch it to WAL,
        create what is missing and probe a write (rolled back)."""
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if tables and "events" not in tables:
            raise ArtifactError(
                f"{self.path}: an SQLite database without an 'events' table (tables: "
                f"{', '.join(sorted(tables)[:5])}); not an event database of this service, "
                "left as it was"
            )
        if tables:
            self._check_layout(conn, tables)
        self._own()  # before the first write (the WAL switch, a migration)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: could not switch SQLite to WAL (got {mode})")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        # a deleted user's rows are overwritten with zeros, not left in free pages
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute(_TABLE)
        conn.execute(_KEYS_TABLE)
        conn.execute(_KEYS_INDEX)
        conn.execute(_META_TABLE)
        # a write that is rolled back: a read-only file (or folder) fails here, not at
        # every /add_event of a service that reported ready
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute(f"PRAGMA user_version={int(version)}")
        finally:
            conn.execute("ROLLBACK")
        self._ensure_index(conn)

    def _count(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        """Events, users, and the id the next event gets (after the highest in the table
        and the highest a deletion used up)."""
        # the table and the index each read whole: a damaged page fails the start
        # instead of the reads that meet it
        n_events = conn.execute("SELECT COUNT(*) FROM events NOT INDEXED").fetchone()[0]
        top = conn.execute("SELECT MAX(id) FROM events").fetchone()[0] or 0
        given = conn.execute("SELECT value FROM event_meta WHERE name = 'high_water'").fetchone()
        high = given[0] if given else 0
        # ids up to 2**62: a bound no real store meets, far from SQLite's 2**63 - 1
        if not isinstance(high, int) or not 0 <= high < 2**62:
            raise ArtifactError(
                f"{self.path}: event_meta's high_water is {high!r}, not an event id "
                "(0 .. 2**62); not an event database of this service"
            )
        next_id = max(int(top), high) + 1
        n_users = conn.execute(
            f"SELECT COUNT(DISTINCT user_id) FROM events INDEXED BY {_INDEX_NAME}"
        ).fetchone()[0]
        return int(n_events), int(n_users), next_id

    def close(self) -> None:
        """Finish queued writes, stop the threads and close every connection."""
        with self._submit_lock:  # no `add` can queue an event behind the stop marker
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if self._writer is not None:
            self._writer.join()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        with self._rconns_lock:
            for rc in self._rconns:
                rc.close()
            self._rconns.clear()
        if self._wconn is not None:
            try:
                self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # busy readers elsewhere: harmless
                log.debug("checkpoint at close skipped: %s", exc)
            self._wconn.close()
            self._wconn = None
        self._disown()

    def _own(self) -> None:
        """Hold the database for this store: an exclusive `flock` on `<database>.lock`,
        waited for up to `owner_wait_s`, else an `ArtifactError` naming the holder. Two
        stores on one database (`uvicorn event_storage:app --workers 2`, two services
        given one file) would each keep a cache of recent events that the other's writes
        never reach: a read through one would miss what was just added through the
        other. (Not a lock on the database file itself: on NFS, `flock` is emulated with
        the POSIX locks SQLite takes there.) The OS frees it when the process dies."""
        real = self.path.resolve()  # one lock per file, whatever link names it
        lock = real.with_name(real.name + ".lock")
        try:
            self._owner_fd = take_flock(lock, self.owner_wait_s)
        except LockHeld as held:
            raise ArtifactError(
                f"{self.path}: another event store (pid {held.pid or '?'}) has this "
                "database open. The event service runs as one process (its cache of "
                "recent events lives in it: a second one would serve stale "
                "histories), so no `--workers` above 1; stop the other, or give this "
                "one another MUSICREC_EVENT_DB_PATH"
            ) from None
        except OSError as exc:
            why = (
                "the file (or its folder) is read-only"
                if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
                else "cannot open its lock file"
            )
            raise ArtifactError(f"{self.path}: {why} ({lock.name}: {exc.strerror})") from exc

    def _disown(self) -> None:
        if self._owner_fd is not None:
            release_flock(self._owner_fd)
            self._owner_fd = None

    @property
    def is_open(self) -> bool:
        return not self._closed

    # --- async API ------------------------------------------------------------------------

    async def add(self, user_id: int, track_id: int) -> int:
        """Store one event; returns its id once the transaction holding it is committed.
        Ids outside SQLite's 64-bit integers raise `ValueError` here: in the group commit
        they failed the whole batch, every other user's events with them."""
        return (await self._submit(user_id, track_id, None)).id

    async def add_once(self, user_id: int, track_id: int, key: str) -> Added:
        """Store one event unless this user's `key` already stored one within `key_ttl_s`:
        then nothing is written and that event's id comes back with `replayed=True`. The
        same key with another track raises `KeyReused` (nothing stored). Keys are the
        client's (a UUID per listen, say), 1 to `KEY_MAX_LEN` printable ASCII characters
        without spaces, taken verbatim, per user; anything else raises `ValueError` here
        (in the group commit it would fail every other call of the batch). Calls with one
        key racing each other store one event: the writer handles them in order, and the
        later finds the earlier's key."""
        if not isinstance(key, str) or _KEY_RE.fullmatch(key) is None:
            raise ValueError(
                f"an idempotency key is 1 to {KEY_MAX_LEN} printable ASCII characters without "
                f"spaces, not {key!r:.80}"
            )
        return await self._submit(user_id, track_id, key)

    async def delete_user(self, user_id: int) -> int:
        """Delete every event of `user_id` (and its idempotency keys); returns how many
        events were deleted, once the deletion is committed. Queued with the adds: those
        submitted before it are deleted too, those after it are kept."""
        if not _INT64_MIN <= user_id <= _INT64_MAX:
            raise ValueError(f"ids must be 64-bit integers: user {user_id}")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._enqueue(_Delete(user_id, loop, fut))
        return await asyncio.shield(fut)

    async def _submit(self, user_id: int, track_id: int, key: str | None) -> Added:
        if not (_INT64_MIN <= user_id <= _INT64_MAX and _INT64_MIN <= track_id <= _INT64_MAX):
            raise ValueError(f"ids must be 64-bit integers: user {user_id}, track {track_id}")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Added] = loop.create_future()
        self._enqueue(_Pending(user_id, track_id, time.time(), key, loop, fut))
        # shield: a client that disconnects must not cancel the bookkeeping of the future
        return await asyncio.shield(fut)

    def _enqueue(self, item: _Pending | _Delete) -> None:
        """Queue a call for the writer, or refuse it: the store is closed, or
        `max_pending` calls (adds and deletions) wait already (backpressure)."""
        # the check and the put under one lock with `close()` (another thread): a call
        # queued after the writer's stop marker would never be answered
        with self._submit_lock:
            if self._closed:
                raise StoreUnavailable("event store is closed")
            if self._queue.qsize() >= self.max_pending:
                with self._stats_lock:
                    self.stats.refused_full += 1
                raise StoreUnavailable(f"write queue full ({self.max_pending} calls waiting)")
            self._queue.put(item)

    async def latest(self, user_id: int, k: int) -> list[int]:
        """The user's `k` most recent track ids, newest first (from the cache when it holds
        the user, without leaving the event loop)."""
        return (await self.latest_many([user_id], k))[0]

    async def latest_many(self, user_ids: Sequence[int], k: int) -> list[list[int]]:
        """`latest(user, k)` of each user, in order: cached users from memory, the others
        read together in one trip to a reader thread."""
        if self._closed:
            raise StoreUnavailable("event store is closed")
        out: list[list[int] | None] = [
            self.cache.get(u, k) if self.cache is not None else None for u in user_ids
        ]
        misses = [i for i, got in enumerate(out) if got is None]
        if misses:
            read = await self._read(self._latest_sync, [user_ids[i] for i in misses], k)
            for i, events in zip(misses, read, strict=True):
                out[i] = events
        return [events or [] for events in out]

    async def counts(self) -> dict[str, Any]:
        """Counters for `/stats` (no table scan)."""
        with self._stats_lock:
            s = self.stats
            return {
                "events": s.events,
                "users": s.users,
                "commits": s.commits,
                "mean_batch": round(s.committed_events / s.commits, 3) if s.commits else 0.0,
                "max_batch": s.max_batch,
                "failed_commits": s.failed_commits,
                "refused_full": s.refused_full,
                "replayed": s.replayed,
                "key_conflicts": s.key_conflicts,
                "deleted_users": s.deleted_users,
                "deleted_events": s.deleted_events,
                "pending": self._queue.qsize(),
                "uptime_s": round(time.time() - s.opened_at, 3),
                "db_path": str(self.path),
                "synchronous": self.synchronous,
                "cache_users": len(self.cache) if self.cache is not None else 0,
                "cache_events": self.cache.events if self.cache is not None else 0,
                "cache_hits": self.cache.hits if self.cache is not None else 0,
                "cache_misses": self.cache.misses if self.cache is not None else 0,
                "cache_refused_fills": self.cache.refused_fills if self.cache is not None else 0,
            }

    def _check_layout(self, conn: sqlite3.Connection, tables: Sequence[str]) -> None:
        """`ArtifactError` unless the `events` table has the columns and types `_TABLE`
        makes, `id` its INTEGER PRIMARY KEY, and the `event_keys` and `event_meta` tables
        (a database written before them has neither: they are created) those of
        `_KEYS_TABLE` and `_META_TABLE`. Columns a later version may add are allowed."""
        if "event_meta" in tables:
            meta = _layout(conn, "event_meta")
            if meta.get("name") != ("TEXT", 1) or meta.get("value", ("", 0))[0] != "INTEGER":
                raise ArtifactError(
                    f"{self.path}: table 'event_meta' is not as this service makes it (found "
                    f"{meta}; expected name TEXT PRIMARY KEY, value INTEGER); not an event "
                    "database of this service"
                )
        if "event_keys" in tables:
            keys = _layout(conn, "event_keys")
            expected = {c: (t, {"user_id": 1, "key": 2}.get(c, 0)) for c, t in _KEY_TYPES.items()}
            if any(keys.get(c) != want for c, want in expected.items()):
                raise ArtifactError(
                    f"{self.path}: table 'event_keys' is not as this service makes it (found "
                    f"{keys}; expected {expected}: column -> (type, position in the primary "
                    "key)); not an event database of this service"
                )
        info = _layout(conn, "events")
        found = {name: kind for name, (kind, _) in info.items()}
        wrong = [
            c
            for c in _COLUMNS
            if found.get(c) != _TYPES[c] or (c == "id") != (info.get(c, ("", 0))[1] == 1)
        ]
        if wrong:
            raise ArtifactError(
                f"{self.path}: table 'events' has column(s) {wrong} missing or not as this "
                f"service makes them (found {found}; expected {_TYPES}, id the INTEGER "
                "PRIMARY KEY); not an event database of this service"
            )

    def _ensure_index(self, conn: sqlite3.Connection) -> None:
        """Create the covering index a user's read runs on (the user's rows in id order
        with their track ids: one range of the index, no look-up in the table), replacing
        the older one of a database written before it. Building it over an existing table
        reads every row once, at this start only (logged)."""
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        if _INDEX_NAME not in names:
            t0 = time.perf_counter()
            conn.execute(_INDEX)
            if _OLD_INDEX in names:
                log.info(
                    "event store %s: built the index %s in %.1f s (once)",
                    self.path,
                    _INDEX_NAME,
                    time.perf_counter() - t0,
                )
        if _OLD_INDEX in names:  # IF EXISTS: another process opening it may have dropped it
            conn.execute(f"DROP INDEX IF EXISTS {_OLD_INDEX}")

    # --- reads (reader threads) -----------------------------------------------------------

    async def _read(self, func: Callable[..., Any], *args: Any) -> Any:
        if self._closed or self._readers is None:
            raise StoreUnavailable("event store is closed")
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._readers, func, *args)
        except RuntimeError as exc:  # `close()` shut the pool down since the check above
            raise StoreUnavailable("event store is closed") from exc
        return await future

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._rconns_lock:
                self._rconns.append(conn)
        return conn

    def _latest_sync(self, user_ids: Sequence[int], k: int) -> list[list[int]]:
        """The latest `k` track ids of each user, read in one transaction; each user read is
        offered to the cache with the snapshot's highest id."""
        conn = self._reader_conn()
        cache = self.cache
        limit = max(k, cache.depth) if cache is not None else k
        # one read transaction: the users' rows and the snapshot's highest id agree
        try:
            conn.execute("BEGIN")
            try:
                snapshot_max = conn.execute(_SNAPSHOT_MAX).fetchone()[0]
                rows = [
                    conn.execute(
                        "SELECT id, track_id FROM events WHERE user_id = ? "
                        "ORDER BY id DESC LIMIT ?",
                        (user_id, limit),
                    ).fetchall()
                    for user_id in user_ids
                ]
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:  # damaged pages, I/O errors: a 503, not a 500
            with contextlib.suppress(sqlite3.Error):  # no transaction left open on the thread
                conn.execute("ROLLBACK")
            log.error("event read failed: %s: %s", type(exc).__name__, exc)
            raise StoreUnavailable(f"event read failed: {exc}") from exc
        if cache is not None:
            for user_id, user_rows in zip(user_ids, rows, strict=True):
                cache.install(user_id, user_rows, snapshot_max, limit)
        return [[track for _, track in user_rows[:k]] for user_rows in rows]

    # --- writes (writer thread) -----------------------------------------------------------

    def _writer_loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            # in queue order: the adds between two deletions are one group commit
            adds: list[_Pending] = []
            for item in batch:
                if isinstance(item, _Delete):
                    if adds:
                        self._commit(adds)
                        adds = []
                    self._delete(item)
                else:
                    adds.append(item)
            if adds:
                self._commit(adds)
        # anything queued after the stop marker (a race with close()) is refused, not lost
        while True:
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if late is not None:
                what = "nothing deleted" if isinstance(late, _Delete) else "event not stored"
                self._resolve([late], None, StoreUnavailable(f"{what}: event store closed"))

    def _commit(self, batch: Sequence[_Pending]) -> None:
        """Write `batch` in one transaction (one fsync), then answer each caller: its new
        event's id, or for a key stored before, that event's id (`replayed`) or
        `KeyReused`. A failed transaction fails every call of the batch (nothing of it is
        stored)."""
        conn = self._wconn
        assert conn is not None
        outcomes: list[Added | KeyReused] = []
        stored: list[tuple[int, int, int]] = []  # (event id, user, track), for the cache
        new_keys: list[tuple[int, str, int, int, float]] = []
        new_users: set[int] = set()
        now = time.time()
        try:
            conn.execute("BEGIN IMMEDIATE")
            next_id = self._first_free_id(conn)
            # (user, key) -> (event id, track) of the batch's keys stored before, then of
            # its own as they are stored: a key sent twice in one batch is one event
            asked = [(ev.user_id, ev.key) for ev in batch if ev.key is not None]
            keyed = self._stored_keys(conn, asked, now)
            for ev in batch:
                if ev.key is not None and (ev.user_id, ev.key) in keyed:
                    outcomes.append(self._replay(ev, *keyed[ev.user_id, ev.key]))
                    continue
                if ev.user_id not in new_users:
                    known = conn.execute(
                        "SELECT 1 FROM events WHERE user_id = ? LIMIT 1", (ev.user_id,)
                    ).fetchone()
                    if known is None:
                        new_users.add(ev.user_id)
                # the id given explicitly: SQLite's own (the highest + 1) would give a
                # deleted user's newest ids again
                event_id = next_id
                next_id += 1
                conn.execute(
                    "INSERT INTO events (id, user_id, track_id, ts) VALUES (?, ?, ?, ?)",
                    (event_id, ev.user_id, ev.track_id, ev.ts),
                )
                if ev.key is not None:
                    keyed[ev.user_id, ev.key] = (event_id, ev.track_id)
                    new_keys.append((ev.user_id, ev.key, event_id, ev.track_id, ev.ts))
                outcomes.append(Added(event_id, False))
                stored.append((event_id, ev.user_id, ev.track_id))
            if new_keys:  # REPLACE: an expired row of the same key
                conn.executemany(
                    "INSERT OR REPLACE INTO event_keys (user_id, key, event_id, track_id, ts) "
                    "VALUES (?, ?, ?, ?, ?)",
                    new_keys,
                )
            conn.execute("COMMIT")
            self._next_id = next_id
        except Exception as exc:
            log.exception("event commit of %d event(s) failed", len(batch))
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            with self._stats_lock:
                self.stats.failed_commits += 1
            self._resolve(batch, None, exc)
            return
        if self.cache is not None and stored:
            try:
                self.cache.apply(stored)
            except Exception:
                # the events are committed: they are acknowledged below whatever happens to
                # the cache (an exception here ended the writer thread, and every later add
                # waited forever); the cache is emptied so that no read serves a stale entry
                log.exception("event cache update failed after a commit: cache emptied")
                self.cache.reset(max(i for i, _, _ in stored))
        with self._stats_lock:
            s = self.stats
            s.events += len(stored)
            s.users += len(new_users)
            if stored:  # commits that wrote events (a batch of replays writes nothing)
                s.commits += 1
                s.committed_events += len(stored)
                s.max_batch = max(s.max_batch, len(stored))
            s.replayed += sum(isinstance(o, Added) and o.replayed for o in outcomes)
            s.key_conflicts += sum(isinstance(o, KeyReused) for o in outcomes)
        self._resolve(batch, outcomes, None)
        if now - self._pruned_at >= _PRUNE_EVERY_S:
            self._prune_keys(now)

    def _first_free_id(self, conn: sqlite3.Connection) -> int:
        """The id the transaction's first new event gets: after every id given by this
        store and every row in the table (one written by another connection, an
        operator's import say, would make the store's own count collide with it)."""
        top = conn.execute("SELECT MAX(id) FROM events").fetchone()[0] or 0
        self._next_id = max(self._next_id, int(top) + 1)
        return self._next_id

    def _delete(self, item: _Delete) -> None:
        """Delete a user's events and keys in one transaction that uses up an id of its own
        (`stamp`, kept as `high_water`: no id is given again), drop the user from the
        cache, answer the caller."""
        conn = self._wconn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            # the deletion uses up an id of its own: a snapshot after it reads it as its
            # newest (`_SNAPSHOT_MAX`), one before it does not
            stamp = self._first_free_id(conn)
            deleted = conn.execute("DELETE FROM events WHERE user_id = ?", (item.user_id,)).rowcount
            conn.execute("DELETE FROM event_keys WHERE user_id = ?", (item.user_id,))
            conn.execute(
                "INSERT INTO event_meta (name, value) VALUES ('high_water', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
                (stamp,),
            )
            conn.execute("COMMIT")
            self._next_id = stamp + 1
        except Exception as exc:
            log.exception("deleting the events of user %d failed", item.user_id)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            with self._stats_lock:
                self.stats.failed_commits += 1
            self._resolve([item], None, StoreUnavailable(f"nothing deleted: {exc}"))
            return
        if self.cache is not None:
            # this user's fills read before this commit may hold the deleted events (also
            # when none was deleted now: a retry of a deletion whose commit failed but
            # reached the file drops what memory may still hold)
            try:
                self.cache.forget(item.user_id, stamp)
            except Exception:
                # committed: answered below whatever happens to the cache (an exception
                # here ended the writer thread, and the cache served the deleted events);
                # emptied, and fills from before the deletion refused for every user
                log.exception("event cache update failed after a deletion: cache emptied")
                self.cache.reset(stamp)
        with self._stats_lock:
            s = self.stats
            s.events -= deleted
            s.users -= 1 if deleted else 0
            s.deleted_users += 1 if deleted else 0
            s.deleted_events += deleted
        self._resolve([item], [deleted], None)
        log.info("deleted the %d events of user %d", deleted, item.user_id)

    def _stored_keys(
        self, conn: sqlite3.Connection, pairs: Sequence[tuple[int, str]], now: float
    ) -> dict[tuple[int, str], tuple[int, int]]:
        """(user, key) -> (event id, track) of the `pairs` stored within `key_ttl_s`: one
        query per `_KEYS_PER_QUERY` pairs, not one per event."""
        found: dict[tuple[int, str], tuple[int, int]] = {}
        for start in range(0, len(pairs), _KEYS_PER_QUERY):
            chunk = pairs[start : start + _KEYS_PER_QUERY]
            values = ", ".join("(?, ?)" for _ in chunk)
            rows = conn.execute(
                f"WITH asked (user_id, key) AS (VALUES {values}) "
                "SELECT k.user_id, k.key, k.event_id, k.track_id FROM asked "
                "JOIN event_keys AS k ON k.user_id = asked.user_id AND k.key = asked.key "
                "WHERE k.ts >= ?",
                [v for pair in chunk for v in pair] + [now - self.key_ttl_s],
            )
            for user_id, key, event_id, track_id in rows:
                found[int(user_id), str(key)] = (int(event_id), int(track_id))
        return found

    @staticmethod
    def _replay(ev: _Pending, event_id: int, track_id: int) -> Added | KeyReused:
        """The answer to `ev`, whose key stored event `event_id` of `track_id` before."""
        if track_id != ev.track_id:
            return KeyReused(
                f"idempotency key already used by user {ev.user_id} for track {track_id} "
                f"(event {event_id}), not track {ev.track_id}: nothing stored"
            )
        return Added(event_id, True)

    def _prune_keys(self, now: float) -> None:
        """Delete up to `_PRUNE_CHUNK` expired keys (they are ignored already; this frees
        their space). A full chunk leaves the next commit to go on; otherwise the next
        prune is in `_PRUNE_EVERY_S`. A failure is logged and tried again then: keys are
        not events."""
        conn = self._wconn
        assert conn is not None
        try:
            deleted = conn.execute(
                "DELETE FROM event_keys WHERE (user_id, key) IN (SELECT user_id, key FROM "
                "event_keys WHERE ts < ? ORDER BY ts LIMIT ?)",
                (now - self.key_ttl_s, _PRUNE_CHUNK),
            ).rowcount
        except sqlite3.Error as exc:
            log.warning("expired idempotency keys not deleted: %s", exc)
            deleted = 0
        self._pruned_at = 0.0 if deleted >= _PRUNE_CHUNK else now

    @staticmethod
    def _resolve(
        batch: Sequence[_Pending | _Delete],
        outcomes: Sequence[Added | KeyReused | int] | None,
        exc: BaseException | None,
    ) -> None:
        """Hand results back to the event loop(s), one callback per loop: each call's
        outcome, or `exc` for all of them."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for i, ev in enumerate(batch):
            by_loop.setdefault(ev.loop, []).append((ev.future, outcomes[i] if outcomes else None))
        for loop, items in by_loop.items():
            # RuntimeError: the loop is closed, nobody waits any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, items, exc)


def _layout(conn: sqlite3.Connection, table: str) -> dict[str, tuple[str, int]]:
    """Column -> (declared type in upper case, position in the primary key or 0)."""
    rows = conn.execute(f"PRAGMA table_info({table})")
    return {r[1]: (str(r[2]).upper(), int(r[5])) for r in rows}


def _settle(
    items: list[tuple[asyncio.Future[Any], Added | KeyReused | int | None]],
    exc: BaseException | None,
) -> None:
    for fut, outcome in items:
        if fut.done():
            continue
        if isinstance(exc, StoreUnavailable):  # says what was not done itself
            fut.set_exception(exc)
        elif exc is not None:
            fut.set_exception(StoreUnavailable(f"event not stored: {exc}"))
        elif isinstance(outcome, KeyReused):
            fut.set_exception(outcome)
        else:
            assert outcome is not None
            fut.set_result(outcome)

"""Deleting a user's history: `POST /delete_events` and `EventStore.delete_user`.

A listener may ask for their listening history to be deleted (a privacy request): every
event and idempotency key of the user goes, in order with the adds, and nothing of it
comes back from the cache or from a later id."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from musicrec.errors import ArtifactError
from musicrec.event_store import EventStore, RecentCache, StoreUnavailable
from musicrec.service_events import create_app
from musicrec.settings import Settings

from .conftest import (
    FailsOnce,
    fail_writes,
    heal_writes,
    hold_fills,
    make_settings,
    queued_behind_a_writer_lock,
)


def add(client: TestClient, user: int, track: int, **kw: Any) -> Any:
    return client.post("/add_event", params={"user_id": user, "track_id": track}, **kw)


def history(client: TestClient, user: int, **kw: Any) -> list[int]:
    return list(
        client.post("/get_events", params={"user_id": user, "k": 100}, **kw).json()["events"]
    )


def test_a_users_history_is_deleted_and_no_one_elses(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        for t in (10, 11, 12):
            assert add(c, 1, t).status_code == 200
        assert add(c, 2, 20).status_code == 200
        assert history(c, 1) == [12, 11, 10]  # read once: now in the cache
        r = c.post("/delete_events", params={"user_id": 1})
        assert r.status_code == 200 and r.json() == {"result": "ok", "deleted": 3}
        assert history(c, 1) == [] and history(c, 2) == [20]
        stats = c.get("/stats").json()
        assert (stats["events"], stats["users"]) == (1, 1)
        assert (stats["deleted_users"], stats["deleted_events"]) == (1, 3)
        assert c.post("/delete_events", params={"user_id": 1}).json()["deleted"] == 0
        assert c.post("/delete_events", params={"user_id": 999}).json()["deleted"] == 0
        assert add(c, 1, 13).status_code == 200  # the user may listen again
        assert history(c, 1) == [13]
    with sqlite3.connect(settings.event_db_path) as db:  # the file, not only the cache
        assert db.execute("SELECT user_id, track_id FROM events ORDER BY id").fetchall() == [
            (2, 20),
            (1, 13),
        ]


def test_the_users_idempotency_keys_go_too(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        first = add(c, 1, 10, headers={"Idempotency-Key": "k"}).json()["id"]
        assert c.post("/delete_events", params={"user_id": 1}).json()["deleted"] == 1
        again = add(c, 1, 10, headers={"Idempotency-Key": "k"})
        assert "idempotent-replayed" not in again.headers and again.json()["id"] > first
        assert history(c, 1) == [10]
    with sqlite3.connect(settings.event_db_path) as db:
        assert db.execute("SELECT user_id, key FROM event_keys").fetchall() == [(1, "k")]


def test_ids_of_deleted_events_are_never_given_again(tmp_path: Path) -> None:
    """SQLite gives a new row the highest id + 1: deleting the user of the newest events
    would hand their ids to later events (`/add_event`'s ids grow with insertion order),
    and after a restart too."""
    path = tmp_path / "ids.db"
    store = EventStore(path)
    store.open()
    try:
        assert [asyncio.run(store.add(u, 1)) for u in (1, 1, 2)] == [1, 2, 3]
        assert asyncio.run(store.delete_user(2)) == 1  # uses up id 4 (see the cache's rule)
        assert asyncio.run(store.add(3, 1)) == 5
        assert asyncio.run(store.delete_user(3)) == 1  # 6
    finally:
        store.close()
    store = EventStore(path)
    store.open()
    try:
        assert asyncio.run(store.add(1, 1)) == 7
    finally:
        store.close()


def test_a_deletion_keeps_the_order_of_the_calls(tmp_path: Path) -> None:
    """Adds queued before the deletion are deleted with the rest, adds after it kept,
    though all of them are taken by the writer in one batch."""
    path = tmp_path / "order.db"
    store = EventStore(path)
    store.open()
    try:
        asyncio.run(store.add(1, 9))
        got = queued_behind_a_writer_lock(
            path,
            lambda: [
                store.add(1, 10),
                store.add(2, 20),
                store.delete_user(1),
                store.add(1, 11),
                store.add(2, 21),
            ],
        )
        assert got[2] == 2  # 9 and 10
        assert asyncio.run(store.latest(1, 10)) == [11]
        assert asyncio.run(store.latest(2, 10)) == [21, 20]
        counts = asyncio.run(store.counts())
        assert (counts["events"], counts["users"]) == (3, 2)
    finally:
        store.close()


def test_a_fill_read_before_the_deletion_is_not_cached() -> None:
    """A reader thread's snapshot taken before the deletion holds the deleted events: its
    fill, offered after the deletion, must be refused (else they come back)."""
    cache = RecentCache(max_users=10, depth=2)
    assert cache.install(1, [(3, 30), (1, 10)], snapshot_max=3, limit=2)
    cache.forget(1, next_id=4)  # every id so far is below 4
    assert cache.get(1, 2) is None and cache.events == 0
    assert not cache.install(1, [(3, 30), (1, 10)], snapshot_max=3, limit=2)
    assert cache.get(1, 2) is None
    assert cache.install(1, [(4, 40)], snapshot_max=4, limit=2)  # a later snapshot
    assert cache.get(1, 2) == [40]


def test_with_a_key_set_a_deletion_needs_it(artifacts: dict[str, Any], tmp_path: Path) -> None:
    cfg = make_settings(artifacts["root"], tmp_path, events_api_key=SecretStr("k3y"))
    key = {"X-API-Key": "k3y"}
    with TestClient(create_app(cfg)) as c:
        assert add(c, 1, 10, headers=key).status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}):
            r = c.post("/delete_events", params={"user_id": 1}, headers=headers)
            assert r.status_code == 401
        assert history(c, 1, headers=key) == [10]
        assert c.post("/delete_events", params={"user_id": 1}, headers=key).json()["deleted"] == 1


def test_a_failed_deletion_is_a_503_and_deletes_nothing(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        assert add(c, 1, 10).status_code == 200
        fail_writes(settings.event_db_path, "events", "DELETE", "disk I/O error")
        r = c.post("/delete_events", params={"user_id": 1})
        assert r.status_code == 503 and "disk I/O error (test)" in r.json()["detail"]
        assert history(c, 1) == [10]
        assert c.get("/stats").json()["failed_commits"] == 1
        heal_writes(settings.event_db_path)
        assert c.post("/delete_events", params={"user_id": 1}).json()["deleted"] == 1
        assert add(c, 1, 11).status_code == 200  # the writer goes on
        assert history(c, 1) == [11]


def test_a_store_without_a_cache_deletes_too(tmp_path: Path) -> None:
    """With the cache off (`cache_users=0`) a deletion is committed and answered, and the
    writer goes on with the next add."""
    store = EventStore(tmp_path / "no-cache.db", cache_users=0)
    store.open()

    async def scenario() -> tuple[int, list[int], list[int]]:
        await store.add(1, 10)
        await store.add(2, 20)
        deleted = await asyncio.wait_for(store.delete_user(1), 5)
        await asyncio.wait_for(store.add(1, 11), 5)
        return deleted, await store.latest(1, 5), await store.latest(2, 5)

    try:
        assert asyncio.run(scenario()) == (1, [11], [20])
    finally:
        store.close()


def test_a_closed_store_refuses_a_deletion(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "c.db")
    store.open()
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        asyncio.run(store.delete_user(1))


@pytest.mark.parametrize("user_id", [-1, 2**31, "x"])
def test_a_bad_user_id_is_a_422(settings: Settings, user_id: Any) -> None:
    with TestClient(create_app(settings)) as c:
        assert c.post("/delete_events", params={"user_id": user_id}).status_code == 422


def test_deleted_rows_do_not_stay_in_the_file(tmp_path: Path) -> None:
    """SQLite leaves deleted rows in free pages unless `secure_delete` is on: a deleted
    user's idempotency keys (here the marker) could be read back from the file."""
    path = tmp_path / "secure.db"
    store = EventStore(path)
    store.open()
    try:
        for i in range(50):
            asyncio.run(store.add_once(1, i, f"PRIVATE-MARKER-{i:03d}"))
        asyncio.run(store.add_once(2, 1, "other-user"))
        assert asyncio.run(store.delete_user(1)) == 50
    finally:
        store.close()  # checkpoints the WAL into the file
    data = path.read_bytes()
    assert b"other-user" in data and b"PRIVATE-MARKER" not in data


def test_nothing_deleted_changes_no_counter(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        assert add(c, 1, 10).status_code == 200
        before = c.get("/stats").json()
        assert c.post("/delete_events", params={"user_id": 2}).json()["deleted"] == 0
        after = c.get("/stats").json()
        for name in ("events", "users", "deleted_users", "deleted_events"):
            assert after[name] == before[name], name


@pytest.mark.parametrize("other_add", [False, True], ids=["alone", "then-another-users-add"])
def test_a_fill_racing_the_deletion_does_not_bring_the_events_back(
    tmp_path: Path, other_add: bool
) -> None:
    """A reader thread reads the user from SQLite before the deletion and offers its fill
    to the cache after it: the fill must be refused (else every later read serves the
    deleted events from memory), also when another user's add was committed between the
    deletion and the late fill (the refusal ended at that commit: the events came back)."""
    store = EventStore(tmp_path / "race.db")
    store.open()
    assert store.cache is not None
    cache = store.cache

    async def scenario() -> tuple[list[int], int, list[int]]:
        await store.add(1, 10)
        await store.add(1, 11)
        read, go, real_install = hold_fills(cache)
        reading = asyncio.ensure_future(store.latest(1, 10))
        await asyncio.to_thread(read.wait, 5)
        deleted = await store.delete_user(1)
        if other_add:
            await store.add(2, 20)
        go.set()
        old_snapshot = await reading
        cache.install = real_install  # type: ignore[method-assign]
        return old_snapshot, deleted, await store.latest(1, 10)

    try:
        old_snapshot, deleted, after = asyncio.run(scenario())
    finally:
        store.close()
    assert (old_snapshot, deleted, after) == ([11, 10], 2, [])
    assert cache.refused_fills == 1  # the racing fill


def test_a_deletion_refuses_older_fills_of_that_user_only() -> None:
    cache = RecentCache(max_users=10, depth=2)
    cache.forget(1, next_id=5)
    assert not cache.install(1, [(3, 30)], snapshot_max=4, limit=2)
    assert cache.install(2, [(4, 40)], snapshot_max=4, limit=2)  # another user: cached
    cache.apply([(5, 2, 50)])  # another user's commit after the deletion
    # a reader that took its snapshot before the deletion may offer it only now: refused
    # still (the refusal ended at that commit, and the deleted events came back)
    assert not cache.install(1, [(3, 30)], snapshot_max=4, limit=2)
    assert cache.install(1, [(5, 51)], snapshot_max=5, limit=2)
    assert cache.get(1, 2) == [51] and cache.get(2, 2) == [50, 40]


def test_a_deletion_pushed_out_of_the_written_users_still_refuses_older_fills() -> None:
    """The deletion's refusal is bounded like a write's: once `written_users` other users
    were written after it, it becomes the floor every fill's snapshot must reach, for all
    users (never dropped)."""
    cache = RecentCache(max_users=10, depth=2, written_users=2)
    cache.forget(1, next_id=5)
    cache.apply([(6, 2, 60), (7, 3, 70)])  # two users written after: user 1 pushed out
    assert not cache.install(1, [(3, 30)], snapshot_max=4, limit=2)
    assert not cache.install(4, [(2, 20)], snapshot_max=4, limit=2)  # the floor, for all
    assert cache.install(1, [(5, 51)], snapshot_max=7, limit=2)
    assert cache.get(1, 2) == [51]


def test_a_row_written_by_another_connection_does_not_block_the_adds(tmp_path: Path) -> None:
    """The store gives ids itself (so that deleted ones are not given again): a row added
    by hand or by an import took the next id, and every later add failed on it."""
    path = tmp_path / "import.db"
    store = EventStore(path)
    store.open()
    try:
        assert asyncio.run(store.add(1, 10)) == 1
        with sqlite3.connect(path) as db:
            db.execute("INSERT INTO events (user_id, track_id, ts) VALUES (5, 50, 0)")
        assert [asyncio.run(store.add(2, 20 + i)) for i in range(3)] == [3, 4, 5]
        assert asyncio.run(store.counts())["failed_commits"] == 0
    finally:
        store.close()


@pytest.mark.parametrize(
    "meta",
    [
        "CREATE TABLE event_meta (name TEXT, value INTEGER)",  # no primary key
        "CREATE TABLE event_meta (k TEXT PRIMARY KEY, v INTEGER)",
        "CREATE TABLE event_meta (name TEXT PRIMARY KEY, value INTEGER);"
        "INSERT INTO event_meta VALUES ('high_water', 'x')",
        "CREATE TABLE event_meta (name TEXT PRIMARY KEY, value INTEGER);"
        "INSERT INTO event_meta VALUES ('high_water', 9223372036854775807)",
    ],
    ids=["no-primary-key", "other-columns", "text-value", "huge-value"],
)
def test_a_foreign_or_damaged_event_meta_is_refused_and_lets_go(tmp_path: Path, meta: str) -> None:
    """It opened, and then every deletion failed (no primary key), every add failed (an id
    beyond SQLite's integers), or a plain ValueError left the connection and the lock
    held (text)."""
    path = tmp_path / "meta.db"
    store = EventStore(path)
    store.open()
    store.close()
    with sqlite3.connect(path) as db:
        db.executescript("DROP TABLE event_meta;" + meta)
    with pytest.raises(ArtifactError, match="event_meta"):
        EventStore(path, owner_wait_s=0.1).open()
    with sqlite3.connect(path) as db:  # repaired: the same process can open it again
        db.executescript(
            "DROP TABLE event_meta;"
            "CREATE TABLE event_meta (name TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID"
        )
    store = EventStore(path, owner_wait_s=0.1)
    store.open()
    store.close()


def test_a_high_water_id_of_2_to_the_62_or_more_is_refused(tmp_path: Path) -> None:
    """Ids are bounded to below 2**62 (far from SQLite's 2**63 - 1): the highest
    high-water id taken is 2**62 - 1, whose next event is 2**62; 2**62 is refused."""
    path = tmp_path / "hw.db"
    store = EventStore(path)
    store.open()
    store.close()
    for value, opens in ((2**62 - 1, True), (2**62, False)):
        with sqlite3.connect(path) as db:
            db.execute("INSERT OR REPLACE INTO event_meta VALUES ('high_water', ?)", (value,))
        db.close()
        store = EventStore(path, owner_wait_s=0.1)
        if not opens:
            with pytest.raises(ArtifactError, match=rf"high_water is {2**62}\b"):
                store.open()
            continue
        store.open()
        try:
            assert asyncio.run(store.add(1, 10)) == value + 1
        finally:
            store.close()


def test_deleting_the_user_of_the_newest_events_keeps_the_cache_filling(tmp_path: Path) -> None:
    """A snapshot's newest id went down when the deleted user held the newest events: the
    cache then refused every user's fill (each read went to SQLite) until the next add."""
    store = EventStore(tmp_path / "top.db")
    store.open()
    assert store.cache is not None
    try:
        for t in range(5):
            asyncio.run(store.add(1, t))
        asyncio.run(store.add(2, 99))  # user 2 holds the newest event
        assert asyncio.run(store.delete_user(2)) == 1
        for _ in range(3):
            assert asyncio.run(store.latest(1, 5)) == [4, 3, 2, 1, 0]
            assert asyncio.run(store.latest(2, 5)) == []
        assert (store.cache.refused_fills, store.cache.misses) == (0, 2)
        counts = asyncio.run(store.counts())
        assert (counts["cache_refused_fills"], counts["cache_misses"]) == (0, 2)
    finally:
        store.close()


def test_a_cache_update_failing_after_a_deletion_keeps_the_writer_and_serves_nothing_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `test_a_cache_update_failing_after_a_commit_keeps_the_writer`, for a deletion:
    its COMMIT is kept, so the caller must get its answer, the writer must go on, and no
    read may serve the deleted events from memory (emptying the cache, as `reset` does
    for a failed `apply`, would do)."""
    store = EventStore(tmp_path / "forget.db")
    store.open()
    assert store.cache is not None
    cache = store.cache

    async def answer(call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, 2)
        except TimeoutError:
            return "no answer"

    async def scenario() -> tuple[Any, list[int], Any]:
        await store.add(1, 10)
        await store.add(1, 11)
        assert await store.latest(1, 5) == [11, 10]  # user 1 is cached now
        monkeypatch.setattr(cache, "forget", FailsOnce(cache.forget))
        deleted = await answer(store.delete_user(1))
        after = await store.latest(1, 5)
        added = await answer(store.add(2, 20))
        return deleted, after, added

    try:
        deleted, after, added = asyncio.run(scenario())
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "forget.db") as db:  # the deletion was committed
        assert db.execute("SELECT COUNT(*) FROM events WHERE user_id = 1").fetchone()[0] == 0
    # it was ("no answer", [11, 10], "no answer"): the writer thread had died
    assert deleted == 2 and after == [] and isinstance(added, int)


def test_ids_of_deleted_events_are_not_given_again_after_a_crash(tmp_path: Path) -> None:
    """A process killed after a deletion (no `close()`: no checkpoint, the deletion and
    its high-water id only in the WAL): the store opened again must not give the deleted
    user's ids (the newest ones) to new events, and must not serve the deleted events."""
    import subprocess
    import sys

    import musicrec

    path = tmp_path / "crash.db"
    child = (
        "import asyncio, os, sys\n"
        "from musicrec.event_store import EventStore\n"
        "s = EventStore(sys.argv[1])\n"
        "s.open()\n"
        "ids = [asyncio.run(s.add(u, t)) for u, t in ((1, 10), (2, 20), (2, 21))]\n"
        "print(asyncio.run(s.delete_user(2)), *ids, flush=True)\n"
        "os._exit(0)  # as a kill: no close(), no checkpoint\n"
    )
    root = Path(musicrec.__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", child, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    deleted, *ids = (int(word) for word in done.stdout.split())
    assert deleted == 2 and len(set(ids)) == 3
    assert path.with_name("crash.db-wal").stat().st_size > 0  # the crash left the WAL
    store = EventStore(path)
    store.open()
    try:
        new_id = asyncio.run(store.add(3, 30))
        assert new_id > max(ids)  # user 2 held the newest ids
        assert asyncio.run(store.latest(2, 5)) == []
        assert asyncio.run(store.latest(1, 5)) == [10]
    finally:
        store.close()


def test_a_deletion_that_finds_nothing_still_drops_the_users_cached_events(
    tmp_path: Path,
) -> None:
    """A deletion whose events were already gone from the file (a retry after a failed
    commit that reached the file after all; here removed by hand) answers 0 and still
    drops what the cache holds of the user: nothing deleted is served from memory."""
    path = tmp_path / "gone.db"
    store = EventStore(path)
    store.open()

    async def scenario() -> tuple[list[int], int, list[int]]:
        await store.add(1, 10)
        cached = await store.latest(1, 5)
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM events WHERE user_id = 1")
        return cached, await store.delete_user(1), await store.latest(1, 5)

    try:
        cached, deleted, after = asyncio.run(scenario())
    finally:
        store.close()
    assert (cached, deleted) == ([10], 0)
    assert after == []  # it was [10], from the cache

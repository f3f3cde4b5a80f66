"""Routes of the event-history service and the SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from musicrec.errors import ArtifactError
from musicrec.event_store import EventStore, RecentCache, StoreUnavailable
from musicrec.service_common import EVENTS_BATCH_MAX_EVENTS, EVENTS_BATCH_MAX_USERS
from musicrec.service_events import create_app
from musicrec.settings import EVENTS_K_MAX, Settings

from .conftest import FailsOnce, assert_json_413, fail_writes, heal_writes, hold_fills


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def add(client: TestClient, user: int, track: int, **kw: Any) -> Any:
    return client.post("/add_event", params={"user_id": user, "track_id": track}, **kw)


def test_events_newest_first_with_default_k(client: TestClient) -> None:
    for t in range(1, 8):
        r = add(client, 7, t * 100)
        assert r.status_code == 200 and r.json()["result"] == "ok"
    add(client, 8, 5)  # another user does not leak in
    r = client.post("/get_events", params={"user_id": 7})
    assert r.json() == {"events": [700, 600, 500, 400, 300], "count": 5}
    r = client.post("/get_events", params={"user_id": 7, "k": 1000})
    assert r.json()["events"] == [700, 600, 500, 400, 300, 200, 100]
    assert r.json()["count"] == 7
    assert client.post("/get_events", params={"user_id": 9}).json() == {"events": [], "count": 0}


def test_the_deepest_exclusion_setting_is_a_depth_this_service_answers(
    settings: Settings,
) -> None:
    """The recommendation service reads `exclude_events_max` events per user in batches of
    `events_batch(depth)` users: at the deepest value the setting allows, both routes must
    take that depth (a setting allowed deeper than the routes got a 422 on every call, each
    answer silently the offline list)."""
    from musicrec.service_recommendations import events_batch

    (bound,) = [
        m.le for m in Settings.model_fields["exclude_events_max"].metadata if hasattr(m, "le")
    ]
    deepest = Settings(exclude_events_max=bound).exclude_events_max
    with pytest.raises(ValueError, match="exclude_events_max"):
        Settings(exclude_events_max=deepest + 1)
    with TestClient(create_app(settings)) as c:
        add(c, 1, 5)
        r = c.post("/get_events", params={"user_id": 1, "k": deepest})
        assert r.status_code == 200 and r.json()["events"] == [5]
        users = [1] + [2] * (events_batch(deepest) - 1)
        r = c.post("/get_events_batch", json={"user_ids": users, "k": deepest})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["events"] == [5]


def test_event_ids_grow_and_unknown_tracks_are_stored(client: TestClient) -> None:
    ids = [add(client, 1, t).json()["id"] for t in (2**31 - 1, 0, 123)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert client.post("/get_events", params={"user_id": 1}).json()["events"] == [
        123,
        0,
        2**31 - 1,
    ]


def test_stats_counts_events_and_users(client: TestClient) -> None:
    for u, t in [(1, 1), (1, 2), (2, 1)]:
        add(client, u, t)
    s = client.get("/stats").json()
    assert s["events"] == 3 and s["users"] == 2
    assert s["commits"] >= 1 and s["synchronous"] == "FULL"


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/add_event", {"user_id": -1, "track_id": 1}),
        ("/add_event", {"user_id": 1, "track_id": 2**31}),
        ("/add_event", {"user_id": 1}),
        ("/get_events", {"user_id": 1, "k": 0}),
        ("/get_events", {"user_id": 1, "k": EVENTS_K_MAX + 1}),
        ("/get_events", {"user_id": "a"}),
    ],
)
def test_bad_params_422(client: TestClient, path: str, params: dict[str, Any]) -> None:
    r = client.post(path, params=params)
    assert r.status_code == 422
    assert "invalid request" in r.json()["message"]
    assert client.get("/stats").json()["events"] == 0


def test_history_survives_a_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        add(c, 3, 30)
        add(c, 3, 31)
    with TestClient(create_app(settings)) as c:
        assert c.post("/get_events", params={"user_id": 3}).json()["events"] == [31, 30]
        assert c.get("/stats").json()["events"] == 2


def test_api_key_required_when_configured(artifacts: dict[str, Any], tmp_path: Path) -> None:
    from .conftest import make_settings

    cfg = make_settings(artifacts["root"], tmp_path, events_api_key=SecretStr("k3y"))
    key = {"X-API-Key": "k3y"}
    with TestClient(create_app(cfg)) as c:
        assert add(c, 1, 1).status_code == 401
        assert add(c, 1, 2, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/stats", headers=key).json()["events"] == 0
        assert c.post("/get_events", params={"user_id": 1}, headers=key).json()["count"] == 0
        assert add(c, 1, 3, headers=key).status_code == 200
        assert c.post("/get_events", params={"user_id": 1}, headers=key).json()["events"] == [3]
    with sqlite3.connect(cfg.event_db_path) as db:  # nothing else reached the database
        assert db.execute("SELECT track_id FROM events").fetchall() == [(3,)]


def test_with_a_key_set_reads_need_it_too(artifacts: dict[str, Any], tmp_path: Path) -> None:
    """Only `/add_event` asked for the key: anyone who could reach the service read any
    user's listening history by id, and `/stats` the database's path. With a key set,
    every route of the store needs it; the probes and `/metrics` stay open."""
    from .conftest import make_settings

    cfg = make_settings(artifacts["root"], tmp_path, events_api_key=SecretStr("k3y"))
    with TestClient(create_app(cfg)) as c:
        assert add(c, 1, 3, headers={"X-API-Key": "k3y"}).status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}):
            r = c.post("/get_events", params={"user_id": 1}, headers=headers)
            assert r.status_code == 401 and "X-API-Key" in r.json()["detail"], r.text
            r = c.post("/get_events_batch", json={"user_ids": [1], "k": 5}, headers=headers)
            assert r.status_code == 401, r.text
            assert c.get("/stats", headers=headers).status_code == 401
        r = c.post(
            "/get_events_batch", json={"user_ids": [1], "k": 5}, headers={"X-API-Key": "k3y"}
        )
        assert r.json() == {"results": [{"user_id": 1, "events": [3]}]}
        for probe in ("/health", "/ready", "/metrics"):
            assert c.get(probe).status_code == 200, probe


def test_the_openapi_schema_documents_the_key_guarded_routes_401(client: TestClient) -> None:
    """A client generated from `/openapi.json` learns that every route of the store may
    answer 401 (a key set), `/add_event` a 409 (a key reused with another track) and a 200
    with the replay header, and both writes a 503 to retry (nothing stored or deleted)."""
    paths = client.get("/openapi.json").json()["paths"]
    guarded = {
        "/add_event": "post",
        "/get_events": "post",
        "/get_events_batch": "post",
        "/delete_events": "post",
        "/stats": "get",
    }
    for path, method in guarded.items():
        responses = paths[path][method]["responses"]
        assert "401" in responses and "X-API-Key" in responses["401"]["description"], path
    add_responses = paths["/add_event"]["post"]["responses"]
    assert "Idempotency-Key" in add_responses["409"]["description"]
    assert "Idempotent-Replayed" in add_responses["200"]["headers"]
    assert "retry" in add_responses["503"]["description"]
    assert "retry" in paths["/delete_events"]["post"]["responses"]["503"]["description"]


def test_a_batch_answer_is_bounded(settings: Settings) -> None:
    """500 users x k=10,000 (1.5 kB asked) made a 40 MB answer, built on the event loop
    for seconds while every other request waited: users x k is bounded (422 naming the
    bound); at the bound the call is answered."""

    with TestClient(create_app(settings)) as c:
        add(c, 1, 3)
        r = c.post(
            "/get_events_batch", json={"user_ids": [1] * EVENTS_BATCH_MAX_USERS, "k": 10_000}
        )
        assert r.status_code == 422 and f"{EVENTS_BATCH_MAX_EVENTS:,} events" in r.text, r.text
        users = EVENTS_BATCH_MAX_EVENTS // EVENTS_K_MAX
        r = c.post("/get_events_batch", json={"user_ids": [1] * users, "k": EVENTS_K_MAX})
        assert r.status_code == 200 and len(r.json()["results"]) == users
        r = c.post("/get_events_batch", json={"user_ids": [1] * (users + 1), "k": EVENTS_K_MAX})
        assert r.status_code == 422


def test_a_non_ascii_api_key_is_refused_and_an_empty_one_warned_of(
    artifacts: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key no client could send as configured (`clé`: servers read header bytes as
    latin-1) is refused when the settings are read (tests/test_settings.py), and by the
    app's creation for settings made without their checks, without the key in the
    message; a key set but empty checks nothing, so it is logged."""
    from pydantic import ValidationError

    from musicrec.errors import ConfigError

    from .conftest import make_settings

    for bad in ("clé", "two words"):
        with pytest.raises(ValidationError, match="printable ASCII"):
            make_settings(artifacts["root"], tmp_path, events_api_key=SecretStr(bad))
        unchecked = make_settings(artifacts["root"], tmp_path).model_copy(
            update={"events_api_key": SecretStr(bad)}
        )
        with pytest.raises(ConfigError, match="printable ASCII") as err:
            create_app(unchecked)
        assert bad not in str(err.value)
    cfg = make_settings(artifacts["root"], tmp_path, events_api_key=SecretStr(""))
    with caplog.at_level("WARNING"), TestClient(create_app(cfg)) as c:
        assert add(c, 1, 1).status_code == 200
    assert any("set but empty" in r.message for r in caplog.records)


def test_not_ready_before_the_store_is_open(settings: Settings) -> None:
    c = TestClient(create_app(settings))
    assert c.get("/ready").status_code == 503
    assert add(c, 1, 1).status_code == 503


def test_store_uses_wal_and_group_commits_concurrent_writes(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "g.db")
    store.open()
    try:

        async def burst() -> list[int]:
            return list(await asyncio.gather(*(store.add(u % 10, u) for u in range(300))))

        ids = asyncio.run(burst())
        assert len(set(ids)) == 300
        s = asyncio.run(store.counts())
        assert s["events"] == 300 and s["users"] == 10
        assert s["commits"] < 300 and s["max_batch"] > 1  # batched: fewer fsyncs than events
        assert asyncio.run(store.latest(3, 3)) == [293, 283, 273]
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "g.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        plan = " ".join(
            str(r)
            for r in db.execute(
                "EXPLAIN QUERY PLAN SELECT track_id FROM events WHERE user_id=1 ORDER BY id DESC"
            )
        )
        # a user's latest events: one range of the covering index, no look-up in the table
        assert "COVERING INDEX events_user_recent" in plan and "TEMP B-TREE" not in plan


def older_database(path: Path, rows: Iterable[tuple[int, int, float]]) -> Path:
    """An event database of the layout before the covering index (user_id, id) with `rows`
    of (user_id, track_id, ts)."""
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, "
            "track_id INTEGER NOT NULL, ts REAL NOT NULL);"
            "CREATE INDEX events_user_id ON events (user_id, id);"
        )
        db.executemany("INSERT INTO events (user_id, track_id, ts) VALUES (?, ?, ?)", rows)
    return path


def test_two_stores_opening_one_older_database_at_once_one_migrates(tmp_path: Path) -> None:
    """Two stores opening the same database of the older index at once: one holds it and
    migrates it, the other is refused naming this process (before the store held the
    database, both migrated and the second failed with "no such index")."""
    path = older_database(tmp_path / "old.db", ((i % 997, i, float(i)) for i in range(300_000)))
    stores = [EventStore(path, owner_wait_s=0.2), EventStore(path, owner_wait_s=0.2)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def open_store(store: EventStore) -> None:
        start.wait()
        try:
            store.open()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    opened = [s for s in stores if s.is_open]
    try:
        assert len(opened) == 1 and len(errors) == 1, errors
        assert isinstance(errors[0], ArtifactError)
        assert f"another event store (pid {os.getpid()})" in str(errors[0])
        assert asyncio.run(opened[0].counts())["events"] == 300_000
        assert asyncio.run(opened[0].latest(5, 2)) == [299_105, 298_108]
    finally:
        for s in opened:
            s.close()


def test_a_second_store_on_one_database_is_refused(tmp_path: Path) -> None:
    """`uvicorn event_storage:app --workers 2` (or two services given one file): each
    process cached recent events the other's writes never reached, so a read through one
    missed an event just added through the other. The second store is refused at open;
    once the first has closed, it opens and reads what the first wrote."""
    path = tmp_path / "events.db"
    first = EventStore(path)
    first.open()
    try:
        asyncio.run(first.add(1, 10))
        second = EventStore(path, owner_wait_s=0.1)
        with pytest.raises(ArtifactError, match="another event store .* no `--workers` above 1"):
            second.open()
        assert not second.is_open
    finally:
        first.close()
    second.open()
    try:
        assert asyncio.run(second.latest(1, 5)) == [10]
    finally:
        second.close()


def test_a_link_to_a_held_database_is_refused_too(tmp_path: Path) -> None:
    """The lock was named after the path given: a symlink to the database got a lock of
    its own, and two stores shared one database through it."""
    real = tmp_path / "real" / "events.db"
    first = EventStore(real)
    first.open()
    try:
        alias = tmp_path / "alias.db"
        alias.symlink_to(real)
        with pytest.raises(ArtifactError, match="another event store"):
            EventStore(alias, owner_wait_s=0.1).open()
    finally:
        first.close()


def test_a_restart_waits_for_the_old_store_to_close(tmp_path: Path) -> None:
    """A restart whose old process is still closing: the new store waits for it (up to
    `owner_wait_s`) instead of failing its start."""
    path = tmp_path / "events.db"
    old = EventStore(path)
    old.open()
    closer = threading.Timer(0.3, old.close)
    closer.start()
    new = EventStore(path, owner_wait_s=10.0)
    t0 = time.perf_counter()
    new.open()
    try:
        assert time.perf_counter() - t0 >= 0.25
        assert not old.is_open
    finally:
        closer.join()
        new.close()


def test_the_store_of_another_process_is_named(tmp_path: Path) -> None:
    """The real case: the database held by another process, whose pid the error names."""
    import subprocess
    import sys

    path = tmp_path / "events.db"
    code = (
        "import sys, time\n"
        "from musicrec.event_store import EventStore\n"
        f"s = EventStore({str(path)!r}); s.open(); print('open', flush=True)\n"
        "sys.stdin.readline(); s.close()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        with pytest.raises(ArtifactError, match=f"another event store \\(pid {proc.pid}\\)"):
            EventStore(path, owner_wait_s=0.1).open()
    finally:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_database_of_the_older_index_is_given_the_covering_one(tmp_path: Path) -> None:
    """A database written before the covering index (its index on (user_id, id) only) gets
    the new index at open, loses the old one, and reads the same events; it also gets the
    table of idempotency keys (with its expiry index)."""
    path = older_database(
        tmp_path / "old.db", [(u, 100 * u + i, float(i)) for i in range(5) for u in (1, 2)]
    )
    store = EventStore(path)
    store.open()
    try:
        assert asyncio.run(store.latest(2, 3)) == [204, 203, 202]
        assert asyncio.run(store.counts())["events"] == 10
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert names == {"events_user_recent", "event_keys_ts"}
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"events", "event_keys", "event_meta"}
    store = EventStore(path)  # a second open finds it and builds nothing
    store.open()
    store.close()


def test_store_rejects_adds_after_close(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "c.db")
    store.open()
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        asyncio.run(store.add(1, 1))
    with pytest.raises(StoreUnavailable, match="closed"):
        asyncio.run(store.latest(1, 1))


def test_a_failed_commit_is_a_503_and_stores_nothing(settings: Settings) -> None:
    """A commit that fails in SQLite (here a trigger stands for a full disk) answers 503
    with the reason; the events acknowledged before it are intact, and once the disk is
    back the same call succeeds."""
    with TestClient(create_app(settings)) as c:
        assert add(c, 5, 50).status_code == 200
        fail_writes(settings.event_db_path, "events")
        r = add(c, 5, 51)
        assert r.status_code == 503
        assert r.json()["detail"].startswith("event store unavailable: event not stored: ")
        assert "disk is full (test)" in r.json()["detail"]
        assert c.post("/get_events", params={"user_id": 5, "k": 10}).json()["events"] == [50]
        with sqlite3.connect(settings.event_db_path) as db:  # the file, not only the cache
            assert db.execute("SELECT track_id FROM events WHERE user_id = 5").fetchall() == [(50,)]
        assert c.get("/stats").json()["failed_commits"] == 1
        heal_writes(settings.event_db_path)
        assert add(c, 5, 51).status_code == 200
        assert c.post("/get_events", params={"user_id": 5, "k": 10}).json()["events"] == [51, 50]


def test_a_full_write_queue_refuses_new_events_and_keeps_the_queued(tmp_path: Path) -> None:
    """Backpressure: while the writer is stuck (another connection holds the write lock),
    events queue up to `max_pending`; the next add is refused at once with
    StoreUnavailable; the queued ones are all committed once the lock is released."""
    store = EventStore(tmp_path / "q.db", max_pending=2)
    store.open()
    blocker = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    try:

        async def scenario() -> tuple[list[int], int]:
            blocker.execute("BEGIN IMMEDIATE")  # the writer's BEGIN IMMEDIATE now waits
            first = asyncio.ensure_future(store.add(1, 10))
            await asyncio.sleep(0)  # it is queued now
            for _ in range(500):  # until the writer took it (and waits for the lock)
                if not store._queue.qsize():
                    break
                await asyncio.sleep(0.01)
            assert not store._queue.qsize()
            queued = [asyncio.ensure_future(store.add(1, t)) for t in (11, 12)]
            await asyncio.sleep(0)  # both are in the queue now
            with pytest.raises(StoreUnavailable, match="write queue full"):
                await store.add(1, 13)
            blocker.execute("COMMIT")
            ids = list(await asyncio.gather(first, *queued))
            return ids, (await store.counts())["refused_full"]

        ids, refused = asyncio.run(scenario())
        assert len(set(ids)) == 3 and refused == 1
        assert asyncio.run(store.latest(1, 10)) == [12, 11, 10]
    finally:
        blocker.close()
        store.close()


def test_an_add_racing_close_is_answered_and_kept(tmp_path: Path) -> None:
    """`close()` (another thread, as in the lifespan) running between an `add`'s closed
    check and its put: the add must still be answered, and an acknowledged event written
    (it was queued behind the writer's stop marker and waited forever)."""

    class WindowQueue(queue.SimpleQueue[Any]):
        """`qsize()`, which `add` calls between the check and the put, lets close() run."""

        def __init__(self, go: threading.Event) -> None:
            self.go, self.armed = go, True

        def qsize(self) -> int:
            if self.armed:
                self.armed = False
                self.go.set()
                time.sleep(0.1)  # close() would run to completion here without the lock
            return super().qsize()

    path = tmp_path / "e.db"
    store = EventStore(path, synchronous="NORMAL", cache_users=0)
    go = threading.Event()
    store._queue = WindowQueue(go)  # before open(): the writer thread reads this queue
    store.open()
    closer = threading.Thread(target=lambda: (go.wait(), store.close()))
    closer.start()

    async def add() -> int | str:
        try:
            return await asyncio.wait_for(store.add(7, 70), timeout=5)
        except StoreUnavailable:
            return "refused"

    got = asyncio.run(add())
    closer.join(timeout=10)
    assert not closer.is_alive()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT user_id, track_id FROM events").fetchall()
    assert (got == "refused" and rows == []) or (isinstance(got, int) and rows == [(7, 70)])


# --- the in-memory cache of the latest events -------------------------------------------


def test_recent_cache_install_get_apply_and_evict() -> None:
    cache = RecentCache(max_users=2, depth=3)
    assert cache.get(1, 2) is None and cache.misses == 1
    # rows are (id, track) newest first, as read from SQLite with LIMIT 3; snapshot max 12
    assert cache.install(1, [(12, 120), (10, 100), (5, 50)], snapshot_max=12, limit=3)
    assert cache.get(1, 2) == [120, 100]
    assert cache.get(1, 3) == [120, 100, 50]
    assert cache.get(1, 4) is None  # deeper than the entry: the caller reads SQLite
    # a commit batch with an event the fill already had (id 12) and two new ones
    cache.apply([(12, 1, 120), (13, 1, 130), (14, 2, 140)])
    assert cache.get(1, 3) == [130, 120, 100]
    assert cache.get(2, 1) is None  # user 2 was not cached: nothing invented for it
    # a fill from a snapshot older than an applied commit may miss that commit: refused
    assert not cache.install(2, [], snapshot_max=13, limit=3)
    assert cache.refused_fills == 1
    assert cache.install(2, [], snapshot_max=14, limit=3)  # empty history is cached too
    assert cache.get(2, 3) == []
    cache.get(1, 1)  # user 1 is now the most recently used
    assert cache.install(3, [(15, 150)], snapshot_max=15, limit=3)
    assert len(cache) == 2 and cache.get(2, 1) is None  # user 2 evicted (least recent)
    assert cache.get(1, 1) == [130] and cache.get(3, 1) == [150]
    assert cache.events == 5  # 4 of user 1, 1 of user 3


def test_a_fill_is_refused_only_for_a_commit_of_its_own_user() -> None:
    """Any commit newer than a fill's snapshot refused the fill, whoever it wrote: under
    steady writes to other users the cache hardly filled (2,900 of 3,000 reads refused in
    a review). A commit of another user leaves the fill alone; the newest ids of the
    `written_users` most recently written users are kept, and a snapshot older than an id
    forgotten that way is refused (it cannot be told apart)."""
    cache = RecentCache(max_users=10, depth=2, written_users=2)
    cache.apply([(10, 1, 100), (11, 2, 110)])  # after a snapshot whose newest id was 9
    assert cache.install(3, [(5, 50)], snapshot_max=9, limit=2)  # user 3: not written since
    assert not cache.install(1, [(5, 50)], snapshot_max=9, limit=2)  # user 1 was: refused
    assert cache.refused_fills == 1
    cache.apply([(12, 4, 120)])  # 3 users written, 2 remembered: user 1's id 10 forgotten
    assert not cache.install(5, [], snapshot_max=9, limit=2)  # older than 10: refused
    assert cache.install(5, [], snapshot_max=10, limit=2)
    assert cache.install(1, [(10, 100)], snapshot_max=11, limit=2)
    assert cache.get(1, 2) == [100]
    cache.reset(applied_id=20)  # a failed apply: every older snapshot refused
    assert (len(cache), cache.events) == (0, 0)  # emptied, and counted so
    assert not cache.install(6, [], snapshot_max=19, limit=2)


def test_recent_cache_trims_long_histories() -> None:
    cache = RecentCache(max_users=1, depth=2)
    assert cache.install(1, [], snapshot_max=0, limit=2)
    cache.apply([(i, 1, i * 10) for i in range(1, 50)])
    assert cache.get(1, 2) == [490, 480]
    assert len(cache._users[1].tracks) <= 4 and cache.events == len(cache._users[1].tracks)


def test_recent_cache_answers_reads_as_deep_as_its_fill() -> None:
    """A fill that found fewer rows than it asked for is the whole history: reads of any
    depth come from memory until a trim; a deeper fill makes deeper reads hits."""
    cache = RecentCache(max_users=10, depth=3)
    whole = [(i, i * 10) for i in range(5, 0, -1)]  # 5 events, newest first
    assert cache.install(1, whole, snapshot_max=5, limit=100)
    assert cache.get(1, 10_000) == [50, 40, 30, 20, 10] and cache.hits == 1
    # as many rows as the LIMIT: maybe more in SQLite, so deeper reads miss
    assert cache.install(2, [(i, i) for i in range(8, 2, -1)], snapshot_max=8, limit=6)
    assert cache.get(2, 6) == [8, 7, 6, 5, 4, 3] and cache.get(2, 7) is None
    # a deeper read of user 2 replaces its entry (not refused as "already cached")
    assert cache.install(2, [(i, i) for i in range(8, 0, -1)], snapshot_max=8, limit=100)
    assert cache.get(2, 100) == [8, 7, 6, 5, 4, 3, 2, 1] and cache.events == 5 + 8
    # user 2 stays whole while appended to, up to 2 x its 8; then it keeps its latest 8
    cache.apply([(10 + i, 2, 100 + i) for i in range(8)])
    assert cache.get(2, 100) == [107, 106, 105, 104, 103, 102, 101, 100, 8, 7, 6, 5, 4, 3, 2, 1]
    cache.apply([(18, 2, 108)])
    assert cache.get(2, 9) is None
    assert cache.get(2, 8) == [108, 107, 106, 105, 104, 103, 102, 101]
    assert cache.events == 5 + 8
    with pytest.raises(ValueError, match="latest 3 rows"):
        cache.install(5, [], snapshot_max=18, limit=2)


def test_recent_cache_completes_an_entry_whose_history_was_exactly_its_depth() -> None:
    """A first read whose LIMIT equals the history's length cannot tell it is the whole
    history; a deeper read that finds the same rows can, and must replace the entry, or
    every later deep read of that user misses and goes to SQLite."""
    cache = RecentCache(max_users=10, depth=3)
    rows = [(3, 30), (2, 20), (1, 10)]
    assert cache.install(1, rows, snapshot_max=3, limit=3)
    assert cache.get(1, 1000) is None  # maybe more in SQLite
    assert cache.install(1, rows, snapshot_max=3, limit=1000)  # the same rows, all of them
    misses = cache.misses
    assert cache.get(1, 1000) == [30, 20, 10] and cache.misses == misses
    assert cache.events == 3
    # a read as deep as its entry that again finds LIMIT rows adds nothing: refused
    assert cache.install(2, rows, snapshot_max=3, limit=3)
    assert not cache.install(2, rows, snapshot_max=3, limit=3)


def test_recent_cache_holds_at_most_max_events() -> None:
    """Fills and appends beyond `max_events` evict the least recently used users; a fill
    larger than the whole budget is not cached."""
    cache = RecentCache(max_users=10, depth=2, max_events=6)
    assert cache.install(1, [(3, 30), (2, 20), (1, 10)], snapshot_max=3, limit=10)
    assert cache.install(2, [(6, 60), (5, 50), (4, 40)], snapshot_max=6, limit=10)
    assert cache.events == 6
    assert cache.get(1, 1) == [30]  # user 2 is now the least recently used
    assert cache.install(3, [(8, 80), (7, 70)], snapshot_max=8, limit=10)
    assert cache.events == 5 and cache.get(2, 1) is None
    # refused (False, the declared bool, not just a falsy value)
    assert cache.install(4, [(i, i) for i in range(15, 8, -1)], snapshot_max=15, limit=10) is False
    assert cache.events == 5 and cache.get(4, 1) is None
    assert cache.get(3, 1) == [80]  # user 1 is now the least recently used
    cache.apply([(16, 3, 90), (17, 3, 100)])
    assert cache.get(1, 1) is None and cache.get(3, 10) == [100, 90, 80, 70]
    assert cache.events == 4


def test_store_answers_repeated_deep_reads_from_memory(tmp_path: Path) -> None:
    """`latest(user, 10_000)`: SQLite the first time, then memory, for a short history and
    a long one alike; the same answers as SQLite, adds included."""
    store = EventStore(tmp_path / "d.db", cache_users=100, cache_depth=4)
    store.open()
    try:

        async def scenario() -> None:
            for t in range(5):
                await store.add(1, t)
            for t in range(20):
                await store.add(2, 100 + t)
            assert await store.latest(1, 10_000) == [4, 3, 2, 1, 0]
            assert await store.latest(2, 10_000) == list(range(119, 99, -1))
            assert store.cache is not None
            hits, misses = store.cache.hits, store.cache.misses
            assert await store.latest(1, 10_000) == [4, 3, 2, 1, 0]
            assert await store.latest(2, 10_000) == list(range(119, 99, -1))
            assert (store.cache.hits, store.cache.misses) == (hits + 2, misses)
            await store.add(2, 120)  # read-your-writes at any depth too
            assert await store.latest(2, 10_000) == list(range(120, 99, -1))

        asyncio.run(scenario())
        assert asyncio.run(store.counts())["cache_events"] == 5 + 21
    finally:
        store.close()


def test_store_reads_after_adds_come_from_memory_and_match_sqlite(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "m.db", cache_users=100, cache_depth=100)
    store.open()
    try:

        async def scenario() -> None:
            assert await store.latest(1, 5) == []  # miss: read from SQLite, cached
            for t in range(10):
                await store.add(1, t)  # read-your-writes through the cache
            assert await store.latest(1, 3) == [9, 8, 7]

            # concurrent adds and reads of many users; every answer must be a prefix of
            # the truth at some moment, and the final state must equal SQLite exactly
            async def writer(u: int) -> None:
                for t in range(30):
                    await store.add(u, 1000 * u + t)

            async def reader(u: int) -> None:
                for _ in range(30):
                    got = await store.latest(u, 10)
                    assert got == sorted(got, reverse=True)
                    await asyncio.sleep(0)

            await asyncio.gather(
                *(writer(u) for u in range(2, 12)), *(reader(u) for u in range(2, 12))
            )

        asyncio.run(scenario())
        assert store.cache is not None and store.cache.hits > 0
        with sqlite3.connect(tmp_path / "m.db") as db:
            for u in range(1, 12):
                truth = [
                    r[0]
                    for r in db.execute(
                        "SELECT track_id FROM events WHERE user_id=? ORDER BY id DESC LIMIT 20",
                        (u,),
                    )
                ]
                assert asyncio.run(store.latest(u, 20)) == truth
                assert store.cache.get(u, 20) == truth  # cached, and current
        assert asyncio.run(store.latest(1, 1000)) == list(range(9, -1, -1))  # deeper: SQLite
        stats = asyncio.run(store.counts())
        assert stats["cache_hits"] == store.cache.hits and stats["cache_users"] == 11
    finally:
        store.close()


def test_store_without_cache_reads_sqlite(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "n.db", cache_users=0)
    store.open()
    try:
        asyncio.run(store.add(4, 40))
        assert store.cache is None
        assert asyncio.run(store.latest(4, 5)) == [40]
        assert asyncio.run(store.counts())["cache_users"] == 0
    finally:
        store.close()


def test_stats_without_a_cache_count_nothing_cached_and_the_uptime(tmp_path: Path) -> None:
    """`/stats` of a store without a cache: every cache counter is 0; `uptime_s` is the
    time since `open`."""
    before_open = time.time()
    store = EventStore(tmp_path / "u.db", cache_users=0)
    store.open()
    try:
        asyncio.run(store.add(4, 40))
        assert asyncio.run(store.latest(4, 5)) == [40]
        counts = asyncio.run(store.counts())
        elapsed = time.time() - before_open
    finally:
        store.close()
    cached = ("cache_users", "cache_events", "cache_hits", "cache_misses", "cache_refused_fills")
    assert {name: counts[name] for name in cached} == dict.fromkeys(cached, 0)
    assert 0 <= counts["uptime_s"] <= elapsed + 0.001


def test_stats_mean_batch_is_events_per_commit_to_three_decimals(tmp_path: Path) -> None:
    """5 events in 3 commits: `mean_batch` 1.667 (and 0.0 before the first commit)."""
    store = EventStore(tmp_path / "mean.db")
    assert asyncio.run(store.counts())["mean_batch"] == 0.0
    store.stats.commits, store.stats.committed_events = 3, 5
    assert asyncio.run(store.counts())["mean_batch"] == 1.667


def test_stats_before_the_first_commit_count_no_batch(tmp_path: Path) -> None:
    """A store opened on an empty database has committed nothing: no commit, and no
    largest batch either (`max_batch` is the largest number of events one commit wrote)."""
    store = EventStore(tmp_path / "none.db")
    store.open()
    try:
        counts = asyncio.run(store.counts())
    finally:
        store.close()
    assert (counts["commits"], counts["max_batch"], counts["mean_batch"]) == (0, 0, 0.0)


def test_stats_uptime_is_in_seconds_to_three_decimals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EventStore(tmp_path / "up.db")
    store.stats.opened_at = 1000.0
    monkeypatch.setattr(time, "time", lambda: 1000.12345)
    assert asyncio.run(store.counts())["uptime_s"] == 0.123


def test_a_cache_of_one_user_is_a_cache(tmp_path: Path) -> None:
    """`cache_users=1` keeps one user in memory (only 0 turns the cache off): the second
    read of the user is a hit."""
    store = EventStore(tmp_path / "one.db", cache_users=1)
    store.open()
    try:
        asyncio.run(store.add(1, 10))
        assert asyncio.run(store.latest(1, 5)) == [10]  # a miss: read from SQLite, cached
        assert asyncio.run(store.latest(1, 5)) == [10]  # from memory
        counts = asyncio.run(store.counts())
        assert (counts["cache_users"], counts["cache_hits"], counts["cache_misses"]) == (1, 1, 1)
    finally:
        store.close()


def test_recent_cache_takes_its_smallest_bounds() -> None:
    """One user, a depth of 1, a budget of one event and one written user remembered is
    the smallest cache there is; a bound of 0 (or a budget below the depth) is refused."""
    smallest = {"max_users": 1, "depth": 1, "max_events": 1, "written_users": 1}
    cache = RecentCache(**smallest)
    assert cache.install(1, [(2, 20)], snapshot_max=2, limit=1)
    assert cache.get(1, 1) == [20]
    for name in smallest:
        with pytest.raises(ValueError, match="RecentCache needs"):
            RecentCache(**{**smallest, name: 0})


def test_close_waits_for_a_read_in_flight(tmp_path: Path) -> None:
    """`close()` stops the reader threads before it closes their connections: a read
    that started before the close is answered with its events (not failed on a connection
    closed under it), and `close()` returns only once that read is done."""
    store = EventStore(tmp_path / "inflight.db")
    store.open()
    asyncio.run(store.add(1, 10))
    real_read = store._latest_sync
    started, go = threading.Event(), threading.Event()

    def slow_read(user_ids: Any, k: int) -> list[list[int]]:
        store._reader_conn()  # the thread's connection is open (and known to close())
        started.set()
        go.wait(5)
        return real_read(user_ids, k)

    store._latest_sync = slow_read  # type: ignore[method-assign]
    answers: list[Any] = []

    def read() -> None:
        try:
            answers.append(asyncio.run(store.latest(1, 5)))
        except Exception as exc:  # noqa: BLE001 - the answer is checked below
            answers.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert started.wait(5)
        closer = threading.Thread(target=store.close)
        closer.start()
        closer.join(0.3)
        assert closer.is_alive()  # still waiting for the read
    finally:
        go.set()
        reader.join(10)
    closer.join(10)
    assert not closer.is_alive() and answers == [[10]]


def test_batch_answers_each_user_in_request_order(client: TestClient) -> None:
    for u, t in [(1, 10), (1, 11), (2, 20), (3, 30)]:
        add(client, u, t)
    client.post("/get_events", params={"user_id": 1})  # user 1 now cached, 2 and 3 not
    r = client.post("/get_events_batch", json={"user_ids": [3, 1, 99, 2, 1], "k": 1})
    assert r.status_code == 200
    assert r.json() == {
        "results": [
            {"user_id": 3, "events": [30]},
            {"user_id": 1, "events": [11]},
            {"user_id": 99, "events": []},
            {"user_id": 2, "events": [20]},
            {"user_id": 1, "events": [11]},
        ]
    }
    deep = client.post("/get_events_batch", json={"user_ids": [1], "k": 5000}).json()
    assert deep["results"][0]["events"] == [11, 10]
    assert "/get_events_batch" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    "body",
    [
        {"user_ids": [1], "k": 0},
        {"user_ids": [1], "k": EVENTS_K_MAX + 1},
        {"user_ids": [-1]},
        {"user_ids": ["1"]},
        {"user_ids": [True]},
        {"user_ids": list(range(EVENTS_BATCH_MAX_USERS + 1))},
        {"k": 5},
        {"user_ids": 5},
    ],
)
def test_batch_bad_body_422(client: TestClient, body: dict[str, Any]) -> None:
    r = client.post("/get_events_batch", json=body)
    assert r.status_code == 422, r.text
    assert "invalid request" in r.json()["message"]


def test_a_body_that_is_not_json_says_so(client: TestClient) -> None:
    """The message was "body 0: JSON decode error (got {})": the position, and a
    placeholder for the input."""
    r = client.post(
        "/get_events_batch", content=b"notjson", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    message = r.json()["message"]
    assert message == "invalid request: body: not valid JSON at character 0 (Expecting value)"


def test_batch_body_size_is_bounded(client: TestClient) -> None:
    assert_json_413(client, "/get_events_batch", b'{"user_ids": [' + b"1, " * 40_000 + b"1]}")


def filled_database(path: Path, n: int = 3000) -> Path:
    """A database written by the store: `n` events of 50 users."""
    store = EventStore(path, cache_users=0)
    store.open()

    async def fill() -> None:
        await asyncio.gather(*(store.add(i % 50, i) for i in range(n)))

    try:
        asyncio.run(fill())
    finally:
        store.close()
    return path


def damage_index(path: Path) -> None:
    """Zero the header of the covering index's root page (a bad sector), table intact."""
    with sqlite3.connect(path) as db:
        root = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'events_user_recent'"
        ).fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * size)
        fh.write(b"\x00" * 16)


def test_another_applications_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """An SQLite file without an `events` table was adopted: switched to WAL for good and
    given an `events` table beside its own."""
    path = tmp_path / "invoices.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.close()
    before = path.read_bytes()
    with pytest.raises(ArtifactError, match=r"invoices.db: an SQLite database without an 'events'"):
        EventStore(path).open()
    assert path.read_bytes() == before
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["invoices"]
    db.close()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_refused_database_is_not_left_open(tmp_path: Path) -> None:
    """A database refused at `open` (here another application's) is closed before the
    error is raised: the process keeps no handle on a file it did not take (the error,
    held by the caller, still references the frame that opened it)."""
    path = tmp_path / "invoices.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.close()
    with pytest.raises(ArtifactError, match="without an 'events'") as refused:
        EventStore(path).open()
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # a descriptor closed meanwhile
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
    assert str(path) not in held, refused.value


@pytest.mark.parametrize(
    "columns",
    [
        "id INT, user_id INTEGER, track_id INTEGER, ts REAL",  # id not the row id: NULL ids
        "id INTEGER PRIMARY KEY, user_id TEXT, track_id INTEGER, ts REAL",
        "id INTEGER PRIMARY KEY, user_id, track_id, ts",
    ],
)
def test_an_events_table_of_another_layout_is_refused(tmp_path: Path, columns: str) -> None:
    """Only the column names were checked: an `id` that is not the INTEGER PRIMARY KEY was
    stored as NULL, the writer thread died on it after the commit, and every later
    `/add_event` waited forever."""
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE events ({columns})")
    db.close()
    with pytest.raises(ArtifactError, match="not as this service makes them"):
        EventStore(path).open()


def test_a_damaged_index_stops_the_start(tmp_path: Path) -> None:
    """The start-up counts read the table only: a damaged index passed, and then every read
    of a user answered 500 and every add 503."""
    path = filled_database(tmp_path / "events.db")
    damage_index(path)
    with pytest.raises(ArtifactError, match="events.db: not a usable SQLite event database"):
        EventStore(path).open()


def test_a_read_that_fails_in_sqlite_is_unavailable_not_an_error(settings: Settings) -> None:
    """A page damaged after the start (a failing disk): the read is a 503 with the reason,
    not a 500; the next reads on the same reader thread fail the same way, not with a
    transaction left open."""
    filled_database(settings.event_db_path)
    with TestClient(create_app(settings.model_copy(update={"events_cache_users": 0}))) as c:
        damage_index(settings.event_db_path)  # after the start-up's checks
        for _ in range(2):
            r = c.post("/get_events", params={"user_id": 8, "k": 3})
            assert r.status_code == 503, r.text
            assert "event read failed" in r.json()["detail"]


def test_a_cache_update_failing_after_a_commit_keeps_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception after the COMMIT (in the cache update) ended the writer thread: the
    committed event was never acknowledged and every later add waited forever. Now the
    event is acknowledged, the cache emptied, and the writer goes on."""
    store = EventStore(tmp_path / "events.db")
    store.open()
    try:
        assert store.cache is not None
        asyncio.run(store.add(1, 10))
        assert asyncio.run(store.latest(1, 5)) == [10]  # user 1 is cached now
        monkeypatch.setattr(store.cache, "apply", FailsOnce(store.cache.apply))

        async def two_adds() -> list[int]:
            first = await asyncio.wait_for(store.add(1, 11), 5)
            second = await asyncio.wait_for(store.add(2, 20), 5)
            return [first, second]

        ids = asyncio.run(two_adds())
        assert ids[0] < ids[1]
        assert len(store.cache) <= 1  # emptied (user 2 may be cached again)
        assert asyncio.run(store.latest(1, 5)) == [11, 10]
        assert asyncio.run(store.latest(2, 5)) == [20]
    finally:
        store.close()


def test_a_database_locked_by_another_process_is_named_so(tmp_path: Path) -> None:
    path = filled_database(tmp_path / "events.db", 10)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ArtifactError, match="another process holds it locked"):
            EventStore(path).open()
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_read_only_database_stops_the_start(tmp_path: Path) -> None:
    """A file the process cannot write: with the current index the service started, said
    it was ready, and answered every `/add_event` with 503 (with the older index it failed
    as "not a usable database"). Now both are one start-up error saying read-only."""
    import shutil
    import subprocess

    path = filled_database(tmp_path / "events.db", 10)
    if shutil.which("chattr") is None:
        pytest.skip("no chattr")
    # root ignores file modes: the immutable flag stands for a read-only file
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not permitted here")
    try:
        with pytest.raises(ArtifactError, match="events.db: the file .* is read-only"):
            EventStore(path).open()
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_database_on_a_read_only_mount_is_called_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a read-only mount SQLite says "unable to open database file": that was "not a
    usable SQLite event database", and an operator could throw a good file away; a folder
    that could not be made there was a bare OSError. (The mount is stood for: a bind
    mount needs privileges the tests may lack.)"""
    import errno
    import sqlite3

    import musicrec.event_store as es

    path = filled_database(tmp_path / "events.db", 10)

    def cannot_open(*args: Any, **kw: Any) -> Any:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(es.sqlite3, "connect", cannot_open)
    monkeypatch.setattr(es.os, "access", lambda p, mode: False)  # what a read-only mount says
    with pytest.raises(ArtifactError, match=r"events.db: the file \(or its folder\) is read-only"):
        EventStore(path).open()
    monkeypatch.setattr(es.os, "access", lambda p, mode: True)  # a writable place: damaged
    with pytest.raises(ArtifactError, match="not a usable SQLite event database"):
        EventStore(path).open()

    def read_only_fs(self: Path, *args: Any, **kw: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only_fs)
    with pytest.raises(ArtifactError, match=r"new/events.db: cannot create its folder \(Read-only"):
        EventStore(tmp_path / "new" / "events.db").open()


def test_a_lock_file_that_cannot_be_made_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock file `<database>.lock` refused for lack of rights (EACCES, EPERM, EROFS)
    is called read-only, as the database would be; another failure (no file descriptor
    left) is not, and the store lets go of the database either way. (The errors are
    stood for: the tests may run as root, whom permissions do not stop.)"""
    import errno

    import musicrec.event_store as es

    path = tmp_path / "events.db"
    for code, why in [
        (errno.EACCES, r"the file \(or its folder\) is read-only"),
        (errno.EPERM, r"the file \(or its folder\) is read-only"),
        (errno.EROFS, r"the file \(or its folder\) is read-only"),
        (errno.EMFILE, "cannot open its lock file"),
    ]:

        def refused(lock: Path, wait_s: float, code: int = code) -> int:
            raise OSError(code, os.strerror(code), str(lock))

        monkeypatch.setattr(es, "take_flock", refused)
        with pytest.raises(ArtifactError, match=rf"events.db: {why} \(events.db.lock: "):
            EventStore(path).open()
    monkeypatch.undo()
    store = EventStore(path, owner_wait_s=0.1)
    store.open()
    store.close()


def test_a_store_opened_again_reads_the_file_not_its_old_cache(tmp_path: Path) -> None:
    """`close()` kept the cache of recent events and `open()` reused it: a history changed
    in the file between the two (another tool, a restore) was served as it had been."""
    import sqlite3

    path = tmp_path / "events.db"
    store = EventStore(path)
    store.open()
    asyncio.run(store.add(1, 1))
    asyncio.run(store.add(1, 2))
    assert asyncio.run(store.latest(1, 5)) == [2, 1]  # now cached
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM events WHERE track_id = 2")
    store.open()
    try:
        assert asyncio.run(store.latest(1, 5)) == [1]
    finally:
        store.close()


def test_an_id_beyond_64_bits_fails_its_own_add_not_the_batch(tmp_path: Path) -> None:
    """At the library level (HTTP bounds ids to int32): an id SQLite cannot store raised
    OverflowError in the group commit and failed every event of the batch with it."""
    store = EventStore(tmp_path / "events.db")
    store.open()

    async def adds() -> list[Any]:
        return await asyncio.gather(
            store.add(1, 10), store.add(2**63, 11), store.add(3, 12), return_exceptions=True
        )

    try:
        first, bad, third = asyncio.run(adds())
        assert isinstance(first, int) and isinstance(third, int), (first, third)
        assert isinstance(bad, ValueError) and "64-bit" in str(bad)
        assert asyncio.run(store.latest(3, 5)) == [12]
    finally:
        store.close()


def test_the_extreme_64_bit_ids_are_stored_and_deleted(tmp_path: Path) -> None:
    """The bounds themselves are SQLite integers: 2**63 - 1 and -2**63 are stored (as user
    and track ids), read and deleted; one beyond either is a `ValueError` before the
    writer, for an add and for a deletion alike."""
    top, bottom = 2**63 - 1, -(2**63)
    store = EventStore(tmp_path / "edges.db")
    store.open()

    async def scenario() -> None:
        await store.add(top, bottom)
        await store.add(bottom, top)
        assert await store.latest(top, 5) == [bottom]
        assert await store.latest(bottom, 5) == [top]
        assert await store.delete_user(top) == 1
        assert await store.delete_user(bottom) == 1
        for user, track in ((top + 1, 1), (bottom - 1, 1), (1, top + 1), (1, bottom - 1)):
            with pytest.raises(ValueError, match="64-bit"):
                await store.add(user, track)
        for user in (top + 1, bottom - 1):
            with pytest.raises(ValueError, match="64-bit"):
                await store.delete_user(user)

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_an_in_memory_database_is_refused_and_leaves_no_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`:memory:` would lose every event at exit; it was refused only after a
    `:memory:.lock` file had been made in the working directory."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="in-memory database: every event would be lost"):
        EventStore(":memory:").open()
    assert list(tmp_path.iterdir()) == []


def test_a_deeper_read_racing_an_add_of_its_user_does_not_replace_the_entry(
    tmp_path: Path,
) -> None:
    """A read deeper than the user's cached entry goes to SQLite and replaces the entry
    with its deeper rows; one read before an add of that user and offered after the add
    was applied to the entry lacks that event: it must be refused, or the acknowledged
    add is missing from every read served from memory."""
    store = EventStore(tmp_path / "deep.db", cache_depth=2)
    store.open()
    assert store.cache is not None
    cache = store.cache

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        for t in (10, 11, 12, 13):
            await store.add(1, t)
        assert await store.latest(1, 2) == [13, 12]  # cached: its latest 2
        read, go, real_install = hold_fills(cache)
        deeper = asyncio.ensure_future(store.latest(1, 4))  # deeper than the entry
        await asyncio.to_thread(read.wait, 5)
        await store.add(1, 14)  # applied to the cached entry
        go.set()
        old_snapshot = await deeper
        cache.install = real_install  # type: ignore[method-assign]
        return old_snapshot, await store.latest(1, 2), await store.latest(1, 5)

    try:
        old_snapshot, shallow, deep = asyncio.run(scenario())
    finally:
        store.close()
    assert old_snapshot == [13, 12, 11, 10]
    assert shallow == [14, 13]  # it was [13, 12]: the deeper fill had replaced the entry
    assert deep == [14, 13, 12, 11, 10]
    assert cache.refused_fills == 1


def test_a_fill_racing_a_failed_cache_update_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's snapshot taken before a commit whose cache update failed (`reset`),
    offered after it: the failed update recorded nothing of the commit, so only the
    floor `reset` raises refuses the fill, which lacks the acknowledged event."""
    store = EventStore(tmp_path / "reset.db")
    store.open()
    assert store.cache is not None
    cache = store.cache
    failing_once = FailsOnce(cache.apply)

    async def scenario() -> tuple[list[int], list[int]]:
        await store.add(1, 10)  # not read yet: user 1 is not cached
        read, go, real_install = hold_fills(cache)
        reading = asyncio.ensure_future(store.latest(1, 5))
        await asyncio.to_thread(read.wait, 5)
        monkeypatch.setattr(cache, "apply", failing_once)
        await asyncio.wait_for(store.add(1, 11), 5)  # acknowledged, its cache update failed
        go.set()
        old_snapshot = await reading
        cache.install = real_install  # type: ignore[method-assign]
        return old_snapshot, await store.latest(1, 5)

    try:
        old_snapshot, after = asyncio.run(scenario())
    finally:
        store.close()
    assert failing_once.calls == 1 and old_snapshot == [10]
    assert after == [11, 10]  # it was [10] from memory: the acknowledged add unseen
    assert cache.refused_fills == 1


def test_a_read_racing_close_is_refused_as_unavailable(tmp_path: Path) -> None:
    """As `test_an_add_racing_close_is_answered_and_kept`, for a read that misses the
    cache: `close()` (another thread, as in the lifespan) runs to completion between the
    read's closed check and its hand-over to a reader thread. The read must be refused as
    the store being closed, as a read after the close is."""

    class WindowPool(ThreadPoolExecutor):
        """`submit`, which `_read` calls right after its check, lets close() run first."""

        armed = True

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.armed = False
                closer = threading.Thread(target=store.close)
                closer.start()
                closer.join(10)
            return super().submit(fn, *args, **kwargs)

    store = EventStore(tmp_path / "rc.db", cache_users=0)
    store.open()
    asyncio.run(store.add(1, 10))
    assert store._readers is not None
    store._readers.shutdown(wait=True)
    store._readers = WindowPool(1, thread_name_prefix="events-read")
    try:
        with pytest.raises(StoreUnavailable, match="closed"):
            asyncio.run(store.latest(1, 5))
    finally:
        store.close()
    assert not store.is_open

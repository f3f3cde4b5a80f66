"""Idempotent `/add_event`: the `Idempotency-Key` header and `EventStore.add_once`.

A client that did not get an answer (a timeout, a dropped connection, a 503 whose commit
SQLite kept after all) retries with the same key and must not store the listen twice."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from musicrec import event_store
from musicrec.errors import ArtifactError
from musicrec.event_store import KEY_MAX_LEN, Added, EventStore, KeyReused, StoreUnavailable
from musicrec.service_events import REPLAYED_HEADER, create_app
from musicrec.settings import Settings

from .conftest import fail_writes, heal_writes, queued_behind_a_writer_lock


def add(client: TestClient, user: int, track: int, key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/add_event", params={"user_id": user, "track_id": track}, headers=headers)


def rows(path: Path, user: int) -> list[int]:
    """The user's track ids as the database file holds them, oldest first."""
    with sqlite3.connect(path) as db:
        return [
            r[0]
            for r in db.execute(
                "SELECT track_id FROM events WHERE user_id = ? ORDER BY id", (user,)
            )
        ]


def test_a_retry_with_the_same_key_stores_nothing_and_answers_the_first_id(
    settings: Settings,
) -> None:
    with TestClient(create_app(settings)) as c:
        first = add(c, 3, 30, "listen-1")
        assert first.status_code == 200
        assert REPLAYED_HEADER.lower() not in first.headers
        again = add(c, 3, 30, "listen-1")
        assert again.status_code == 200
        assert again.json() == first.json() == {"result": "ok", "id": first.json()["id"]}
        assert again.headers[REPLAYED_HEADER] == "true"
        assert c.post("/get_events", params={"user_id": 3, "k": 10}).json()["events"] == [30]
        stats = c.get("/stats").json()
        assert (stats["events"], stats["replayed"], stats["key_conflicts"]) == (1, 1, 0)
        # a new key is a new listen of the same track; no key is never deduplicated
        assert add(c, 3, 30, "listen-2").json()["id"] > first.json()["id"]
        assert add(c, 3, 30).status_code == 200
        assert add(c, 3, 30).status_code == 200
    assert rows(settings.event_db_path, 3) == [30, 30, 30, 30]


def test_the_key_with_another_track_is_a_409_and_stores_nothing(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        assert add(c, 4, 40, "k").status_code == 200
        r = add(c, 4, 41, "k")
        assert r.status_code == 409
        assert "already used by user 4 for track 40" in r.json()["detail"]
        assert "nothing stored" in r.json()["detail"]
        assert c.get("/stats").json()["key_conflicts"] == 1
    assert rows(settings.event_db_path, 4) == [40]


def test_keys_are_per_user(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        a = add(c, 5, 50, "same-key")
        b = add(c, 6, 60, "same-key")
        assert a.status_code == b.status_code == 200
        assert a.json()["id"] != b.json()["id"]
        assert REPLAYED_HEADER.lower() not in b.headers
    assert rows(settings.event_db_path, 5) == [50]
    assert rows(settings.event_db_path, 6) == [60]


@pytest.mark.parametrize(
    "key",
    ["", "has space", "tab\tinside", "x" * (KEY_MAX_LEN + 1), "caf\u00e9"],
    ids=["empty", "space", "tab", "too-long", "non-ascii"],
)
def test_a_malformed_key_is_a_422_and_stores_nothing(settings: Settings, key: str) -> None:
    """Printable ASCII without spaces, 1 to KEY_MAX_LEN characters (UTF-8 bytes arrive as
    latin-1 characters, outside the range), said in words (the message quoted the regular
    expression)."""
    with TestClient(create_app(settings)) as c:
        headers = {"Idempotency-Key": key.encode("utf-8")}  # the bytes a client sends
        r = c.post("/add_event", params={"user_id": 7, "track_id": 70}, headers=headers)
        assert r.status_code == 422, r.text
        message = r.json()["message"]
        assert message.startswith(
            "invalid request: header Idempotency-Key: must be 1 to 255 printable ASCII "
            "characters without spaces (got "
        ), message
        assert c.get("/stats").json()["events"] == 0


def test_the_longest_key_is_taken(settings: Settings) -> None:
    key = "~" * KEY_MAX_LEN
    with TestClient(create_app(settings)) as c:
        assert add(c, 8, 80, key).status_code == 200
        assert add(c, 8, 80, key).headers[REPLAYED_HEADER] == "true"
    assert rows(settings.event_db_path, 8) == [80]


def test_a_key_holds_across_a_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        first = add(c, 9, 90, "before-restart").json()["id"]
    with TestClient(create_app(settings)) as c:
        again = add(c, 9, 90, "before-restart")
        assert again.json()["id"] == first
        assert again.headers[REPLAYED_HEADER] == "true"
    assert rows(settings.event_db_path, 9) == [90]


def test_racing_calls_with_one_key_store_one_event(tmp_path: Path) -> None:
    """Calls with one key in flight together (a client retrying before the first answer)
    land in one group commit or in several: either way one event, every call its id."""
    store = EventStore(tmp_path / "race.db")
    store.open()
    try:

        async def race() -> list[Added]:
            calls = [store.add_once(1, 10, "k") for _ in range(50)]
            calls += [store.add_once(2, 20, f"k{i}") for i in range(50)]  # other users' events
            return list(await asyncio.gather(*calls))

        got = asyncio.run(race())
        assert len({a.id for a in got[:50]}) == 1
        assert sum(not a.replayed for a in got[:50]) == 1
        assert len({a.id for a in got[50:]}) == 50 and not any(a.replayed for a in got[50:])
        assert asyncio.run(store.latest(1, 100)) == [10]
        counts = asyncio.run(store.counts())
        assert (counts["events"], counts["replayed"]) == (51, 49)
    finally:
        store.close()
    assert rows(tmp_path / "race.db", 1) == [10]


def test_a_conflict_in_a_batch_fails_only_its_own_call(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "b.db")
    store.open()
    try:

        async def batch() -> list[Any]:
            calls = [store.add_once(1, 10, "k"), store.add_once(1, 11, "k"), store.add(1, 12)]
            return list(await asyncio.gather(*calls, return_exceptions=True))

        first, conflict, plain = asyncio.run(batch())
        assert isinstance(first, Added) and not first.replayed
        assert isinstance(conflict, KeyReused)
        assert isinstance(plain, int)
        assert asyncio.run(store.latest(1, 10)) == [12, 10]
    finally:
        store.close()


def test_an_expired_key_stores_the_event_again_and_is_pruned(tmp_path: Path) -> None:
    path = tmp_path / "ttl.db"
    store = EventStore(path, key_ttl_s=3600)
    store.open()
    try:
        first = asyncio.run(store.add_once(1, 10, "k"))
        with sqlite3.connect(path) as db:  # the key written two hours ago
            db.execute("UPDATE event_keys SET ts = ts - 7200")
        again = asyncio.run(store.add_once(1, 10, "k"))
        assert not again.replayed and again.id > first.id
        assert asyncio.run(store.add_once(1, 10, "k")) == Added(again.id, True)  # renewed
        with sqlite3.connect(path) as db:
            db.execute("INSERT INTO event_keys VALUES (1, 'old', ?, 10, 0.0)", (first.id,))
        store._pruned_at = 0.0  # the next commit prunes (at most once a minute otherwise)
        asyncio.run(store.add(1, 11))
        store.close()  # the writer prunes after answering: wait for it
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT key, event_id FROM event_keys").fetchall() == [
                ("k", again.id)
            ]
    finally:
        store.close()
    assert rows(path, 1) == [10, 10, 11]


@pytest.mark.parametrize("table", ["events", "event_keys"])
def test_a_failed_commit_stores_neither_the_event_nor_its_key(
    settings: Settings, table: str
) -> None:
    """The key and its event are one transaction: when either write fails, the call is a
    503 with nothing kept, and the retry with the same key stores the event once."""
    with TestClient(create_app(settings)) as c:
        fail_writes(settings.event_db_path, table)
        assert add(c, 2, 20, "k").status_code == 503
        with sqlite3.connect(settings.event_db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
            assert db.execute("SELECT COUNT(*) FROM event_keys").fetchone() == (0,)
        heal_writes(settings.event_db_path)
        r = add(c, 2, 20, "k")
        assert r.status_code == 200 and REPLAYED_HEADER.lower() not in r.headers
        assert add(c, 2, 20, "k").headers[REPLAYED_HEADER] == "true"
    assert rows(settings.event_db_path, 2) == [20]


def test_library_keys_are_bounded(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "l.db")
    store.open()
    try:
        for key in ("", "x" * (KEY_MAX_LEN + 1)):
            with pytest.raises(ValueError, match="1 to 255 printable ASCII characters"):
                asyncio.run(store.add_once(1, 1, key))
    finally:
        store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        asyncio.run(store.add_once(1, 1, "k"))


def test_a_keys_table_of_another_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, "
            "track_id INTEGER NOT NULL, ts REAL NOT NULL);"
            "CREATE TABLE event_keys (key TEXT PRIMARY KEY, event_id INTEGER);"
        )
    with pytest.raises(ArtifactError, match="table 'event_keys' is not as this service"):
        EventStore(path).open()


def test_a_batch_of_more_keys_than_one_query_asks_finds_them_all(tmp_path: Path) -> None:
    """The stored keys of a batch are looked up `_KEYS_PER_QUERY` (400) at a time: a batch
    of 1,000 retries must find all 1,000 (a look-up of the first 400 only stored 600
    duplicates, and no test saw it)."""
    path = tmp_path / "big.db"
    store = EventStore(path)
    store.open()
    try:
        n = 1_000
        first = queued_behind_a_writer_lock(
            path, lambda: [store.add_once(i % 37, i, f"k{i}") for i in range(n)]
        )
        again = queued_behind_a_writer_lock(
            path, lambda: [store.add_once(i % 37, i, f"k{i}") for i in range(n)]
        )
        counts = asyncio.run(store.counts())
    finally:
        store.close()
    assert counts["max_batch"] > 400 + 1  # the retries came in a batch of this size too
    assert [a.id for a in again] == [a.id for a in first]
    assert all(a.replayed for a in again) and not any(a.replayed for a in first)
    assert (counts["events"], counts["replayed"]) == (n, n)


@pytest.mark.parametrize(
    "key",
    ["bad-\ud800", b"bytes-key", "has space", ""],
    ids=["surrogate", "bytes", "space", "empty"],
)
def test_a_bad_library_key_fails_its_own_call_not_the_batch(tmp_path: Path, key: Any) -> None:
    """A key SQLite cannot store (a lone surrogate) failed the whole group commit, every
    other user's events with it; a bytes key was stored and never found again."""
    store = EventStore(tmp_path / "bad-key.db")
    store.open()
    try:

        async def batch() -> list[Any]:
            calls = [store.add(1, 10), store.add_once(2, 20, key), store.add_once(3, 30, "ok")]
            return list(await asyncio.gather(*calls, return_exceptions=True))

        plain, bad, good = asyncio.run(batch())
        assert isinstance(plain, int) and isinstance(good, Added)
        assert isinstance(bad, ValueError) and "printable ASCII" in str(bad)
        assert asyncio.run(store.counts())["failed_commits"] == 0
    finally:
        store.close()


def test_expired_keys_are_pruned_a_chunk_per_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog of expired keys (after downtime, or a shorter TTL) is deleted a chunk at a
    commit, the next commits going on while chunks come back full (one DELETE of a
    million keys held the writer for over a second), then once a minute again."""
    monkeypatch.setattr(event_store, "_PRUNE_CHUNK", 10)
    path = tmp_path / "prune.db"

    def expired_left() -> int:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT COUNT(*) FROM event_keys WHERE ts = 0").fetchone()[0])

    store = EventStore(path)
    store.open()
    store.close()
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO event_keys VALUES (1, ?, 1, 10, 0.0)", [(f"old{i}",) for i in range(25)]
        )
    left = []
    for adds in (1, 1, 1):  # a new store prunes at its first commit
        store = EventStore(path)
        store.open()
        for _ in range(adds):
            asyncio.run(store.add(1, 11))
        store.close()  # the writer prunes after answering: wait for it
        left.append(expired_left())
    assert left == [15, 5, 0]
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO event_keys VALUES (1, ?, 1, 10, 0.0)", [(f"old{i}",) for i in range(25)]
        )
    store = EventStore(path)
    store.open()
    for _ in range(4):  # full chunks: the next commits go on; the last one is a minute off
        asyncio.run(store.add(1, 12))
    store.close()
    assert expired_left() == 0
    store = EventStore(path)
    store.open()
    for _ in range(2):
        asyncio.run(store.add(1, 13))
    with sqlite3.connect(path) as db:  # expired after this store's first (and only) prune
        db.execute("INSERT INTO event_keys VALUES (1, 'late', 1, 10, 0.0)")
    asyncio.run(store.add(1, 14))
    store.close()
    assert expired_left() == 1


def test_a_repeated_key_header_is_a_422_and_blanks_after_it_are_not_the_key(
    settings: Settings,
) -> None:
    with TestClient(create_app(settings)) as c:
        two = [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
        r = c.post("/add_event", params={"user_id": 1, "track_id": 10}, headers=two)
        assert r.status_code == 422
        assert "Idempotency-Key sent 2 times" in r.json()["message"]
        assert c.get("/stats").json()["events"] == 0
        assert add(c, 1, 10, "k2").status_code == 200
        padded = c.post(
            "/add_event",
            params={"user_id": 1, "track_id": 10},
            headers={"Idempotency-Key": "k2 \t"},
        )
        assert padded.headers[REPLAYED_HEADER] == "true"
        longest = "k" * KEY_MAX_LEN  # its blanks do not count against the bound either
        assert add(c, 1, 11, longest).status_code == 200
        assert add(c, 1, 11, longest + " ").headers[REPLAYED_HEADER] == "true"
    assert rows(settings.event_db_path, 1) == [10, 11]


def test_a_keys_table_with_a_column_of_a_later_version_opens(tmp_path: Path) -> None:
    path = tmp_path / "later.db"
    store = EventStore(path)
    store.open()
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE event_keys ADD COLUMN client TEXT")
    store = EventStore(path)
    store.open()
    try:
        assert asyncio.run(store.add_once(1, 10, "k")) == Added(1, False)
    finally:
        store.close()


def test_a_batch_of_replays_only_is_not_a_commit_in_the_stats(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "s.db")
    store.open()
    try:
        asyncio.run(store.add_once(1, 10, "k"))
        for _ in range(3):
            asyncio.run(store.add_once(1, 10, "k"))
        counts = asyncio.run(store.counts())
    finally:
        store.close()
    assert (counts["commits"], counts["mean_batch"], counts["replayed"]) == (1, 1.0, 3)


def test_a_deletion_between_two_calls_with_one_key_stores_the_listen_again(
    tmp_path: Path,
) -> None:
    """In the writer's order: a key's event, the user's deletion (which takes the key
    with it), the same key again: the second call stores a new event (the first one's id
    would name a deleted event), and a third replays the second, not the first."""
    path = tmp_path / "kd.db"
    store = EventStore(path)
    store.open()
    try:
        first, deleted, second, third = queued_behind_a_writer_lock(
            path,
            lambda: [
                store.add_once(1, 10, "k"),
                store.delete_user(1),
                store.add_once(1, 10, "k"),
                store.add_once(1, 10, "k"),
            ],
        )
        assert not first.replayed and deleted == 1
        assert not second.replayed and second.id > first.id
        assert third == Added(second.id, True)
        assert asyncio.run(store.latest(1, 10)) == [10]
    finally:
        store.close()
    assert rows(path, 1) == [10]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT user_id, key, event_id FROM event_keys").fetchall() == [
            (1, "k", second.id)
        ]

"""Routes of the event-history service and the SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from musicrec.event_store import EventStore
from musicrec.service_events import EVENTS_K_MAX, create_app
from musicrec.settings import Settings


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
    with TestClient(create_app(cfg)) as c:
        assert add(c, 1, 1).status_code == 401
        assert add(c, 1, 2, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/stats").json()["events"] == 0
        assert c.post("/get_events", params={"user_id": 1}).json()["count"] == 0
        assert add(c, 1, 3, headers={"X-API-Key": "k3y"}).status_code == 200
        assert c.post("/get_events", params={"user_id": 1}).json()["events"] == [3]
    with sqlite3.connect(cfg.event_db_path) as db:  # nothing else reached the database
        assert db.execute("SELECT track_id FROM events").fetchall() == [(3,)]


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
        assert "events_user_id" in plan and "TEMP B-TREE" not in plan


def test_store_rejects_adds_after_close(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "c.db")
    store.open()
    store.close()
    with pytest.raises(RuntimeError):
        asyncio.run(store.add(1, 1))

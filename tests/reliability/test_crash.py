"""Crash: the event service is SIGKILLed in the middle of a concurrent write load, several
times, and restarted each time; nothing acknowledged may be lost or reordered.

Builds on `tests/services/test_reliability.py` (one kill, one client per user): here several
clients each write to a few users of their own, the kill comes at a random moment while
all of them have requests in flight, and the cycle repeats on the same database. After the
last restart every user's stored history must

* hold every acknowledged event,
* keep them in acknowledgement order (the track ids of a user grow with time),
* hold nothing else than events that were in flight at a kill (sent, never answered),

the restarted service must answer within seconds, and SQLite's integrity check must pass.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from services.conftest import make_settings

from musicrec.serve import is_ready

from .conftest import Profile, Report
from .procs import ServiceSet

USERS_PER_CLIENT = 3
#: a restarted event service must answer again within this many seconds
RESTART_LIMIT_S = 15.0


@dataclass
class Client:
    """One writer: its users, what was acknowledged, what was in flight at a kill."""

    users: list[int]
    next_track: int = 1
    acked: dict[int, list[int]] = field(default_factory=dict)
    in_flight: set[tuple[int, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.acked = {u: [] for u in self.users}


async def write_until_dead(
    client: Client, url: str, counter: list[int], enough: asyncio.Event, target: int
) -> None:
    """Sequential writes (round robin over the client's users, growing track ids) until a
    request fails: from then on, the service is dead."""
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        i = 0
        while True:
            user = client.users[i % len(client.users)]
            track = client.next_track
            client.next_track += 1
            i += 1
            try:
                params = {"user_id": user, "track_id": track}
                async with session.post(f"{url}/add_event", params=params) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{r.status}: {body[:200]!r}")
            except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError):
                client.in_flight.add((user, track))  # maybe stored, maybe not
                return
            client.acked[user].append(track)
            counter[0] += 1
            if counter[0] >= target:
                enough.set()


async def load_and_kill(
    clients: list[Client], url: str, target: int, kill: Any, rng: random.Random
) -> int:
    """Write with every client until `target` events are acknowledged in this cycle, then
    kill the service at a random moment shortly after; return the acknowledged count."""
    counter = [0]
    enough = asyncio.Event()
    tasks = [
        asyncio.create_task(write_until_dead(c, url, counter, enough, target)) for c in clients
    ]
    try:
        await asyncio.wait_for(enough.wait(), timeout=120)
        await asyncio.sleep(rng.uniform(0, 0.05))  # somewhere inside the next group commits
        kill()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    finally:
        for t in tasks:
            t.cancel()
    return counter[0]


def stored_history(url: str, user: int) -> list[int]:
    r = httpx.post(f"{url}/get_events", params={"user_id": user, "k": 10_000}, timeout=10)
    r.raise_for_status()
    return list(reversed(r.json()["events"]))  # oldest first


def test_acknowledged_events_survive_repeated_sigkill(
    services: ServiceSet,
    fake_artifacts: dict[str, Any],
    tmp_path: Path,
    profile: Profile,
    report: Report,
) -> None:
    cfg = make_settings(fake_artifacts["root"], tmp_path)
    services.start(cfg, ["events"])
    url = services.url("events")
    rng = random.Random(20240611)
    clients = [
        Client(users=[5000 + c * USERS_PER_CLIENT + j for j in range(USERS_PER_CLIENT)])
        for c in range(profile.crash_clients)
    ]
    restart_s: list[float] = []
    acked_total = 0
    for _ in range(profile.crash_cycles):
        acked_total += asyncio.run(
            load_and_kill(
                clients,
                url,
                profile.crash_events_per_cycle,
                lambda: services.kill("events"),
                rng,
            )
        )
        t0 = time.monotonic()
        services.restart("events", wait=False)
        while not is_ready(url, timeout_s=0.5):
            assert services.procs["events"].proc.poll() is None, services.log_text()[-3000:]
            assert time.monotonic() - t0 < RESTART_LIMIT_S * 2, "no answer after the restart"
            time.sleep(0.02)
        restart_s.append(time.monotonic() - t0)

    # verify through the restarted service
    found = lost = reordered = unexplained = 0
    for c in clients:
        for user in c.users:
            stored = stored_history(url, user)
            mine = c.acked[user]
            stored_set = set(stored)
            found += sum(1 for t in mine if t in stored_set)
            lost += sum(1 for t in mine if t not in stored_set)
            reordered += int(stored != sorted(stored))
            allowed = set(mine) | {t for u, t in c.in_flight if u == user}
            unexplained += sum(1 for t in stored if t not in allowed)
    n_events = httpx.get(f"{url}/stats", timeout=10).json()["events"]
    services.stop("events")  # clean stop, then check the file itself
    with sqlite3.connect(cfg.event_db_path) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        rows = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    in_flight = sum(len(c.in_flight) for c in clients)
    report.add(
        "crash",
        cases=profile.crash_cycles,
        failures=lost + reordered + unexplained + int(integrity != "ok"),
        events_acked=acked_total,
        events_found=found,
        kills=profile.crash_cycles,
        clients=profile.crash_clients,
        restart_s_max=round(max(restart_s), 2),
        in_flight_at_kills=in_flight,
    )
    assert acked_total >= profile.crash_cycles * profile.crash_events_per_cycle
    assert lost == 0, f"{lost} acknowledged events lost"
    assert reordered == 0, f"{reordered} users' histories out of order"
    assert unexplained == 0, f"{unexplained} stored events were never sent"
    assert found == acked_total
    assert acked_total <= n_events == rows <= acked_total + in_flight
    assert integrity == "ok"
    assert max(restart_s) < RESTART_LIMIT_S, restart_s

"""Failure behaviour with real processes: SIGKILL of the event service during writes, and
`/recommendations` while the similarity and event services hang or are down."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from musicrec.serve import ServiceProcess

from .conftest import ServiceStarter, make_settings


def test_acknowledged_events_survive_sigkill(
    service_processes: ServiceStarter, artifacts: dict[str, Any], tmp_path: Path
) -> None:
    cfg = make_settings(artifacts["root"], tmp_path)
    [events] = service_processes(cfg, ["events"])
    users = list(range(1000, 1024))
    acked: dict[int, list[int]] = {u: [] for u in users}
    target = 400  # acknowledged events before the kill

    async def writer(session: aiohttp.ClientSession, user: int, enough: asyncio.Event) -> None:
        """Sequential writes for one user: track ids 1, 2, 3, ... until the server dies."""
        seq = 0
        while True:
            seq += 1
            try:
                params = {"user_id": user, "track_id": seq}
                async with session.post(f"{events.url}/add_event", params=params) as r:
                    if r.status != 200:
                        return
                    await r.read()
            except (aiohttp.ClientError, OSError):
                return
            acked[user].append(seq)
            if sum(map(len, acked.values())) >= target:
                enough.set()

    async def run() -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            enough = asyncio.Event()
            tasks = [asyncio.create_task(writer(session, u, enough)) for u in users]
            await asyncio.wait_for(enough.wait(), timeout=30)
            os.kill(events.proc.pid, signal.SIGKILL)  # mid-stream: writers are in flight
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)

    asyncio.run(run())
    events.proc.wait(timeout=10)
    total = sum(map(len, acked.values()))
    assert total >= target

    [events2] = service_processes(cfg, ["events"])
    with httpx.Client(base_url=events2.url) as c:
        for user in users:
            r = c.post("/get_events", params={"user_id": user, "k": 10_000})
            stored = list(reversed(r.json()["events"]))  # oldest first
            mine = acked[user]
            # every acknowledged event is there, in order; at most the one in flight extra
            assert stored[: len(mine)] == mine, user
            assert stored == list(range(1, len(stored) + 1)), user
            assert len(stored) <= len(mine) + 1, user
        assert c.get("/stats").json()["events"] >= total


def timed_recs(url: str, user: int, k: int) -> tuple[float, list[int]]:
    start = time.perf_counter()
    r = httpx.post(f"{url}/recommendations", params={"user_id": user, "k": k}, timeout=5)
    elapsed = time.perf_counter() - start
    assert r.status_code == 200, r.text
    return elapsed, list(r.json()["recs"])


def test_recommendations_fall_back_to_offline_within_budget(
    service_processes: ServiceStarter, artifacts: dict[str, Any], tmp_path: Path
) -> None:
    budget = 0.2
    cfg = make_settings(
        artifacts["root"], tmp_path, upstream_timeout_s=0.05, request_budget_s=budget
    )
    procs = {p.name: p for p in service_processes(cfg)}
    rec_url = procs["recommendations"].url
    user, k = artifacts["warm_user"], 10
    offline = artifacts["recs"][user][:k]
    heard = [t for t in artifacts["similar_tracks"] if t not in artifacts["recs"][user]][:3]
    with httpx.Client(base_url=procs["events"].url) as c:
        for t in heard:
            c.post("/add_event", params={"user_id": user, "track_id": t}).raise_for_status()

    _, blended = timed_recs(rec_url, user, k)
    assert blended != offline and len(blended) == k  # online part present while all is up

    def check_fallback(phase: str) -> None:
        timings = []
        for _ in range(5):
            elapsed, got = timed_recs(rec_url, user, k)
            assert got == offline, phase
            timings.append(elapsed)
        assert statistics.median(timings) < budget, (phase, timings)
        assert max(timings) < 1.0, (phase, timings)

    def pause(p: ServiceProcess) -> None:
        os.kill(p.proc.pid, signal.SIGSTOP)

    def kill(p: ServiceProcess) -> None:
        os.kill(p.proc.pid, signal.SIGKILL)
        p.proc.wait(timeout=10)

    pause(procs["similar"])  # hangs: calls time out
    check_fallback("similar hung")
    kill(procs["similar"])  # down: connection refused
    check_fallback("similar down")
    pause(procs["events"])
    check_fallback("events hung")
    kill(procs["events"])
    check_fallback("events down")

    metrics = httpx.get(f"{rec_url}/metrics").text
    for reason in ("similar:timeout", "similar:unreachable", "events:timeout"):
        assert f'recommendation_fallbacks_total{{reason="{reason}"}}' in metrics, reason
    assert 'reason="events:unreachable"' in metrics

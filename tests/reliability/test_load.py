"""Load: all three services under a closed-loop load of 50 concurrent connections across
every endpoint (60 s with `--long`, 5 s in the short run): zero errors (every answer a 200,
no refused or reset connection, no traceback in any log) and each service's memory flat.

RSS is read after a warm-up (imports done, first allocations made) and at the end; "flat"
allows `RSS_SLACK_MIB` plus `RSS_SLACK_SHARE` of the starting size - a per-request leak at
these rates (tens of thousands of requests) would exceed it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .conftest import STACK_API_KEY, Profile, Report
from .procs import ServiceSet

WARMUP_S = 1.0
RSS_SLACK_MIB = 25.0
RSS_SLACK_SHARE = 0.15


@dataclass
class LoadStats:
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    by_endpoint: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


def request_mix(art: dict[str, Any], urls: dict[str, str], rng: random.Random) -> Any:
    """A function drawing one request (method, url, params, json body) at random."""
    warm = list(art["recs"])
    tracks = list(art["popular"])
    similar = list(art["similar_tracks"])

    def user() -> int:
        return rng.choice(warm) if rng.random() < 0.7 else rng.randrange(2_000_000, 3_000_000)

    rec, sim, ev = urls["recommendations"], urls["similar"], urls["events"]
    choices: list[tuple[float, Any]] = [
        (25, lambda: ("POST", f"{rec}/recommendations", {"user_id": user(), "k": 20}, None)),
        (8, lambda: ("POST", f"{rec}/recommendations_offline", {"user_id": user()}, None)),
        (8, lambda: ("POST", f"{rec}/recommendations_online", {"user_id": user()}, None)),
        (14, lambda: ("POST", f"{sim}/similar_tracks", {"track_id": rng.choice(similar)}, None)),
        (
            8,
            lambda: (
                "POST",
                f"{sim}/similar_tracks_batch",
                None,
                {"track_ids": rng.sample(tracks, 5), "k": 20},
            ),
        ),
        (
            12,
            lambda: (
                "POST",
                f"{ev}/add_event",
                {"user_id": user(), "track_id": rng.choice(tracks)},
                None,
            ),
        ),
        (12, lambda: ("POST", f"{ev}/get_events", {"user_id": user(), "k": 10}, None)),
        (3, lambda: ("GET", f"{ev}/stats", None, None)),
        (6, lambda: ("GET", f"{rng.choice([rec, sim, ev])}/health", None, None)),
        (3, lambda: ("GET", f"{rng.choice([rec, sim, ev])}/ready", None, None)),
        (1, lambda: ("GET", f"{rng.choice([rec, sim, ev])}/metrics", None, None)),
    ]
    weights = [w for w, _ in choices]
    makers = [m for _, m in choices]

    def draw() -> tuple[str, str, Any, Any]:
        return rng.choices(makers, weights)[0]()  # type: ignore[no-any-return]

    return draw


async def run_load(draw: Any, connections: int, seconds: float, stats: LoadStats) -> None:
    """`connections` workers, each on its own keep-alive connection, for `seconds`."""
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                method, url, params, body = draw()
                label = url.split("/", 3)[-1]
                t0 = time.perf_counter()
                try:
                    # the event service's routes need the key; the others ignore it
                    headers = {"X-API-Key": STACK_API_KEY}
                    async with session.request(
                        method, url, params=params, json=body, headers=headers
                    ) as r:
                        await r.read()
                        if r.status != 200:
                            stats.errors[f"{label} HTTP {r.status}"] += 1
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    stats.errors[f"{label} {type(exc).__name__}"] += 1
                stats.requests += 1
                stats.by_endpoint[label] += 1
                stats.latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(connections)))


def test_fifty_connections_zero_errors_flat_memory(
    stack: ServiceSet, fake_artifacts: dict[str, Any], profile: Profile, report: Report
) -> None:
    services = stack
    names = ["recommendations", "similar", "events"]
    urls = {n: services.url(n) for n in names}
    draw = request_mix(fake_artifacts, urls, random.Random(7))

    warm = LoadStats()
    asyncio.run(run_load(draw, profile.load_connections, WARMUP_S, warm))
    rss_before = {n: services.rss_mib(n) for n in names}
    stats = LoadStats()
    t0 = time.monotonic()
    asyncio.run(run_load(draw, profile.load_connections, profile.load_seconds, stats))
    elapsed = time.monotonic() - t0
    rss_after = {n: services.rss_mib(n) for n in names}
    alive = all(services.procs[n].proc.poll() is None for n in names)
    log = services.log_text()

    lat = sorted(stats.latencies)
    errors = sum(stats.errors.values()) + sum(warm.errors.values())
    grown = {
        n: rss_after[n] - rss_before[n]
        for n in names
        if rss_after[n] - rss_before[n] > RSS_SLACK_MIB + RSS_SLACK_SHARE * rss_before[n]
    }
    report.add(
        "load",
        cases=1,
        failures=errors + len(grown) + int("Traceback" in log) + int(not alive),
        requests=stats.requests,
        server_errors=sum(n for k, n in stats.errors.items() if " HTTP 5" in k),
        errors=errors,
        seconds=round(elapsed, 1),
        connections=profile.load_connections,
        rps=round(stats.requests / elapsed),
        p50_ms=round(1000 * lat[len(lat) // 2], 1),
        p99_ms=round(1000 * lat[int(len(lat) * 0.99)], 1),
        max_ms=round(1000 * lat[-1], 1),
        rss_before_mib={n: round(v, 1) for n, v in rss_before.items()},
        rss_after_mib={n: round(v, 1) for n, v in rss_after.items()},
        by_endpoint=dict(stats.by_endpoint),
    )
    assert alive
    assert errors == 0, dict(stats.errors + warm.errors)
    assert "Traceback" not in log, log[-3000:]
    assert not grown, f"RSS grew (MiB): {grown}; before {rss_before}, after {rss_after}"
    assert stats.requests > 0 and set(stats.by_endpoint) >= {
        "recommendations",
        "similar_tracks_batch",
        "add_event",
        "get_events",
    }

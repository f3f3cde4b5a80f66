"""Dependencies: the similarity and event services are stopped, then made slow (answers
later than `upstream_timeout_s`), alone and together; `/recommendations` must answer 200
with the offline list within `request_budget_s` every time - one by one and in concurrent
bursts - and get its online part back by itself once they are back (no restart).

Builds on `tests/services/test_reliability.py` (SIGSTOP/SIGKILL, median latency): here the
upstreams really stop and come back, "slow" means late answers through a proxy
(`ChaosProxy`), every single answer must be within the budget, and recovery is measured.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from services.conftest import make_settings

from .chaos import ChaosProxy
from .conftest import Profile, Report
from .procs import ServiceSet

#: `upstream_timeout_s` and `request_budget_s` of the recommendation service; a slow
#: upstream answers after SLOW_S, beyond both, so only cutting it off keeps the budget
TIMEOUT_S = 0.1
BUDGET_S = 0.4
SLOW_S = 5 * TIMEOUT_S
K = 10
#: concurrent requests of a burst: the budget bounds the service's own time, so a burst is
#: kept small enough that waiting in the server's queue (2 shared cores running the three
#: services and this client) does not count against it
BURST = 8

#: (phase, similar, events): each upstream "up", "down" (process stopped, port closed) or
#: "slow"; ordered so that each service stops and comes back once
PHASES = [
    ("all up", "up", "up"),
    ("similar down", "down", "up"),
    ("both down", "down", "down"),
    ("events down, similar slow", "slow", "down"),
    ("both slow", "slow", "slow"),
    ("events slow", "up", "slow"),
    ("similar slow", "slow", "up"),
    ("all back", "up", "up"),
]


async def timed_burst(url: str, user: int, n: int, concurrent: bool) -> list[tuple[float, Any]]:
    """`n` /recommendations calls (all at once or one by one): (seconds, status, recs)."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:

        async def one() -> tuple[float, Any]:
            t0 = time.perf_counter()
            r = await client.post("/recommendations", params={"user_id": user, "k": K})
            elapsed = time.perf_counter() - t0
            return elapsed, (
                r.status_code,
                r.json().get("recs") if r.status_code == 200 else r.text,
            )

        if concurrent:
            return list(await asyncio.gather(*(one() for _ in range(n))))
        return [await one() for _ in range(n)]


def test_recommendations_survive_stopped_and_slow_upstreams(
    services: ServiceSet,
    fake_artifacts: dict[str, Any],
    tmp_path: Any,
    profile: Profile,
    report: Report,
) -> None:
    base = make_settings(
        fake_artifacts["root"], tmp_path, upstream_timeout_s=TIMEOUT_S, request_budget_s=BUDGET_S
    )
    proxies = {
        "similar": ChaosProxy(base.similar_port, delay_s=SLOW_S),
        "events": ChaosProxy(base.events_port, delay_s=SLOW_S),
    }
    cfg = base.model_copy(
        update={"similar_url": proxies["similar"].url, "events_url": proxies["events"].url}
    )
    try:
        services.start(cfg)
        rec_url = services.url("recommendations")
        rec_pid = services.pid("recommendations")
        user = fake_artifacts["warm_user"]
        offline = fake_artifacts["recs"][user][:K]
        heard = [
            t for t in fake_artifacts["similar_tracks"] if t not in fake_artifacts["recs"][user]
        ]
        with httpx.Client(base_url=services.url("events")) as c:
            for t in heard[:3]:
                c.post("/add_event", params={"user_id": user, "track_id": t}).raise_for_status()

        def set_state(name: str, state: str) -> None:
            running = services.procs[name].proc.poll() is None
            if state == "down":
                proxies[name].set_mode("down")
                services.stop(name)
                return
            if not running:
                services.restart(name)
            proxies[name].set_mode("slow" if state == "slow" else "pass")

        n = profile.dependency_requests
        answers = slowest = 0.0
        bad: list[str] = []
        recovery_s = 0.0
        phase_max: dict[str, float] = {}
        for phase, sim_state, ev_state in PHASES:
            set_state("similar", sim_state)
            set_state("events", ev_state)
            degraded = not (sim_state == ev_state == "up")
            if phase == "all back":
                # back by itself: poll until the online part is there again
                t0 = time.monotonic()
                while True:
                    [(_, (status, got))] = asyncio.run(timed_burst(rec_url, user, 1, False))
                    if status == 200 and got != offline:
                        break
                    assert time.monotonic() - t0 < 10, "no online part 10 s after recovery"
                    time.sleep(0.05)
                recovery_s = time.monotonic() - t0
            results = asyncio.run(timed_burst(rec_url, user, n, False))
            for _ in range(max(1, n // BURST)):
                results += asyncio.run(timed_burst(rec_url, user, BURST, True))
            phase_max[phase] = round(max(e for e, _ in results), 3)
            for elapsed, (status, got) in results:
                answers += 1
                slowest = max(slowest, elapsed)
                if status != 200:
                    bad.append(f"{phase}: HTTP {status} {got!r:.200}")
                elif degraded and got != offline:
                    bad.append(f"{phase}: not the offline list: {got}")
                elif not degraded and (got == offline or len(got) != K):
                    bad.append(f"{phase}: online part missing: {got}")
                elif elapsed >= BUDGET_S:
                    bad.append(f"{phase}: {elapsed:.3f} s, over the {BUDGET_S} s budget")
        metrics = httpx.get(f"{rec_url}/metrics").text
        assert services.pid("recommendations") == rec_pid  # never restarted
    finally:
        for p in proxies.values():
            p.close()

    fallbacks = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("recommendation_fallbacks_total{")
    )
    report.add(
        "dependencies",
        cases=len(PHASES),
        failures=len(bad),
        requests=int(answers),
        server_errors=sum(1 for b in bad if "HTTP 5" in b),
        slowest_s=round(slowest, 3),
        budget_s=BUDGET_S,
        recovery_s=round(recovery_s, 2),
        fallbacks=int(fallbacks),
        slowest_by_phase=phase_max,
    )
    assert not bad, "\n".join(bad[:20])
    degraded_phases = sum(1 for _, s, e in PHASES if not (s == e == "up"))
    per_phase = n + max(1, n // BURST) * BURST
    assert fallbacks >= degraded_phases * per_phase

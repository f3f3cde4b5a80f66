"""Cost of the per-request metrics (`MetricsMiddleware` + `ServiceMetrics.observe`), in process.

    python bench/metrics_ab.py [--requests 50000] [--rounds 7]

Calls a trivial ASGI app (it answers `[]`, as the express lane answers a body it already
has) directly, without sockets or uvicorn, `--requests` times per round in three versions,
alternated for `--rounds` rounds:

- `bare`: the app alone;
- `labels() per request`: wrapped in `MetricsMiddleware` with the way `observe` worked
  before 2026-12-03 (`Counter.labels(...)` and `Histogram.labels(...)` looked up on every
  request);
- `cached children`: wrapped in `MetricsMiddleware` with the current `ServiceMetrics`
  (the labelled children cached per (method, route, status));
- `+ JSON error bodies`: the same with `JsonErrorBodies` inside it, as the services run
  since 2026-12-07 (it looks at each response's start; a 200 passes through);
- `+ no repeated query`: the same with `NoRepeatedQuery` innermost, the stack every
  service runs since 2026-12-07, on a query of two parameters (`user_id=1&k=5`: its names
  are checked for a repeat without parsing, as they have no escapes; a query without `&`
  is not looked at). The other versions get
  the same query string, which they do not read.

Prints the median microseconds per request of each and the middleware's overhead over
`bare`. This is the cost the metrics add to every request of every service; the HTTP
server's own cost (uvicorn) is not included.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicrec.service_common import (  # noqa: E402
    JsonErrorBodies,
    MetricsMiddleware,
    NoRepeatedQuery,
    ServiceMetrics,
)


class LabelsPerRequest(ServiceMetrics):
    """`observe` as it was before the children were cached."""

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)


class _Route:
    path = "/similar_tracks"


ROUTE = _Route()
SCOPE = {
    "type": "http",
    "method": "POST",
    "path": "/similar_tracks",
    "query_string": b"user_id=1&k=5",
}


async def app(scope: Any, receive: Any, send: Any) -> None:
    scope["route"] = ROUTE
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"[]"})


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    return None


async def per_request_us(asgi: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await asgi(dict(SCOPE), receive, send)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    log = logging.getLogger("metrics_ab")
    versions = {
        "bare": app,
        "labels() per request": MetricsMiddleware(app, LabelsPerRequest("a"), log),
        "cached children": MetricsMiddleware(app, ServiceMetrics("b"), log),
        "+ JSON error bodies": MetricsMiddleware(JsonErrorBodies(app), ServiceMetrics("c"), log),
        "+ no repeated query": MetricsMiddleware(
            JsonErrorBodies(NoRepeatedQuery(app)), ServiceMetrics("d"), log
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in versions}
    for _ in range(args.rounds):
        for name, asgi in versions.items():
            times[name].append(asyncio.run(per_request_us(asgi, args.requests)))
    print(f"{args.requests:,} requests per round, {args.rounds} rounds (median us/request)")
    bare = statistics.median(times["bare"])
    for name, values in times.items():
        med = statistics.median(values)
        extra = "" if name == "bare" else f"   metrics overhead {med - bare:6.2f} us"
        print(f"{name:<22} {med:7.2f}{extra}")


if __name__ == "__main__":
    main()

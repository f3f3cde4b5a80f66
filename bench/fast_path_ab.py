"""A/B of the express lane (`musicrec.fast_path`) against the FastAPI routes, in process.

    python bench/fast_path_ab.py          # after `make bench-pipeline` (full10 artifacts)

Builds each app twice (`fast_path` on and off) on the same artifacts, runs their lifespans,
then calls the ASGI apps directly (no sockets, no uvicorn) with `--requests` plain requests
per round for `/recommendations_offline` (recommendation service) and `/similar_tracks`
(similarity service), different ids each time, alternating the two versions `--repeats`
times. Prints the microseconds per request, their medians and the ratio, after checking
that both versions answer every request with the same bytes. This is the application's
own cost per request; the HTTP server's (uvicorn) is the same for both and not included.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def call(app: Any, path: str, query: bytes) -> tuple[int, bytes]:
    """One POST through the ASGI app; (status, body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    out: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out["status"], out["body"]


async def main_async(args: argparse.Namespace) -> None:
    from musicrec.artifacts import ArtifactPaths
    from musicrec.service_recommendations import create_app as recs_app
    from musicrec.service_similar import create_app as similar_app
    from musicrec.settings import Settings

    paths = ArtifactPaths(args.artifacts_dir)
    rng = np.random.default_rng(0)
    users = pq.read_table(paths.recommendations, columns=["user_id"])["user_id"].to_numpy()
    tracks = pq.read_table(paths.similar, columns=["track_id_1"])["track_id_1"].to_numpy()
    cases: dict[str, tuple[Callable[..., Any], str, list[bytes]]] = {
        "/recommendations_offline": (
            recs_app,
            "/recommendations_offline",
            [f"user_id={u}&k=100".encode() for u in rng.choice(np.unique(users), args.requests)],
        ),
        "/similar_tracks": (
            similar_app,
            "/similar_tracks",
            [f"track_id={t}&k=10".encode() for t in rng.choice(np.unique(tracks), args.requests)],
        ),
    }
    base = Settings(artifacts_dir=args.artifacts_dir, log_level="WARNING")
    for name, (factory, path, queries) in cases.items():
        apps = {
            "FastAPI route": factory(base.model_copy(update={"fast_path": False})),
            "express lane": factory(base.model_copy(update={"fast_path": True})),
        }
        async with AsyncExitStack() as stack:
            for app in apps.values():
                await stack.enter_async_context(app.router.lifespan_context(app))
            answers = {
                label: [await call(app, path, q) for q in queries[:200]]
                for label, app in apps.items()
            }
            a, b = answers.values()
            assert a == b and all(s == 200 for s, _ in a), f"{name}: the answers differ"
            times: dict[str, list[float]] = {label: [] for label in apps}
            for _ in range(args.repeats):
                for label, app in apps.items():
                    t0 = time.perf_counter()
                    for q in queries:
                        await call(app, path, q)
                    times[label].append((time.perf_counter() - t0) / len(queries) * 1e6)
        print(f"{name}: {args.requests:,} requests per round, same answers")
        for label, ts in times.items():
            cells = "  ".join(f"{t:7.1f}" for t in ts)
            print(f"  {label:<14} {cells} us/request   median {statistics.median(ts):7.1f}")
        m = [statistics.median(ts) for ts in times.values()]
        print(f"  ratio {m[0] / m[1]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--artifacts-dir", type=Path, default=Path("/tmp/musicrec-bench/full10/recsys"))
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()

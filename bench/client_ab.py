"""Client CPU per inter-service call: aiohttp against `musicrec.http_client.HttpPool`.

    python bench/client_ab.py [--calls 20000] [--concurrency 25] [--rounds 3]

Starts the benchmark's floor app (`bench_serve.floor_app`: one FastAPI endpoint answering
a constant 100-id list) under uvicorn in a subprocess, then, in this process, sends
`--calls` POSTs with `--concurrency` concurrent callers through each client on uvloop,
alternating the clients for `--rounds` rounds. Prints, per client, the median over rounds
of requests/s and of this process's CPU time per call (user + system), and their ratio.
The server's CPU is not counted: the figure is what a call costs the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def with_aiohttp(url: str, calls: int, concurrency: int) -> None:
    import aiohttp
    import orjson

    connector = aiohttp.TCPConnector(limit=256, limit_per_host=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(n: int) -> None:
            for i in range(n):
                async with session.post(f"{url}/floor", params={"user_id": i}) as resp:
                    orjson.loads(await resp.read())

        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))


async def with_pool(url: str, calls: int, concurrency: int) -> None:
    from musicrec.http_client import HttpPool

    pool = HttpPool(url, timeout_s=5)

    async def worker(n: int) -> None:
        for i in range(n):
            await pool.post_json("/floor", params={"user_id": i})

    try:
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
    finally:
        await pool.close()


def measure(
    client: Callable[[str, int, int], Coroutine[Any, Any, None]],
    url: str,
    calls: int,
    concurrency: int,
) -> tuple[float, float]:
    """(requests/s, client CPU µs per call) of one round."""
    import uvloop

    n = (calls // concurrency) * concurrency
    t0, c0 = time.perf_counter(), time.process_time()
    uvloop.run(client(url, calls, concurrency))
    t1, c1 = time.perf_counter(), time.process_time()
    return n / (t1 - t0), 1e6 * (c1 - c0) / n


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    from bench_serve import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "uvicorn", "bench.bench_serve:floor_app", "--port", str(port)]
    cmd += ["--app-dir", str(ROOT), "--log-level", "warning", "--no-access-log"]
    server = subprocess.Popen(cmd, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/ready", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the floor app did not start") from None
                time.sleep(0.1)
        clients = {"aiohttp": with_aiohttp, "HttpPool": with_pool}
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, client in clients.items():
                runs[name].append(measure(client, url, args.calls, args.concurrency))
    finally:
        server.terminate()
        server.wait(timeout=10)

    result = {
        name: {
            "rps": statistics.median(r for r, _ in rs),
            "cpu_us_per_call": statistics.median(c for _, c in rs),
        }
        for name, rs in runs.items()
    }
    print(
        f"client CPU per call, {args.calls} POSTs x {args.rounds} rounds, "
        f"{args.concurrency} concurrent (medians)"
    )
    print(f"{'client':<10} {'req/s':>8} {'CPU us/call':>12}")
    for name, r in result.items():
        print(f"{name:<10} {r['rps']:>8.0f} {r['cpu_us_per_call']:>12.1f}")
    ratio = result["aiohttp"]["cpu_us_per_call"] / result["HttpPool"]["cpu_us_per_call"]
    print(f"aiohttp / HttpPool CPU per call: {ratio:.2f}x")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

"""What one batch read of the event service costs, cold (right after a restart: SQLite)
and warm (the cache), for users with long histories.

    python bench/event_store_reads.py [--events 300 2000 10000] [--k 10000] [--users 200]
        [--batch 50]

For each history length E: a fresh SQLite file with `--users` users of E events each
(written directly, interleaved in time), an `EventStore` opened on it (empty cache, as
after a restart), then `latest_many` of `--batch` users at a time with `--k` (what the
recommendation service asks: `MUSICREC_EXCLUDE_EVENTS_MAX`): every batch once cold,
then once warm. Prints the median and the maximum per batch, and the upstream timeout
(`MUSICREC_UPSTREAM_TIMEOUT_S`, 50 ms) the recommendation service gives such a call. A
read costs what it returns: min(history, k) rows, so with the default
`MUSICREC_EXCLUDE_EVENTS_MAX` of 1,000 a longer history costs what 1,000 events do.

`--writes N` then adds N events (1,000 at a time, concurrently, to users of a store
already holding the largest `--events` history) and prints the events stored per second:
what the read index costs the writer. `--old-index` first turns each filled file into a
database of the layout before the covering index and prints how long the first open takes
(building that index once).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicrec.event_store import EventStore  # noqa: E402


def fill(path: Path, users: int, events: int) -> None:
    """`users` x `events` rows, users interleaved (one event each per round)."""
    store = EventStore(path)
    store.open()  # creates the schema
    store.close()
    rng = random.Random(0)
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO events (user_id, track_id, ts) VALUES (?, ?, ?)",
            (
                (u, rng.randrange(1_000, 2**31 - 1), float(r))
                for r in range(events)
                for u in range(users)
            ),
        )


def time_batches(store: EventStore, users: int, batch: int, k: int) -> list[float]:
    async def run() -> list[float]:
        out = []
        for start in range(0, users, batch):
            ids = list(range(start, min(start + batch, users)))
            t0 = time.perf_counter()
            await store.latest_many(ids, k)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    return asyncio.run(run())


def time_writes(store: EventStore, users: int, n: int) -> float:
    """Events stored per second: `n` adds, 1,000 in flight at a time."""

    async def run() -> float:
        rng = random.Random(1)
        t0 = time.perf_counter()
        for start in range(0, n, 1_000):
            await asyncio.gather(
                *(
                    store.add(rng.randrange(users), rng.randrange(1_000, 2**31 - 1))
                    for _ in range(min(1_000, n - start))
                )
            )
        return n / (time.perf_counter() - t0)

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, nargs="+", default=[300, 2_000, 10_000])
    ap.add_argument("--k", type=int, default=10_000, help="Events asked per user")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--writes", type=int, default=0, help="Events added after the reads")
    ap.add_argument(
        "--old-index", action="store_true", help="Time the first open of an older database"
    )
    args = ap.parse_args(argv)
    opens: list[str] = []
    print(f"latest_many of {args.batch} users, k={args.k:,}; ms per batch (median / max)")
    print(f"{'events/user':>11}  {'cold (SQLite)':>16}  {'warm (memory)':>16}")
    for events in args.events:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "events.sqlite3"
            fill(path, args.users, events)
            if args.old_index:
                with sqlite3.connect(path) as db:
                    db.executescript(
                        "DROP INDEX events_user_recent;"
                        "CREATE INDEX events_user_id ON events (user_id, id);"
                    )
            store = EventStore(path, cache_events=max(5_000_000, args.users * events))
            t0 = time.perf_counter()
            store.open()
            opens.append(f"{args.users * events:,} events: {time.perf_counter() - t0:.2f} s")
            try:
                cold = time_batches(store, args.users, args.batch, args.k)
                warm = time_batches(store, args.users, args.batch, args.k)
                if args.writes and events == max(args.events):
                    rate = time_writes(store, args.users, args.writes)
            finally:
                store.close()
        print(
            f"{events:>11,}  {statistics.median(cold):>8.1f} / {max(cold):>5.1f}"
            f"  {statistics.median(warm):>8.2f} / {max(warm):>5.2f}"
        )
    print("the recommendation service's timeout per upstream call: 50 ms by default")
    if args.old_index:
        print("first open of an older database (builds the covering index):", "; ".join(opens))
    if args.writes:
        print(
            f"writes: {rate:,.0f} events/s ({args.writes:,} adds into {args.users} users of "
            f"{max(args.events):,} events, synchronous=FULL)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

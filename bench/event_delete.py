"""How long `/delete_events` holds the event store's writer for a heavy listener: one
user's N events deleted from a store of M, each deletion one transaction.

    python bench/event_delete.py [--user-events 200000] [--events 1200000] [--repeats 3]

Each repeat fills a fresh SQLite file (written directly; the user's events interleaved
with 100,000 other users'), opens an `EventStore` on it and times `delete_user`: the
median and each repeat are printed.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--user-events", type=int, default=200_000)
    ap.add_argument("--events", type=int, default=1_200_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    every = max(1, args.events // args.user_events)
    times: list[float] = []
    for repeat in range(args.repeats):
        rng = random.Random(repeat)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "events.sqlite3"
            store = EventStore(path)
            store.open()  # creates the schema
            store.close()
            with sqlite3.connect(path) as db:
                db.executemany(
                    "INSERT INTO events (user_id, track_id, ts) VALUES (?, ?, ?)",
                    (
                        (
                            0 if i % every == 0 else rng.randrange(1, 100_001),
                            rng.randrange(2**31 - 1),
                            0.0,
                        )
                        for i in range(args.events)
                    ),
                )
            store = EventStore(path)
            store.open()
            try:
                t0 = time.perf_counter()
                deleted = asyncio.run(store.delete_user(0))
                times.append(time.perf_counter() - t0)
            finally:
                store.close()
    print(
        f"delete_user of {deleted:,} events from a store of {args.events:,}: median "
        f"{statistics.median(times):.3f} s ({', '.join(f'{t:.3f}' for t in times)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What an `Idempotency-Key` costs the event store's writer: events stored per second by
`add` (no key) against `add_once` (a new key each), in alternated rounds on one store.

    python bench/event_keys.py [--keys 1000000] [--events 1000000] [--round 20000]
        [--rounds 5] [--users 100000]

The store is first filled (directly in SQLite) with `--events` events and `--keys` keys
less than a day old, which is what a day of keyed listens leaves in `event_keys` (the
B-tree a new key is inserted into). Then `--rounds` rounds of each kind, alternated, of
`--round` adds with 1,000 in flight (the group commit writes them together, as under
load). Prints each kind's median rate and the ratio. Then a round of retries: every call
of a keyed round sent again (each a replay: a look-up, nothing written).
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
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicrec.event_store import EventStore  # noqa: E402


def fill(path: Path, events: int, keys: int, users: int) -> None:
    store = EventStore(path)
    store.open()  # creates the schema
    store.close()
    rng = random.Random(0)
    now = time.time()
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO events (user_id, track_id, ts) VALUES (?, ?, ?)",
            ((rng.randrange(users), rng.randrange(2**31 - 1), now) for _ in range(events)),
        )
        db.executemany(
            "INSERT INTO event_keys (user_id, key, event_id, track_id, ts) VALUES (?, ?, ?, ?, ?)",
            (
                (i % users, f"old-{i:012d}-{rng.getrandbits(64):016x}", 1 + i % events, 7, now)
                for i in range(keys)
            ),
        )


def rate(store: EventStore, calls: list[tuple[int, int, str]], keyed: bool) -> float:
    """Calls per second: each (user, track, key) of `calls` by `add_once` (`keyed`) or by
    `add` (the key unused), 1,000 in flight at a time."""

    def one(user: int, track: int, key: str) -> Coroutine[Any, Any, Any]:
        return store.add_once(user, track, key) if keyed else store.add(user, track)

    async def run() -> float:
        t0 = time.perf_counter()
        for start in range(0, len(calls), 1_000):
            await asyncio.gather(*(one(*c) for c in calls[start : start + 1_000]))
        return len(calls) / (time.perf_counter() - t0)

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--round", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.sqlite3"
        fill(path, args.events, args.keys, args.users)
        store = EventStore(path)
        store.open()
        try:
            plain: list[float] = []
            keyed: list[float] = []
            last: list[tuple[int, int, str]] = []
            for r in range(args.rounds):
                calls = [
                    (rng.randrange(args.users), rng.randrange(2**31 - 1), f"r{r}-{i}")
                    for i in range(args.round)
                ]
                plain.append(rate(store, calls, keyed=False))
                keyed.append(rate(store, calls, keyed=True))
                last = calls
            replays = rate(store, last, keyed=True)
            counts = asyncio.run(store.counts())
        finally:
            store.close()
    p, k = statistics.median(plain), statistics.median(keyed)
    print(
        f"store of {args.events:,} events and {args.keys:,} live keys; {args.rounds} rounds "
        f"of {args.round:,} adds each kind, alternated, 1,000 in flight, synchronous=FULL"
    )
    for name, med, rounds in (("add (no key)", p, plain), ("add_once (new key)", k, keyed)):
        shown = ", ".join(f"{x:,.0f}" for x in rounds)
        print(f"{name:<19} {med:>9,.0f} events/s (rounds: {shown})")
    print(f"ratio keyed / plain: {k / p:.2f}")
    print(f"add_once retried (replays, nothing written): {replays:,.0f} calls/s")
    print(f"replayed counted: {counts['replayed']:,}; events stored: {counts['events']:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

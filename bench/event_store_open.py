"""How long the event store takes to open an existing database (the event service's
start-up, before `/ready`).

    python bench/event_store_open.py [--events 3000000] [--users 200000] [--repeat 5]

Writes a database of the current layout with `--events` events of `--users` users
(random users and tracks, written directly), then opens and closes an `EventStore` on it
`--repeat` times and prints the median and each time. `open` counts the events and users
(reading the table and the covering index whole, so a damaged page stops the start) and
checks that the file can be written. Run it against another commit's package with
`--root DIR` (a checkout) to compare in one run.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path


def write_database(path: Path, events: int, users: int) -> None:
    rng = random.Random(0)
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, "
            "track_id INTEGER NOT NULL, ts REAL NOT NULL);"
            "CREATE INDEX events_user_recent ON events (user_id, id, track_id);"
        )
        rows = ((rng.randrange(users), rng.randrange(1_000_000), 0.0) for _ in range(events))
        db.executemany("INSERT INTO events (user_id, track_id, ts) VALUES (?, ?, ?)", rows)
    db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args()
    sys.path.insert(0, str(args.root))
    from musicrec.event_store import EventStore

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.sqlite3"
        write_database(path, args.events, args.users)
        times = []
        for _ in range(args.repeat):
            store = EventStore(path)
            t0 = time.perf_counter()
            store.open()
            times.append(time.perf_counter() - t0)
            store.close()
    print(
        f"{args.root}: open of {args.events:,} events ({args.users:,} users): "
        f"median {statistics.median(times):.3f} s, each {[round(t, 3) for t in times]}"
    )


if __name__ == "__main__":
    main()

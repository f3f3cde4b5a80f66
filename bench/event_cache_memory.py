"""Memory of the event service's cache (`musicrec.event_store.RecentCache`) when full.

    python bench/event_cache_memory.py [--users 50000] [--events-per-user 100]

Fills a cache with `--users` users of `--events-per-user` random track ids each (as reads
from SQLite would) and prints the Python heap it holds (tracemalloc), in all and per event.
"""

from __future__ import annotations

import argparse
import random
import sys
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicrec.event_store import RecentCache  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--events-per-user", type=int, default=100)
    args = ap.parse_args(argv)
    rng = random.Random(0)
    per = args.events_per_user
    cache = RecentCache(max_users=args.users, depth=100, max_events=args.users * per + 100)
    tracemalloc.start()
    event_id = 0
    for user in range(args.users):
        rows = [(event_id + j + 1, rng.randrange(1000, 2**31 - 1)) for j in range(per)]
        event_id += per
        rows.reverse()  # newest first, as SQLite returns them
        cache.install(user, rows, snapshot_max=event_id, limit=max(per + 1, cache.depth))
        del rows
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{cache.events:,} events of {len(cache):,} users held")
    print(f"heap {held / 2**20:.1f} MiB, {held / max(cache.events, 1):.1f} bytes per event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

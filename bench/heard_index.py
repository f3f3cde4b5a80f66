"""Build the services' heard index for a finished run's artifacts, as the `als` stage does,
and print what it costs: the step's seconds, the files' size, the peak memory.

    python bench/heard_index.py --artifacts-dir /tmp/musicrec-bench/full/recsys

Reads `data/events.parquet` and the test window's start from `metrics.json` (the default
`final_fit`: the served lists are fit on the history before it), builds the history's
users x tracks matrix (the `als` stage has it already; timed apart here), then times
`HeardIndex.from_matrix` + `save` into `recommendations/heard/` (overwriting it). Useful to
give artifacts of a run from before the index existed their index, e.g. for
`bench/bench_serve.py` with and without it.

    python bench/heard_index.py --artifacts-dir DIR --load-only [--repeats 5]

times what a service worker does at start-up instead: `HeardIndex.load` (memory-mapped,
with its checks), and the check that each user's tracks ascend alone, medians of
`--repeats` (the page cache warm after the first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicrec.artifacts import ArtifactPaths  # noqa: E402
from musicrec.columns import Columns as C  # noqa: E402
from musicrec.heard import FILES, HeardIndex, first_out_of_order  # noqa: E402
from musicrec.matrix import InteractionMatrix  # noqa: E402
from musicrec.memory import rss_gib  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts-dir", type=Path, required=True)
    ap.add_argument("--load-only", action="store_true", help="Time the services' load")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    paths = ArtifactPaths(args.artifacts_dir)
    if args.load_only:
        return time_load(paths, args.repeats)
    start = pd.Timestamp(json.loads(paths.metrics.read_text())["split"]["test_start"])

    t0 = time.perf_counter()
    events = pq.read_table(
        paths.events,
        columns=[C.User, C.Item],
        filters=[(C.Datetime, "<", start.to_pydatetime())],
    ).to_pandas()
    t1 = time.perf_counter()
    matrix = InteractionMatrix.from_events(events)
    del events
    t2 = time.perf_counter()
    index = HeardIndex.from_matrix(matrix)
    t3 = time.perf_counter()
    index.save(paths.heard_dir)
    t4 = time.perf_counter()

    size = sum((paths.heard_dir / name).stat().st_size for name in FILES)
    print(f"history before {start.date()}: {index.tracks.size:,} pairs, {len(index):,} users")
    print(f"read the events {t1 - t0:.1f} s, the matrix {t2 - t1:.1f} s (the als stage's own)")
    print(f"the pipeline's step: from_matrix {t3 - t2:.2f} s + save {t4 - t3:.2f} s")
    print(f"files: {size / 2**30:.2f} GiB in {paths.heard_dir}; RSS now {rss_gib():.2f} GiB")
    return 0


def time_load(paths: ArtifactPaths, repeats: int) -> int:
    loads, checks = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        index = HeardIndex.load(paths.heard_dir)
        t1 = time.perf_counter()
        assert first_out_of_order(index.tracks, index.offsets) is None
        t2 = time.perf_counter()
        loads.append(t1 - t0)
        checks.append(t2 - t1)
        del index
    print(f"{paths.heard_dir}: {repeats} loads")
    median, first = statistics.median(loads), loads[0]
    print(f"HeardIndex.load (checks included): median {median:.3f} s, first {first:.3f} s")
    print(f"of which the order check: median {statistics.median(checks):.3f} s")
    print(f"RSS now {rss_gib():.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

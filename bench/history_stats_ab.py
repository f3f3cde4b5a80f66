"""A/B of the ranker features' history statistics (`features._history_stats`): time and
peak memory of the current code against the version before 2026-12-02 (argsort of the
history for first/last dates, int64 temporaries; `git show 081fe6d:musicrec/features.py`
saved as `--old`), on the first stage of existing artifacts.

    git show 081fe6d:musicrec/features.py > /tmp/old_features.py
    python bench/history_stats_ab.py --old /tmp/old_features.py    # full10 artifacts

Each version runs `--repeats` times, alternated, in one process; the peak is the largest
resident set sampled every 20 ms during the call minus the resident set before it. The
outputs of both versions are checked equal.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ab_setup  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from musicrec import features  # noqa: E402


def peak_call(fn: Any, *args: Any) -> tuple[Any, float, float]:
    """(result, seconds, peak RSS above the starting RSS in GiB)."""
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, proc.memory_info().rss)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    out = fn(*args)
    secs = time.perf_counter() - t0
    done.set()
    t.join()
    return out, secs, (peak - base) / 2**30


def main() -> None:
    ap = ab_setup.parser(__doc__)
    ap.add_argument("--old", type=Path, required=True, help="features.py before the change")
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("old_features", args.old)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    cfg, ctx, stage = ab_setup.load_first_stage(args)
    items = ctx.prepared.items
    print(f"history: {len(stage.history):,} rows")
    versions = {"before": old._history_stats, "now": features._history_stats}
    times: dict[str, list[float]] = {name: [] for name in versions}
    outs: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name, fn in versions.items():
            stage.cache.clear()
            out, secs, peak = peak_call(fn, stage, items, cfg.ranker.recent_days)
            times[name].append(secs)
            outs[name] = out
            print(f"  {name:<7} {secs:7.2f} s   peak +{peak:.2f} GiB", flush=True)
    a, b = outs["before"], outs["now"]
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, tuple):
            assert all(np.array_equal(p, q) for p, q in zip(x, y, strict=True)), key
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), key
        else:
            assert np.array_equal(x.ids, y.ids), key
    print("same statistics")
    ab_setup.report(times)


if __name__ == "__main__":
    main()

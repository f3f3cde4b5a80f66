"""Benchmark of the synthetic data generator.

    python bench/bench_generate.py --preset full10 --out /tmp/full10
    python bench/bench_generate.py --preset tiny demo --out /tmp/gen --clean

Generates each preset into `<out>/<preset>` (or `<out>` for a single preset) and prints a
table: rows, users, tracks, wall and CPU seconds, peak RSS (sampled by a psutil thread over
this process and its children, and the kernel's ru_maxrss) and the size of the files.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicrec.generate import PRESETS, generate_dataset  # noqa: E402


class PeakRss:
    """Samples the resident set size of this process and its children in a thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._proc = psutil.Process()

    def _sample(self) -> None:
        rss = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # the child may have exited
                rss += child.memory_info().rss
        self.peak = max(self.peak, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def bench(preset: str, out: Path, seed: int) -> dict[str, Any]:
    proc = psutil.Process()
    cpu0 = sum(proc.cpu_times()[:2])
    t0 = time.perf_counter()
    with PeakRss() as rss:
        stats = generate_dataset(preset, seed=seed, out_dir=out, overwrite=True)
    return {
        "preset": preset,
        "rows": stats["rows"],
        "users": stats["users"],
        "tracks": stats["tracks"],
        "wall_s": time.perf_counter() - t0,
        "cpu_s": sum(proc.cpu_times()[:2]) - cpu0,
        "peak_rss_gib": rss.peak / 2**30,
        # the kernel's figure is the process's peak so far: for the second preset of one
        # run it is the larger of the two (psutil's `peak_rss_gib` is per preset)
        "maxrss_gib": stats["peak_rss_gib"],
        "files_gib": stats["bytes"] / 2**30,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [
        ("preset", "{}", 8),
        ("rows", "{:,}", 13),
        ("users", "{:,}", 11),
        ("tracks", "{:,}", 11),
        ("wall_s", "{:.1f}", 8),
        ("cpu_s", "{:.1f}", 8),
        ("peak_rss_gib", "{:.2f}", 13),
        ("maxrss_gib", "{:.2f}", 11),
        ("files_gib", "{:.3f}", 10),
    ]
    print(" ".join(f"{name:>{w}}" for name, _, w in cols))
    for r in rows:
        print(" ".join(f"{fmt.format(r[name]):>{w}}" for name, fmt, w in cols))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["demo"], choices=sorted(PRESETS))
    ap.add_argument("--out", type=Path, required=True, help="Output directory (not the repo)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--clean", action="store_true", help="Delete the generated files after")
    args = ap.parse_args(argv)
    rows = []
    for preset in args.preset:
        out = args.out if len(args.preset) == 1 else args.out / preset
        rows.append(bench(preset, out, args.seed))
        if args.clean:
            shutil.rmtree(out)
    print_table(rows)
    if len(rows) > 1:
        print("maxrss_gib is the process's peak so far (each preset: run it alone for its own)")


if __name__ == "__main__":
    main()

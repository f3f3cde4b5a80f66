"""Summarise py-spy collapsed stacks (`py-spy record --format raw`, or `bench_serve.py
--profile DIR`): the share of samples spent in each package (inclusive, a sample counts
once per package on its stack) and the functions with the most samples on top of the stack.

    python bench/profile_summary.py /tmp/prof/recs_online_recommendations.txt [--top 15]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def package(path: str) -> str:
    """The top-level package of a frame's file. py-spy shortens paths to the import path
    (`uvicorn/server.py`, `asyncio/runners.py`); full paths are cut at `site-packages/`,
    other absolute paths give their file name."""
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/musicrec/" in path:
        return "musicrec"
    elif path.startswith("/"):
        return Path(path).name.removesuffix(".py")
    return path.split("/", 1)[0].removesuffix(".py")


def summarise(path: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [_FRAME.match(f) for f in stack.split(";")]
        seen = {package(m["file"]) for m in frames if m}
        for pkg in seen:
            inclusive[pkg] += count
        last = next((m for m in reversed(frames) if m), None)
        if last:
            leaf[f"{last['func']} ({package(last['file'])})"] += count
    if not total:
        return f"{path}: no samples"
    out = [f"{path}  ({total} samples)", "  inclusive by package:"]
    out += [f"    {100 * n / total:5.1f}%  {pkg}" for pkg, n in inclusive.most_common(top)]
    out.append("  top of stack:")
    out += [f"    {100 * n / total:5.1f}%  {f}" for f, n in leaf.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    for f in args.files:
        print(summarise(f, args.top))


if __name__ == "__main__":
    main()

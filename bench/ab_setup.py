"""Shared set-up of the in-process A/B scripts (`candidates_ab.py`, `features_ab.py`): the
command line and the first stage loaded from existing full10 artifacts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path("/tmp/musicrec-bench/full10")


def parser(doc: str | None) -> argparse.ArgumentParser:
    """`--artifacts-dir`, `--data-dir`, `--config`, `--users`, `--repeats`."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--artifacts-dir", type=Path, default=BENCH / "recsys")
    ap.add_argument("--data-dir", type=Path, default=BENCH / "data")
    ap.add_argument("--config", type=Path, default=ROOT / "bench" / "configs" / "full.toml")
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    return ap


def load_first_stage(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """`(config, pipeline context, first stage)` from the artifacts of `args`."""
    from musicrec.artifacts import ArtifactPaths
    from musicrec.config import load_config
    from musicrec.pipeline import PipelineContext, StageCache

    cfg = load_config(args.config)
    paths = ArtifactPaths(args.artifacts_dir)
    ctx = PipelineContext(args.data_dir, paths, cfg, StageCache(paths.cache_dir))
    return cfg, ctx, ctx.first_stage()


def report(times: dict[str, list[float]]) -> None:
    """Each version's times and median, then the ratio first / second version."""
    import statistics

    for name, ts in times.items():
        runs = " ".join(f"{t:6.2f}" for t in ts)
        print(f"  {name:18s} {runs} s   median {statistics.median(ts):.2f} s")
    base, new = (statistics.median(v) for v in times.values())
    print(f"  ratio {base / new:.2f}x")

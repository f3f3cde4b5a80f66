"""Memory and time of the ranker's inference (every user's candidates, features, CatBoost
scores, top-k written batch by batch) on existing artifacts, without training a ranker.

The pipeline's ranker stage first trains (a second ALS fit on the label history, the
label candidates, CatBoost), which takes most of an hour at the full size; the part that
ran out of memory on 2026-12-02 is what follows, scoring every user. This script loads
the first stage exactly as the pipeline does (`PipelineContext.first_stage`: the test
split, the history matrix, the saved ALS model, the similar tracks and the ALS lists) and
runs the pipeline's own `write_ranked` on the first `--batches` user batches:

    python bench/ranker_inference.py --artifacts-dir /tmp/musicrec-bench/full/recsys \\
        --config bench/configs/full.toml --batches 8

The ranker is `model/ranker.cbm` when it exists; otherwise a stand-in (`--stand-in`): a
CatBoost model with the pipeline's settings fit on 30,000 rows of the first batch with
"in the ALS top 10" as the label. Its scores are meaningless; its size and prediction cost
are those of a real ranker (same features, depth and iterations). The resident set is
sampled every 0.2 s; the table gives each step and each batch, and the time per user is
extrapolated to every user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from bench_pipeline import PeakRss, machine, smoke_config  # noqa: E402

from musicrec.memory import rss_gib  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def stand_in_ranker(ctx: Any, stage: Any, users: np.ndarray) -> Any:
    """A CatBoost ranker with the pipeline's settings fit on rows of `users`' candidates,
    labelled "in the user's ALS top 10" (scores meaningless; cost realistic)."""
    from musicrec.candidates import generate_candidates
    from musicrec.features import collect_features
    from musicrec.ranker import TARGET, Ranker, sample_training_rows

    cand = generate_candidates(stage, users, ctx.cfg.ranker)
    feats = collect_features(stage, ctx.prepared.items, cand, ctx.cfg.ranker)
    feats[TARGET] = (feats["als_rank"] <= 10).astype(np.int8)
    rows = sample_training_rows(feats, 30, 1_000, ctx.cfg.ranker.random_seed)
    return Ranker.fit(rows, ctx.cfg.ranker)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from musicrec.artifacts import ArtifactPaths
    from musicrec.config import load_config
    from musicrec.pipeline import PipelineContext, StageCache, write_ranked
    from musicrec.ranker import Ranker

    cfg = smoke_config() if args.smoke else load_config(args.config)
    paths = ArtifactPaths(args.artifacts_dir)
    ctx = PipelineContext(args.artifacts_dir, paths, cfg, StageCache(paths.cache_dir, False))
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "artifacts_dir": str(args.artifacts_dir),
        "steps": [],
    }

    def step(name: str, fn: Any) -> Any:
        with PeakRss() as peak:
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
        rec = {"step": name, "s": round(dt, 1), "rss_after_gib": round(rss_gib(), 2)}
        rec["peak_gib"] = round(peak.peak / 2**30, 2)
        result["steps"].append(rec)
        print(
            f"[inference] {name:<34} {dt:8.1f} s  RSS {rec['rss_after_gib']:6.2f} GiB  "
            f"peak {rec['peak_gib']:6.2f} GiB",
            flush=True,
        )
        return out

    stage = step("first stage (split, matrix, lists)", ctx.first_stage)
    all_users = stage.matrix.users.ids
    batch = cfg.ranker.inference_batch_users
    from musicrec.features import _history_stats

    step(
        "history statistics",
        lambda: _history_stats(stage, ctx.prepared.items, cfg.ranker.recent_days),
    )
    model_path = paths.model_dir / "ranker.cbm"
    if model_path.exists() and not args.stand_in:
        ranker = step("load ranker.cbm", lambda: Ranker.load(model_path))
        result["ranker"] = str(model_path)
    else:
        ranker = step(
            "stand-in ranker (CatBoost fit)", lambda: stand_in_ranker(ctx, stage, all_users[:5_000])
        )
        result["ranker"] = "stand-in"
    n_batches = min(args.batches, -(-len(all_users) // batch))
    users = all_users[: n_batches * batch]
    with tempfile.TemporaryDirectory(prefix="ranker_inference_") as tmp:
        out = Path(tmp) / "recommendations.parquet"
        written = step(
            f"score {len(users):,} users ({n_batches} batches)",
            lambda: write_ranked(ctx, ranker, stage, users, out),
        )
    scoring = result["steps"][-1]
    per_user = scoring["s"] / max(len(users), 1)
    result.update(
        users_total=int(len(all_users)),
        users_scored=int(len(users)),
        batch_users=batch,
        written=written,
        seconds_per_1k_users=round(1000 * per_user, 2),
        extrapolated_all_users_s=round(per_user * len(all_users), 0),
        peak_rss_gib=round(max(s["peak_gib"] for s in result["steps"]), 2),
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--artifacts-dir", type=Path, required=True, help="A pipeline's artifacts")
    ap.add_argument("--config", type=Path, help="The pipeline config the artifacts were made with")
    ap.add_argument("--batches", type=int, default=8, help="User batches to score (8)")
    ap.add_argument("--stand-in", action="store_true", help="Ignore model/ranker.cbm")
    ap.add_argument(
        "--smoke", action="store_true", help="bench_pipeline.py --smoke's config (tests)"
    )
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from musicrec.logs import setup_logging

    setup_logging("INFO")  # the pipeline's own lines: one per user batch, memory releases
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=1), flush=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.results_dir / f"ranker_inference_{stamp}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

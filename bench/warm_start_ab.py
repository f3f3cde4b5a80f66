"""The served ALS warm-started from the label-window ALS against a fit from random factors.

    python bench/warm_start_ab.py --preset full10 --config bench/configs/full.toml --iterations 3 5
    python bench/warm_start_ab.py --data-dir ../shared/datasets/lastfm-hetrec2k \\
        --config configs/lastfm.toml --iterations 3 5

Runs the pipeline once with `als.warm_start_iterations = None` (the served ALS fit from
random factors with `als.iterations`), then, for each N of `--iterations`, on a copy of
those artifacts with `warm_start_iterations = N`: the stage cache reuses every stage up to
the label-window ALS, and recomputes ALS, similar tracks, the ranker and the evaluation.
Prints per variant the ALS stage's wall time and its ALS fit's, NDCG@10 and Recall@5 of
ALS and of the ranker (warm test users), and the paired difference of each against the
cold run (same users; `musicrec.metrics.paired_difference`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from musicrec.columns import Columns as C  # noqa: E402


def run_variant(
    data_dir: Path, root: Path, cfg: Any, warm: int | None
) -> tuple[dict[str, Any], float]:
    """Run the pipeline into `root` with `warm_start_iterations = warm`; its metrics and
    the wall seconds of the served ALS fit."""
    from musicrec.als import ALSModel
    from musicrec.pipeline import run_pipeline

    cfg = cfg.model_copy(update={"als": cfg.als.model_copy(update={"warm_start_iterations": warm})})
    fit_seconds: list[float] = []
    orig = ALSModel.__dict__["fit"]  # the classmethod itself, put back afterwards
    real = ALSModel.fit

    def timed(matrix: Any, c: Any, *args: Any, **kwargs: Any) -> ALSModel:
        t0 = time.perf_counter()
        out = real(matrix, c, *args, **kwargs)
        if "init" in kwargs:  # only the ALS stage passes a starting model (or None)
            fit_seconds.append(time.perf_counter() - t0)
        return out

    setattr(ALSModel, "fit", timed)  # noqa: B010 (a plain function: called with (matrix, cfg))
    try:
        metrics = run_pipeline(data_dir, root, cfg, progress=False)
    finally:
        setattr(ALSModel, "fit", orig)  # noqa: B010
    return metrics, fit_seconds[0]


def per_user(root: Path, data_dir: Path, cfg: Any) -> dict[str, pd.DataFrame]:
    """Per-user NDCG@10 / Recall@5 of ALS and the ranker of the run in `root`."""
    from musicrec.artifacts import ArtifactPaths
    from musicrec.evaluation import read_top
    from musicrec.metrics import per_user_metrics
    from musicrec.pipeline import PipelineContext, StageCache

    paths = ArtifactPaths(root)
    ctx = PipelineContext(data_dir, paths, cfg, StageCache(paths.cache_dir))
    test = ctx.test
    warm = np.intersect1d(test.window_events[C.User].unique(), test.history[C.User].unique())
    e = cfg.eval
    kmax = max(e.k_precision, e.k_ndcg)
    return {
        name: per_user_metrics(
            read_top(path, kmax), test.window_events, None, e.k_precision, e.k_ndcg, warm
        )
        for name, path in (("als", paths.personal_als), ("ranker", paths.recommendations))
    }


def main() -> None:
    from bench_pipeline import smoke_config

    from musicrec.config import load_config
    from musicrec.generate import ensure_raw_data
    from musicrec.logs import setup_logging
    from musicrec.metrics import paired_difference

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="full10", help="generated into --data-dir if empty")
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--config", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/musicrec-warm-ab"))
    ap.add_argument("--iterations", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--smoke", action="store_true", help="tiny models (for the test suite)")
    args = ap.parse_args()
    setup_logging("WARNING")
    data_dir = args.data_dir or Path("/tmp/musicrec-bench") / args.preset / "data"
    ensure_raw_data(data_dir, preset=args.preset)
    cfg = load_config(args.config) if args.config else (smoke_config() if args.smoke else None)
    cfg = cfg or load_config(None)
    base_iterations = cfg.als.iterations

    rows, users = [], {}
    for warm in [None, *args.iterations]:
        root = args.work / ("cold" if warm is None else f"warm{warm}")
        if root.exists():
            shutil.rmtree(root)
        if warm is not None:  # the cold run's artifacts: only ALS and what follows rerun
            shutil.copytree(args.work / "cold", root)
        metrics, served_fit = run_variant(data_dir, root, cfg, warm)
        stage_s = metrics["stage_seconds"]
        users[warm] = per_user(root, data_dir, cfg)
        rows.append(
            {
                "served ALS": f"{base_iterations} cold" if warm is None else f"{warm} warm",
                "als stage s": stage_s["als"],
                "als fit s": served_fit,
                "ALS ndcg@10": metrics["warm"]["als"]["ndcg@10"]["mean"],
                "ALS recall@5": metrics["warm"]["als"]["recall@5"]["mean"],
                "ranker ndcg@10": metrics["warm"]["ranker"]["ndcg@10"]["mean"],
                "ranker recall@5": metrics["warm"]["ranker"]["recall@5"]["mean"],
                "users": metrics["warm"]["als"]["ndcg@10"]["n_users"],
            }
        )
    table = pd.DataFrame(rows).set_index("served ALS")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    print("\npaired difference against the cold run (mean ± stderr over the same users):")
    for warm in args.iterations:
        diffs = {
            f"{model} {col}": paired_difference(users[warm][model][col], users[None][model][col])
            for model in ("als", "ranker")
            for col in ("ndcg@10", "recall@5")
        }
        cells = ", ".join(
            f"{k} {v['mean']:+.4f} ± {v['stderr'] or 0:.4f}" for k, v in diffs.items()
        )
        print(f"  {warm} warm: {cells}")
    out = args.work / "warm_start_ab.json"
    out.write_text(json.dumps({"rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()

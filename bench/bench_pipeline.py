"""Offline benchmark: the whole pipeline on a generated preset, stage by stage.

    python bench/bench_pipeline.py                      # full10 (10% of the real size)
    python bench/bench_pipeline.py --preset full        # the real size (222.6M events)
    python bench/bench_pipeline.py --preset tiny --smoke

Generates the preset into `--data-dir` if its raw files are missing, runs `run_pipeline`
(every user, no sampling, `force=True`) and records per stage: wall and CPU seconds, peak
RSS (sampled by a psutil thread every 0.2 s; this process and its children) and rows in and
out. Inside the stages, the main library calls (ALS fits, scoring, candidates, features,
CatBoost) are timed too. Then it fits bare `implicit` ALS on the same matrix as the
pipeline's final ALS fit (same factors, iterations, threads) and prints the ratios.

The table is printed and written to `bench/results/pipeline_<preset>_<utc time>.{txt,json}`.
While the run goes, the stages done so far are kept in
`bench/results/pipeline_<preset>_in_progress.json` (removed at the end), so a run the OOM
killer ends still leaves its per-stage figures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import platform
import shutil
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit runs its own threads
os.environ.setdefault("MKL_NUM_THREADS", "1")

import psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
TARGET_WALL_S = 45 * 60  # full preset: the whole pipeline
TARGET_RSS_GIB = 16.0
TARGET_ALS_RATIO = 1.1


# ---------------------------------------------------------------------------- sampling
class PeakRss:
    """Samples the RSS of this process and its children in a thread; `peak` in bytes."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._proc = psutil.Process()

    def sample(self) -> int:
        rss = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # the child may have exited
                rss += child.memory_info().rss
        self.peak = max(self.peak, rss)
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def cpu_seconds() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


@contextlib.contextmanager
def measured(out: dict[str, Any]) -> Iterator[None]:
    """Fill `out` with wall_s, cpu_s, rss_start_gib and peak_rss_gib of the block."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    with PeakRss() as rss:
        out["rss_start_gib"] = rss.sample() / 2**30
        try:
            yield
        finally:
            pass
    out["wall_s"] = time.perf_counter() - t0
    out["cpu_s"] = cpu_seconds() - cpu0
    out["peak_rss_gib"] = rss.peak / 2**30


# ---------------------------------------------------------------------------- call timing
class CallTimer:
    """Wraps library functions to add up their wall time per (stage, call name)."""

    def __init__(self) -> None:
        self.stage = "-"
        self.totals: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.details: list[dict[str, Any]] = []
        self._undo: list[tuple[Any, str, Any]] = []
        self._depth = 0

    def wrap(
        self, label: str, fn: Callable[..., Any], detail: Callable[..., Any] | None = None
    ) -> Callable[..., Any]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            t0, c0 = time.perf_counter(), cpu_seconds()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self._depth -= 1
                self.totals[(self.stage, label)].append(dt)
                if detail is not None:
                    rec = {"stage": self.stage, "call": label, "s": dt, "cpu_s": cpu_seconds() - c0}
                    self.details.append({**rec, **detail(*args, **kwargs)})

        return inner

    def patch(self, owner: Any, attr: str, label: str, detail: Any = None) -> None:
        orig = owner.__dict__[attr]
        if isinstance(orig, classmethod):
            new: Any = classmethod(self.wrap(label, orig.__func__, detail))
        else:
            new = self.wrap(label, orig, detail)
        setattr(owner, attr, new)
        self._undo.append((owner, attr, orig))

    def patch_function(self, module_name: str, attr: str, label: str) -> None:
        """Patch `attr` in its module and in every musicrec module that imported it by name."""
        orig = getattr(sys.modules[module_name], attr)
        new = self.wrap(label, orig)
        for name, mod in list(sys.modules.items()):
            if (name == "musicrec" or name.startswith("musicrec.")) and getattr(
                mod, attr, None
            ) is orig:
                setattr(mod, attr, new)
                self._undo.append((mod, attr, orig))

    def restore(self) -> None:
        for owner, attr, orig in reversed(self._undo):
            setattr(owner, attr, orig)
        self._undo.clear()


def instrument(timer: CallTimer) -> None:
    import musicrec.pipeline  # noqa: F401  (imports every stage module)
    from musicrec.als import ALSModel
    from musicrec.ranker import Ranker

    def fit_detail(
        cls: Any,
        matrix: Any,
        cfg: Any,
        num_threads: int = 0,
        overrides: Any = None,
        init: Any = None,
        iterations: Any = None,
    ) -> dict[str, Any]:
        return {
            "shape": list(matrix.shape),
            "nnz": int(matrix.csr.nnz),
            "overrides": overrides,
            "iterations": cfg.iterations if iterations is None else iterations,
            "warm_start": init is not None,
        }

    timer.patch(ALSModel, "fit", "ALSModel.fit", fit_detail)
    timer.patch(ALSModel, "recommend", "ALSModel.recommend")
    timer.patch(Ranker, "fit", "Ranker.fit (CatBoost)")
    timer.patch(Ranker, "predict", "Ranker.predict")
    for mod, attr in (
        ("musicrec.prepare", "prepare_data"),
        ("musicrec.matrix", "seen_mask"),
        ("musicrec.popular", "recommend_popular"),
        ("musicrec.similar", "similar_tracks"),
        ("musicrec.candidates", "similar_to_latest"),
        ("musicrec.candidates", "generate_candidates"),
        ("musicrec.features", "collect_features"),
        ("musicrec.ranker", "label_candidates"),
        ("musicrec.ranker", "rank_candidates"),
        ("musicrec.metrics", "evaluate"),
        ("musicrec.metrics", "ndcg_at_k"),
    ):
        __import__(mod)
        timer.patch_function(mod, attr, attr)


# ---------------------------------------------------------------------------- rows
def parquet_rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows if path.exists() else None


def stage_rows(name: str, info: dict[str, Any], data_dir: Path, paths: Any) -> tuple[Any, Any]:
    """(rows in, rows out) of a stage, from its info and the files it read/wrote."""
    from musicrec.columns import RawFiles

    events = parquet_rows(paths.events)
    sp = info.get("split", {})
    if name == "prepare":
        return parquet_rows(data_dir / RawFiles.Interactions), events
    if name == "eda":
        return events, len(info.get("pictures", []))
    if name == "split":
        return events, f"{sp.get('history_rows', 0):,} + {sp.get('test_rows', 0):,}"
    if name in ("top_popular", "als"):
        return "history", info.get("rows")
    if name == "als_label":
        return "label history", f"{info.get('users', 0):,} users"
    if name == "similar":
        return f"{info.get('tracks', 0):,} tracks", info.get("rows")
    if name == "ranker":
        return f"{info.get('candidates', 0):,} cand", info.get("rows")
    if name == "evaluate":
        return parquet_rows(paths.recommendations), "metrics"
    return None, info.get("rows")


# ---------------------------------------------------------------------------- bare ALS
def bare_als_fit(artifacts: Path, cfg: Any, als_params: dict[str, Any]) -> dict[str, Any]:
    """Fit implicit's ALS directly on the matrix of the pipeline's final fit (the history
    before the test window), with the chosen factors/regularization/alpha."""
    import numpy as np
    import pandas as pd
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from musicrec.artifacts import ArtifactPaths
    from musicrec.columns import Columns as C
    from musicrec.matrix import InteractionMatrix
    from musicrec.split import split_by_time

    paths = ArtifactPaths(artifacts)
    events = pd.read_parquet(paths.events, columns=[C.User, C.Item, C.Datetime])
    hist = split_by_time(events, cfg.split.test_start, cfg.split.test_share).history
    matrix = InteractionMatrix.from_events(hist)
    del events, hist
    csr = matrix.csr
    res: dict[str, Any] = {"shape": list(csr.shape), "nnz": int(csr.nnz), **als_params}
    model = AlternatingLeastSquares(
        factors=int(als_params["factors"]),
        regularization=float(als_params["regularization"]),
        alpha=float(als_params["alpha"]),
        iterations=cfg.als.iterations,
        random_state=cfg.als.random_state,
        dtype=np.float32,
        num_threads=0,
    )
    with measured(res), threadpool_limits(1, "blas"):
        model.fit(csr, show_progress=False)
    res["s_per_iteration"] = res["wall_s"] / cfg.als.iterations
    return res


# ---------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(),
        "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def fmt(v: Any, spec: str = "{:,}") -> str:
    if v is None:
        return "-"
    if isinstance(v, int | float) and not isinstance(v, bool):
        return spec.format(v)
    return str(v)


def render(result: dict[str, Any]) -> str:
    lines = []
    m = result["machine"]
    lines.append(
        f"bench_pipeline  preset={result['preset']}  {result['date']}  "
        f"{m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB  "
        f"(load avg at start {m['load_avg_1m']}, end {result.get('load_avg_end', '-')}; "
        "the cores are shared with other jobs)"
    )
    if result.get("smoke"):
        lines.append("SMOKE RUN: tiny settings, timings are meaningless")
    lines.append("")
    head = f"{'stage':<12} {'wall s':>9} {'cpu s':>9} {'cpu/wall':>8} {'peak RSS GiB':>12} "
    lines.append(head + f"{'rows in':>18} {'rows out':>24}")
    for s in result["stages"]:
        ratio = s["cpu_s"] / s["wall_s"] if s["wall_s"] > 0 else 0.0
        lines.append(
            f"{s['stage']:<12} {s['wall_s']:>9.1f} {s['cpu_s']:>9.1f} {ratio:>8.2f} "
            f"{s['peak_rss_gib']:>12.2f} {fmt(s['rows_in']):>18} {fmt(s['rows_out']):>24}"
        )
    t = result["total"]
    lines.append(
        f"{'TOTAL':<12} {t['wall_s']:>9.1f} {t['cpu_s']:>9.1f} "
        f"{t['cpu_s'] / max(t['wall_s'], 1e-9):>8.2f} {t['peak_rss_gib']:>12.2f}"
    )
    lines.append("")
    lines.append("time inside stages (library calls; nested calls counted in each):")
    for c in result["calls"]:
        lines.append(f"  {c['stage']:<12} {c['call']:<26} {c['n']:>5} calls {c['s']:>9.1f} s")
    lines.append("")
    b = result.get("bare_als")
    if b:
        fits = [d for d in result["als_fits"] if d["stage"] == "als" and not d["overrides"]]
        final_fit = fits[-1]["s"] if fits else float("nan")
        final_cpu = fits[-1].get("cpu_s", float("nan")) if fits else float("nan")
        als_stage = next(s["wall_s"] for s in result["stages"] if s["stage"] == "als")
        lines.append(
            f"bare implicit ALS fit: {b['wall_s']:.1f} s ({b['s_per_iteration']:.2f} s/iteration; "
            f"{b['shape'][0]:,} x {b['shape'][1]:,}, {b['nnz']:,} nnz, factors {b['factors']}, "
            f"peak RSS {b['peak_rss_gib']:.2f} GiB)"
        )
        start = "?"
        if fits:
            its = fits[-1].get("iterations", "?")
            warm = fits[-1].get("warm_start")
            start = f"{its} iterations from the label-window ALS" if warm else f"{its} iterations"
        lines.append(
            f"pipeline ALS stage: {als_stage:.1f} s = {als_stage / b['wall_s']:.2f}x the bare fit "
            f"(target <= {TARGET_ALS_RATIO}x); its final fit alone ({start}) {final_fit:.1f} s "
            f"= {final_fit / b['wall_s']:.2f}x"
        )
        label = next((s["wall_s"] for s in result["stages"] if s["stage"] == "als_label"), None)
        if label is not None:
            # the warm start moves most of the served fit's iterations into als_label: the
            # two stages together are what the served model costs from scratch
            lines.append(
                f"als_label + als stages: {label + als_stage:.1f} s = "
                f"{(label + als_stage) / b['wall_s']:.2f}x the bare fit (two fits, on the "
                "history before the label window and before the test window, + the top-n)"
            )
        lines.append(
            f"CPU seconds: bare fit {b['cpu_s']:.1f}, pipeline's final fit {final_cpu:.1f} = "
            f"{final_cpu / max(b['cpu_s'], 1e-9):.2f}x (steadier than wall time on shared cores)"
        )
    lines.append(
        f"targets (full preset): whole pipeline {t['wall_s'] / 60:.1f} min (<= 45), "
        f"peak RSS {t['peak_rss_gib']:.2f} GiB (<= {TARGET_RSS_GIB:.0f})"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def smoke_config() -> Any:
    """Small settings so the tiny preset runs in seconds."""
    from musicrec.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "als": {
                "iterations": 3,
                "factors_grid": [8],
                "regularization_grid": [0.01],
                "alpha_grid": [5.0],
                "factors": 8,
            },
            "ranker": {"iterations": 10, "loss_function": "Logloss"},
        }
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from musicrec.artifacts import ArtifactPaths
    from musicrec.config import load_config
    from musicrec.generate import ensure_raw_data
    from musicrec.pipeline import run_pipeline

    data_dir = args.data_dir or Path("/tmp/musicrec-bench") / args.preset / "data"
    artifacts = args.artifacts_dir or Path("/tmp/musicrec-bench") / args.preset / "recsys"
    cfg = load_config(args.config) if args.config else (smoke_config() if args.smoke else None)
    if cfg is None:
        cfg = load_config(None)
    result: dict[str, Any] = {
        "preset": args.preset,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "smoke": args.smoke,
        "config": cfg.model_dump(mode="json"),
        "data_dir": str(data_dir),
        "artifacts_dir": str(artifacts),
    }
    gen: dict[str, Any] = {}
    with measured(gen):
        generated = ensure_raw_data(data_dir, preset=args.preset)
    result["generate"] = {**gen, "generated": generated}

    timer = CallTimer()
    instrument(timer)
    stages: list[dict[str, Any]] = []
    paths = ArtifactPaths(artifacts)
    progress = progress_path(args.results_dir, args.preset, args.smoke)

    def on_stage(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        timer.stage = name
        rec: dict[str, Any] = {"stage": name}
        with measured(rec):
            info = fn()
        rec["rows_in"], rec["rows_out"] = stage_rows(name, info, data_dir, paths)
        stages.append(rec)
        print(
            f"[bench] {name:<12} {rec['wall_s']:8.1f} s wall {rec['cpu_s']:8.1f} s cpu "
            f"peak {rec['peak_rss_gib']:.2f} GiB",
            flush=True,
        )
        # the stages so far, in case the run dies (the OOM killer leaves no traceback)
        write_json_atomic(progress, {**result, "complete": False, "stages": stages})
        return info

    total: dict[str, Any] = {}
    try:
        with measured(total):
            metrics = run_pipeline(
                data_dir, artifacts, cfg, force=True, progress=False, on_stage=on_stage
            )
    finally:
        timer.restore()
    result["stages"] = stages
    result["total"] = total
    result["calls"] = [
        {"stage": st, "call": call, "n": len(v), "s": sum(v)}
        for (st, call), v in timer.totals.items()
    ]
    result["als_fits"] = [d for d in timer.details if d["call"] == "ALSModel.fit"]
    result["als_params"] = metrics["als_params"]
    result["warm_metrics"] = metrics.get("warm")
    if not args.no_bare_als:
        result["bare_als"] = bare_als_fit(artifacts, cfg, metrics["als_params"])
    result["load_avg_end"] = round(os.getloadavg()[0], 2)
    return result


def progress_path(results_dir: Path, preset: str, smoke: bool) -> Path:
    """Where the stages done so far are kept while a run is going (removed at its end)."""
    return results_dir / f"pipeline_{preset}{'_smoke' if smoke else ''}_in_progress.json"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def write_results(
    results_dir: Path, name: str, smoke: bool, table: str, result: dict[str, Any]
) -> Path:
    """Write the table (.txt) and the raw figures (.json) under a time-stamped name."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = results_dir / f"{name}{'_smoke' if smoke else ''}_{stamp}"
    base.with_suffix(".txt").write_text(table + "\n")
    base.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"written {base}.txt / .json")
    return base


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="full10", choices=["tiny", "demo", "full10", "full"])
    ap.add_argument("--data-dir", type=Path, help="Raw data (generated if missing)")
    ap.add_argument("--artifacts-dir", type=Path, help="Default /tmp/musicrec-bench/<preset>")
    ap.add_argument("--config", type=Path, help="Pipeline config TOML/YAML (default: defaults)")
    ap.add_argument("--smoke", action="store_true", help="Tiny ALS/CatBoost settings (tests)")
    ap.add_argument("--no-bare-als", action="store_true", help="Skip the bare implicit fit")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--clean", action="store_true", help="Delete the artifacts afterwards")
    ap.add_argument("-v", "--verbose", action="store_true", help="Show the pipeline's log")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    result = run(args)
    table = render(result)
    print(table, flush=True)
    write_results(args.results_dir, f"pipeline_{args.preset}", args.smoke, table, result)
    progress_path(args.results_dir, args.preset, args.smoke).unlink(missing_ok=True)
    if args.clean:
        shutil.rmtree(result["artifacts_dir"], ignore_errors=True)
    return result


if __name__ == "__main__":
    main()

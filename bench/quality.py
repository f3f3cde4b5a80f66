"""Quality report: run the pipeline on the shared data sets and the demo preset, print the
metrics as a markdown table (mean ± standard error, users averaged over).

    python bench/quality.py                      # all three data sets
    python bench/quality.py --only lastfm        # one of them
    python bench/quality.py --report-only        # tables from existing runs
    python bench/quality.py --force              # recompute every stage

Artifacts go to /tmp/musicrec-quality/<name>; the table to bench/results/quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from musicrec.config import load_config  # noqa: E402
from musicrec.logs import setup_logging  # noqa: E402
from musicrec.metrics import metrics_table  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
RUNS = {
    # name: (data dir, config file, generate preset if the data dir is empty)
    "lastfm": (SHARED / "lastfm-hetrec2k", ROOT / "configs" / "lastfm.toml", None),
    "movielens": (SHARED / "ml-latest-small", ROOT / "configs" / "movielens.toml", None),
    "demo": (Path("/tmp/musicrec-quality/demo-data"), None, "demo"),
}
COLUMNS = [
    "precision@5",
    "recall@5",
    "ndcg@10",
    "map@10",
    "coverage@5",
    "novelty_unseen@5",
    "mean_inverse_user_frequency@5",
    "n_users",
]


def run(name: str, out: Path, force: bool) -> dict:
    from musicrec.generate import ensure_raw_data
    from musicrec.pipeline import run_pipeline

    data_dir, config, preset = RUNS[name]
    if preset:
        ensure_raw_data(data_dir, preset=preset)
    return run_pipeline(data_dir, out, load_config(config), force=force, progress=False)


def table(name: str, metrics: dict) -> str:
    results = {f"warm/{k}": v for k, v in metrics["warm"].items()}
    results |= {f"cold/{k}": v for k, v in metrics["cold"].items()}
    t = metrics_table(results)
    t = t[[c for c in COLUMNS if c in t.columns]]
    split = metrics["split"]
    cand = metrics["candidates"]
    head = (
        f"**{name}**: test window from {split['test_start']} "
        f"({split['test_rows']:,} events; {split['test_warm_users']:,} warm and "
        f"{split['test_cold_users']:,} cold users); ALS {metrics['als_params']}; "
        f"candidate recall on the test window {cand['test_candidate_recall']:.3f} "
        f"({cand['candidates_per_user']:.0f} candidates per user)\n\n"
    )
    lines = markdown(t, "model")
    comp = metrics.get("comparisons") or {}
    if comp:
        lines += ["", "Paired differences over the same warm users (mean ± paired stderr):", ""]
        lines += markdown(metrics_table(comp), "comparison")
    return head + "\n".join(lines) + "\n"


def markdown(t: pd.DataFrame, index_name: str) -> list[str]:
    """`t` (index = row names) as the lines of a markdown table."""
    cols = [index_name, *t.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, row in t.iterrows():
        lines.append("| " + " | ".join([str(name), *map(str, row.tolist())]) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", choices=sorted(RUNS))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--force", action="store_true", help="recompute every stage")
    ap.add_argument("--out", type=Path, default=Path("/tmp/musicrec-quality"))
    args = ap.parse_args()
    setup_logging("INFO")
    parts = []
    for name in [args.only] if args.only else list(RUNS):
        out = args.out / name
        if args.report_only:
            metrics = json.loads((out / "metrics.json").read_text())
        else:
            metrics = run(name, out, args.force)
        parts.append(table(name, metrics))
    text = "\n".join(parts)
    print(text)
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    # one data set's run must not replace the other tables: it writes its own file
    (res / (f"quality_{args.only}.md" if args.only else "quality.md")).write_text(text)


if __name__ == "__main__":
    main()

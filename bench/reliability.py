"""`make reliability`: run the long reliability suite and print its table.

    python bench/reliability.py              # long suite (~3 min), table, docs updated
    python bench/reliability.py --short      # the short suite `make test` runs (~1 min)
    python bench/reliability.py -- -k crash  # extra pytest arguments after `--`

Runs `python -m pytest tests/reliability [--long]` with `MUSICREC_RELIABILITY_RESULTS`
pointing at `bench/results/reliability.json`, where the tests record what they measured
(see tests/reliability/conftest.py), then prints the table: cases tried, failures, events
acknowledged vs found, requests, 5xx, RSS before/after. The table of a whole long run is
also written to `bench/results/reliability.md` and between the markers of
`docs/reliability.md`; a short or partial run writes `reliability-short[-partial].md` /
`reliability-partial.md` instead. The exit code is pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "reliability.md"
START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"

PARTS = [
    ("fuzz", "Fuzzing (schemathesis, 3 services)"),
    ("crash", "Crash (SIGKILL under write load)"),
    ("dependencies", "Dependencies stopped / slow"),
    ("load", "Load (50 connections)"),
    ("bad_data", "Bad data (pipeline entry point)"),
    ("bad_artifacts", "Bad artifacts (service start-up)"),
    ("security", "Security defaults"),
]


def fmt(n: Any) -> str:
    if n is None or n == "":
        return ""
    if isinstance(n, float):
        return f"{n:,.2f}"
    if isinstance(n, int):
        return f"{n:,}"
    return str(n)


def rss_cell(p: dict[str, Any]) -> str:
    before, after = p.get("rss_before_mib"), p.get("rss_after_mib")
    if not before or not after:
        return ""
    short = {"recommendations": "recs", "similar": "similar", "events": "events"}
    return ", ".join(f"{short.get(k, k)} {before[k]:.0f} → {after[k]:.0f}" for k in before)


def notes(part: str, p: dict[str, Any]) -> str:
    if part == "fuzz":
        per = p.get("per_service", {})
        cells = [f"{k} {v['requests']:,}" for k, v in sorted(per.items())]
        rejected = sum(v.get("rejected_4xx", 0) for v in per.values())
        return "requests per service: " + ", ".join(cells) + f"; {rejected:,} answered 4xx"
    if part == "crash":
        return (
            f"{p.get('kills', 0)} kills, {p.get('clients', 0)} concurrent clients, "
            f"{p.get('in_flight_at_kills', 0)} requests in flight at the kills; "
            f"answers again after ≤ {p.get('restart_s_max', 0):.1f} s"
        )
    if part == "dependencies":
        return (
            f"slowest answer {p.get('slowest_s', 0):.3f} s (budget {p.get('budget_s', 0)} s); "
            f"{p.get('fallbacks', 0):,} offline fallbacks; online again "
            f"{p.get('recovery_s', 0):.2f} s after the upstreams are back"
        )
    if part == "load":
        return (
            f"{p.get('seconds', 0):.0f} s, {p.get('rps', 0):,} req/s, "
            f"p50 {p.get('p50_ms', 0)} ms, p99 {p.get('p99_ms', 0)} ms, "
            f"max {p.get('max_ms', 0)} ms"
        )
    if part == "bad_data":
        return (
            f"{p.get('errors_clean', 0)} clean errors (exit 2, file + column named), "
            f"{p.get('cleanings_logged', 0)} documented cleanings (count logged)"
        )
    if part == "bad_artifacts":
        return f"every broken start-up exited within {p.get('exit_s_max', 0):.1f} s"
    return ""


def table(results: dict[str, Any]) -> str:
    parts = results.get("parts", {})
    head = (
        "| Part | Cases tried | Failures | Events acked / found | Requests | 5xx "
        "| RSS before → after (MiB) | Notes |\n"
        "|---|---:|---:|---:|---:|---:|---|---|\n"
    )
    rows = []
    total_cases = total_failures = total_requests = total_5xx = 0
    for key, title in PARTS:
        p = parts.get(key)
        if p is None:
            rows.append(f"| {title} | not run | | | | | | |")
            continue
        failures = max(int(p.get("failures", 0)), int(p.get("tests_failed", 0)))
        cases = int(p.get("cases", p.get("tests", 0)))
        events = ""
        if "events_acked" in p:
            events = f"{p['events_acked']:,} / {p['events_found']:,}"
        total_cases += cases
        total_failures += failures
        total_requests += int(p.get("requests", 0))
        total_5xx += int(p.get("server_errors", 0))
        cells = [
            title,
            fmt(cases),
            fmt(failures),
            events,
            fmt(p.get("requests", "")),
            fmt(p.get("server_errors", "")),
            rss_cell(p),
            notes(key, p),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    rows.append(
        f"| **Total** | **{total_cases:,}** | **{total_failures:,}** | | "
        f"**{total_requests:,}** | **{total_5xx:,}** | | |"
    )
    return head + "\n".join(rows) + "\n"


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return rev or "unknown"


def header(results: dict[str, Any], seconds: float) -> str:
    mode = "long (`--long`)" if results.get("long") else "short (as in `make test`)"
    status = "passed" if results.get("exit_status") == 0 else "FAILED"
    return (
        f"Reliability suite, {mode}: {status} in {seconds / 60:.1f} min "
        f"({time.strftime('%Y-%m-%d %H:%M')}, commit {git_revision()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}).\n"
    )


def update_docs(text: str) -> bool:
    """Replace the table between the markers of docs/reliability.md (if both are there)."""
    if not DOCS.exists():
        return False
    doc = DOCS.read_text()
    if START not in doc or END not in doc:
        return False
    before, rest = doc.split(START, 1)
    _, after = rest.split(END, 1)
    DOCS.write_text(f"{before}{START}\n{text}{END}{after}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the short suite instead")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/reliability.md")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    RESULTS.mkdir(parents=True, exist_ok=True)
    # only a whole long run replaces the reference table; the others get files of their own
    name = "reliability-short" if args.short else "reliability"
    if args.pytest_args:
        name += "-partial"
    json_path = RESULTS / f"{name}.json"
    json_path.unlink(missing_ok=True)
    env = dict(os.environ, MUSICREC_RELIABILITY_RESULTS=str(json_path))
    env.pop("MUSICREC_LONG", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reliability"]
    if not args.short:
        cmd.append("--long")
    cmd += args.pytest_args
    print("+", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    seconds = time.monotonic() - t0
    if not json_path.exists():
        print("no results recorded (did the suite run at all?)", file=sys.stderr)
        return rc or 1
    results = json.loads(json_path.read_text())
    text = header(results, seconds) + "\n" + table(results)
    md_path = RESULTS / f"{name}.md"
    md_path.write_text(text)
    print()
    print(text)
    print(f"written to {md_path}")
    full_long_run = results.get("long") and not args.short and not args.pytest_args
    if full_long_run and not args.no_docs and update_docs(text):
        print(f"table updated in {DOCS}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

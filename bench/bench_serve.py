"""Serving benchmark: the three services under wrk, plus a bare FastAPI floor.

    python bench/bench_serve.py                       # full10 artifacts, 50 connections, 30 s
    python bench/bench_serve.py --artifacts-dir /tmp/musicrec-bench/full/recsys
    python bench/bench_serve.py --preset tiny --smoke  # seconds; checks it runs

Starts `similarity_store`, `event_storage` and `api_main` (uvicorn subprocesses, the
settings `musicrec serve` uses, free ports on 127.0.0.1, a fresh event DB) and a bare
FastAPI app (`floor_app` below: one `async def` endpoint returning a constant list, same
uvicorn options). wrk (`apt-get install -y wrk`) loads each case from its own process with
`--connections` connections for `--duration` seconds, one request path per request drawn
from a list of users/tracks of the case:

- floor            POST /floor?user_id=..            (the server's ceiling on this machine)
- recs_history     POST /recommendations, users with an offline list and no events
- recs_online      POST /recommendations, users with 10 recent events (online blend)
- recs_heavy       POST /recommendations, users with 300 events, all of them read by
                   each request (MUSICREC_EXCLUDE_EVENTS_MAX, 1,000 by default; set it
                   to 100 for the services' rule before 2026-12-06, the latest 100 only)
- recs_cold        POST /recommendations, users unknown to the pipeline
- similar_tracks   POST /similar_tracks?track_id=..&k=10
- add_event        POST /add_event (new users, so the other cases keep their events)
- add_event_keyed  the same, each request with an `Idempotency-Key` of its own (stored)

It reports requests/s, p50 and p99 latency, errors (socket errors and non-2xx answers),
the fallbacks the recommendation service counted during the case (a 200 answer without the
online part: an upstream failed or was slow), and each service's RSS after the load. The
table is printed and written to `bench/results/serve_<preset>_<utc time>.{txt,json}`.
All processes share the machine's cores (the services, wrk and anything else running).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from fastapi import FastAPI
from starlette.responses import Response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
TARGET_RECS_P99_MS = 25.0
TARGET_SIMILAR_P99_MS = 5.0
TARGET_FLOOR_SHARE = 0.25
#: events of each user of the recs_heavy case
HEAVY_EVENTS = 300

# ---------------------------------------------------------------------------- floor app
_FLOOR_BODY = json.dumps({"recs": list(range(1000, 1100))}).encode()
floor_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@floor_app.post("/floor")
async def floor(user_id: int = 0) -> Response:
    """A constant list of 100 ids (the same shape as /recommendations answers)."""
    return Response(_FLOOR_BODY, media_type="application/json")


@floor_app.get("/ready")
async def ready() -> Response:
    return Response(b'{"ready": true}', media_type="application/json")


# ---------------------------------------------------------------------------- wrk
WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Length"] = "0"
local paths = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, paths[(i %% #paths) + 1]%(headers)s)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "connect": %%d, "read": %%d, "write": %%d, "status": %%d, ' ..
    '"timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


#: the headers of a request with an `Idempotency-Key` of its own (wrk.format's headers
#: replace wrk.headers, so the Content-Length is given again)
KEYED_HEADERS = ', {["Content-Length"] = "0", ["Idempotency-Key"] = "bench-" .. i}'


def run_wrk(
    url: str,
    paths: list[str],
    duration: float,
    connections: int,
    workdir: Path,
    keyed: bool = False,
) -> dict[str, Any]:
    """Run wrk against `url` + one of `paths` per request (each with a new
    `Idempotency-Key` when `keyed`); its summary as a dict."""
    plist = workdir / f"paths_{abs(hash(tuple(paths[:5])))}.txt"
    plist.write_text("\n".join(paths) + "\n")
    script = workdir / "case.lua"
    script.write_text(WRK_LUA % {"paths": plist, "headers": KEYED_HEADERS if keyed else ""})
    cmd = [
        "wrk",
        "-t1",  # one load thread: wrk's CPU is taken from the same 2 cores as the services
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"WRKJSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    s = json.loads(m.group(1))
    secs = s["duration_us"] / 1e6
    return {
        "requests": s["requests"],
        "rps": s["requests"] / secs if secs else 0.0,
        "p50_ms": s["p50_us"] / 1000,
        "p99_ms": s["p99_us"] / 1000,
        "max_ms": s["max_us"] / 1000,
        "errors": s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"],
        "non_2xx": s["status"],
        "timeouts": s["timeout"],
    }


# ---------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str) -> bytes:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return bytes(resp.read())


def fallbacks(recs_url: str) -> float:
    """Sum of `recommendation_fallbacks_total` of the recommendation service."""
    with urllib.request.urlopen(f"{recs_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("recommendation_fallbacks_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def ensure_artifacts(args: argparse.Namespace) -> Path:
    """The artifacts dir; runs the pipeline benchmark for `--preset` if it lacks them."""
    from musicrec.artifacts import ArtifactPaths

    art = args.artifacts_dir or Path("/tmp/musicrec-bench") / args.preset / "recsys"
    p = ArtifactPaths(art)
    if all(f.exists() for f in (p.recommendations, p.top_popular, p.similar)):
        return Path(art)
    print(f"[bench] no artifacts in {art}: running the pipeline on preset {args.preset}")
    import bench_pipeline

    argv = ["--preset", args.preset, "--artifacts-dir", str(art), "--no-bare-als"]
    if args.smoke:
        argv.append("--smoke")
    if args.data_dir:
        argv += ["--data-dir", str(args.data_dir)]
    argv += ["--results-dir", str(args.results_dir)]
    bench_pipeline.main(argv)
    return Path(art)


def load_ids(artifacts: Path, n: int, seed: int = 0) -> dict[str, list[int]]:
    """Users with a personal list, unknown users, and tracks with similar tracks."""
    import numpy as np
    import pyarrow.parquet as pq

    from musicrec.artifacts import ArtifactPaths
    from musicrec.columns import Columns as C

    p = ArtifactPaths(artifacts)
    rng = np.random.default_rng(seed)
    users = np.unique(pq.read_table(p.recommendations, columns=[C.User])[C.User].to_numpy())
    tracks = np.unique(pq.read_table(p.similar, columns=[C.Item1])[C.Item1].to_numpy())
    pop = pq.read_table(p.top_popular, columns=[C.Item])[C.Item].to_numpy()
    perm = rng.permutation(users)
    n_online = min(n // 5, max(1, len(perm) // 2))  # 10 events each are added first
    n_heavy = min(n // 50, max(1, len(perm) // 4))  # HEAVY_EVENTS each
    rest = perm[n_online + n_heavy :]
    top = int(users.max()) + 1
    return {
        "history": rest[:n].tolist() or perm[:n].tolist(),
        "online": perm[:n_online].tolist(),
        "heavy": perm[n_online : n_online + n_heavy].tolist(),
        "cold": list(range(top + 1_000_000, top + 1_000_000 + n)),
        "new": list(range(top + 10_000_000, top + 10_000_000 + n)),
        "tracks": rng.choice(tracks, size=min(n, len(tracks)), replace=False).tolist(),
        "popular": pop[: max(10, min(len(pop), 1000))].tolist(),
    }


# ---------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict[str, Any]:
    from musicrec.serve import (
        SERVICES,
        ServiceSpec,
        child_environment,
        start_all,
        start_service,
        stop_all,
        wait_ready,
    )
    from musicrec.settings import Settings

    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    artifacts = ensure_artifacts(args)
    ids = load_ids(artifacts, args.n_ids)
    workdir = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    settings = Settings(
        artifacts_dir=artifacts,
        event_db_path=workdir / "events.sqlite3",
        host="127.0.0.1",
        recs_port=free_port(),
        similar_port=free_port(),
        events_port=free_port(),
        log_level=args.log_level,
        recs_workers=args.recs_workers,
        similar_workers=args.similar_workers,
        fast_path=not args.no_fast_path,
        events_api_key=None,
        fetch_artifacts_from_s3=False,
    )
    floor_settings = settings.model_copy(update={"recs_port": free_port()})
    log = open(workdir / "services.log", "wb")  # noqa: SIM115 (closed in finally)
    popen: dict[str, Any] = {"stdout": log, "stderr": subprocess.STDOUT}
    procs = []
    result: dict[str, Any] = {
        "artifacts_dir": str(artifacts),
        "preset": args.preset,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "duration_s": args.duration,
        "connections": args.connections,
        "recs_workers": args.recs_workers,
        "similar_workers": args.similar_workers,
        "fast_path": not args.no_fast_path,
        "smoke": args.smoke,
    }
    try:
        t0 = time.perf_counter()
        procs = start_all(settings, **popen)
        floor_spec = ServiceSpec(
            "floor", "bench.bench_serve:floor_app", "recs_port", "recs_workers"
        )
        procs.append(
            start_service(floor_spec, floor_settings, child_environment(settings), **popen)
        )
        wait_ready(procs, timeout_s=600)
        result["startup_s"] = time.perf_counter() - t0
        url = {p.name: p.url for p in procs}
        result["rss_idle_mib"] = {p.name: rss_mib(p.proc.pid) for p in procs}

        # users of the online case get 10 recent events each (tracks with similar tracks),
        # posted concurrently (the event store commits them in groups)
        adds = [
            f"{url['events']}/add_event?user_id={u}&track_id={t}"
            for j, u in enumerate(ids["online"])
            for t in ids["tracks"][(j * 10) % len(ids["tracks"]) :][:10]
        ]
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(post, adds))
        # users of the heavy case: HEAVY_EVENTS each, popular tracks first (the kind a
        # recommendation would hold), then 10 tracks with similar tracks; in order per
        # user, the users concurrently
        popular, tracks = ids["popular"], ids["tracks"]
        heavy = []
        for j, u in enumerate(ids["heavy"]):
            older = [popular[(j + i) % len(popular)] for i in range(HEAVY_EVENTS - 10)]
            latest = tracks[(j * 10) % len(tracks) :][:10]
            heavy.append(
                [f"{url['events']}/add_event?user_id={u}&track_id={t}" for t in older + latest]
            )
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda urls: [post(x) for x in urls], heavy))

        k = 100
        add_paths = [
            f"/add_event?user_id={u}&track_id={ids['popular'][i % len(ids['popular'])]}"
            for i, u in enumerate(ids["new"])
        ]
        cases = [
            ("floor", url["floor"], [f"/floor?user_id={u}" for u in ids["history"]]),
            ("recs_history", url["recommendations"], recs_paths(ids["history"], k)),
            ("recs_online", url["recommendations"], recs_paths(ids["online"], k)),
            ("recs_heavy", url["recommendations"], recs_paths(ids["heavy"], k)),
            ("recs_cold", url["recommendations"], recs_paths(ids["cold"], k)),
            (
                "similar_tracks",
                url["similar"],
                [f"/similar_tracks?track_id={t}&k=10" for t in ids["tracks"]],
            ),
            ("add_event", url["events"], add_paths),
            ("add_event_keyed", url["events"], add_paths),
        ]
        rows = []
        for name, base, paths in cases:
            if args.only and name not in args.only:
                continue
            fb0 = fallbacks(url["recommendations"])
            spies = start_profilers(procs, name, args) if args.profile else []
            keyed = name == "add_event_keyed"
            r = run_wrk(base, paths, args.duration, args.connections, workdir, keyed)
            for spy in spies:
                spy.wait(timeout=60)
            r["case"] = name
            r["fallbacks"] = fallbacks(url["recommendations"]) - fb0
            rows.append(r)
            print(
                f"[bench] {name:<15} {r['rps']:9.0f} req/s p50 {r['p50_ms']:6.2f} ms "
                f"p99 {r['p99_ms']:7.2f} ms errors {r['errors']} fallbacks {r['fallbacks']:.0f}",
                flush=True,
            )
            time.sleep(args.pause)
        result["cases"] = rows
        result["rss_after_mib"] = {p.name: rss_mib(p.proc.pid) for p in procs}
        with urllib.request.urlopen(f"{url['events']}/stats", timeout=10) as resp:
            stats = json.loads(resp.read())
        result["events_cache"] = {
            key: stats[key] for key in ("cache_users", "cache_events", "cache_hits", "cache_misses")
        }
        result["services"] = [s.name for s in SERVICES]
        result["load_avg_end"] = round(os.getloadavg()[0], 2)
    finally:
        stop_all(procs)
        log.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def start_profilers(procs: list[Any], case: str, args: argparse.Namespace) -> list[Any]:
    """`py-spy record` (100 Hz, collapsed stacks) of each service during one case, written
    to `<--profile>/<case>_<service>.txt`; the bare floor app is not profiled."""
    args.profile.mkdir(parents=True, exist_ok=True)
    venv_spy = Path(sys.executable).parent / "py-spy"
    spy = shutil.which("py-spy") or (str(venv_spy) if venv_spy.exists() else None)
    if spy is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    spies = []
    for p in procs:
        if p.name == "floor":
            continue
        out = args.profile / f"{case}_{p.name}.txt"
        cmd = [spy, "record", "--pid", str(p.proc.pid), "--rate", "100", "--nonblocking"]
        cmd += ["--subprocesses"]  # the uvicorn workers of a multi-worker service
        cmd += ["--duration", str(max(1, round(args.duration) - 1)), "--format", "raw"]
        cmd += ["--output", str(out)]
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def recs_paths(users: list[int], k: int) -> list[str]:
    return [f"/recommendations?user_id={u}&k={k}" for u in users]


def rss_mib(pid: int) -> float:
    """RSS of a service: the process and its children (the workers of a multi-worker
    uvicorn)."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total / 2**20
    return float("nan")


def machine() -> dict[str, Any]:
    from bench_pipeline import machine as m

    return m()


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"bench_serve  artifacts={result['artifacts_dir']}  {result['date']}  "
        f"{m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB  (load avg at start "
        f"{m['load_avg_1m']}, end {result.get('load_avg_end', '-')}; services, wrk and other "
        "jobs share the cores)",
        f"wrk -t1 -c{result['connections']} -d{result['duration_s']}s per case; "
        f"{result.get('recs_workers', 1)} worker(s) for the recommendation service and the "
        f"floor, {result.get('similar_workers', 1)} for similar tracks, 1 for events; "
        f"services started in {result.get('startup_s', 0):.1f} s; "
        f"fast path {'on' if result.get('fast_path', True) else 'off'}",
    ]
    if result.get("smoke"):
        lines.append("SMOKE RUN: timings are meaningless")
    lines.append("")
    lines.append(
        f"{'case':<15} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7} "
        f"{'fallbacks':>9} {'% floor':>8}  target"
    )
    floor_rps = next((c["rps"] for c in result["cases"] if c["case"] == "floor"), None)
    for c in result["cases"]:
        share = 100 * c["rps"] / floor_rps if floor_rps else float("nan")
        target = ""
        if c["case"].startswith("recs_"):
            ok = c["p99_ms"] <= TARGET_RECS_P99_MS and share >= 100 * TARGET_FLOOR_SHARE
            target = f"p99<={TARGET_RECS_P99_MS:.0f}, >=25% floor: {'met' if ok else 'MISSED'}"
        elif c["case"] == "similar_tracks":
            ok = c["p99_ms"] <= TARGET_SIMILAR_P99_MS
            target = f"p99<={TARGET_SIMILAR_P99_MS:.0f}: {'met' if ok else 'MISSED'}"
        if c["errors"]:
            target += " ERRORS"
        lines.append(
            f"{c['case']:<15} {c['rps']:>9.0f} {c['p50_ms']:>8.2f} {c['p99_ms']:>8.2f} "
            f"{c['max_ms']:>8.1f} {c['errors']:>7} {c['fallbacks']:>9.0f} {share:>7.0f}%  {target}"
        )
    lines.append("")
    idle, after = result["rss_idle_mib"], result["rss_after_mib"]
    lines.append(
        "RSS MiB (idle -> after load): "
        + ", ".join(f"{n} {idle[n]:.0f} -> {after[n]:.0f}" for n in after)
    )
    cache = result["events_cache"]
    lines.append(
        f"event service cache: {cache['cache_users']} users, {cache['cache_events']} events; "
        f"reads from memory {cache['cache_hits']}, from SQLite {cache['cache_misses']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="full10", choices=["tiny", "demo", "full10", "full"])
    ap.add_argument("--artifacts-dir", type=Path, help="Default /tmp/musicrec-bench/<preset>")
    ap.add_argument("--data-dir", type=Path, help="Raw data if the pipeline must run first")
    ap.add_argument("--duration", type=float, default=30.0, help="Seconds per case")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--n-ids", type=int, default=5000, help="Distinct users/tracks per case")
    ap.add_argument("--pause", type=float, default=2.0, help="Seconds between cases")
    ap.add_argument("--only", nargs="+", help="Run only these cases")
    ap.add_argument(
        "--recs-workers",
        type=int,
        default=2,
        help="uvicorn workers of the recommendation service and of the floor app (2)",
    )
    ap.add_argument(
        "--similar-workers",
        type=int,
        default=1,
        help="uvicorn workers of the similar-tracks service (1)",
    )
    ap.add_argument(
        "--no-fast-path",
        action="store_true",
        help="Recommendation requests through FastAPI only (MUSICREC_FAST_PATH=false)",
    )
    ap.add_argument("--log-level", default="INFO", help="Services' log level")
    ap.add_argument("--smoke", action="store_true", help="1 s per case, 4 connections")
    ap.add_argument("--keep", action="store_true", help="Keep the work dir (service log)")
    ap.add_argument(
        "--profile", type=Path, help="Record each service with py-spy into this directory"
    )
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.duration, args.connections, args.n_ids, args.pause = 1.0, 4, 50, 0.0
    result = run(args)
    table = render(result)
    print(table, flush=True)
    from bench_pipeline import write_results

    write_results(args.results_dir, f"serve_{args.preset}", args.smoke, table, result)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

"""Smoke runs of the two benchmarks (bench/bench_pipeline.py, bench/bench_serve.py) on the
tiny preset: they run end to end, print their table and write the results files. The
timings are not checked (the scripts' `--smoke` settings make them meaningless)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(*args: str | Path) -> str:
    """stdout of `python args` in the project root (asserts it exits 0)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def run_script(name: str, *args: str | Path) -> str:
    return run_python(ROOT / "bench" / name, *args)


@pytest.fixture(scope="module")
def bench_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    return {"data": root / "data", "art": root / "recsys", "results": root / "results"}


def test_bench_pipeline_smoke(bench_dirs: dict[str, Path]) -> None:
    d = bench_dirs
    out = run_script(
        "bench_pipeline.py",
        "--preset",
        "tiny",
        "--smoke",
        "--data-dir",
        d["data"],
        "--artifacts-dir",
        d["art"],
        "--results-dir",
        d["results"],
    )
    for stage in ("prepare", "split", "als", "similar", "ranker", "evaluate", "TOTAL"):
        assert f"\n{stage} " in out
    assert "bare implicit ALS fit" in out and "pipeline ALS stage" in out
    assert "als_label + als stages" in out
    txt = list(d["results"].glob("pipeline_tiny_smoke_*.txt"))
    js = list(d["results"].glob("pipeline_tiny_smoke_*.json"))
    assert len(txt) == 1 and len(js) == 1
    result = json.loads(js[0].read_text())
    assert [s["stage"] for s in result["stages"]][0] == "prepare"
    assert result["bare_als"]["wall_s"] > 0
    assert (d["art"] / "recommendations" / "recommendations.parquet").exists()
    assert not list(d["results"].glob("*_in_progress.json"))  # removed once complete


def test_bench_pipeline_keeps_the_stages_of_a_run_that_dies(
    bench_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline dies after its first stage (as under the OOM killer): the stage's
    figures are in the in-progress file."""
    import musicrec.pipeline

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_pipeline

    def dies_after_prepare(*args: object, on_stage: Any, **kwargs: object) -> None:
        on_stage("prepare", lambda: {})
        raise MemoryError("killed")

    monkeypatch.setattr(musicrec.pipeline, "run_pipeline", dies_after_prepare)
    results = tmp_path / "results"
    argv = ["--preset", "tiny", "--smoke", "--no-bare-als", "--data-dir", str(bench_dirs["data"])]
    argv += ["--artifacts-dir", str(tmp_path / "art"), "--results-dir", str(results)]
    with pytest.raises(MemoryError):
        bench_pipeline.main(argv)
    progress = json.loads((results / "pipeline_tiny_smoke_in_progress.json").read_text())
    assert progress["complete"] is False
    assert [s["stage"] for s in progress["stages"]] == ["prepare"]
    assert progress["stages"][0]["wall_s"] >= 0 and progress["stages"][0]["rows_in"] > 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_bench_serve_smoke(bench_dirs: dict[str, Path]) -> None:
    d = bench_dirs
    if not (d["art"] / "recommendations" / "recommendations.parquet").exists():
        pytest.skip("needs the artifacts of test_bench_pipeline_smoke")
    out = run_script(
        "bench_serve.py",
        "--preset",
        "tiny",
        "--smoke",
        "--artifacts-dir",
        d["art"],
        "--results-dir",
        d["results"],
    )
    for case in (
        "floor",
        "recs_history",
        "recs_online",
        "recs_heavy",
        "recs_cold",
        "similar_tracks",
    ):
        assert f"\n{case} " in out
    assert "add_event" in out and "RSS MiB" in out and "event service cache:" in out
    js = list(d["results"].glob("serve_tiny_smoke_*.json"))
    assert len(js) == 1
    result = json.loads(js[0].read_text())
    assert {c["case"] for c in result["cases"]} >= {"floor", "recs_online", "add_event"}
    assert all(c["requests"] > 0 for c in result["cases"])


def test_profile_summary_counts_packages_and_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import profile_summary

    stacks = tmp_path / "p.txt"
    site = "/v/lib/python3.11/site-packages"
    stacks.write_text(
        f"run (uvicorn/main.py:1);handle ({site}/fastapi/routing.py:10);"
        f"offline (/w/musicrec/service_recommendations.py:5) 3\n"
        f"run ({site}/uvicorn/main.py:1);select (/usr/lib/python3.11/selectors.py:9) 1\n"
        f"<module> (<frozen runpy>:1);run (asyncio/runners.py:1) 2\n"
    )
    text = profile_summary.summarise(stacks, top=10)
    assert "(6 samples)" in text
    assert " 50.0%  fastapi" in text and " 50.0%  musicrec" in text
    assert " 66.7%  uvicorn" in text and " 16.7%  selectors" in text
    assert " 33.3%  asyncio" in text and " 33.3%  <frozen runpy>" in text
    assert " 50.0%  offline (musicrec)" in text


@pytest.mark.parametrize("ranker", ["saved", "stand-in"])
def test_ranker_inference_smoke(
    bench_dirs: dict[str, Path], ranker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = bench_dirs["art"]
    if not (art / "model" / "ranker.cbm").exists():
        pytest.skip("needs the artifacts of test_bench_pipeline_smoke")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the script's temporary files go here
    results = bench_dirs["results"] / f"inference_{ranker}"
    extra = ["--stand-in"] if ranker == "stand-in" else []
    out = run_script(
        "ranker_inference.py",
        "--artifacts-dir",
        art,
        "--smoke",
        "--batches",
        "1",
        "--results-dir",
        results,
        *extra,
    )
    assert "[inference] first stage" in out and "[inference] history statistics" in out
    step = "stand-in ranker (CatBoost fit)" if ranker == "stand-in" else "load ranker.cbm"
    assert f"[inference] {step}" in out
    result = json.loads(next(results.glob("ranker_inference_*.json")).read_text())
    assert result["ranker"] == ("stand-in" if extra else str(art / "model" / "ranker.cbm"))
    assert 0 < result["users_scored"] <= result["users_total"]
    assert result["written"]["users"] == result["users_scored"]
    assert result["peak_rss_gib"] > 0
    assert list(scratch.iterdir()) == []  # its scratch folder removed, not left in /tmp


def test_client_ab_smoke() -> None:
    out = run_script("client_ab.py", "--calls", "200", "--concurrency", "4", "--rounds", "1")
    assert "aiohttp / HttpPool CPU per call:" in out
    assert any(line.startswith("HttpPool") for line in out.splitlines())


def test_fast_path_ab_smoke(bench_dirs: dict[str, Path]) -> None:
    art = bench_dirs["art"]
    if not (art / "recommendations" / "recommendations.parquet").exists():
        pytest.skip("needs the artifacts of test_bench_pipeline_smoke")
    out = run_script(
        "fast_path_ab.py", "--artifacts-dir", art, "--requests", "50", "--repeats", "1"
    )
    for route in ("/recommendations_offline", "/similar_tracks"):
        assert f"{route}: 50 requests per round, same answers" in out
    assert out.count("ratio ") == 2


def test_features_ab_smoke(bench_dirs: dict[str, Path]) -> None:
    """Each A/B of `collect_features` runs and its two versions agree (the script asserts
    it; for `opt-in`, on the columns both compute)."""
    art = bench_dirs["art"]
    if not (art / "recommendations" / "recommendations.parquet").exists():
        pytest.skip("needs the artifacts of test_bench_pipeline_smoke")
    dirs = ("--artifacts-dir", art, "--data-dir", bench_dirs["data"])
    for change in ("lookup", "latest", "cosine", "opt-in"):
        out = run_script(
            "features_ab.py", *dirs, "--change", change, "--users", "40", "--repeats", "1"
        )
        assert "users (" in out and "same output" in out, (change, out)
        assert "ratio " in out, (change, out)


def test_heard_index_bench_rebuilds_the_pipelines_index(bench_dirs: dict[str, Path]) -> None:
    """bench/heard_index.py builds from events.parquet what the pipeline's `als` stage
    wrote (same arrays), and prints its figures."""
    import numpy as np

    from musicrec.heard import FILES

    art = bench_dirs["art"]
    heard = art / "recommendations" / "heard"
    if not heard.exists():
        pytest.skip("needs the artifacts of test_bench_pipeline_smoke")
    before = {name: np.load(heard / name) for name in FILES}
    out = run_script("heard_index.py", "--artifacts-dir", art)
    assert "the pipeline's step: from_matrix" in out and "GiB in" in out, out
    for name in FILES:
        assert np.array_equal(np.load(heard / name), before[name]), name
    out = run_script("heard_index.py", "--artifacts-dir", art, "--load-only", "--repeats", "2")
    assert "2 loads" in out and "of which the order check: median" in out, out


def test_stable_topk_bench_smoke() -> None:
    """bench/stable_topk.py prints each version's time, the ratio, the widened rows and the
    entries that move with the batch (none for `stable_topk`)."""
    out = run_script(
        "stable_topk.py",
        *("--queries", "300", "--targets", "2000", "--k", "10", "--repeats", "1", "--check", "20"),
    )
    assert "ratio stable/implicit" in out and "of 300" in out, out
    assert "stable_topk    entries that differ, batch 1 vs 10,000: 0 of 200" in out, out


def test_event_cache_memory_smoke() -> None:
    out = run_script("event_cache_memory.py", "--users", "200", "--events-per-user", "50")
    assert "10,000 events of 200 users held" in out and "bytes per event" in out, out


def test_event_store_reads_smoke() -> None:
    out = run_script(
        "event_store_reads.py",
        *("--events", "30", "--k", "1000", "--users", "20", "--batch", "5", "--writes", "1500"),
        "--old-index",
    )
    assert "first open of an older database (builds the covering index): 600 events:" in out
    assert "latest_many of 5 users, k=1,000" in out, out
    assert [line.split()[0] for line in out.splitlines()[2:3]] == ["30"], out
    rate = re.search(r"writes: ([\d,]+) events/s \(1,500 adds into 20 users of 30 events", out)
    assert rate and int(rate.group(1).replace(",", "")) > 0, out


def test_event_store_open_smoke() -> None:
    out = run_script("event_store_open.py", "--events", "2000", "--users", "50", "--repeat", "2")
    assert "open of 2,000 events (50 users): median" in out, out


def test_idmap_ab_smoke() -> None:
    out = run_script(
        "idmap_ab.py", "--values", "1100000", "--ids", "70000", "--top", "2000000", "--rounds", "1"
    )
    assert "1,100,000 values of 70,000 ids" in out
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["map", "codes"]


def test_warm_start_ab_smoke(tmp_path: Path) -> None:
    out = run_script(
        "warm_start_ab.py",
        "--preset",
        "tiny",
        "--smoke",
        "--data-dir",
        tmp_path / "data",
        "--work",
        tmp_path / "work",
        "--iterations",
        "1",
    )
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["als", "stage", "s"]
    assert [line.split()[0] + " " + line.split()[1] for line in lines[2:4]] == ["3 cold", "1 warm"]
    assert "1 warm: als ndcg@10" in out
    assert (
        json.loads((tmp_path / "work" / "warm_start_ab.json").read_text())["rows"][1]["users"] > 0
    )


def test_metrics_ab_smoke() -> None:
    out = run_script("metrics_ab.py", "--requests", "200", "--rounds", "1")
    lines = out.splitlines()
    assert lines[0].startswith("200 requests per round, 1 rounds")
    names = (
        "bare",
        "labels() per request",
        "cached children",
        "+ JSON error bodies",
        "+ no repeated query",
    )
    assert len(lines) == 6 and out.count("metrics overhead") == 4
    for line, name in zip(lines[1:], names, strict=True):
        assert line.startswith(name)


def test_ranker_variants_smoke(tmp_path: Path) -> None:
    """bench/ranker_variants.py on the tiny preset: the test-window and the holdout modes
    print each variant's seeds, their mean, the ALS score alone and the paired line."""
    data, art, cfg = tmp_path / "data", tmp_path / "recsys", tmp_path / "tiny.toml"
    cfg.write_text(
        "[als]\nfactors = 8\niterations = 3\ntune = false\n"
        "[ranker]\nlabel_windows = 2\niterations = 20\ndepth = 3\n"
    )
    run_python("-m", "musicrec", "generate", "--preset", "tiny", "--out", data)
    run_python(
        "-m", "musicrec", "pipeline", "--data-dir", data, "--artifacts-dir", art, "--config", cfg
    )
    common = ["--data-dir", data, "--artifacts-dir", art, "--config", cfg]
    common += ["--work", tmp_path / "work", "--seeds", "1", "2"]
    for extra, where in (([], "test candidates"), (["--holdout"], "label window 0 (holdout)")):
        out = run_script("ranker_variants.py", "base", "no_genre", *common, *extra)
        assert where in out
        for line in ("base seed 1 ", "base seed 2 ", "base mean of 2 seeds", "no_genre seed 2 "):
            assert line in out
        assert "ALS score alone" in out and "paired NDCG@10 no_genre - base: " in out
        assert "paired no_genre - ALS score alone: ndcg@10 " in out
    # --set: one more fit per setting, compared with the config's own
    out = run_script("ranker_variants.py", "base", *common, "--set", "depth=2,l2_leaf_reg=10")
    assert "base depth=2,l2_leaf_reg=10 seed 2 " in out
    assert "paired NDCG@10 base depth=2,l2_leaf_reg=10 - base: " in out
    # --save / --paired-with: the same run paired with itself differs by exactly zero
    saved = tmp_path / "base.parquet"
    run_script("ranker_variants.py", "base", *common, "--holdout", "--save", saved)
    out = run_script("ranker_variants.py", "base", *common, "--holdout", "--paired-with", saved)
    for m in ("ndcg@10", "recall@5"):
        assert f"paired {m} base - base of base.parquet: +0.0000 ± 0.0000" in out

    # ranker_diagnostics on the same dump: a within-user AUC row per feature and for the
    # saved ranker, then the cutoff table, whose ranker NDCG@10 is the pipeline's own figure
    out = run_script("ranker_diagnostics.py", *common[: common.index("--seeds")])
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines() if line.strip()}
    for row in ("als_score", "profile_sim", "ranker", "users"):
        assert row in lines, out
    assert any(row.startswith("als_rank") for row in lines)
    assert "ranker - ALS (paired)" in out and "recall@100" in lines
    # the head swaps: as many promoted as demoted rows at each k
    swaps = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[-4] in ("both", "promoted", "demoted"):
            swaps[(len(swaps) // 3, parts[-4])] = int(parts[-3])
    assert len(swaps) == 6, out
    assert all(swaps[(i, "promoted")] == swaps[(i, "demoted")] for i in (0, 1))
    assert "genre lift" in out and "rows without genre" in out
    # the split by activity: its buckets hold every test user once, and its "all" row is
    # the cutoff table's NDCG@10 of the ranker and of the ALS score
    at = out.index("days since latest listen")
    activity = [line.split() for line in out[at:].splitlines()[1:] if line.startswith("(")]
    all_row = next(line.split() for line in out[at:].splitlines() if line.startswith("all "))
    assert activity and sum(int(row[2]) for row in activity) == int(all_row[1])
    assert all_row[2:4] == lines["ndcg@10"].split()[1:3]

    # ranker_head: every kind of variant runs; restricting the rerank (or its training) to
    # the ALS top-N with N above any user's candidate count changes nothing (the base
    # model's figures)
    head = ["restrict:100000", "headtrain:100000", "filter:20", "blend:0.5", "baseline:1"]
    head += ["pairs:lambda"]
    out = run_script("ranker_head.py", *head, *common, "--holdout")
    # each row: the variant, then "ndcg@10 X  recall@5 Y  ndcg@10 - ALS ..."
    rows = {
        line.split()[0]: line.split(maxsplit=1)[1]
        for line in out.splitlines()
        if "ndcg@10 " in line and not line.startswith("ALS")
    }
    assert set(head) | {"base"} <= set(rows), out
    assert "ALS score alone" in out and "ndcg@10 - ALS " in rows["pairs:lambda"]
    assert rows["base"].split()[:4] == rows["restrict:100000"].split()[:4]
    assert rows["base"].split()[:4] == rows["headtrain:100000"].split()[:4]

    # ranker_rolling on window 0 is the same holdout: the same ranker and ALS figures
    out = run_script(
        "ranker_rolling.py",
        *common,
        *("--windows", "0", "--drop", "main_genre", "--keep", "als_score", "als_rank"),
        *("--save", tmp_path / "roll.parquet", "--paired-with", tmp_path / "roll.parquet"),
    )
    ranker_line = next(x for x in out.splitlines() if x.startswith("window 0 (") and "ranker:" in x)
    assert f"ndcg@10 {rows['base'].split()[1]} vs " in ranker_line, (ranker_line, rows["base"])
    assert "ranker without main_genre:" in out and "pooled over windows [0] (" in out
    assert "ranker with only als_score+als_rank:" in out
    assert "pooled ranker with only als_score+als_rank - ranker: ndcg@10 " in out
    # saved, then paired with itself (the file this run wrote): no difference
    assert f"pooled ranker - the ranker of {tmp_path / 'roll.parquet'} (" in out
    assert "ndcg@10 +0.0000 ± 0.0000  recall@5 +0.0000 ± 0.0000" in out
    # routed by activity with a day limit above any gap: every user gets the ALS order
    out = run_script("ranker_rolling.py", *common, "--windows", "0", "--active-days", "1000000")
    routed = next(x for x in out.splitlines() if x.startswith("pooled over") and "routed" in x)
    assert "ranker, routed: ndcg@10 " in routed
    assert routed.count("(+0.0000 ± 0.0000, nan SE)") == 3  # equal to ALS: no ratio
    assert "users active within 1000000 days (" in out and "the other users (0): " in out
    with pytest.raises(AssertionError, match="unknown features: \\['no_such'\\]"):
        run_script("ranker_rolling.py", *common, "--windows", "0", "--drop", "no_such")
    with pytest.raises(AssertionError, match="label_windows >= 3"):  # no window before 1
        run_script("ranker_rolling.py", *common, "--windows", "1")

    # cotag_feature: the feature's AUC per window, both fits and their paired difference
    out = run_script("cotag_feature.py", *common)
    assert out.count("within-user AUC of cotag_latest") == 2  # the tiny config's 2 windows
    assert "without cotag_latest: ndcg@10 " in out and "with cotag_latest: ndcg@10 " in out
    assert "paired recall@5 with - without: " in out
    # genre_idf_feature: its unweighted version is user_genre_cosine (asserted in the
    # script), the feature's AUC per window, each ranker against the ALS score, the pair
    out = run_script("genre_idf_feature.py", *common, "--windows", "0")
    assert out.count("within-user AUC of user_genre_idf_cosine") == 2
    assert "window 0 (" in out and ") with - ALS score: ndcg@10 " in out
    assert "with user_genre_idf_cosine - without: ndcg@10 " in out
    # als_item_z_feature: the refit ALS reproduces als_score (asserted in the script), the
    # feature's AUC per window, each ranker against the ALS score, the pair
    out = run_script("als_item_z_feature.py", *common, "--windows", "0")
    assert out.count("within-user AUC of als_item_z") == 2
    assert out.count("ALS refit reproduces als_score to ") == 2
    assert ") with - ALS score: ndcg@10 " in out
    assert "with als_item_z - without: ndcg@10 " in out

    # als_seeds: each seed's NDCG@10 and the ensembles; the "ensemble" of one seed is it
    out = run_script("als_seeds.py", *common[: common.index("--work")], "--seeds", "3")
    for where in ("label window 0 (", "test window ("):
        assert where in out
    assert out.count("single seeds NDCG@10: ") == 2 and out.count("mean of  3 seeds") == 2
    assert out.count("mean of  1 seeds") == 2
    assert out.count("paired over the first seed +0.0000 ± 0.0000") >= 2
    pipeline = json.loads((art / "metrics.json").read_text())["warm"]["ranker"]["ndcg@10"]
    assert float(lines["ndcg@10"].split()[1]) == pytest.approx(pipeline["mean"], abs=5e-5)


def test_genre_lift_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bucket (-1, 2]: with a genre 2 positives of 4 rows (0.5), without 1 of 4 (0.25):
    lift 2.0 over 4 rows without a genre. Bucket (20, inf]: no row without a genre, NaN."""
    import pandas as pd

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from ranker_diagnostics import genre_lift

    df = pd.DataFrame(
        {
            "item_listeners": [1, 1, 2, 2, 0, 1, 2, 2, 30, 40],
            "main_genre": ["7", "7", "8", "8", "-1", "-1", "-1", "-1", "7", "7"],
            "target": [1, 1, 0, 0, 1, 0, 0, 0, 1, 0],
        }
    )
    out = genre_lift({"w": df})
    low, high = pd.Interval(-1.0, 2.0), pd.Interval(20.0, float("inf"))
    assert out.loc[("genre lift", low), "w"] == pytest.approx(2.0)
    assert out.loc[("rows without genre", low), "w"] == 4
    assert out.loc[("rows without genre", high), "w"] == 0
    assert pd.isna(out.loc[("genre lift", high), "w"])


def test_genre_idf_cosine_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """User 1 heard tracks 10 (genres 1, 2) and 11 (genre 2), user 2 track 12 (genre 3):
    (listen, genre) shares 1/4, 2/4, 1/4, so w = ln 4, ln 2, ln 4 and u1's weighted profile
    is (2 ln 2, 2 ln 2), norm 2 sqrt(2) ln 2. Track 13 (genres 1, 3): 4 ln^2 2 over
    (2 sqrt(2) ln 2)^2 = 0.5; track 11: 2 ln^2 2 / (ln 2 * 2 sqrt(2) ln 2) = 1 / sqrt(2);
    0 for a track without genres, with a genre no one heard, for a rarely heard track
    (hidden) and for a user without history."""
    import numpy as np
    import pandas as pd

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from genre_idf_feature import genre_idf_cosine, track_genres

    items = pd.DataFrame(
        {
            "track_id": [10, 11, 12, 13, 14, 15],
            "genre_ids": [[1, 2], [2, 2], [3], [1, 3], [], [9]],
        }
    )
    history = pd.DataFrame({"user_id": [1, 1, 2], "track_id": [10, 11, 12]})
    rows = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1, 3],
            "track_id": [13, 11, 14, 15, 13, 10],
            "item_listeners": [10, 10, 10, 10, 3, 10],
        }
    )
    got = genre_idf_cosine(history, track_genres(items), rows, min_listeners=5)
    assert got.tolist() == pytest.approx([0.5, 1 / np.sqrt(2), 0, 0, 0, 0], abs=1e-6)


def test_als_item_z_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """User factors (1, 0), (3, 0), (2, 0): track (1, 5) scores 1, 3, 2, mean 2, population
    standard deviation sqrt(2/3), so z = -sqrt(1.5), +sqrt(1.5), 0; track (0, 1) scores 0 for
    everyone (deviation 0): z 0; an unknown user or track: 0."""
    import numpy as np

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from als_item_z_feature import item_z

    from musicrec.als import ALSModel
    from musicrec.matrix import IdMap

    als = ALSModel(
        IdMap(np.array([7, 8, 9])),
        IdMap(np.array([100, 200])),
        np.array([[1, 0], [3, 0], [2, 0]], dtype=np.float32),
        np.array([[1, 5], [0, 1]], dtype=np.float32),
    )
    got = item_z(als, np.array([7, 8, 9, 8, 5, 7]), np.array([100, 100, 100, 200, 100, 300]))
    r = np.sqrt(1.5)
    assert got.tolist() == pytest.approx([-r, r, 0, 0, 0, 0], abs=1e-6)


def test_a_dump_of_older_code_is_made_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`load_dump` dumps when a file is missing or lacks a feature column, else reads."""
    import pandas as pd

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import ranker_dump

    from musicrec.columns import FEATURES

    calls: list[Path] = []

    def fake_dump(ctx: Any, work: Path) -> None:
        calls.append(work)
        full = pd.DataFrame({f: [1.0] for f in FEATURES})
        for name in ("train.parquet", "test_candidates.parquet"):
            full.to_parquet(work / name)

    monkeypatch.setattr(ranker_dump, "dump", fake_dump)
    ranker_dump.load_dump(None, tmp_path)  # type: ignore[arg-type]
    assert len(calls) == 1  # nothing there
    train, cand = ranker_dump.load_dump(None, tmp_path)  # type: ignore[arg-type]
    assert len(calls) == 1 and list(train.columns) == list(cand.columns) == FEATURES
    pd.DataFrame({f: [1.0] for f in FEATURES[:-1]}).to_parquet(tmp_path / "train.parquet")
    ranker_dump.load_dump(None, tmp_path)  # type: ignore[arg-type]
    assert len(calls) == 2  # a column missing: dumped again
    assert FEATURES[-1] in capsys.readouterr().out


def test_variants_start_from_the_configs_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """`base` is the config's feature list (as the pipeline's ranker), the others derive
    from it; `compact` is fixed."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from ranker_variants import COMPACT, variant_features

    listed = ["als_score", "user_genre_share", "user_genre_cosine", "main_genre"]
    assert variant_features("base", listed) == listed
    assert variant_features("no_genre", listed) == ["als_score"]
    assert variant_features("no_main_genre", listed) == listed[:3]
    assert variant_features("compact", listed) == COMPACT


def test_mutation_mutants_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each kind of mutant, once, on a function written for it; nothing inside a log call,
    a raise or an annotation."""
    import ast

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from mutation import apply, mutants

    source = (
        "def f(a: int = 3, b=True):\n"
        "    log.info('x %d', a + 1)\n"
        "    if a < 2 and not b:\n"
        "        raise ValueError(a == 1)\n"
        "    return df.sort_values('s').head(a - 1).copy()\n"
    )
    tree = ast.parse(source)
    found = {(m.line, m.what) for m in mutants(tree)}
    assert found == {
        (1, "3 -> 4"),  # a default is a behaviour too
        (1, "3 -> 2"),
        (1, "True -> False"),
        (3, "and <-> or"),
        (3, "Lt -> LtE"),
        (3, "2 -> 3"),
        (3, "2 -> 1"),
        (3, "not dropped"),
        (5, "return None"),
        (5, ".copy() dropped"),
        (5, "head(k) -> (k + 1)"),
        (5, "ascending=False added"),
        (5, "Sub -> Add"),
        (5, "1 -> 2"),
        (5, "1 -> 0"),
    }, found
    texts = {m.what: apply(tree, m) for m in mutants(tree)}
    assert "if a <= 2 and (not b)" in texts["Lt -> LtE"]
    assert "if a < 2 and b:" in texts["not dropped"]
    assert "return df.sort_values('s').head(a - 1 + 1).copy()" in texts["head(k) -> (k + 1)"]
    assert "sort_values('s', ascending=False)" in texts["ascending=False added"]
    assert "return df.sort_values('s').head(a - 1)\n" in texts[".copy() dropped"] + "\n"
    assert ast.unparse(tree) == ast.unparse(ast.parse(source))  # the tree is left alone


def test_mutation_smoke() -> None:
    """Two mutants of `popular` against its own tests: the report's lines and counts."""
    out = run_script("mutation.py", "popular", "--tests", "tests/test_popular.py", "--limit", "2")
    assert "popular: 2 of " in out
    counts = re.search(r"counts: killed (\d+), survived (\d+), timeout (\d+)", out)
    assert counts is not None and sum(map(int, counts.groups())) <= 2, out


def test_mutation_copies_what_the_tests_read_and_checks_them_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy lacked `configs/` and the Makefile, which test_cli.py reads: its first test
    failed on every mutant, and each was reported killed (a mutation review). The copy now
    holds every tracked file, and tests that fail on the unchanged copy stop the run."""
    import subprocess
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from mutation import copy_project

    copy_project(tmp_path)
    for name in ("configs/lastfm.toml", "Makefile", "requirements.txt", "recommendations.ipynb"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "musicrec" / "popular.py").read_bytes() == (
        ROOT / "musicrec" / "popular.py"
    ).read_bytes()
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "mutation.py"),
            "popular",
            "--tests",
            "tests/nope.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "the tests fail on the unchanged code in the copy" in run.stdout
    assert "line " not in run.stdout  # no mutant run

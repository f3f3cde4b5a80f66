"""The offline pipeline on tiny data: artifacts, metrics, stage caching, final fit, config.

`tiny_pipeline` (conftest) is the shared run. Tests that rerun with other parameters use
`own_dir`, a second artifacts directory of this module; each of them first runs its
baseline config (reused when the previous test left that state), so they stay correct in
any order and cheap in file order.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tomllib
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydantic
import pytest
from conftest import FAST_CONFIG, TinyPipeline, fast_pipeline_config

from musicrec.als import ALSModel
from musicrec.artifacts import RUN_LOCK, ArtifactPaths, RunState
from musicrec.columns import DEFAULT_FEATURES, FEATURES, OPT_IN_FEATURES, RawFiles
from musicrec.columns import Columns as C
from musicrec.config import DataConfig, PipelineConfig, config_as_toml, config_as_yaml, load_config
from musicrec.errors import ConfigError, DataValidationError, MusicRecError
from musicrec.evaluation import candidate_recall_diagnostic, unproven_gains
from musicrec.heard import HeardIndex
from musicrec.matrix import InteractionMatrix, rows_of_keys
from musicrec.metrics import candidate_recall
from musicrec.pipeline import (
    PipelineContext,
    StageCache,
    build_plan,
    collect_metrics,
    finish_run,
    label_windows,
    run_pipeline,
    stage_als,
    stage_als_label,
    stage_similar,
    stage_split,
    train_ranker,
    tune_als,
    window_training_rows,
    write_ranked,
)
from musicrec.popular import listeners_per_track
from musicrec.prepare import PreparedData
from musicrec.ranker import Ranker
from musicrec.split import serving_end

STAGES = [
    "prepare",
    "eda",
    "split",
    "top_popular",
    "als_label",
    "als",
    "similar",
    "ranker",
    "evaluate",
]
MODEL_FILES = [f"als_{n}.npy" for n in ("user_ids", "item_ids", "user_factors", "item_factors")]


def snapshot(root: Path) -> dict[str, int]:
    """mtime of every file under the artifacts root but metrics.json (always rewritten)."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and p.name != "metrics.json"
    }


def fingerprints(root: Path) -> dict[str, str]:
    return {
        p.stem: json.loads(p.read_text())["fingerprint"] for p in (root / "cache").glob("*.json")
    }


def run(
    data_dir: Path,
    root: Path,
    cfg: PipelineConfig,
    caplog: pytest.LogCaptureFixture,
    force: bool = False,
) -> tuple[dict[str, Any], set[str], set[str]]:
    """Run the pipeline; return its metrics, the stages reused and the stages recomputed."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="musicrec.pipeline"):
        metrics = run_pipeline(data_dir, root, cfg, force=force, progress=False)
    reused: set[str] = set()
    done: set[str] = set()
    for rec in caplog.records:
        words = rec.getMessage().split()
        if len(words) >= 3 and words[0] == "stage" and words[2] in ("reused", "done"):
            (reused if words[2] == "reused" else done).add(words[1])
    return metrics, reused, done - reused


def split_events(tp: TinyPipeline, root: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    events = pd.read_parquet(ArtifactPaths(root or tp.root).events)
    start = pd.Timestamp(tp.metrics["split"]["test_start"])
    return events[events[C.Datetime] < start], events


# ------------------------------------------------------------------ the shared run


def test_run_writes_every_artifact(tiny_pipeline: TinyPipeline) -> None:
    p = tiny_pipeline.paths
    for f in (p.items, p.events, p.top_popular, p.personal_als, p.similar, p.recommendations):
        assert f.is_file() and f.stat().st_size > 0, f
        assert len(pd.read_parquet(f)) > 0, f
    for name in [*MODEL_FILES, "ranker.cbm"]:
        assert (p.model_dir / name).is_file(), name
    pictures = {f.name for f in p.pictures_dir.glob("*.png") if f.stat().st_size > 0}
    assert {"user_activity.png", "metrics_comparison.png"} <= pictures
    assert len(pictures) >= 5
    assert p.metrics.is_file()
    assert {f.stem for f in p.cache_dir.glob("*.json")} == set(STAGES)
    sim = pd.read_parquet(p.similar)
    assert (sim.groupby(C.Item1).size() == tiny_pipeline.cfg.similar.k).all()


def test_metrics_json(tiny_pipeline: TinyPipeline) -> None:
    m = tiny_pipeline.metrics
    on_disk = json.loads(tiny_pipeline.paths.metrics.read_text())
    assert on_disk == json.loads(json.dumps(m, default=str))
    s = m["split"]
    history, events = split_events(tiny_pipeline)
    test = events[events[C.Datetime] >= pd.Timestamp(s["test_start"])]
    assert s["history_rows"] + s["test_rows"] == len(events) == m["data"]["events"]
    assert s["label_history_rows"] + s["label_rows"] == s["history_rows"]
    assert s["label_start"] < s["test_start"]
    assert s["test_users"] == s["test_warm_users"] + s["test_cold_users"]
    cold = set(test[C.User]) - set(history[C.User])
    assert s["test_cold_users"] == len(cold) > 0
    # warm and cold metrics, each over the right number of users
    assert set(m["warm"]) == {"top_popular", "als", "ranker"}
    assert set(m["cold"]) == {"top_popular"}
    k5, k10 = tiny_pipeline.cfg.eval.k_precision, tiny_pipeline.cfg.eval.k_ndcg
    for name, res in m["warm"].items():
        for metric in (f"precision@{k5}", f"recall@{k5}", f"ndcg@{k10}"):
            assert set(res[metric]) == {"mean", "stderr", "n_users"}, (name, metric)
            assert res[metric]["n_users"] == s["test_warm_users"]
            assert 0.0 <= res[metric]["mean"] <= 1.0
    assert m["cold"]["top_popular"][f"precision@{k5}"]["n_users"] == s["test_cold_users"]
    # paired differences: the mean difference equals the difference of the means
    assert set(m["comparisons"]) == {"ranker-als", "ranker-top_popular"}
    for name, diff in m["comparisons"].items():
        base = name.split("-", 1)[1]
        for metric in (f"ndcg@{k10}", f"recall@{k5}"):
            want = m["warm"]["ranker"][metric]["mean"] - m["warm"][base][metric]["mean"]
            assert diff[metric]["mean"] == pytest.approx(want, abs=1e-12), (name, metric)
            assert diff[metric]["n_users"] == s["test_warm_users"]
            assert diff[metric]["stderr"] is not None and diff[metric]["stderr"] >= 0
    # a gain of at most one paired standard error is flagged in the log, and only then
    log = tiny_pipeline.log_file.read_text()
    for name, diff in m["comparisons"].items():
        model, base = name.split("-", 1)
        for metric, d in diff.items():
            flagged = f"{model} does not beat {base} on {metric} by more than one paired" in log
            assert flagged == (d["mean"] <= d["stderr"]), (name, metric, d)
    assert m["final_fit"] == "before_test"
    assert set(m["als_params"]) == {"factors", "regularization", "alpha"}
    assert m["ranker"]["train_rows"] > 0 and 0 < m["ranker"]["label_candidate_recall"] <= 1
    # the default list: every feature but the opt-in ones, which are still computed
    assert set(m["ranker"]["feature_importances"]) == set(DEFAULT_FEATURES)
    assert set(OPT_IN_FEATURES) <= set(FEATURES) - set(DEFAULT_FEATURES)
    assert set(m["stage_seconds"]) == set(STAGES)


def test_unproven_gains_by_hand() -> None:
    """A gain above one stderr passes; equal to it, below it, negative or undefined (one
    user: no stderr) is flagged, one line per comparison and metric."""
    comparisons = {
        "ranker-als": {
            "ndcg@10": {"mean": 0.0050, "stderr": 0.0042, "n_users": 466},
            "recall@5": {"mean": 0.0042, "stderr": 0.0042, "n_users": 466},
        },
        "ranker-top_popular": {
            "ndcg@10": {"mean": -0.0100, "stderr": 0.0050, "n_users": 466},
            "recall@5": {"mean": 0.5, "stderr": None, "n_users": 1},
        },
    }
    assert unproven_gains(comparisons) == [
        "ranker does not beat als on recall@5 by more than one paired standard error: "
        "+0.0042 ± 0.0042 over 466 users",
        "ranker does not beat top_popular on ndcg@10 by more than one paired standard "
        "error: -0.0100 ± 0.0050 over 466 users",
        "ranker does not beat top_popular on recall@5 by more than one paired standard "
        "error: +0.5000 ± nan over 1 users",
    ]


def write_small_catalogue(out: Path, n_tracks: int = 5, n_users: int = 60) -> None:
    """Raw files of `n_tracks` tracks (fewer than the k of the metrics) and `n_users` users
    listening over 30 days, in the Yandex schema."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    ids = np.arange(n_tracks, dtype=np.int64) + 100
    pd.DataFrame(
        {
            C.Item: ids,
            C.Albums: [[] for _ in ids],
            C.Artists: [[] for _ in ids],
            C.Genres: [[int(i % 3)] for i in range(n_tracks)],
        }
    ).to_parquet(out / RawFiles.Tracks)
    pd.DataFrame(
        {C.CatalogId: ids, C.CatalogType: "track", C.CatalogName: [f"t{i}" for i in ids]}
    ).to_parquet(out / RawFiles.Catalog)
    rows = []
    for user in range(n_users):
        tracks = rng.choice(ids, int(rng.integers(1, n_tracks + 1)), replace=False)
        days = np.sort(rng.integers(0, 30, tracks.size))
        for seq, (track, day) in enumerate(zip(tracks, days, strict=True), start=1):
            rows.append(
                (user, int(track), seq, pd.Timestamp("2022-01-01") + pd.Timedelta(days=int(day)))
            )
    pd.DataFrame(rows, columns=[C.User, C.Item, C.Seq, C.Datetime]).astype(
        {C.User: "int32", C.Item: "int32", C.Seq: "int16"}
    ).to_parquet(out / RawFiles.Interactions)


def test_a_catalogue_smaller_than_k_is_evaluated(tmp_path: Path) -> None:
    """Five tracks, k = 10: every list is shorter than k; the cold users' popular list too
    (it was cut to k tracks but given k ranks: the evaluation crashed)."""
    write_small_catalogue(tmp_path / "raw")
    m = run_pipeline(tmp_path / "raw", tmp_path / "art", fast_pipeline_config(), progress=False)
    s = m["split"]
    assert s["test_cold_users"] > 0 and m["data"]["tracks_with_events"] == 5
    k5 = fast_pipeline_config().eval.k_precision
    cold = m["cold"]["top_popular"][f"precision@{k5}"]
    assert cold["n_users"] == s["test_cold_users"] and 0.0 <= cold["mean"] <= 1.0
    ranked = pd.read_parquet(ArtifactPaths(tmp_path / "art").recommendations)
    assert ranked.groupby(C.User).size().max() <= 5


def test_a_second_run_on_the_same_artifacts_directory_is_refused(
    tiny_raw_dir: Path, tmp_path: Path
) -> None:
    """While one process runs the pipeline on a directory, another run there (or a
    notebook stage) stops at once naming that process, before any stage: interleaved,
    each read the other's half-finished stages and recorded the mix as fresh."""
    import subprocess
    import sys

    from musicrec.artifacts import pipeline_lock
    from musicrec.errors import ArtifactError

    root = tmp_path / "art"
    paths = ArtifactPaths(root)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from musicrec.artifacts import pipeline_lock\n"
            "with pipeline_lock(Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(60)",
            str(paths.cache_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ArtifactError, match=f"another pipeline run \\(pid {holder.pid}\\)"):
            run_pipeline(tiny_raw_dir, root, fast_pipeline_config(), progress=False)
        assert not paths.metrics.exists() and not list(paths.cache_dir.glob("*.json"))
    finally:
        holder.kill()
        holder.wait()
    # once it is gone, the lock is free; within one process it nests
    with pipeline_lock(paths.cache_dir), pipeline_lock(paths.cache_dir):
        assert (paths.cache_dir / RUN_LOCK).is_file()


def test_execution_log_written(tiny_pipeline: TinyPipeline) -> None:
    text = tiny_pipeline.log_file.read_text()
    for stage in STAGES:
        assert f"stage {stage}" in text, stage
        # every stage hands its freed memory back and logs the resident set
        assert f"memory after stage {stage}: RSS" in text, stage
    assert "memory after the ranker's training: RSS" in text
    # the scoring of every user reports its progress, batch by batch, ending with all
    n_users = len(pd.read_parquet(tiny_pipeline.paths.recommendations)["user_id"].unique())
    assert f"ranked {n_users} of {n_users} users" in text
    assert "evaluation (test window from" in text
    assert "ALS tuning picked" in text
    assert "Traceback" not in text


def test_progress_bar_steps_through_every_stage_by_name(
    tiny_pipeline: TinyPipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run shows a progress bar on stderr: one step a stage, the running stage's name
    beside the count, ending at every stage done. (The stage times are in the log:
    `test_execution_log_written`.) A rerun (every stage reused) draws the same bar."""
    run_pipeline(tiny_pipeline.data_dir, tiny_pipeline.root, tiny_pipeline.cfg, progress=True)
    err = capsys.readouterr().err
    frames = [f for f in re.split(r"[\r\n]+", err) if f.startswith("pipeline:")]
    shown = re.findall(r"(\d+)/(\d+) \[[^\]]*?, (\w+)\]", "\n".join(frames))
    # each stage named while it runs, with the count of the stages before it
    named = [(int(n), stage) for n, total, stage in shown if int(total) == len(STAGES)]
    for i, stage in enumerate(STAGES):
        assert (i, stage) in named, (stage, frames)
    assert list(dict.fromkeys(stage for _, stage in named)) == STAGES  # in the plan's order
    assert f"{len(STAGES)}/{len(STAGES)}" in frames[-1], frames[-1]
    assert "stage" in frames[-1]  # the unit: stages, not items


def test_progress_bar_off_writes_nothing_to_stderr(
    tiny_pipeline: TinyPipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    """`progress=False` (the tests, the benchmark's own display) draws no bar."""
    run_pipeline(tiny_pipeline.data_dir, tiny_pipeline.root, tiny_pipeline.cfg, progress=False)
    assert "pipeline:" not in capsys.readouterr().err


def test_second_run_reuses_every_stage(
    tiny_pipeline: TinyPipeline, caplog: pytest.LogCaptureFixture
) -> None:
    before, fps = snapshot(tiny_pipeline.root), fingerprints(tiny_pipeline.root)
    metrics, reused, ran = run(
        tiny_pipeline.data_dir, tiny_pipeline.root, tiny_pipeline.cfg, caplog
    )
    assert reused == set(STAGES) and not ran
    # metrics.json says so (its stage_seconds are then the checks', not the stages' times)
    assert tiny_pipeline.metrics["reused_stages"] == []
    assert metrics["reused_stages"] == list(STAGES)
    assert snapshot(tiny_pipeline.root) == before  # no artifact (or cache record) rewritten
    assert fingerprints(tiny_pipeline.root) == fps
    for key in ("split", "warm", "cold", "als_params", "candidates"):
        assert metrics[key] == tiny_pipeline.metrics[key], key


def test_candidate_recall_diagnostic_batches_and_samples(
    tiny_pipeline: TinyPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    import musicrec.evaluation as evaluation_module

    ctx = PipelineContext(
        tiny_pipeline.root,
        tiny_pipeline.paths,
        tiny_pipeline.cfg,
        StageCache(tiny_pipeline.root / "cache"),
    )
    stage, target = ctx.first_stage(), ctx.test.window_events
    warm = np.intersect1d(target[C.User].unique(), ctx.test.history[C.User].unique())
    cfg = tiny_pipeline.cfg.model_copy(
        update={"ranker": tiny_pipeline.cfg.ranker.model_copy(update={"inference_batch_users": 7})}
    )
    seen: list[np.ndarray] = []
    real = evaluation_module.generate_candidates

    def recording(stage: Any, users: np.ndarray, rcfg: Any) -> pd.DataFrame:
        seen.append(users)
        return real(stage, users, rcfg)

    monkeypatch.setattr(evaluation_module, "generate_candidates", recording)

    def direct(users: np.ndarray) -> float:
        cand = real(stage, users, cfg.ranker)
        return candidate_recall(cand, target[target[C.User].isin(users)])

    # every warm user, in batches of 7: the same figure as one pass, and as the pipeline's
    full = candidate_recall_diagnostic(stage, warm, target, cfg, None)
    assert len(seen) == -(-len(warm) // 7) and max(map(len, seen)) == 7
    assert np.array_equal(np.concatenate(seen), np.sort(warm))
    assert full["candidate_recall_users"] == len(warm)
    assert full["test_candidate_recall"] == pytest.approx(direct(warm))
    assert full == pytest.approx(tiny_pipeline.metrics["candidates"])
    assert 0 < full["test_candidate_recall_src_als"] <= full["test_candidate_recall"] <= 1

    # capped: a seeded sample of warm users, the recall computed on exactly those users
    seen.clear()
    part = candidate_recall_diagnostic(stage, warm, target, cfg, 10)
    sample = np.concatenate(seen)
    assert part["candidate_recall_users"] == 10 and len(np.unique(sample)) == 10
    assert np.isin(sample, warm).all()
    assert part["test_candidate_recall"] == pytest.approx(direct(sample))
    seen.clear()
    assert candidate_recall_diagnostic(stage, warm, target, cfg, 10) == part
    assert np.array_equal(np.concatenate(seen), sample)


# ---------------------------------------------------------- reruns in another dir

CHANGED = fast_pipeline_config(similar={"k": 7})


@pytest.fixture(scope="module")
def own_dir(tiny_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own_run") / "recsys"
    run_pipeline(tiny_raw_dir, root, fast_pipeline_config(), progress=False)
    return root


def test_write_ranked_frees_memory_after_every_batch_and_batches_change_nothing(
    tiny_pipeline: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring every user in batches of 7 calls release_free_memory once per batch (the
    resident-set creep of the full run) and writes the same rows as the pipeline's one
    batch per 50,000 users: the ranker's output is per user, whatever the batch."""
    import musicrec.pipeline as pipeline_module

    ctx = PipelineContext(
        tiny_pipeline.root,
        tiny_pipeline.paths,
        tiny_pipeline.cfg.model_copy(
            update={
                "ranker": tiny_pipeline.cfg.ranker.model_copy(update={"inference_batch_users": 7})
            }
        ),
        StageCache(tiny_pipeline.root / "cache"),
    )
    released: list[str] = []
    real = pipeline_module.release_free_memory

    def spy(where: str, level: int = logging.INFO) -> float:
        released.append(where)
        return real(where, level)

    monkeypatch.setattr(pipeline_module, "release_free_memory", spy)
    stage = ctx.first_stage()
    released.clear()  # loading the first stage releases memory too
    ranker = Ranker.load(tiny_pipeline.paths.model_dir / "ranker.cbm")
    out = tmp_path / "recs.parquet"
    info = write_ranked(ctx, ranker, stage, path=out)
    n_batches = -(-len(stage.matrix.users.ids) // 7)
    assert n_batches > 1
    assert released == [f"after batch {b}" for b in range(n_batches)]
    key = [C.User, C.Rank]
    got = pd.read_parquet(out).sort_values(key, ignore_index=True)
    want = pd.read_parquet(tiny_pipeline.paths.recommendations).sort_values(key, ignore_index=True)
    assert info["rows"] == len(got) == len(want)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6)


def test_scoring_computes_an_opt_in_feature_only_for_a_ranker_that_reads_it(
    tiny_pipeline: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default ranker does not read the opt-in features, so scoring every user leaves
    their columns out (at the full size the genre cosine took a quarter of the feature time
    of a scoring batch: docs/benchmarks.md); a ranker fit with them gets them."""
    import musicrec.pipeline as pipeline_module
    from musicrec.candidates import generate_candidates
    from musicrec.features import collect_features
    from musicrec.ranker import TARGET, sample_training_rows

    ctx = PipelineContext(
        tiny_pipeline.root,
        tiny_pipeline.paths,
        tiny_pipeline.cfg,
        StageCache(tiny_pipeline.root / "cache"),
    )
    stage = ctx.first_stage()
    default = Ranker.load(tiny_pipeline.paths.model_dir / "ranker.cbm")
    assert OPT_IN_FEATURES and not set(OPT_IN_FEATURES) & set(default.features)
    columns: list[set[str]] = []
    real = pipeline_module.collect_features

    def spy(*args: Any, **kwargs: Any) -> pd.DataFrame:
        out = real(*args, **kwargs)
        columns.append(set(out.columns))
        return out

    monkeypatch.setattr(pipeline_module, "collect_features", spy)
    write_ranked(ctx, default, stage, path=tmp_path / "default.parquet")
    assert columns and all(not set(OPT_IN_FEATURES) & c for c in columns)
    assert all(set(default.features) <= c for c in columns)

    users = stage.matrix.users.ids[:60]
    rows = collect_features(
        stage, ctx.prepared.items, generate_candidates(stage, users, ctx.cfg.ranker), ctx.cfg.ranker
    )
    rows[TARGET] = (rows["als_rank"] <= 5).astype(np.int8)
    every = ctx.cfg.ranker.model_copy(update={"features": FEATURES})
    opt_in = Ranker.fit(sample_training_rows(rows, 30, None, 0), every)
    columns.clear()
    info = write_ranked(ctx, opt_in, stage, path=tmp_path / "opt_in.parquet")
    assert columns and all(set(OPT_IN_FEATURES) <= c for c in columns)
    assert info["rows"] == len(pd.read_parquet(tmp_path / "opt_in.parquet")) > 0


@pytest.mark.parametrize("picture", ["user_activity.png", "top_tracks.png", "long_tail.png"])
def test_a_deleted_picture_is_drawn_again(
    own_dir: Path, tiny_raw_dir: Path, caplog: pytest.LogCaptureFixture, picture: str
) -> None:
    """Every EDA picture is an output of the `eda` stage: one deleted makes it run again
    (only the first one was checked, so a missing `top_tracks.png` stayed missing)."""
    run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)  # baseline
    (ArtifactPaths(own_dir).pictures_dir / picture).unlink()
    _, _, ran = run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)
    assert ran == {"eda"}
    assert (ArtifactPaths(own_dir).pictures_dir / picture).is_file()


def test_changed_parameter_recomputes_stage_and_dependants(
    own_dir: Path, tiny_raw_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)  # baseline
    before, fps = snapshot(own_dir), fingerprints(own_dir)
    _, reused, ran = run(tiny_raw_dir, own_dir, CHANGED, caplog)
    assert reused == {"prepare", "eda", "split", "top_popular", "als_label", "als"}
    assert ran == {"similar", "ranker", "evaluate"}
    after, new_fps = snapshot(own_dir), fingerprints(own_dir)
    for f in ["data/items.parquet", "data/events.parquet", "recommendations/personal_als.parquet"]:
        assert after[f] == before[f], f
    for name in MODEL_FILES:
        assert after[f"model/{name}"] == before[f"model/{name}"], name
    for f in ["recommendations/similar.parquet", "recommendations/recommendations.parquet"]:
        assert after[f] != before[f], f
    assert {k for k in fps if fps[k] != new_fps[k]} == {"similar", "ranker", "evaluate"}
    sim = pd.read_parquet(ArtifactPaths(own_dir).similar)
    assert (sim.groupby(C.Item1).size() == 7).all()


def test_evaluation_settings_recompute_only_what_reads_them(
    own_dir: Path, tiny_raw_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The ALS stages had the whole `eval` section in their fingerprints: a new recall
    sample size refit both ALS models, the similar tracks and the ranker (an hour at the
    full size). Only the NDCG's k reaches ALS, and only when it is tuned by it."""
    base = fast_pipeline_config()
    run(tiny_raw_dir, own_dir, base, caplog)
    sample = base.model_copy(deep=True)
    sample.eval.candidate_recall_users = 77
    sample.eval.k_precision = 3
    _, reused, ran = run(tiny_raw_dir, own_dir, sample, caplog)
    assert ran == {"evaluate"}, ran
    ndcg = sample.model_copy(deep=True)
    ndcg.eval.k_ndcg = 5
    _, _, ran = run(tiny_raw_dir, own_dir, ndcg, caplog)
    assert ran == {"als_label", "als", "similar", "ranker", "evaluate"}, ran
    untuned = ndcg.model_copy(deep=True)
    untuned.als.tune = False
    run(tiny_raw_dir, own_dir, untuned, caplog)
    untuned.eval.k_ndcg = 10
    _, _, ran = run(tiny_raw_dir, own_dir, untuned, caplog)
    assert ran == {"evaluate"}, ran


def test_moved_directories_reuse_every_stage(
    own_dir: Path,
    tiny_raw_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The artifacts and the data directory copied elsewhere with their mtimes (as `mv` or
    `cp -a` leave them), the run started from another working directory with relative
    paths: every stage is reused and nothing rewritten. A raw file touched there (a new
    mtime) recomputes every stage."""
    import shutil

    run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)  # every stage recorded
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_raw_dir, moved / "data")  # copy2: mtimes kept
    shutil.copytree(own_dir, moved / "recsys")
    before = snapshot(moved / "recsys")
    monkeypatch.chdir(moved)
    _, reused, ran = run(Path("data"), Path("recsys"), fast_pipeline_config(), caplog)
    assert reused == set(STAGES) and not ran
    assert snapshot(moved / "recsys") == before

    raw = moved / "data" / RawFiles.Interactions
    st = raw.stat()
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _, reused, ran = run(Path("data"), Path("recsys"), fast_pipeline_config(), caplog)
    assert ran == set(STAGES) and not reused


def test_changed_code_recomputes_the_stages_that_run_it(
    own_dir: Path,
    tiny_raw_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upgrade that changes `features.py` refits the ranker (and evaluates again) while
    the other stages are reused; a change to a service module recomputes nothing. The
    package's sources are copied and edited; the run itself uses the installed code."""
    import shutil

    import musicrec.codehash as codehash

    copy = tmp_path / "musicrec"
    shutil.copytree(codehash.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codehash, "PACKAGE_DIR", copy)
    run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)  # baseline
    fps = fingerprints(own_dir)

    with (copy / "service_recommendations.py").open("a") as f:
        f.write("\n# a new version of the service\n")
    _, reused, ran = run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)
    assert ran == set() and reused == set(STAGES)

    with (copy / "features.py").open("a") as f:
        f.write("\n# a new version of the features\n")
    _, reused, ran = run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)
    assert ran == {"ranker", "evaluate"}
    assert reused == set(STAGES) - ran
    new_fps = fingerprints(own_dir)
    assert {k for k in fps if fps[k] != new_fps[k]} == {"ranker", "evaluate"}


def test_final_fit_all_serves_models_fit_on_all_events(
    own_dir: Path, tiny_raw_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = ArtifactPaths(own_dir)
    base, _, _ = run(tiny_raw_dir, own_dir, CHANGED, caplog)
    events = pd.read_parquet(paths.events)
    history = events[events[C.Datetime] < pd.Timestamp(base["split"]["test_start"])]
    only_test = np.setdiff1d(events[C.User].unique(), history[C.User].unique())
    assert len(only_test) > 0

    final = CHANGED.model_copy(update={"final_fit": "all"})
    metrics, reused, ran = run(tiny_raw_dir, own_dir, final, caplog)
    assert ran == {"final_fit"} and reused == set(STAGES)
    assert metrics["final_fit"] == "all"
    record = json.loads((paths.cache_dir / "final_fit.json").read_text())
    expected_end = serving_end(events[C.Datetime], pd.Timestamp(base["split"]["test_start"]))
    assert record["info"]["fit_end"] == expected_end.isoformat()
    # the evaluation is the before-test one, untouched by the refit
    assert metrics["warm"] == base["warm"] and metrics["cold"] == base["cold"]
    all_users = set(events[C.User].unique().tolist())
    recs = pd.read_parquet(paths.recommendations)
    als = pd.read_parquet(paths.personal_als)
    assert set(recs[C.User]) == all_users and set(als[C.User]) == all_users
    assert set(only_test.tolist()) <= set(recs[C.User])
    assert np.array_equal(np.load(paths.model_dir / "als_user_ids.npy"), np.unique(events[C.User]))
    top = pd.read_parquet(paths.top_popular)
    expected = listeners_per_track(events).head(CHANGED.top_popular_k)
    assert top[C.Item].tolist() == expected[C.Item].tolist()
    sim = pd.read_parquet(paths.similar)
    assert set(sim[C.Item1]) == set(events[C.Item].unique().tolist())
    heard = events[[C.User, C.Item]].assign(_h=1)
    for served in (recs, als):  # nothing the user heard, test window included
        assert served.merge(heard, on=[C.User, C.Item], how="left")["_h"].isna().all()
    # the services' heard index is the whole history too
    index = HeardIndex.load(paths.heard_dir)
    pairs = events[[C.User, C.Item]].drop_duplicates().sort_values([C.User, C.Item])
    assert np.repeat(index.users, np.diff(index.offsets)).tolist() == pairs[C.User].tolist()
    assert np.asarray(index.tracks).tolist() == pairs[C.Item].tolist()
    assert (recs.groupby(C.User).size() == CHANGED.top_k).all()


def test_a_stage_run_alone_after_a_final_fit_says_how_to_recover(
    own_dir: Path, tiny_raw_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The notebook runs stages one by one: after `final_fit = "all"` refit the served
    models on every event, a stage that needs the before-test ALS says so and how to
    recover, for the CLI and the notebook (a bare RuntimeError naming only --force)."""
    from musicrec.errors import ArtifactError

    run(tiny_raw_dir, own_dir, CHANGED.model_copy(update={"final_fit": "all"}), caplog)
    ctx = PipelineContext(
        tiny_raw_dir, ArtifactPaths(own_dir), CHANGED, StageCache(own_dir / "cache")
    )
    with pytest.raises(ArtifactError, match=r"final_fit = 'all'.*FORCE = True in the notebook"):
        ctx.first_stage()


def test_a_stage_run_before_its_upstream_stages_names_them(tiny_pipeline: TinyPipeline) -> None:
    """A notebook cell run before the cells above it: the stage names what must run first
    (a bare KeyError before)."""
    from musicrec.errors import MusicRecError

    ctx = PipelineContext(
        tiny_pipeline.data_dir,
        tiny_pipeline.paths,
        tiny_pipeline.cfg,
        StageCache(tiny_pipeline.paths.cache_dir),
    )
    plan = {stage.name: stage for stage in build_plan(ctx)}
    with pytest.raises(MusicRecError, match=r"stage 'evaluate' needs .*'ranker'.*cells above"):
        ctx.run_stage(plan["evaluate"])
    with pytest.raises(
        MusicRecError, match=r"metrics need the stages 'prepare', 'split', 'ranker'"
    ):
        collect_metrics(ctx)  # the notebook's metrics cell run first: a bare KeyError before
    assert ctx.run_stage(plan["prepare"])  # a stage without upstream runs (reused here)


def test_the_upload_at_the_end_holds_the_run_lock(
    own_dir: Path, tiny_raw_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The S3 upload ran after the run had let go of the folder: another run could rewrite
    the artifacts while they were sent (a mix of two runs under one manifest)."""
    import subprocess
    import sys

    from musicrec.settings import Settings

    lock = ArtifactPaths(own_dir).cache_dir / RUN_LOCK
    probe = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)"
    )
    taken: list[int] = []

    def upload(settings: Settings, root: Path) -> list[str]:  # another process tries the lock
        taken.append(subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode)
        return []

    monkeypatch.setattr("musicrec.s3.upload_artifacts", upload)
    settings = Settings(_env_file=None, S3_BUCKET_NAME="bucket")  # type: ignore[call-arg]
    run_pipeline(tiny_raw_dir, own_dir, fast_pipeline_config(), settings=settings, progress=False)
    assert len(taken) == 1 and taken[0] != 0  # BlockingIOError: the run still held it


def test_a_run_removes_what_a_killed_run_left_half_written(
    own_dir: Path, tiny_raw_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run killed outright (SIGKILL, the OOM killer) leaves its temporary files (no
    `finally` ran): the next run removes those untouched for ten minutes."""
    stale = ArtifactPaths(own_dir).recs_dir / ".recommendations.parquet.k1ll3d.tmp"
    stale.write_bytes(b"x" * 1000)
    os.utime(stale, (1e9, 1e9))
    run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)
    assert not stale.exists()
    assert any("removed 1 temporary files" in r.getMessage() for r in caplog.records)


def test_a_stage_that_failed_does_not_count_as_run(
    own_dir: Path, tiny_raw_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A notebook cell that fails or is interrupted: its stage was registered as run before
    it ran, so the next cell (evaluate) built on the previous ranker's outputs and recorded
    the result as fresh under the new parameters. Now the next cell names the stage."""
    from musicrec.errors import MusicRecError

    run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)
    cfg = fast_pipeline_config(top_k=15)  # the ranker and evaluate must run again
    ctx = PipelineContext(tiny_raw_dir, ArtifactPaths(own_dir), cfg, StageCache(own_dir / "cache"))
    plan = {stage.name: stage for stage in build_plan(ctx)}
    for name in ["prepare", "eda", "split", "top_popular", "als_label", "als", "similar"]:
        ctx.run_stage(plan[name])

    def interrupted() -> dict[str, Any]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ctx.run_stage(replace(plan["ranker"], run=interrupted))
    with pytest.raises(MusicRecError, match=r"stage 'evaluate' needs 'ranker' run first"):
        ctx.run_stage(plan["evaluate"])
    assert ctx.run_stage(plan["ranker"])  # once it has run, the next cell goes on
    assert ctx.run_stage(plan["evaluate"])


def state_of(paths: ArtifactPaths) -> object:
    """What `recsys/run.json` says: "complete", "unfinished", or None without the file."""
    state = RunState.read(paths)
    return None if state is None else state["state"]


def test_the_folder_says_whether_it_holds_one_finished_run(
    tiny_raw_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`recsys/run.json` (`RunState`): complete after a run, unfinished from the first
    stage that computes until a run (or the notebook's `finish_run`) has every stage of
    its plan current. A run that failed half-way left new prepared data beside the models
    and lists of the run before, with nothing to tell them apart."""
    data, own_dir = tmp_path / "data", tmp_path / "recsys"
    shutil.copytree(tiny_raw_dir, data)  # its files' times change below
    paths = ArtifactPaths(own_dir)
    run(data, own_dir, fast_pipeline_config(), caplog)
    state = RunState.read(paths)
    assert state is not None and state["state"] == "complete"
    assert list(state["stages"]) == STAGES and RunState.unfinished_reason(paths) is None
    # reused throughout: the file is not rewritten
    before = paths.run_state.stat().st_mtime_ns
    run(data, own_dir, fast_pipeline_config(), caplog)
    assert paths.run_state.stat().st_mtime_ns == before

    cfg = fast_pipeline_config(top_k=15)  # the ranker and evaluate must run again
    ctx = PipelineContext(data, paths, cfg, StageCache(paths.cache_dir))
    plan = {stage.name: stage for stage in build_plan(ctx)}
    for name in STAGES[: STAGES.index("ranker")]:
        ctx.run_stage(plan[name])
    assert RunState.unfinished_reason(paths) is None  # nothing computed yet

    def interrupted() -> dict[str, Any]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ctx.run_stage(replace(plan["ranker"], run=interrupted))
    reason = RunState.unfinished_reason(paths)
    assert reason is not None and reason.startswith("stage 'ranker' was recomputed at ")
    assert "no run has reached its end since" in reason
    with pytest.raises(MusicRecError, match="the metrics need the stages 'ranker'"):
        finish_run(ctx)
    assert state_of(paths) == "unfinished"
    ctx.run_stage(plan["ranker"])
    ctx.run_stage(plan["evaluate"])
    # raw data changed under the context: prepare runs again, the stages after it are
    # then results of the old data (the notebook's cells above re-run, not those below)
    stat = (data / RawFiles.Tracks).stat()
    os.utime(data / RawFiles.Tracks, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    ctx.run_stage(plan["prepare"])
    finish_run(ctx)
    assert state_of(paths) == "unfinished"
    for name in STAGES[1:]:
        ctx.run_stage(plan[name])
    finish_run(ctx)
    assert state_of(paths) == "complete"


def test_files_rewritten_under_a_notebook_context_are_not_built_on(
    tiny_raw_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CLI run (or `prepare`) on the folder between two notebook cells rewrote the files
    the context had run its stages on: the next cell reused or ran its stage on them and
    recorded that as fresh, and `finish_run` marked the mix complete (a review's
    reproducers). Now the next cell names the changed stages, and the folder stays
    unfinished until they run again."""
    from musicrec.prepare import prepare_data

    own_dir = tmp_path / "recsys"
    paths = ArtifactPaths(own_dir)
    run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)
    ctx = PipelineContext(tiny_raw_dir, paths, fast_pipeline_config(), StageCache(paths.cache_dir))
    plan = {stage.name: stage for stage in build_plan(ctx)}
    for name in STAGES:
        ctx.run_stage(plan[name])
    finish_run(ctx)
    assert state_of(paths) == "complete"
    # `prepare` with half the users, from another process, between two cells
    prepare_data(tiny_raw_dir, paths, DataConfig(sample_users_share=0.5))
    with pytest.raises(MusicRecError, match=r"stage 'eda' needs 'prepare' as this context ran"):
        ctx.run_stage(plan["eda"])
    # a CLI run finished on the folder meanwhile (complete), then the notebook's last cell:
    # metrics.json from the context's stages, beside other files: not complete any more
    RunState.write(paths, RunState.COMPLETE, stages={})
    finish_run(ctx)  # the stages are current in memory, not on disk
    assert state_of(paths) == "unfinished"
    for name in STAGES:  # the cells from prepare on, again
        ctx.run_stage(plan[name])
    finish_run(ctx)
    assert state_of(paths) == "complete"


def test_a_stage_rerun_after_final_fit_leaves_the_folder_unfinished(
    tiny_raw_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With final_fit = "all", the top_popular cell run again rewrites the refit list with
    the before-test one: `finish_run` called that complete (the review's second case)."""
    own_dir = tmp_path / "recsys"
    paths = ArtifactPaths(own_dir)
    cfg = fast_pipeline_config(final_fit="all")
    run(tiny_raw_dir, own_dir, cfg, caplog)
    assert state_of(paths) == "complete"
    ctx = PipelineContext(tiny_raw_dir, paths, cfg, StageCache(paths.cache_dir))
    plan = {stage.name: stage for stage in build_plan(ctx)}
    for name in [*STAGES, "final_fit"]:
        ctx.run_stage(plan[name])
    finish_run(ctx)
    assert state_of(paths) == "complete"
    (paths.cache_dir / "top_popular.json").unlink()  # the cell recomputes it
    ctx.run_stage(plan["top_popular"])
    finish_run(ctx)
    assert state_of(paths) == "unfinished"


def test_a_damaged_cache_record_runs_its_stage_again(
    own_dir: Path, tiny_raw_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage in `cache/ranker.json` stopped the run with a JSONDecodeError naming no file
    (a record that is JSON but no object: an AttributeError)."""
    run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)
    for garbage in ("garbage{", '"x"'):
        (own_dir / "cache" / "ranker.json").write_text(garbage)
        _, reused, ran = run(tiny_raw_dir, own_dir, fast_pipeline_config(), caplog)
        assert "ranker" in ran and "ranker" not in reused
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("ranker.json" in m and "runs again" in m for m in warned), warned


def test_after_final_fit_reruns_recompute_what_it_overwrote(
    own_dir: Path, tiny_raw_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """final_fit overwrites the before-test artifacts: a later run with a changed parameter
    must not build on them (it used to fail: 'saved ALS model does not match'), and
    switching back to before_test must serve before-test artifacts again."""
    paths = ArtifactPaths(own_dir)
    final = CHANGED.model_copy(update={"final_fit": "all"})
    run(tiny_raw_dir, own_dir, final, caplog)  # baseline: the refit artifacts are served
    events = pd.read_parquet(paths.events)

    k5 = fast_pipeline_config(similar={"k": 5}, final_fit="all")
    metrics, _, ran = run(tiny_raw_dir, own_dir, k5, caplog)
    assert {"similar", "ranker", "evaluate", "final_fit"} <= ran
    sim = pd.read_parquet(paths.similar)
    assert (sim.groupby(C.Item1).size() == 5).all()
    assert set(sim[C.Item1]) == set(events[C.Item].unique().tolist())  # refit on all events

    back = fast_pipeline_config(similar={"k": 5})
    back_metrics, _, ran = run(tiny_raw_dir, own_dir, back, caplog)
    assert {"top_popular", "als", "similar", "ranker"} <= ran
    assert back_metrics["final_fit"] == "before_test"
    assert back_metrics["warm"] == metrics["warm"]
    history = events[events[C.Datetime] < pd.Timestamp(metrics["split"]["test_start"])]
    hist_users = np.unique(history[C.User])
    assert np.array_equal(np.load(paths.model_dir / "als_user_ids.npy"), hist_users)
    assert set(pd.read_parquet(paths.recommendations)[C.User]) == set(hist_users.tolist())
    top = pd.read_parquet(paths.top_popular)
    assert top[C.Item].tolist() == listeners_per_track(history).head(len(top))[C.Item].tolist()
    # and now everything is reusable again
    _, reused, ran = run(tiny_raw_dir, own_dir, back, caplog)
    assert reused == set(STAGES) and not ran


def test_force_recomputes_everything(
    own_dir: Path, tiny_raw_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = fast_pipeline_config(similar={"k": 5})
    run(tiny_raw_dir, own_dir, cfg, caplog)
    before = snapshot(own_dir)
    _, reused, ran = run(tiny_raw_dir, own_dir, cfg, caplog, force=True)
    assert not reused and ran == set(STAGES)
    after = snapshot(own_dir)
    assert set(after) == set(before)
    unchanged = {f for f in before if after[f] == before[f]}
    # left by an earlier final_fit="all" run; the run lock, which no run writes
    assert unchanged <= {"cache/final_fit.json", f"cache/{RUN_LOCK}"}


# ------------------------------------------------------------- leakage, end to end


def _context(prepared: PreparedData, cfg: PipelineConfig, root: Path) -> PipelineContext:
    ctx = PipelineContext(root, ArtifactPaths(root), cfg, StageCache(root / "cache"))
    ctx.data = prepared
    return ctx


@pytest.mark.parametrize("windows", [1, 3])
def test_ranker_training_and_tuning_never_read_the_test_window(
    tiny_prepared: PreparedData, tmp_path: Path, windows: int
) -> None:
    events, items = tiny_prepared.events, tiny_prepared.items
    start = pd.Timestamp("2022-12-10")
    cfg = fast_pipeline_config(
        split={"test_start": start.date()},
        als={
            **FAST_CONFIG["als"],
            "factors_grid": [4, 16],
            "iterations": 3,
            "tune_windows": windows,
        },
        ranker={**FAST_CONFIG["ranker"], "label_windows": windows},
    )
    ctx = _context(tiny_prepared, cfg, tmp_path / "a")
    stage_als_label(ctx)  # the newest window's first stage
    ranker, info = train_ranker(ctx)
    params = tune_als(ctx)

    # another test window: the real one dropped, every pre-test pair heard again
    past = events[events[C.Datetime] < start]
    future = past.sample(3_000, random_state=0).assign(**{C.Datetime: start})
    changed = pd.concat([past, future.astype(past.dtypes.to_dict())], ignore_index=True)
    ctx2 = _context(PreparedData(items, changed, {}), cfg, tmp_path / "b")
    assert ctx2.test.start == ctx.test.start
    stage_als_label(ctx2)
    ranker2, info2 = train_ranker(ctx2)
    assert tune_als(ctx2) == params

    assert len(info["label_windows"]) == windows
    for key in ("train_rows", "train_users", "label_candidate_recall", "label_windows"):
        assert info2[key] == info[key], key
    rng = np.random.default_rng(0)
    probe = pd.DataFrame({f: rng.normal(size=500) for f in FEATURES})
    probe["main_genre"] = rng.choice(["0", "1", "-1"], 500)
    assert np.array_equal(ranker.predict(probe), ranker2.predict(probe))


def _scripted_grid_context(
    tiny_prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> PipelineContext:
    """A context tuning ALS over a 4-point grid whose label-window NDCGs are scripted, in
    the grid's order (factors, then regularization, then alpha): (4, 5) 0.10, (4, 20)
    0.30, (6, 5) 0.50, (6, 20) 0.20."""
    import musicrec.metrics

    cfg = fast_pipeline_config(
        als={
            "tune": True,
            "factors_grid": [4, 6],
            "regularization_grid": [0.01],
            "alpha_grid": [5.0, 20.0],
        }
    )
    scripted = iter([0.10, 0.30, 0.50, 0.20])
    monkeypatch.setattr(musicrec.metrics, "ndcg_at_k", lambda *a, **k: pd.Series([next(scripted)]))
    return _context(tiny_prepared, cfg, tmp_path / "a")


def test_tuning_returns_the_grid_point_with_the_best_label_window_ndcg(
    tiny_prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grid point kept is the one scoring best, wherever it is in the grid (scores
    scripted in the grid's order: factors, then regularization, then alpha)."""
    params = tune_als(_scripted_grid_context(tiny_prepared, tmp_path, monkeypatch))
    assert params == {"factors": 6, "regularization": 0.01, "alpha": 5.0}


def test_the_als_label_stage_reports_every_grid_point(
    tiny_prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage's result lists each grid point with its label-window NDCG (the notebook
    shows them; they were only in the log) and the pick is the best of them."""
    info = stage_als_label(_scripted_grid_context(tiny_prepared, tmp_path, monkeypatch))
    assert info["tuning"] == [
        {"factors": 4, "regularization": 0.01, "alpha": 5.0, "mean_label_window_ndcg": 0.10},
        {"factors": 4, "regularization": 0.01, "alpha": 20.0, "mean_label_window_ndcg": 0.30},
        {"factors": 6, "regularization": 0.01, "alpha": 5.0, "mean_label_window_ndcg": 0.50},
        {"factors": 6, "regularization": 0.01, "alpha": 20.0, "mean_label_window_ndcg": 0.20},
    ]
    assert info["params"] == {"factors": 6, "regularization": 0.01, "alpha": 5.0}
    untuned = fast_pipeline_config(als={"tune": False})
    info = stage_als_label(_context(tiny_prepared, untuned, tmp_path / "b"))
    assert info["tuning"] == [] and info["params"] == {}


def test_tuning_over_several_windows_picks_the_best_mean(
    tiny_prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `als.tune_windows = 2` the grid is scored on the two newest label windows and
    the point with the best mean wins, not the best of the newest window alone; each
    window's grid is fit on the history before that window."""
    import musicrec.metrics
    import musicrec.pipeline as pipeline_module

    grid = {"factors_grid": [4, 6], "regularization_grid": [0.01], "alpha_grid": [5.0, 20.0]}
    # newest window: (6, 5) best; older window: (4, 20) best; mean: (4, 20) 0.325
    scores = [0.10, 0.30, 0.50, 0.20, 0.40, 0.35, 0.00, 0.10]
    fits: list[pd.Timestamp] = []
    real_grid = pipeline_module.als_grid_ndcg

    def recording(ctx: PipelineContext, lab: Any) -> Any:
        fits.append(lab.start)
        assert lab.history[C.Datetime].max() < lab.start  # fit before the window it scores
        return real_grid(ctx, lab)

    monkeypatch.setattr(pipeline_module, "als_grid_ndcg", recording)
    for windows, expected in [(1, (6, 5.0)), (2, (4, 20.0))]:
        scripted = iter(scores)
        monkeypatch.setattr(
            musicrec.metrics,
            "ndcg_at_k",
            lambda *a, it=scripted, **k: pd.Series([next(it)]),
        )
        cfg = fast_pipeline_config(als={"tune": True, "tune_windows": windows, **grid})
        fits.clear()
        ctx = _context(tiny_prepared, cfg, tmp_path / str(windows))
        params = tune_als(ctx)
        assert (params["factors"], params["alpha"]) == expected
        assert len(fits) == windows and fits == sorted(fits, reverse=True)
        assert fits[0] == ctx.label.start and ctx.label.start < ctx.test.start


def test_tuning_without_a_scorable_user_is_an_error() -> None:
    """`tune_max_users` so small that no sampled user listened in the label window: no grid
    point can be scored (the stage went on with the defaults, 64 factors here, silently)."""
    from types import SimpleNamespace

    hist = pd.DataFrame({C.User: [1, 1, 2, 2, 3, 3], C.Item: [10, 11, 11, 12, 10, 12]})
    target = pd.DataFrame({C.User: [2], C.Item: [10]})
    cfg = PipelineConfig.model_validate(
        {
            "als": {
                "factors": 64,
                "factors_grid": [4],
                "regularization_grid": [0.1],
                "alpha_grid": [5.0],
                "tune_max_users": 1,
                "iterations": 2,
            }
        }
    )
    picked = []
    for seed in range(6):  # some seeds sample user 2 (a grid point), others not (the error)
        c = cfg.model_copy(update={"als": cfg.als.model_copy(update={"random_state": seed})})
        ctx = SimpleNamespace(cfg=c, label=SimpleNamespace(history=hist, window_events=target))
        try:
            picked.append(tune_als(ctx))
        except ConfigError as exc:
            assert "none of the 1 users it samples" in str(exc)
            assert "als.tune_max_users" in str(exc)
            picked.append(None)
    assert {"factors": 4, "regularization": 0.1, "alpha": 5.0} in picked and None in picked
    assert {} not in picked


def test_label_window_precedes_test_window(tiny_prepared: PreparedData, tmp_path: Path) -> None:
    ctx = _context(tiny_prepared, fast_pipeline_config(), tmp_path)
    lab, test = ctx.label, ctx.test
    assert lab.history[C.Datetime].max() < lab.start
    assert lab.window_events[C.Datetime].max() < test.start
    assert len(lab.history) + len(lab.window_events) == len(test.history)
    m = InteractionMatrix.from_events(lab.history)
    assert m.users.ids.max() <= test.history[C.User].max()


def test_rows_of_keys_hand_example() -> None:
    keys = np.array([1, 1, 3, 5, 5, 5, 8])
    assert rows_of_keys(keys, np.array([1, 5, 7, 8])).tolist() == [0, 1, 3, 4, 5, 6]
    assert rows_of_keys(keys, np.array([3])).tolist() == [2]
    assert rows_of_keys(keys, np.array([0, 2, 9])).tolist() == []
    assert rows_of_keys(keys, np.array([], dtype=np.int64)).tolist() == []


def _training_rows(
    prepared: PreparedData, root: Path, monkeypatch: pytest.MonkeyPatch, **ranker: Any
) -> tuple[pd.DataFrame, dict[str, Any], list[np.ndarray], Any]:
    """`window_training_rows` of the newest label window, with the user batches it
    generated candidates for and the first stage it fit."""
    import musicrec.pipeline as pipeline_module
    from musicrec.candidates import FirstStage

    cfg = fast_pipeline_config(ranker={**FAST_CONFIG["ranker"], **ranker})
    ctx = _context(prepared, cfg, root)
    batches: list[np.ndarray] = []
    stages: list[Any] = []
    real_candidates, real_fit = pipeline_module.generate_candidates, FirstStage.fit

    def recording(stage: Any, users: np.ndarray, rcfg: Any) -> pd.DataFrame:
        batches.append(users)
        return real_candidates(stage, users, rcfg)

    def fit(*args: Any, **kwargs: Any) -> Any:
        stages.append(real_fit(*args, **kwargs))
        return stages[-1]

    stage_als_label(ctx)
    monkeypatch.setattr(pipeline_module, "generate_candidates", recording)
    monkeypatch.setattr(FirstStage, "fit", fit)
    train, facts = window_training_rows(ctx, ctx.label, 0)
    monkeypatch.undo()
    return train, facts, batches, stages[0]


def test_window_training_rows_uncapped_equals_labelling_every_user_at_once(
    tiny_prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from musicrec.ranker import TARGET, label_candidates, sample_training_rows

    train, facts, batches, stage = _training_rows(
        tiny_prepared, tmp_path, monkeypatch, max_train_users=None, inference_batch_users=7
    )
    cfg = fast_pipeline_config()
    lab = _context(tiny_prepared, cfg, tmp_path).label
    users = np.intersect1d(lab.window_events[C.User].unique(), stage.matrix.users.ids)
    # every label user visited once, in ascending batches of 7
    assert len(batches) == -(-len(users) // 7)
    assert np.array_equal(np.concatenate(batches), users)
    assert facts["users_scanned"] == len(users)
    # the reference: all users' candidates labelled at once, then sampled
    rcfg = fast_pipeline_config(ranker={**FAST_CONFIG["ranker"], "max_train_users": None}).ranker
    cand = pipeline_generate(stage, users, rcfg)
    labelled = label_candidates(cand, lab.window_events)
    ref = sample_training_rows(labelled, rcfg.negatives_per_user, None, rcfg.random_seed)
    got = train.drop(columns=[c for c in train.columns if c not in ref.columns])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref.reset_index(drop=True))
    assert facts["users_with_positive"] == ref[C.User].nunique() == train[C.User].nunique()
    target = lab.window_events[lab.window_events[C.User].isin(users)][
        [C.User, C.Item]
    ].drop_duplicates()
    assert facts["candidate_recall"] == pytest.approx(labelled[TARGET].sum() / len(target))


def rcfg_of(cap: int) -> Any:
    return fast_pipeline_config(ranker={**FAST_CONFIG["ranker"], "max_train_users": cap}).ranker


def pipeline_generate(stage: Any, users: np.ndarray, rcfg: Any) -> pd.DataFrame:
    from musicrec.candidates import generate_candidates

    return generate_candidates(stage, users, rcfg)


def test_window_training_rows_capped_stops_once_enough_users_have_a_positive(
    tiny_prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from musicrec.ranker import TARGET, label_candidates

    cap = 6
    train, facts, batches, stage = _training_rows(
        tiny_prepared, tmp_path, monkeypatch, max_train_users=cap, inference_batch_users=4
    )
    lab = _context(tiny_prepared, fast_pipeline_config(), tmp_path).label
    users = np.intersect1d(lab.window_events[C.User].unique(), stage.matrix.users.ids)
    assert len(users) > 3 * cap  # the cap binds on this data
    visited = np.concatenate(batches)
    # a random order (not ascending), each batch sorted, no user twice, stopped early
    assert not np.array_equal(visited, np.sort(visited))
    assert all(np.array_equal(b, np.sort(b)) for b in batches)
    assert len(np.unique(visited)) == len(visited) == facts["users_scanned"] < len(users)
    # the batches before the last had found fewer than `cap` users with a positive
    before = np.concatenate(batches[:-1])
    part = label_candidates(
        pipeline_generate(stage, np.sort(before), rcfg_of(cap)), lab.window_events
    )
    assert part.loc[part[TARGET] == 1, C.User].nunique() < cap
    # exactly `cap` users, each with a positive, all among the visited users
    assert train[C.User].nunique() == cap
    assert (train.groupby(C.User)[TARGET].max() == 1).all()
    assert np.isin(train[C.User].unique(), visited).all()
    assert facts["users_with_positive"] >= cap
    # seeded: the same sample again
    again, _, batches2, _ = _training_rows(
        tiny_prepared, tmp_path, monkeypatch, max_train_users=cap, inference_batch_users=4
    )
    pd.testing.assert_frame_equal(train, again)
    assert all(np.array_equal(a, b) for a, b in zip(batches, batches2, strict=True))


def test_label_windows_are_disjoint_newest_first_each_after_its_history(
    tiny_prepared: PreparedData, tmp_path: Path
) -> None:
    cfg = fast_pipeline_config(ranker={**FAST_CONFIG["ranker"], "label_windows": 3})
    ctx = _context(tiny_prepared, cfg, tmp_path)
    wins = [
        (w.start, w.history[C.Datetime].max(), w.window_events[C.Datetime])
        for w in label_windows(ctx)
    ]
    assert len(wins) == 3
    later = ctx.test.start
    for start, hist_max, target in wins:
        assert hist_max < start <= target.min()  # features only from before the window
        assert target.max() < later  # ends before the next (newer) window, or the test
        later = start


def test_label_windows_stop_early_when_the_history_runs_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # three days: test = day 3, label window 0 = day 2, nothing left to split day 1
    days = pd.to_datetime(["2022-01-01", "2022-01-02", "2022-01-03"])
    events = pd.DataFrame(
        {
            C.User: np.repeat(np.arange(4, dtype=np.int32), 3),
            C.Item: np.arange(12, dtype=np.int32) % 5,
            C.Datetime: np.tile(days, 4),
            C.Seq: np.tile(np.arange(1, 4, dtype=np.int16), 4),
        }
    )
    cfg = fast_pipeline_config(ranker={**FAST_CONFIG["ranker"], "label_windows": 4})
    ctx = _context(PreparedData(pd.DataFrame(), events, {}), cfg, tmp_path)
    with caplog.at_level(logging.WARNING, logger="musicrec.pipeline"):
        wins = list(label_windows(ctx))
    assert [w.start for w in wins] == [days[1]]
    assert "1 label windows instead of 4" in caplog.text


def test_a_windows_training_rows_use_als_parameters_tuned_before_it(
    tiny_prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The served ALS's pick, made on the newest label window, also built that window's
    training rows: its ALS features were the grid's best at fitting its own labels (a
    review moved the pick, and every row's ALS features, by changing only that window's
    listens). Each window's rows now use the pick of the windows before it; the served
    ALS keeps the newest window's. Here the grid's best point is made to differ by
    window: window 0 would pick 4 factors, window 1 8, window 2 4."""
    import musicrec.pipeline as pipeline_module

    als = {**FAST_CONFIG["als"], "factors_grid": [4, 8]}
    cfg = fast_pipeline_config(als=als, ranker={**FAST_CONFIG["ranker"], "label_windows": 2})
    ctx = _context(tiny_prepared, cfg, tmp_path)
    starts = [lab.start for lab in label_windows(ctx, 3)]
    assert len(starts) == 3
    seen: list[pd.Timestamp] = []

    def scripted(c: PipelineContext, lab: Any) -> list[tuple[dict[str, float], float]]:
        seen.append(lab.start)
        best = starts.index(lab.start) % 2  # window 0: 4 factors, 1: 8, 2: 4
        return [
            ({"factors": f, "regularization": 0.01, "alpha": 10.0}, float(i == best))
            for i, f in enumerate([4, 8])
        ]

    monkeypatch.setattr(pipeline_module, "als_grid_ndcg", scripted)
    info = stage_als_label(ctx)
    assert info["params"]["factors"] == 4 and seen == [starts[0]]  # the served pick
    seen.clear()
    _, facts = train_ranker(ctx)
    assert starts[0] not in seen  # no grid on the newest window for the training rows
    used = [w["als_params"]["factors"] for w in facts["label_windows"]]
    assert used == [8, 4], used  # window 0 from window 1's grid, window 1 from window 2's
    assert ctx.als_cfg().factors == 4  # the served ALS's are unchanged


def test_an_older_window_without_a_scorable_user_falls_back_to_the_config(
    tiny_prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tuning the training rows' ALS reads windows older than the served pick's: one that
    no grid point can be scored on is skipped with a warning instead of stopping the run;
    a window with none left gets the config's parameters."""
    import musicrec.pipeline as pipeline_module

    cfg = fast_pipeline_config(
        als={**FAST_CONFIG["als"], "factors": 12},
        ranker={**FAST_CONFIG["ranker"], "label_windows": 2},
    )
    ctx = _context(tiny_prepared, cfg, tmp_path)
    starts = [lab.start for lab in label_windows(ctx, 3)]

    def scripted(c: PipelineContext, lab: Any) -> list[tuple[dict[str, float], float]]:
        if lab.start == starts[2]:
            raise ConfigError("ALS tuning: none of the users it samples listened")
        return [({"factors": 4, "regularization": 0.01, "alpha": 10.0}, 1.0)]

    monkeypatch.setattr(pipeline_module, "als_grid_ndcg", scripted)
    picks = pipeline_module.training_als_params(ctx)
    assert picks[0] == {"factors": 4, "regularization": 0.01, "alpha": 10.0}  # window 1's
    assert picks[1] == {"factors": 12, "regularization": 0.01, "alpha": 10.0}  # the config's


def test_training_rows_of_one_label_are_a_clear_error(
    tiny_prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kept training row a positive (too few candidates per user to leave negatives):
    a DataValidationError naming the candidate settings, not CatBoost's "All train targets
    are equal" traceback after the ALS stages."""
    import musicrec.pipeline as pipeline_module
    from musicrec.ranker import TARGET

    cfg = fast_pipeline_config()

    def all_positive(
        ctx: PipelineContext, lab: object, w: int, params: object = None
    ) -> tuple[pd.DataFrame, dict]:
        rows = pd.DataFrame({C.User: np.arange(6, dtype=np.int32), TARGET: np.int8(1)})
        for name in cfg.ranker.feature_names:
            rows[name] = np.float32(w)
        return rows, {"candidate_recall": 1.0}

    monkeypatch.setattr(pipeline_module, "window_training_rows", all_positive)
    ctx = _context(tiny_prepared, cfg, tmp_path)
    with pytest.raises(DataValidationError, match=r"every one labelled 1.*als_candidates"):
        train_ranker(ctx)


def test_no_positive_training_row_is_a_clear_error(
    tiny_prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import musicrec.pipeline as pipeline_module

    def no_rows(
        ctx: PipelineContext, lab: object, w: int, params: object = None
    ) -> tuple[pd.DataFrame, dict]:
        return pd.DataFrame({C.User: pd.Series([], dtype=np.int32)}), {"candidate_recall": 0.0}

    monkeypatch.setattr(pipeline_module, "window_training_rows", no_rows)
    ctx = _context(tiny_prepared, fast_pipeline_config(), tmp_path)
    with pytest.raises(DataValidationError, match="no positive training row"):
        train_ranker(ctx)


# -------------------------------------------------------------------------- config


def test_load_config_toml_and_yaml(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(
        'top_k = 30\nfinal_fit = "all"\n[als]\nfactors = 8\ntune = false\n'
        "[split]\ntest_start = 2022-12-01\n[ranker]\niterations = 20\n"
    )
    yml = tmp_path / "p.yaml"
    yml.write_text(
        "top_k: 30\nfinal_fit: all\nals:\n  factors: 8\n  tune: false\n"
        "split:\n  test_start: 2022-12-01\nranker:\n  iterations: 20\n"
    )
    a, b = load_config(toml), load_config(yml)
    assert a == b
    assert a.top_k == 30 and a.final_fit == "all"
    assert a.als.factors == 8 and a.als.tune is False
    assert str(a.split.test_start) == "2022-12-01"
    assert a.ranker.iterations == 20
    assert a.similar.k == PipelineConfig().similar.k  # untouched sections keep defaults
    assert load_config(None) == PipelineConfig()
    empty = tmp_path / "e.yml"
    empty.write_text("")
    assert load_config(empty) == PipelineConfig()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("topk = 5\n", "topk"),  # misspelt top-level key
        ("[als]\nfactor = 8\n", "als.factor"),  # misspelt nested key
        ("[als]\nfactors = 0\n", "als.factors"),  # out of range
        ("[eval]\nk_ndcg = 0\n", "eval.k_ndcg"),  # a metric at k = 0 is undefined
        ("[eval]\nk_precision = 0\n", "eval.k_precision"),
        # a loss CatBoost would refuse only after the ALS stages; an empty tuning grid
        ('[ranker]\nloss_function = "Nonsense"\n', "ranker.loss_function"),
        ('[ranker]\nloss_function = "QueryCrossEntropy"\n', "ranker.loss_function"),
        ("[als]\nfactors_grid = []\n", "als.factors_grid"),
        # ranks of candidates are int16: more than 10,000 per source is refused
        ("[ranker]\npopular_candidates = 40000\n", "ranker.popular_candidates"),
        ("[ranker]\nals_candidates = 10001\n", "ranker.als_candidates"),
        ("[ranker]\nsimilar_candidates = 10001\n", "ranker.similar_candidates"),
        ('final_fit = "sometimes"\n', "final_fit"),
        ("[nosuchsection]\nx = 1\n", "nosuchsection"),
        ("[ranker]\nenabled = true\n", "ranker.enabled"),  # removed: nothing read it
        ("[split]\nval_share = 0.1\n", "split.val_share"),
        ("[als\nfactors = 8\n", "TOMLDecodeError"),  # not TOML
        # values of the wrong type: errors, not what pydantic's lax mode makes of them
        ("[eval]\nk_ndcg = true\n", "eval.k_ndcg"),  # lax: 1
        ('[als]\nfactors = "64"\n', "als.factors"),  # lax: 64
        ("[als]\nfactors = 64.0\n", "als.factors"),  # lax: 64
        ("[als]\ntune = 1\n", "als.tune"),  # lax: True
        ('[als]\ntune = "no"\n', "als.tune"),  # lax: False
        ('[ranker]\nfeatures = "als_score"\n', "ranker.features"),
        ("[split]\ntest_start = 2022-12-01T00:00:00\n", "split.test_start"),  # a day, not a time
        ("[split]\ntest_start = 12:00:00\n", "split.test_start"),
        # lists shorter than the metrics' k would be scored unfairly against popular
        ("top_k = 20\n[eval]\nk_ndcg = 50\n", "top_k = 20 is shorter than the metrics' k = 50"),
        ("[als]\nn_recs = 5\n[eval]\nk_ndcg = 10\n", "als.n_recs = 5 is shorter"),
        # the cold users' served list: scored as a fresh top 10, it looked better than served
        ("top_popular_k = 3\n", "top_popular_k = 3 is shorter than the metrics' k = 10"),
        # ALS lists come from the scored head: one no longer than them cut them short
        ("[als]\nmax_scored_items = 100\n", "als.max_scored_items = 100 must exceed"),
        # the ranker orders its candidates only: fewer ALS ones than k made short lists
        ("[ranker]\nals_candidates = 5\n", "ranker.als_candidates = 5 is fewer than"),
        # CatBoost refuses StochasticRank without its metric, after the ALS stages
        ('[ranker]\nloss_function = "StochasticRank"\n', "StochasticRank needs its metric"),
        ("[als]\nmax_scored_items = 150\nn_recs = 200\n", "als.n_recs (200)"),
    ],
)
def test_load_config_rejects_bad_keys(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(named)) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value.__cause__, pydantic.ValidationError | tomllib.TOMLDecodeError)


def test_load_config_is_strict_only_where_a_value_would_change_meaning(tmp_path: Path) -> None:
    """An integer is a float, a YYYY-MM-DD string is a day, YAML's null is None."""
    yml = tmp_path / "p.yaml"
    yml.write_text(
        "als:\n  alpha: 10\n  alpha_grid: [5, 20]\n  warm_start_iterations: null\n"
        "split:\n  test_start: '2022-12-01'\n"
    )
    cfg = load_config(yml)
    assert cfg.als.alpha == 10.0 and isinstance(cfg.als.alpha, float)
    assert cfg.als.alpha_grid == [5.0, 20.0]
    assert cfg.als.warm_start_iterations is None
    assert cfg.split.test_start == date(2022, 12, 1)


def test_yaml_floats_without_a_dot_are_numbers(tmp_path: Path) -> None:
    """`1e-3` is a string to PyYAML (YAML 1.1) and was refused by the strict check: read as
    YAML 1.2 reads it; a float for an integer field stays an error."""
    yml = tmp_path / "p.yaml"
    yml.write_text(
        "als:\n  regularization: 1e-3\n  alpha_grid: [5, 2e1]\nranker:\n  learning_rate: 5e-2\n"
    )
    cfg = load_config(yml)
    assert cfg.als.regularization == 0.001 and cfg.ranker.learning_rate == 0.05
    assert cfg.als.alpha_grid == [5.0, 20.0]
    yml.write_text("als:\n  factors: 1e2\n")
    with pytest.raises(ConfigError, match="als.factors"):
        load_config(yml)


def test_load_config_names_a_yaml_value_with_no_config_meaning(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("als:\n  factors_grid: !!set {8: null, 16: null}\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: invalid config: .*type set"):
        load_config(path)


def test_load_config_rejects_other_formats_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("{}")
    with pytest.raises(ConfigError, match="toml"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


CONFIG_FILES = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
SECTIONS = ["data", "split", "als", "similar", "ranker", "eval"]


@pytest.mark.parametrize(
    "cfg",
    [
        PipelineConfig(),
        PipelineConfig.model_validate(
            {
                "split": {"test_start": "2022-12-16"},
                "als": {"max_scored_items": 5000, "factors_grid": [8, 16]},
                "ranker": {"features": ["als_score", "main_genre"], "bag_size": 3},
                "final_fit": "all",
            }
        ),
        PipelineConfig.model_validate(  # what a string or a number may hold
            {
                "als": {"regularization": 1e-7, "alpha": 1e20, "alpha_grid": [5e-324, 2.0]},
                "ranker": {"loss_function": 'YetiRank:a="b\\c\n\t\x00\x7f é 雪 😀'},
                "data": {"seed": 0},
            }
        ),
        *[load_config(path) for path in CONFIG_FILES],
    ],
    ids=["defaults", "custom", "odd values", *[p.stem for p in CONFIG_FILES]],
)
def test_config_as_toml_reads_back_to_the_same_config(cfg: PipelineConfig, tmp_path: Path) -> None:
    """`python -m musicrec config` prints this text: a config file that `load_config`
    reads back to the same parameters, with every key on a line (None ones commented out,
    as TOML has no null) and a comment above each key that has a description or limits."""
    text = config_as_toml(cfg)
    path = tmp_path / "shown.toml"
    path.write_text(text)
    assert load_config(path) == cfg
    lines = text.splitlines()
    for section, model in [(None, cfg), *[(n, getattr(cfg, n)) for n in SECTIONS]]:
        for name, info in type(model).model_fields.items():
            if name in SECTIONS and section is None:
                assert f"[{name}]" in lines
                continue
            value = getattr(model, name)
            mark = f"# {name} = " if value is None else f"{name} = "
            at = [i for i, line in enumerate(lines) if line.startswith(mark)]
            assert at, (section, name)
            if info.description:
                assert lines[at[0] - 1].startswith("# "), (section, name)


@pytest.mark.parametrize(
    "cfg",
    [
        PipelineConfig(),
        PipelineConfig.model_validate(
            {
                "split": {"test_start": "2022-12-16"},
                "als": {"tune_max_users": None, "alpha_grid": [5e-324, 2.0], "alpha": 1e20},
                "eval": {"candidate_recall_users": None},
                "ranker": {
                    "loss_function": 'YetiRank:a="b\\c\n\t\x00\x7f é 雪 😀 \x85 \u2028 \ufeff'
                },
                "final_fit": "all",
            }
        ),
        # a NEL alone: PyYAML wrote it raw (allowed Unicode) and read it as a line break
        PipelineConfig.model_validate({"ranker": {"loss_function": "YetiRank:x\x85y"}}),
        *[load_config(path) for path in CONFIG_FILES],
    ],
    ids=["defaults", "None and odd values", "NEL", *[p.stem for p in CONFIG_FILES]],
)
def test_config_as_yaml_reads_back_to_the_same_config(cfg: PipelineConfig, tmp_path: Path) -> None:
    """`python -m musicrec config --format yaml`: what TOML cannot say (None where the
    default is a number) reads back too, and every key has its line, commented."""
    text = config_as_yaml(cfg)
    path = tmp_path / "shown.yaml"
    path.write_text(text)
    assert load_config(path) == cfg
    lines = text.splitlines()
    for section in SECTIONS:
        assert f"{section}:" in lines
        for name, info in type(getattr(cfg, section)).model_fields.items():
            at = [i for i, line in enumerate(lines) if line.startswith(f"  {name}: ")]
            assert at, (section, name)
            if info.description:
                assert lines[at[0] - 1].startswith("  # "), (section, name)


def test_config_as_toml_refuses_a_none_toml_cannot_say() -> None:
    """None where the default is a number ("every user") was printed as a commented-out
    line, which reads back as the default: the printed file said 30,000 users where the
    config said all of them. Now an error naming each such key."""
    cfg = PipelineConfig.model_validate(
        {"als": {"tune_max_users": None}, "eval": {"candidate_recall_users": None}}
    )
    with pytest.raises(ConfigError) as err:
        config_as_toml(cfg)
    assert str(err.value).startswith("als.tune_max_users, eval.candidate_recall_users: None")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[als]\nregularization = inf\n", "als.regularization"),
        ("[als]\nalpha_grid = [nan]\n", "als.alpha_grid"),
        ("[ranker]\nthread_count = 0\n", "ranker.thread_count"),
        ("[ranker]\nthread_count = -2\n", "ranker.thread_count"),
        ("[ranker]\nrandom_seed = -1\n", "ranker.random_seed"),
        ("[als]\nrandom_state = 1180591620717411303424\n", "als.random_state"),
        ("[data]\nseed = -5\n", "data.seed"),
    ],
)
def test_load_config_refuses_values_that_fail_only_in_a_stage(
    tmp_path: Path, text: str, named: str
) -> None:
    """inf and nan mean nothing as parameters; CatBoost refuses 0 or -2 threads and numpy a
    negative seed, each only when its stage ran, after the ALS fits."""
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"invalid config: {re.escape(named)}"):
        load_config(path)


def test_split_stage_does_not_hold_the_label_split(tiny_pipeline: TinyPipeline) -> None:
    """The label split (a copy of most of the history) is dropped after the split stage's
    facts and rebuilt by the ranker: the same window, so the facts stay true."""
    ctx = PipelineContext(
        tiny_pipeline.root,
        tiny_pipeline.paths,
        tiny_pipeline.cfg,
        StageCache(tiny_pipeline.root / "cache"),
    )
    facts = stage_split(ctx)["split"]
    assert ctx.label_split is None and ctx.test_split is not None
    label = ctx.label  # rebuilt on demand
    assert str(label.start.date()) == facts["label_start"]
    assert len(label.window_events) == facts["label_rows"]
    assert len(label.history) == facts["label_history_rows"]


def test_evaluation_drops_the_first_stage_before_the_metrics(
    tiny_pipeline: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metrics never read the first stage (GBs at the full size): the evaluation stage
    releases it before computing them, and the results are those of the pipeline's run."""
    import shutil

    import musicrec.metrics
    from musicrec.pipeline import stage_evaluate

    root = tmp_path / "recsys"
    shutil.copytree(tiny_pipeline.root, root)  # the stage redraws a picture: not in the shared run
    ctx = PipelineContext(root, ArtifactPaths(root), tiny_pipeline.cfg, StageCache(root / "cache"))
    real = musicrec.metrics.evaluate
    held: list[bool] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        held.append(ctx._stage is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(musicrec.metrics, "evaluate", spy)
    info = stage_evaluate(ctx)
    assert held and not any(held)  # every evaluate call ran with the first stage dropped
    assert info["warm"] == tiny_pipeline.metrics["warm"]
    assert info["candidates"] == tiny_pipeline.metrics["candidates"]


@pytest.mark.parametrize("warm", [None, 2])
def test_label_window_als_is_the_rankers_first_stage_and_the_warm_start(
    tiny_prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warm: int | None
) -> None:
    """`als_label` fits ALS on the feature history only; the ranker's newest window uses
    that model instead of fitting another; the served ALS starts from it with
    `warm_start_iterations` (or from random factors, with `iterations`, when None)."""
    from musicrec.candidates import FirstStage

    als_cfg = {**FAST_CONFIG["als"], "tune": False, "warm_start_iterations": warm}
    ctx = _context(tiny_prepared, fast_pipeline_config(als=als_cfg), tmp_path)
    stage_als_label(ctx)
    label = ALSModel.load(ctx.paths.label_model_dir)
    hist = ctx.label.history
    assert np.array_equal(label.users.ids, np.unique(hist[C.User].to_numpy()))
    assert np.array_equal(label.items.ids, np.unique(hist[C.Item].to_numpy()))

    fits: list[dict[str, Any]] = []
    real_fit = ALSModel.fit

    def spy(matrix: InteractionMatrix, cfg: Any, *args: Any, **kwargs: Any) -> ALSModel:
        fits.append(kwargs)
        return real_fit(matrix, cfg, *args, **kwargs)

    monkeypatch.setattr(ALSModel, "fit", spy)
    info = stage_als(ctx)
    assert len(fits) == 1 and fits[0]["iterations"] == warm
    if warm is None:
        assert fits[0]["init"] is None and info["iterations"] == ctx.cfg.als.iterations
    else:
        assert np.array_equal(fits[0]["init"].item_factors, label.item_factors)
        assert info["iterations"] == warm and info["warm_start"]

    stages: list[Any] = []
    real_stage = FirstStage.fit

    def stage_spy(*args: Any, **kwargs: Any) -> Any:
        stages.append(real_stage(*args, **kwargs))
        return stages[-1]

    monkeypatch.setattr(FirstStage, "fit", stage_spy)
    window_training_rows(ctx, ctx.label, 0)
    assert len(fits) == 1  # no ALS fit for the label window: the saved one is used
    assert np.array_equal(stages[0].als.item_factors, label.item_factors)


def test_features_constant_in_one_window_or_at_inference_are_reported(
    tiny_prepared: PreparedData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A feature that varies in training but takes one value in one label window, or over
    every scored candidate, is reported (a train/serve skew, e.g. a "recent" window
    shorter than the data's time step: on Last.fm's monthly dates the recent-popularity
    features were 0 for every test candidate). Here one feature is zeroed in label window 1
    and another in every candidate scored."""
    import musicrec.pipeline as pipeline_module

    cfg = fast_pipeline_config(ranker={**FAST_CONFIG["ranker"], "label_windows": 2})
    ctx = _context(tiny_prepared, cfg, tmp_path / "ctx")
    stage_als_label(ctx)
    real_rows = pipeline_module.window_training_rows

    def window_1_without_recent_pop(
        c: PipelineContext, lab: Any, window: int, params: Any = None
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        rows, facts = real_rows(c, lab, window, params)
        if window == 1:
            rows["item_listeners_recent"] = 0.0
        return rows, facts

    monkeypatch.setattr(pipeline_module, "window_training_rows", window_1_without_recent_pop)
    with caplog.at_level(logging.WARNING, logger="musicrec.pipeline"):
        ranker, info = train_ranker(ctx)
    windows = info["label_windows"]
    assert [w["constant_features"] for w in windows] == [[], ["item_listeners_recent"]]
    assert "label window 1: features ['item_listeners_recent']" in caplog.text

    pipeline_module.stage_als(ctx)
    pipeline_module.stage_similar(ctx)
    stage = ctx.first_stage()
    clean = write_ranked(ctx, ranker, stage, path=tmp_path / "clean.parquet")
    assert clean["constant_at_inference"] == []
    real_features = pipeline_module.collect_features

    def without_user_recent(*args: Any) -> pd.DataFrame:
        return real_features(*args).assign(user_listens_recent=np.float32(3))

    monkeypatch.setattr(pipeline_module, "collect_features", without_user_recent)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="musicrec.pipeline"):
        skewed = write_ranked(ctx, ranker, stage, path=tmp_path / "skewed.parquet")
    assert skewed["constant_at_inference"] == ["user_listens_recent"]
    assert "train/serve skew" in caplog.text
    # a ranker loaded from disk carries no training range: nothing to compare against
    ranker.save(tmp_path / "r.cbm")
    loaded = write_ranked(ctx, Ranker.load(tmp_path / "r.cbm"), stage, path=tmp_path / "l.pq")
    assert "constant_at_inference" not in loaded


def test_ranker_fingerprint_follows_the_code_feature_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no `ranker.features` in the config, a version that changes the default feature
    list refits the ranker: the list lives in `columns.py`, which the ranker stage's code
    hash covers (a copy of the package is edited)."""
    import shutil

    import musicrec.codehash as codehash
    from musicrec.codehash import code_hash

    copy = tmp_path / "musicrec"
    shutil.copytree(codehash.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codehash, "PACKAGE_DIR", copy)
    ctx = PipelineContext(
        tmp_path, ArtifactPaths(tmp_path), PipelineConfig(), StageCache(tmp_path / "cache")
    )
    ranker = next(s for s in build_plan(ctx) if s.name == "ranker")

    def ranker_code() -> str:
        return code_hash(ranker.code)

    before = ranker_code()
    columns = copy / "columns.py"
    original = columns.read_text()
    edited = original.replace('OPT_IN_FEATURES = ["user_genre_cosine"]', "OPT_IN_FEATURES = []")
    assert edited != original
    columns.write_text(edited)
    assert ranker_code() != before
    columns.write_text(original)
    assert ranker_code() == before


def test_similar_stage_proposes_only_the_scored_head(
    tiny_pipeline: TinyPipeline, tmp_path: Path
) -> None:
    """With `als.max_scored_items`, the similar tracks proposed (track_id_2) are among that
    many most-listened tracks, as the ALS lists are; every track still gets its k."""
    root = tmp_path / "recsys"
    shutil.copytree(tiny_pipeline.root, root)  # the stage rewrites similar.parquet
    head = 60
    als = tiny_pipeline.cfg.als.model_copy(update={"max_scored_items": head})
    cfg = tiny_pipeline.cfg.model_copy(update={"als": als})
    ctx = PipelineContext(
        tiny_pipeline.data_dir, ArtifactPaths(root), cfg, StageCache(root / "cache")
    )
    stage_similar(ctx)
    sim = pd.read_parquet(ArtifactPaths(root).similar)
    every = pd.read_parquet(tiny_pipeline.paths.similar)
    assert sim[C.Item2].nunique() <= head < every[C.Item2].nunique()
    assert set(sim[C.Item1]) == set(every[C.Item1])
    assert (sim.groupby(C.Item1).size() == cfg.similar.k).all()

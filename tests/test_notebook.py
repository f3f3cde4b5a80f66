"""recommendations.ipynb: committed clean, defaults equal to the pipeline's, and executed
headless (nbclient) on the tiny preset in temporary directories with a fast configuration.

The kernel is a private kernel spec written to a temporary JUPYTER_PATH that runs this
interpreter (`sys.executable -m ipykernel_launcher`), so the test needs no installed spec
and cannot pick up another environment's `python3` kernel. The notebook generates the tiny
raw data itself (its "generate when DATA_DIR lacks the raw files" path).

After the notebook, one extra cell (added to the in-memory copy only) runs
`musicrec.pipeline.run_pipeline` on the same directories and configuration: the notebook's
copy of the stage plan must give the same fingerprints (every stage reused) and the same
metrics.json.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from musicrec.config import PipelineConfig, load_config
from musicrec.evaluation import unproven_gains
from musicrec.plots import EDA_FILES

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "recommendations.ipynb"
KERNEL = "musicrec-notebook-test"
CELL_TIMEOUT_S = 300

#: appended to the executed copy: the notebook and run_pipeline share the stage cache
PARITY_CHECK = """
import json as _json

from musicrec.pipeline import run_pipeline as _run_pipeline


def _records():
    return {
        p.stem: (p.stat().st_mtime_ns, _json.loads(p.read_text()))
        for p in paths.cache_dir.glob("*.json")
    }


# 1. same config: run_pipeline gives the same fingerprints, reuses every stage (rewrites
#    no stage record) and writes the same metrics.json
_nb_metrics = _json.loads(paths.metrics.read_text())
_before = _records()
assert {k: v[1]["fingerprint"] for k, v in _before.items()} == ctx.fingerprints
_run_pipeline(DATA_DIR, ARTIFACTS_DIR, cfg, progress=False)
_after = _records()
_redone = [k for k in _after if _after[k] != _before.get(k)]
assert not _redone and _after.keys() == _before.keys(), f"run_pipeline recomputed {_redone}"
_cli_metrics = _json.loads(paths.metrics.read_text())
for _m in (_nb_metrics, _cli_metrics):  # this run's, not the result's
    _m.pop("stage_seconds")
    _m.pop("reused_stages")
assert _cli_metrics == _nb_metrics, "metrics.json of the notebook and of run_pipeline differ"

print("plan parity ok:", sorted(ctx.fingerprints))
"""

#: appended after the parity check: a parameter cell re-run without the set-up cell
STALE_CHECK = """
_kept = cfg
cfg = cfg.model_copy(update={"top_k": cfg.top_k + 1})
try:
    run("ranker")
except ConfigError as _exc:
    print("stale parameters refused:", _exc)
finally:
    cfg = _kept
print("same parameters run:", bool(run("ranker")))
"""


def code_cells(cells: list[Any]) -> list[Any]:
    return [c for c in cells if c.cell_type == "code"]


def text_of(cell: Any) -> str:
    """Everything a cell printed or displayed as text (plain and HTML)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.extend(str(out.data.get(k, "")) for k in ("text/plain", "text/html"))
    return "\n".join(parts)


# ---------------------------------------------------------------------------- static checks
def test_committed_notebook_is_clean() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    cells = code_cells(nb.cells)
    assert "parameters" in cells[0].metadata.get("tags", []), "first code cell: parameters"
    for cell in cells:
        assert cell.outputs == [] and cell.execution_count is None, "outputs must be cleared"


def test_default_parameters_equal_the_pipeline_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without overrides the notebook builds PipelineConfig() - the config of `make pipeline`
    without a config file - so both share the stage cache on the same directories."""
    for name in list(os.environ):
        if name.startswith("MUSICREC_NB_"):
            monkeypatch.delenv(name)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    namespace: dict[str, Any] = {}
    for cell in code_cells(nb.cells)[:2]:  # the parameters and the PipelineConfig cells
        exec(compile(cell.source, "<notebook>", "exec"), namespace)
    assert namespace["cfg"] == PipelineConfig()


def test_parameters_cell_sets_every_config_field() -> None:
    """The config cell passes every field of every config model by keyword, so each
    pipeline parameter is visible (and settable) in the notebook, new ones included."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tree = ast.parse(code_cells(nb.cells)[1].source)
    passed = {
        node.func.id: {kw.arg for kw in node.keywords}
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    models = {"PipelineConfig": PipelineConfig}
    for field in PipelineConfig.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            models[field.annotation.__name__] = field.annotation
    for name, model in models.items():
        missing = set(model.model_fields) - passed.get(name, set())
        assert not missing, f"{name}(...) in the notebook does not set {sorted(missing)}"


@pytest.mark.parametrize("name", ["demo.toml", "lastfm.toml", "movielens.toml"])
def test_example_configs_load(name: str) -> None:
    """Each example config loads, and its values are the file's (read back with tomllib,
    compared section by section), not the defaults."""
    import tomllib

    cfg = load_config(REPO / "configs" / name)
    raw = tomllib.loads((REPO / "configs" / name).read_text())
    dumped = cfg.model_dump()
    for key, value in raw.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                assert dumped[key][sub] == v, (key, sub)
        else:
            assert dumped[key] == value, key
    if name == "lastfm.toml":
        assert cfg.split.test_start == date(2010, 11, 1)


# ---------------------------------------------------------------------------- execution
@dataclass
class Executed:
    nb: Any
    n_cells: int  # the notebook's own cells; the parity check cell follows them
    artifacts: Path
    log_file: Path
    seconds: float
    parity_error: Exception | None
    stale_output: str  # what STALE_CHECK printed


def private_kernel(root: Path) -> str:
    """A kernel spec under `root` (put on JUPYTER_PATH) that runs this interpreter."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "musicrec test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return KERNEL


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Executed:
    work = tmp_path_factory.mktemp("notebook")
    artifacts, log_file = work / "recsys", work / "execution_log.txt"
    env = {
        "MUSICREC_NB_DATA_DIR": str(work / "data"),  # empty: the notebook generates `tiny`
        "MUSICREC_NB_ARTIFACTS_DIR": str(artifacts),
        "MUSICREC_NB_PRESET": "tiny",
        "MUSICREC_NB_FAST": "1",
        "MUSICREC_NB_LOG_FILE": str(log_file),
        # the serving section prints the calls with the ports the services would take
        "MUSICREC_RECS_PORT": "18123",
        "MUSICREC_SIMILAR_PORT": "18124",
        "MUSICREC_EVENTS_PORT": "18125",
        "OPENBLAS_NUM_THREADS": "1",
        "JUPYTER_PATH": str(work / "jupyter"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this environment
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("MUSICREC_NB_CONFIG_FILE", "MUSICREC_NB_FORCE"):
            mp.delenv(key, raising=False)
        nb = nbformat.read(NOTEBOOK, as_version=4)
        n_cells = len(nb.cells)
        nb.cells.append(nbformat.v4.new_code_cell(PARITY_CHECK))
        nb.cells.append(nbformat.v4.new_code_cell(STALE_CHECK))
        client = nbclient.NotebookClient(
            nb,
            timeout=CELL_TIMEOUT_S,
            startup_timeout=120,
            kernel_name=private_kernel(work / "jupyter"),
            resources={"metadata": {"path": str(REPO)}},  # the kernel's working directory
        )
        t0 = time.perf_counter()
        parity_error: Exception | None = None
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells[:n_cells]):
                client.execute_cell(cell, index)  # CellExecutionError carries the traceback
            seconds = time.perf_counter() - t0
            try:
                client.execute_cell(nb.cells[n_cells], n_cells)
            except nbclient.exceptions.CellExecutionError as exc:
                parity_error = exc
            client.execute_cell(nb.cells[n_cells + 1], n_cells + 1)
    stale = "".join(o.get("text", "") for o in nb.cells[n_cells + 1].outputs)
    return Executed(nb, n_cells, artifacts, log_file, seconds, parity_error, stale)


@pytest.mark.slow
def test_a_stage_cell_refuses_parameters_the_set_up_cell_did_not_see(executed: Executed) -> None:
    """The parameter cells re-run, the set-up cell not: a stage cell would have reused its
    result under the old parameters without a word; it says to re-run the set-up cell."""
    assert "stale parameters refused: the parameters changed since the set-up cell" in (
        executed.stale_output
    ), executed.stale_output
    assert "same parameters run: True" in executed.stale_output


@pytest.mark.slow
def test_notebook_runs_without_errors(executed: Executed) -> None:
    for cell in code_cells(executed.nb.cells):
        assert cell.execution_count is not None
        assert not [o for o in cell.outputs if o.output_type == "error"]
    assert executed.seconds < 120, f"the notebook took {executed.seconds:.0f} s on tiny data"


@pytest.mark.slow
def test_notebook_writes_metrics_and_pictures(executed: Executed) -> None:
    metrics = json.loads((executed.artifacts / "metrics.json").read_text())
    assert {"als", "ranker", "top_popular"} <= set(metrics["warm"])
    assert metrics["split"]["test_warm_users"] > 0
    pictures = executed.artifacts / "pictures"
    for name in [*EDA_FILES, "metrics_comparison.png"]:
        assert (pictures / name).stat().st_size > 0, name
    assert "stage evaluate" in executed.log_file.read_text()
    # the folder is one finished run (`make upload` after the notebook checks it)
    state = json.loads((executed.artifacts / "run.json").read_text())
    assert state["state"] == "complete" and "evaluate" in state["stages"]


@pytest.mark.slow
def test_the_serving_section_prints_calls_for_this_run(executed: Executed) -> None:
    """The calls to try name a user with a list and a track with similar tracks of this
    run, at the ports the settings give (the committed text had a real-data track the demo
    data lacks, and fixed ports)."""
    import re

    import pandas as pd

    from musicrec.artifacts import ArtifactPaths

    cell = next(
        c for c in code_cells(executed.nb.cells[: executed.n_cells]) if "calls = [" in c.source
    )
    text = text_of(cell)
    for port in ("18123", "18124", "18125"):
        assert f"127.0.0.1:{port}/" in text, text
    user = re.search(r"recommendations_offline\?user_id=(\d+)", text)
    track = re.search(r"similar_tracks\?track_id=(\d+)", text)
    assert user and track, text
    paths = ArtifactPaths(executed.artifacts)
    assert int(user[1]) in set(pd.read_parquet(paths.recommendations)["user_id"])
    assert int(track[1]) in set(pd.read_parquet(paths.similar)["track_id_1"])
    assert f"add_event?user_id={user[1]}&track_id={track[1]}" in text


@pytest.mark.slow
def test_notebook_ends_with_the_metrics_table(executed: Executed) -> None:
    text = text_of(code_cells(executed.nb.cells[: executed.n_cells])[-1])
    for expected in ("warm/ranker", "warm/als", "warm/top_popular", "ndcg@10", "n_users"):
        assert expected in text, f"{expected!r} missing from the last cell's output"
    before = text_of(code_cells(executed.nb.cells[: executed.n_cells])[-2])
    for expected in ("ranker-als", "ranker-top_popular", "recall@5"):
        assert expected in before, f"{expected!r} missing from the comparisons cell's output"
    # and, above the table, exactly the gains that are not above one paired stderr
    metrics = json.loads((executed.artifacts / "metrics.json").read_text())
    prefix = "not above one SE: "
    listed = [x[len(prefix) :] for x in before.splitlines() if x.startswith(prefix)]
    assert listed == unproven_gains(metrics["comparisons"])


@pytest.mark.slow
def test_notebook_plan_matches_run_pipeline(executed: Executed) -> None:
    assert executed.parity_error is None, str(executed.parity_error)
    assert "plan parity ok" in text_of(executed.nb.cells[executed.n_cells])

"""`python -m musicrec` as a user runs it: a subprocess in a scratch working directory."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import musicrec.cli as cli_module
from musicrec.columns import Columns as C
from musicrec.columns import RawFiles

REPO = Path(__file__).resolve().parents[1]


def cli(
    *args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m musicrec ARGS` in `cwd` with no MUSICREC_* settings from outside
    (but those of `env`)."""
    outside = os.environ.items()
    env = {k: v for k, v in outside if not k.startswith(("MUSICREC_", "S3_", "AWS_"))} | (env or {})
    env["PYTHONPATH"] = str(REPO)
    env["OPENBLAS_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "musicrec", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`generate --preset tiny` into a scratch directory (run once for this module)."""
    work = tmp_path_factory.mktemp("cli")
    res = cli("generate", "--preset", "tiny", "--seed", "3", "--out", "data", cwd=work)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["preset"] == "tiny"
    return work / "data"


def test_config_prints_the_parameters_a_run_would_use(tmp_path: Path) -> None:
    """`config` prints a TOML file of every parameter: the defaults, those of `--config`,
    or those of MUSICREC_CONFIG_FILE; a bad file is the usual one-line error, exit 2."""
    from musicrec.config import PipelineConfig, load_config

    shown = tmp_path / "shown.toml"
    res = cli("config", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    shown.write_text(res.stdout)
    assert load_config(shown) == PipelineConfig()
    assert "\n[ranker]\n" in res.stdout and "# test_start = (unset)" in res.stdout

    lastfm = REPO / "configs" / "lastfm.toml"
    for res in (
        cli("config", "--config", str(lastfm), cwd=tmp_path),
        cli("config", cwd=tmp_path, env={"MUSICREC_CONFIG_FILE": str(lastfm)}),
    ):
        assert res.returncode == 0, res.stderr
        shown.write_text(res.stdout)
        assert load_config(shown) == load_config(lastfm) != PipelineConfig()

    (tmp_path / "bad.toml").write_text("[als]\nfactors = 0\n")
    res = cli("config", "--config", "bad.toml", cwd=tmp_path)
    assert res.returncode == 2 and "bad.toml: invalid config: als.factors" in res.stderr
    assert not res.stdout

    # a config TOML cannot say (None where the default is a number): refused as TOML,
    # printed as YAML with --format yaml, which reads back to it
    every_user = tmp_path / "every_user.yaml"
    every_user.write_text("als:\n  tune_max_users: null\n")
    res = cli("config", "--config", str(every_user), cwd=tmp_path)
    assert res.returncode == 2 and "--format yaml" in res.stderr
    res = cli("config", "--config", str(every_user), "--format", "yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    shown = tmp_path / "shown.yaml"
    shown.write_text(res.stdout)
    assert load_config(shown) == load_config(every_user)
    assert load_config(shown).als.tune_max_users is None


def test_help_lists_the_commands(tmp_path: Path) -> None:
    res = cli("--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for command in ("generate", "prepare", "pipeline", "config", "serve", "verify", "upload"):
        assert command in res.stdout
    assert not list(tmp_path.iterdir())  # --help writes nothing


@pytest.mark.parametrize("command", ["generate", "pipeline", "serve", "upload"])
def test_help_shows_flags_as_flags(command: str, tmp_path: Path) -> None:
    """A switch takes no value: typer 0.29 printed `--force --no-force <bool>` (and `--help
    <bool>`), and a user who typed `--force true` got "unexpected extra argument"."""
    res = cli(command, "--help", cwd=tmp_path, env={"COLUMNS": "100"})
    assert res.returncode == 0, res.stderr
    assert "--help" in res.stdout
    assert "<bool>" not in res.stdout and "BOOLEAN" not in res.stdout, res.stdout


def test_serve_check_ports_says_which_port_is_taken(tmp_path: Path) -> None:
    """`make run` asks `serve --check-ports` before the pipeline: a port in use was found
    only after the whole pipeline had run (a README review)."""
    import socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        taken = other.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = [str(probe.getsockname()[1] + i) for i in (0, 1)]
        env = {"MUSICREC_RECS_PORT": free[0], "MUSICREC_SIMILAR_PORT": free[1]}
        busy = cli(
            "serve", "--check-ports", cwd=tmp_path, env=env | {"MUSICREC_EVENTS_PORT": str(taken)}
        )
        assert busy.returncode == 1, busy.stderr
        assert f"error: port {taken} of the events service is in use" in busy.stderr
        assert "MUSICREC_EVENTS_PORT" in busy.stderr
    ok = cli("serve", "--check-ports", cwd=tmp_path, env=env | {"MUSICREC_EVENTS_PORT": str(taken)})
    assert ok.returncode == 0, ok.stderr
    assert not list(tmp_path.iterdir())  # nothing started, nothing written
    run = (REPO / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    steps = [line.strip() for line in run.splitlines()[1:]]
    assert steps.index("$(PY) -m musicrec serve --check-ports") < steps.index(
        "$(PY) -m musicrec pipeline --generate $(PRESET)"
    )


def test_generate_writes_the_raw_files(generated: Path) -> None:
    for name in RawFiles.All:
        assert (generated / name).is_file(), name
    assert pq.read_metadata(generated / RawFiles.Interactions).num_rows > 10_000


def test_prepare_on_generated_data(generated: Path, tmp_path: Path) -> None:
    res = cli("prepare", "--data-dir", str(generated), "--artifacts-dir", "recsys", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "events:" in res.stdout and "items:" in res.stdout
    events = pq.read_table(tmp_path / "recsys" / "data" / "events.parquet")
    assert events.num_rows == pq.read_metadata(generated / RawFiles.Interactions).num_rows
    assert (tmp_path / "recsys" / "data" / "items.parquet").is_file()
    assert "musicrec.prepare" in (tmp_path / "execution_log.txt").read_text()


def test_data_error_is_one_line_and_exit_code_2(generated: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad"
    shutil.copytree(generated, data)
    path = data / RawFiles.Interactions
    table = pq.read_table(path)
    i = table.schema.get_field_index(C.Item)
    shifted = pc.add(table[C.Item], pa.scalar(10**8, table.schema.field(C.Item).type))
    pq.write_table(table.set_column(i, C.Item, shifted), path)  # every track unknown

    res = cli("prepare", "--data-dir", str(data), "--artifacts-dir", "recsys", cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert RawFiles.Interactions in errors[0] and C.Item in errors[0]
    assert not (tmp_path / "recsys" / "data" / "events.parquet").exists()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["generate", "--preset", "bogus", "--out", "d"], {}, "unknown preset 'bogus'"),
        (["pipeline", "--generate", "bogus", "--data-dir", "d"], {}, "unknown preset 'bogus'"),
        (["generate", "--preset", "tiny", "--seed", "-1", "--out", "d"], {}, "non-negative"),
        (["generate", "--out", "d"], {"MUSICREC_LOG_LEVEL": "verbose"}, "unknown log level"),
        # `config` printed the parameters and exited 0 with a misspelt level
        (["config"], {"MUSICREC_LOG_LEVEL": "verbose"}, "MUSICREC_LOG_LEVEL='verbose': unknown"),
        (
            ["upload", "--artifacts-dir", "d"],
            {"S3_BUCKET_NAME": "b"},
            "d is not a directory: nothing to upload",
        ),
        (["config"], {"MUSICREC_RECS_PORT": "abc"}, "MUSICREC_RECS_PORT='abc': Input should"),
        (
            ["prepare", "--data-dir", "d"],
            {"MUSICREC_EVENTS_PORT": "70000"},
            "MUSICREC_EVENTS_PORT='70000': Input should be less than or equal to 65535",
        ),
    ],
    ids=[
        "preset",
        "pipeline preset",
        "seed",
        "log level",
        "log level of config",
        "upload of no directory",
        "setting",
        "port",
    ],
)
def test_bad_cli_values_are_one_line_errors(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    """A bad preset, seed, log level, artifacts folder or setting: exit 2 with one
    `error:` line, no traceback, and no folder made; the message once (the log's console
    handler printed it a second time, above the `error:` line)."""
    res = cli(*args, cwd=tmp_path, env=env)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], res.stderr
    assert res.stderr.count(message) == 1, res.stderr
    assert not (tmp_path / "d").exists()


def test_a_refused_file_operation_is_one_line_and_the_traceback_in_the_log(
    generated: Path, tmp_path: Path
) -> None:
    """An OSError (here the artifacts folder is a file): the system's message with the
    path, once, exit 1; the traceback in execution_log.txt, not on the console."""
    (tmp_path / "afile").write_text("x")
    res = cli("prepare", "--data-dir", str(generated), "--artifacts-dir", "afile", cwd=tmp_path)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: [Errno 20] Not a directory: '{tmp_path / 'afile' / 'cache'}'"]
    assert res.stderr.count("Not a directory") == 1
    log = (tmp_path / "execution_log.txt").read_text()
    assert "ERROR musicrec.cli: failed: [Errno 20] Not a directory" in log
    assert "Traceback" in log and "NotADirectoryError" in log


def test_generate_into_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    res = cli("generate", "--preset", "tiny", "--out", "afile", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "error: the output folder afile is a file, not a directory" in res.stderr
    # a link to a folder that does not exist: mkdir's "[Errno 17] File exists" named no cause
    (tmp_path / "dlink").symlink_to(tmp_path / "gone")
    res = cli("generate", "--preset", "tiny", "--out", "dlink", cwd=tmp_path)
    assert res.returncode == 2 and "is a symbolic link to" in res.stderr, res.stderr
    assert "gone, which does not exist" in res.stderr


def test_sigterm_leaves_no_half_written_file(tmp_path: Path) -> None:
    """`timeout` or `docker stop` (SIGTERM) in the middle of `generate`: exit 143 and no
    temporary file left (Python's default SIGTERM skipped the clean-up); a temporary file
    of a run killed outright (SIGKILL) is removed by the next run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSICREC_")}
    env["PYTHONPATH"] = str(REPO)
    out = tmp_path / "d"
    proc = subprocess.Popen(
        [sys.executable, "-m", "musicrec", "generate", "--preset", "full10", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        # all three files begun (the listens being written): the signal lands in the loop
        while len(list(out.glob(".*.tmp"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(out.glob(".*.tmp"))) == 3, "generation never started writing"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert list(out.iterdir()) == []
    stale = out / f".{RawFiles.Interactions}.abc123.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # untouched for an hour
    live = out / f".{RawFiles.Tracks}.l1ve00.tmp"  # another run's, still being written
    live.write_bytes(b"half")
    assert cli("generate", "--preset", "tiny", "--out", "d", cwd=tmp_path).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*RawFiles.All, live.name])


def test_upload_of_a_folder_without_artifacts_is_an_error(tmp_path: Path) -> None:
    """A folder holding no artifact (the wrong one, or the pipeline not run): exit 2 and
    one error line, before S3 is asked anything; without a bucket the upload is skipped."""
    (tmp_path / "d" / "notes").mkdir(parents=True)
    (tmp_path / "d" / "notes" / "x.txt").write_text("not an artifact")
    res = cli("upload", "--artifacts-dir", "d", cwd=tmp_path, env={"S3_BUCKET_NAME": "b"})
    assert res.returncode == 2, (res.stdout, res.stderr)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "d holds no artifacts" in errors[0], res.stderr
    assert "recommendations/" in errors[0] and "metrics.json" in errors[0]
    res = cli("upload", "--artifacts-dir", "d", cwd=tmp_path, env={"S3_BUCKET_NAME": ""})
    assert res.returncode == 0, (res.stdout, res.stderr)


def test_upload_waits_for_no_pipeline_run_of_the_folder(tmp_path: Path) -> None:
    """`upload` beside a pipeline run on the same folder sent a mix of two runs' files
    under one manifest: it is refused like a second run, before S3 is asked anything."""
    from musicrec.artifacts import ArtifactPaths, pipeline_lock

    root = tmp_path / "recsys"
    (root / "recommendations").mkdir(parents=True)
    (root / "metrics.json").write_text("{}")
    env = {"S3_BUCKET_NAME": "b", "S3_ENDPOINT_URL": "http://127.0.0.1:9"}
    with pipeline_lock(ArtifactPaths(root).cache_dir):  # a run holding the folder
        res = cli("upload", "--artifacts-dir", "recsys", cwd=tmp_path, env=env)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "another pipeline run (pid" in res.stderr, res.stderr


def test_upload_refuses_the_artifacts_of_a_run_that_did_not_finish(
    generated: Path, tmp_path: Path
) -> None:
    """`prepare` alone, or a run stopped half-way, leaves new data beside the models and
    lists of the run before (`recsys/run.json` says so): `upload` refuses to send that
    mix, before S3 is asked anything, unless `--force`; without a bucket it is skipped."""
    from musicrec.artifacts import ArtifactPaths, RunState

    root = tmp_path / "recsys"
    (root / "recommendations").mkdir(parents=True)
    (root / "metrics.json").write_text("{}")
    RunState.write(ArtifactPaths(root), RunState.COMPLETE, stages={})
    # data prepare refuses changes nothing: the folder is still the finished run
    bad = cli("prepare", "--data-dir", "nowhere", "--artifacts-dir", "recsys", cwd=tmp_path)
    assert bad.returncode == 2 and RunState.unfinished_reason(ArtifactPaths(root)) is None
    args = ["prepare", "--data-dir", str(generated), "--artifacts-dir", "recsys"]
    assert cli(*args, cwd=tmp_path).returncode == 0
    state = RunState.read(ArtifactPaths(root))
    assert state is not None and state["state"] == "unfinished", state
    assert state["what"] == "prepare ran alone"

    env = {"S3_BUCKET_NAME": "b", "S3_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing there
    res = cli("upload", "--artifacts-dir", "recsys", cwd=tmp_path, env=env)
    assert res.returncode == 2, (res.stdout, res.stderr)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "prepare ran alone at " in errors[0]
    assert "a mix of two runs" in errors[0] and "upload --force" in errors[0]
    # --force: the refusal is waived, and the upload fails on the missing S3 server
    res = cli("upload", "--artifacts-dir", "recsys", "--force", cwd=tmp_path, env=env)
    assert res.returncode == 2 and "a mix of two runs" not in res.stderr
    assert "uploading anyway (--force)" in res.stderr and "127.0.0.1:9" in res.stderr
    res = cli("upload", "--artifacts-dir", "recsys", cwd=tmp_path, env={"S3_BUCKET_NAME": ""})
    assert res.returncode == 0, res.stderr
    # a run.json that says nothing clear is not taken for a finished run
    for garbage in ('{"state": "complete",}', "", "[]", '{"state": "done"}'):
        ArtifactPaths(root).run_state.write_text(garbage)
        res = cli("upload", "--artifacts-dir", "recsys", cwd=tmp_path, env=env)
        assert res.returncode == 2 and "whether a run finished here is unknown" in res.stderr
    # prepare on a folder without the file (no run to contradict) does not make one
    other = ["prepare", "--data-dir", str(generated), "--artifacts-dir", "fresh"]
    assert cli(*other, cwd=tmp_path).returncode == 0
    assert not ArtifactPaths(tmp_path / "fresh").run_state.exists()


def test_prepare_waits_for_no_pipeline_run_of_the_folder(generated: Path, tmp_path: Path) -> None:
    """`prepare` rewrites data/, which a pipeline run on the folder reads: refused while
    one holds it, as a second run is."""
    from musicrec.artifacts import ArtifactPaths, pipeline_lock

    args = ["prepare", "--data-dir", str(generated), "--artifacts-dir", "recsys"]
    with pipeline_lock(ArtifactPaths(tmp_path / "recsys").cache_dir):
        res = cli(*args, cwd=tmp_path)
    assert res.returncode == 2 and "another pipeline run (pid" in res.stderr, res.stderr
    assert not (tmp_path / "recsys" / "data" / "events.parquet").exists()
    assert cli(*args, cwd=tmp_path).returncode == 0


def test_without_a_log_file_the_traceback_is_shown_at_debug_level(tmp_path: Path) -> None:
    """`generate` writes no log file: an OSError's traceback was lost; MUSICREC_LOG_LEVEL=
    DEBUG shows it, the default shows the one line."""
    (tmp_path / "afile").write_text("x")
    args = ("generate", "--preset", "tiny", "--out", "afile/sub")
    quiet = cli(*args, cwd=tmp_path)
    loud = cli(*args, cwd=tmp_path, env={"MUSICREC_LOG_LEVEL": "DEBUG"})
    line = f"error: [Errno 20] Not a directory: '{Path('afile') / 'sub'}'"
    assert quiet.returncode == loud.returncode == 1
    assert quiet.stderr.strip().splitlines() == [line], quiet.stderr
    assert "Traceback" in loud.stderr and "NotADirectoryError" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == line


def test_a_bug_shows_its_traceback_once_and_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any other exception (a bug): exit 1, its traceback once on the console (from the
    log's console handler) and in the log file."""

    from musicrec.logs import setup_logging

    def broken() -> None:
        setup_logging("INFO", tmp_path / "log.txt")
        raise RuntimeError("boom")

    assert main_exit_code(monkeypatch, broken) == 1
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 1 and "RuntimeError: boom" in err
    assert "RuntimeError: boom" in (tmp_path / "log.txt").read_text()


def test_an_unforeseen_failure_is_in_the_execution_log(generated: Path, tmp_path: Path) -> None:
    """A failure other than the project's own errors (here the similar-tracks file is a
    folder, an OSError) left execution_log.txt ending at the last stage that finished;
    the traceback went to stderr only. Now the log ends with it, and stderr shows the
    error once, as one line."""
    blocked = tmp_path / "recsys" / "recommendations" / "similar.parquet"
    blocked.mkdir(parents=True)
    res = cli(
        "pipeline",
        "--data-dir",
        str(generated),
        "--artifacts-dir",
        "recsys",
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 1, (res.stdout, res.stderr[-2000:])
    log = (tmp_path / "execution_log.txt").read_text()
    tail = log[log.rindex("stage similar") :] if "stage similar" in log else log[-3000:]
    assert "ERROR musicrec.cli: failed" in log and "Traceback" in tail, log[-3000:]
    assert "IsADirectoryError" in tail, tail
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Is a directory" in errors[0], res.stderr[-3000:]
    # the command draws the progress bar, last on the stage that failed
    bar = [f for f in res.stderr.replace("\r", "\n").splitlines() if f.startswith("pipeline:")]
    assert bar and bar[-1].endswith(", similar]"), bar[-3:]


def test_sigterm_during_the_ranker_fit_exits_143(generated: Path, tmp_path: Path) -> None:
    """CatBoost turns an exception raised by a signal handler during its fit into
    KeyboardInterrupt: a SIGTERM (`docker stop`) there exited 130, as if Ctrl-C."""
    (tmp_path / "slow.toml").write_text(
        "[als]\ntune = false\niterations = 3\n[ranker]\niterations = 100000\nbag_size = 1\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSICREC_")}
    env["PYTHONPATH"] = str(REPO)
    args = ["pipeline", "--data-dir", str(generated), "--artifacts-dir", "recsys"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "musicrec", *args, "--config", "slow.toml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = tmp_path / "execution_log.txt"
    try:
        deadline = time.monotonic() + 240
        while "ranker training:" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, "no ranker fit began"
            time.sleep(0.1)
        time.sleep(1.0)  # inside CatBoost's fit
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert "interrupted (signal 15, SIGTERM)" in log.read_text()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("force", "replaces"), [("", False), ("0", False), ("1", True)])
def test_make_generate_replaces_data_only_with_force_1(force: str, replaces: bool) -> None:
    """`make generate FORCE=0` must not pass `--force` (any non-empty value did)."""
    # outside the `make test` that may be running this (its MAKEFLAGS add directory lines)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    res = subprocess.run(
        ["make", "--no-print-directory", "-n", "generate", f"FORCE={force}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    commands = [line for line in res.stdout.splitlines() if "musicrec generate" in line]
    assert len(commands) == 1, res.stdout
    assert commands[0].split().count("--force") == int(replaces)


def test_pipeline_without_raw_files_is_one_line_and_makes_no_folder(tmp_path: Path) -> None:
    """`pipeline` (no `--generate`) on an empty data folder: exit 2 naming the missing file
    (a FileNotFoundError traceback from the fingerprints before), no artifacts folder."""
    (tmp_path / "empty").mkdir()
    res = cli("pipeline", "--data-dir", "empty", "--artifacts-dir", "art", cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "empty/tracks.parquet" in errors[0], res.stderr
    assert "missing: tracks.parquet, catalog_names.parquet, interactions.parquet" in errors[0]
    assert not (tmp_path / "art").exists()


def test_an_empty_config_file_setting_means_no_config_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`MUSICREC_CONFIG_FILE=` (an empty line in `.env`) is no config file; it was read as
    the path `.` and the pipeline stopped with "config must be .toml, .yaml or .yml"."""
    from musicrec.settings import Settings

    for empty in ("", "  "):
        monkeypatch.setenv("MUSICREC_CONFIG_FILE", empty)
        assert Settings(_env_file=None).config_file is None  # type: ignore[call-arg]
    monkeypatch.setenv("MUSICREC_CONFIG_FILE", "configs/demo.toml")
    assert Settings(_env_file=None).config_file == Path("configs/demo.toml")  # type: ignore[call-arg]


def test_a_partial_data_folder_is_refused_not_overwritten(tmp_path: Path) -> None:
    """`pipeline --generate` (make run) over a folder with one raw file of three: exit 2
    naming the missing files, the user's file untouched."""
    data = tmp_path / "data"
    data.mkdir()
    mine = data / "tracks.parquet"
    mine.write_bytes(b"the user's download")
    run = cli("pipeline", "--generate", "tiny", "--data-dir", str(data), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "but not catalog_names.parquet, interactions.parquet" in run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(p.name for p in data.iterdir()) == ["tracks.parquet"]
    assert mine.read_bytes() == b"the user's download"


def test_a_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[ranker]\nenabled = true\n")
    run = cli("pipeline", "--config", str(bad), cwd=tmp_path)
    assert run.returncode == 2
    assert "invalid config: ranker.enabled: Extra inputs are not permitted" in run.stderr
    assert "Traceback" not in run.stderr


# --- defaults and exit codes (a mutation review) ---


def main_exit_code(monkeypatch: pytest.MonkeyPatch, app: Callable[[], None]) -> int:
    """`musicrec.cli.main()` around `app`: its exit code (signal and log handlers restored)."""
    monkeypatch.setattr(cli_module, "app", app)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli_module.main()
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_musicrec", False)]:
            root.removeHandler(h)
            h.close()
    return exit_.value.code  # type: ignore[return-value]


def test_ctrl_c_exits_130_as_sigint(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C (KeyboardInterrupt, no SIGTERM received): exit 130, logged as SIGINT."""

    def interrupted() -> None:
        raise KeyboardInterrupt

    with caplog.at_level(logging.ERROR, logger="musicrec.cli"):
        assert main_exit_code(monkeypatch, interrupted) == 130
    assert "interrupted (signal 2, SIGINT)" in caplog.text


def test_a_project_error_is_one_line_in_the_log_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A MusicRecError (bad data, bad config) is the one `error:` line on the console and
    one line in the log file: no traceback (that is for OSErrors and bugs)."""
    from musicrec.errors import ConfigError
    from musicrec.logs import setup_logging

    def bad_config() -> None:
        setup_logging("INFO", tmp_path / "log.txt")
        raise ConfigError("als.factors must be positive")

    assert main_exit_code(monkeypatch, bad_config) == 2
    log = (tmp_path / "log.txt").read_text()
    assert "ERROR musicrec.cli: als.factors must be positive" in log
    assert "Traceback" not in log
    assert capsys.readouterr().err.count("als.factors must be positive") == 1


def test_generate_keeps_existing_raw_files_and_writes_no_log(tmp_path: Path) -> None:
    """A second `generate` into a folder holding the raw files skips (only `--force`
    replaces them); `generate` writes no execution_log.txt."""
    assert cli("generate", "--preset", "tiny", "--out", "d", cwd=tmp_path).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "d").iterdir()}
    res = cli("generate", "--preset", "tiny", "--out", "d", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["skipped"] is True
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "d").iterdir()} == before
    assert not (tmp_path / "execution_log.txt").exists()


def test_serve_runs_the_verification_only_with_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    import musicrec.serve as serve_module

    calls: list[bool] = []

    def fake_serve_all(settings: object, run_verify: bool = False, **kw: object) -> int:
        calls.append(run_verify)
        return 0

    monkeypatch.setattr(serve_module, "serve_all", fake_serve_all)
    monkeypatch.setattr(cli_module, "_setup", lambda log_to_file=True: None)
    runner = CliRunner()
    assert runner.invoke(cli_module.app, ["serve"]).exit_code == 0
    assert runner.invoke(cli_module.app, ["serve", "--verify"]).exit_code == 0
    assert calls == [False, True]


def test_help_offers_no_shell_completion() -> None:
    res = CliRunner().invoke(cli_module.app, ["--help"])
    assert res.exit_code == 0 and "generate" in res.output
    assert "completion" not in res.output

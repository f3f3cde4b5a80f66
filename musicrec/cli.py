"""Command line: `python -m musicrec <command>`.

Commands import their stage lazily so that `--help` is instant and nothing heavy runs at
import time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Literal

import typer

from musicrec.errors import ArtifactError, MusicRecError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="musicrec: synthetic data, the offline pipeline, the three services and their checks.",
)
log = logging.getLogger("musicrec.cli")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Raw files (default: MUSICREC_DATA_DIR, else data/)"),
]
ArtifactsDir = Annotated[
    Path | None,
    typer.Option(
        "--artifacts-dir", help="Artifacts root (default: MUSICREC_ARTIFACTS_DIR, else recsys/)"
    ),
]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="Pipeline config TOML/YAML")]


def _setup(log_to_file: bool = True) -> None:
    from musicrec.logs import setup_logging
    from musicrec.settings import get_settings

    s = get_settings()
    setup_logging(s.log_level, s.log_file if log_to_file else None)


@app.command()
def generate(
    preset: Annotated[str, typer.Option(help="tiny | demo | full | full10")] = "demo",
    seed: Annotated[int, typer.Option(help="Random seed")] = 42,
    out: Annotated[Path, typer.Option("--out", help="Output directory")] = Path("data"),
    force: Annotated[bool, typer.Option(help="Overwrite existing raw files")] = False,
) -> None:
    """Write synthetic raw files (tracks, catalog_names, interactions) in the real schema."""
    from musicrec.generate import generate_dataset

    _setup(log_to_file=False)
    stats = generate_dataset(preset, seed=seed, out_dir=out, overwrite=force)
    typer.echo(json.dumps(stats))  # one JSON line: what was written, for scripts to read


@app.command()
def prepare(
    data_dir: DataDir = None, artifacts_dir: ArtifactsDir = None, config: ConfigFile = None
) -> None:
    """Validate the raw files and write recsys/data/items.parquet and events.parquet."""
    from musicrec.artifacts import ArtifactPaths, RunState, pipeline_lock
    from musicrec.config import load_config
    from musicrec.prepare import prepare_data
    from musicrec.settings import get_settings

    _setup()
    s = get_settings()
    cfg = load_config(config or s.config_file)
    paths = ArtifactPaths(artifacts_dir or s.artifacts_dir)

    # it rewrites data/, which a pipeline run on the folder reads: refused while one runs
    def unfinished() -> None:  # a run's later stages no longer match the data written
        if paths.run_state.exists():
            RunState.write(paths, RunState.UNFINISHED, what="prepare ran alone")

    with pipeline_lock(paths.cache_dir):
        result = prepare_data(data_dir or s.data_dir, paths, cfg.data, before_write=unfinished)
    typer.echo(result.summary())


@app.command()
def pipeline(
    data_dir: DataDir = None,
    artifacts_dir: ArtifactsDir = None,
    config: ConfigFile = None,
    force: Annotated[bool, typer.Option(help="Recompute every stage")] = False,
    generate_preset: Annotated[
        str | None,
        typer.Option(
            "--generate", help="Generate this preset first if the data folder lacks the raw files"
        ),
    ] = None,
) -> None:
    """Run the whole offline pipeline (prepare -> EDA -> models -> ranker -> evaluation -> S3)."""
    from musicrec.config import load_config
    from musicrec.pipeline import run_pipeline
    from musicrec.settings import get_settings

    _setup()
    s = get_settings()
    d = data_dir or s.data_dir
    if generate_preset:
        from musicrec.generate import ensure_raw_data

        ensure_raw_data(d, preset=generate_preset)
    run_pipeline(
        d,
        artifacts_dir or s.artifacts_dir,
        load_config(config or s.config_file),
        force=force,
        settings=s,
    )


@app.command("config")
def show_config(
    config: ConfigFile = None,
    format: Annotated[
        Literal["toml", "yaml"],
        typer.Option("--format", help="toml, or yaml (which can say None: null)"),
    ] = "toml",
) -> None:
    """Print the pipeline parameters a run would use (the defaults, or those of --config /
    MUSICREC_CONFIG_FILE) as a TOML or YAML file: every key, with its meaning and limits."""
    from musicrec.config import config_as_toml, config_as_yaml, load_config
    from musicrec.settings import get_settings

    cfg = load_config(config or get_settings().config_file)
    typer.echo(config_as_yaml(cfg) if format == "yaml" else config_as_toml(cfg), nl=False)


@app.command()
def serve(
    verify: Annotated[
        bool, typer.Option("--verify", help="Run verify_service.py once they are up")
    ] = False,
    check_ports: Annotated[
        bool,
        typer.Option("--check-ports", help="Only check that the three ports are free, then exit"),
    ] = False,
) -> None:
    """Start the three services (ports MUSICREC_RECS_PORT, MUSICREC_SIMILAR_PORT,
    MUSICREC_EVENTS_PORT: 8000, 8010, 8020 by default) and stop them on Ctrl-C / SIGTERM.
    With --check-ports, exit 0 if they could start, 1 naming a port in use (`make run`
    asks before the pipeline, not after it)."""
    from musicrec.serve import ServeError, check_ports_free, serve_all
    from musicrec.settings import get_settings

    _setup(log_to_file=False)
    if check_ports:
        try:
            check_ports_free(get_settings())
        except ServeError as exc:  # the `error:` line and exit code of a serve that fails
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        return
    raise typer.Exit(serve_all(get_settings(), run_verify=verify))


@app.command()
def verify() -> None:
    """Exercise every endpoint of the running services; write service_test.log."""
    from musicrec.verify import run_verification

    raise typer.Exit(run_verification())


@app.command()
def upload(
    artifacts_dir: ArtifactsDir = None,
    force: Annotated[
        bool, typer.Option(help="Send the artifacts of a run that did not finish anyway")
    ] = False,
) -> None:
    """Upload the artifacts to S3 (S3_BUCKET_NAME and credentials from the environment)."""
    from musicrec.artifacts import ArtifactPaths, RunState, pipeline_lock
    from musicrec.s3 import ARTIFACT_DIRS, ARTIFACT_FILES, artifact_files, upload_artifacts
    from musicrec.settings import get_settings

    _setup()
    s = get_settings()
    root = Path(artifacts_dir or s.artifacts_dir)
    if not root.is_dir():  # a mistyped path would otherwise "upload" nothing, with exit 0
        raise ArtifactError(f"{root} is not a directory: nothing to upload")
    if s.s3_bucket_name and not artifact_files(root):  # the wrong folder, or a pipeline not run
        raise ArtifactError(
            f"{root} holds no artifacts (files under {', '.join(d + '/' for d in ARTIFACT_DIRS)}"
            f" or {', '.join(ARTIFACT_FILES)}): nothing to upload"
        )
    # held against a pipeline run on the same folder (the pipeline uploads under it too):
    # an upload beside a run rewriting the artifacts listed a mix of two runs
    cache = ArtifactPaths(root).cache_dir
    with pipeline_lock(cache) if cache.is_dir() else contextlib.nullcontext():
        unfinished = RunState.unfinished_reason(ArtifactPaths(root)) if s.s3_bucket_name else None
        if unfinished and not force:  # new prepared data beside the last run's models...
            raise ArtifactError(
                f"{root}: {unfinished}, so its files are a mix of two runs; run the pipeline "
                "to its end first, or `upload --force` to send them as they are"
            )
        if unfinished:
            log.warning("%s: %s; uploading anyway (--force)", root, unfinished)
        upload_artifacts(s, root)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (`timeout`, `docker stop`, systemd) ends the command as Ctrl-C does: by an
    exception, so `finally` blocks remove half-written files and release locks (Python's
    default SIGTERM ends the process at once)."""
    global _terminated
    _terminated = signum
    raise SystemExit(128 + signum)


#: the signal `_exit_on_sigterm` received (0: none): CatBoost turns any exception raised in
#: a signal handler during its fit into KeyboardInterrupt, which would otherwise exit 130
_terminated = 0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def main() -> None:
    if threading.current_thread() is threading.main_thread():  # only there can it be set
        signal.signal(signal.SIGTERM, _exit_on_sigterm)  # `serve` sets its own while it runs
    try:
        app()
    except MusicRecError as exc:
        _to_log_file("%s", exc)
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit) as exc:
        # typer turns KeyboardInterrupt into exit code 130 (Ctrl-C), also the one CatBoost
        # made of our SIGTERM: the signal received decides the code
        code = exc.code if isinstance(exc, SystemExit) else 130
        if _terminated and code in (130, 128 + _terminated):
            code = 128 + _terminated
        if isinstance(code, int) and 128 < code < 128 + signal.NSIG:
            log.error("interrupted (signal %d, %s): stopped", code - 128, _signal_name(code - 128))
            sys.exit(code)
        raise
    except OSError as exc:
        # the system refused a file operation (a path that is a file or a folder where the
        # other is needed, permissions, a full disk): its message names the path; the
        # traceback goes to execution_log.txt (where the command writes one), and to the
        # console only at MUSICREC_LOG_LEVEL=DEBUG
        _to_log_file("failed: %s", exc, exc_info=True)
        log.debug("the traceback of the error below", exc_info=True)
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception:
        # execution_log.txt ended at the last stage that finished, the traceback on stderr
        # only: the log says what stopped the run (and stderr shows it once, from the log)
        log.exception("failed")
        sys.exit(1)


def _to_log_file(msg: str, *args: object, exc_info: bool = False) -> None:
    """Log an error the `error:` line shows on the console to the log file only (the
    console once), and not at all before logging is set up (Python's last-resort handler
    would print it a second time)."""
    from musicrec.logs import FILE_ONLY

    if any(getattr(h, "_musicrec", False) for h in logging.getLogger().handlers):
        log.error(msg, *args, exc_info=exc_info, extra=FILE_ONLY)

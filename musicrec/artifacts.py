"""Where every artifact lives under the artifacts directory (`recsys/` by default), and
which columns each must have. Stages write these files; services read them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from musicrec.columns import Columns as C
from musicrec.errors import ArtifactError

#: the lock file of a pipeline run, in the cache directory
RUN_LOCK = ".pipeline.lock"
#: lock files this process holds: path -> (file descriptor, nesting depth)
_held: dict[Path, list[int]] = {}


def flock_holder(inode: int) -> int | None:
    """The pid holding a `flock` on the file with this inode, from Linux's /proc/locks
    (None elsewhere or when not found). The lock file itself is never written, so that a
    run leaves every file under the artifacts directory as it found it."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
            return int(fields[4])
    return None


class LockHeld(Exception):
    """Another process holds the lock (`pid`: its process id, when /proc/locks tells it)."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(f"held by pid {pid or '?'}")
        self.pid = pid


def take_flock(path: Path, wait_s: float = 0.0) -> int:
    """Open `path` (made if missing) and take an exclusive `flock` on it, tried every 50 ms
    for up to `wait_s`: the descriptor (`release_flock` it), or `LockHeld`. An error
    opening the file is the `OSError` itself. The OS frees the lock if the process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = flock_holder(os.fstat(fd).st_ino)
                os.close(fd)
                raise LockHeld(holder) from None
            time.sleep(0.05)


def release_flock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def pipeline_lock(cache_dir: Path) -> Iterator[None]:
    """Hold the artifacts directory for one pipeline run: an exclusive `flock` on
    `cache_dir/RUN_LOCK`, taken at once or refused with `ArtifactError` (two runs on one
    directory would read each other's half-finished stages and record the mix as fresh).
    Re-entrant within a process (a run holds it, its stages take it again); the OS frees
    it if the process dies."""
    path = (cache_dir / RUN_LOCK).resolve()
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = take_flock(path)
    except LockHeld as held:
        raise ArtifactError(
            f"{cache_dir.parent}: another pipeline run (pid {held.pid or '?'}) is using this "
            "artifacts directory; wait for it to finish or use another --artifacts-dir"
        ) from None
    _held[path] = [fd, 1]
    try:
        yield
    finally:
        _held[path][1] -= 1
        if _held[path][1] == 0:
            del _held[path]
            release_flock(fd)


@dataclass(frozen=True)
class ArtifactPaths:
    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def label_model_dir(self) -> Path:
        """The ALS fit on the history before the ranker's (newest) label window."""
        return self.model_dir / "label_window"

    @property
    def ranker_model(self) -> Path:
        """The CatBoost ranker (CatBoost's own format, no pickle)."""
        return self.model_dir / "ranker.cbm"

    @property
    def recs_dir(self) -> Path:
        return self.root / "recommendations"

    @property
    def pictures_dir(self) -> Path:
        return self.root / "pictures"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    # prepared data
    @property
    def items(self) -> Path:
        return self.data_dir / "items.parquet"

    @property
    def events(self) -> Path:
        return self.data_dir / "events.parquet"

    # recommendations
    @property
    def top_popular(self) -> Path:
        return self.recs_dir / "top_popular.parquet"

    @property
    def personal_als(self) -> Path:
        return self.recs_dir / "personal_als.parquet"

    @property
    def similar(self) -> Path:
        return self.recs_dir / "similar.parquet"

    @property
    def recommendations(self) -> Path:
        return self.recs_dir / "recommendations.parquet"

    @property
    def heard_dir(self) -> Path:
        """What each user heard before the served fit (`musicrec.heard.HeardIndex`)."""
        return self.recs_dir / "heard"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def run_state(self) -> Path:
        """Whether the artifacts are one finished run (`RunState`)."""
        return self.root / "run.json"

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.model_dir, self.recs_dir, self.pictures_dir):
            d.mkdir(parents=True, exist_ok=True)


class RunState:
    """`recsys/run.json`: whether the artifacts are the outputs of one finished run.

    A stage that computes (not one reused), and `prepare` run alone on a folder that has
    the file, first write `{"state": "unfinished", ...}`; the end of a run whose every
    stage is current, in memory and on disk (`musicrec.pipeline.finish_run`: the CLI's
    pipeline and the notebook's last section), writes `{"state": "complete", ...}`. So
    after a run that failed half-way (new prepared data beside the models and lists of the
    run before) the folder says so, and `upload` refuses to send the mix. No file: a folder
    from before the marker, taken as it is; a file that is not a state reads as unfinished."""

    COMPLETE = "complete"
    UNFINISHED = "unfinished"
    STATES = (COMPLETE, UNFINISHED)

    @staticmethod
    def read(paths: ArtifactPaths) -> dict[str, object] | None:
        """The recorded state; None without a file. A file that is not a state (damaged,
        edited by hand) reads as unfinished: a folder that says nothing clear is not taken
        for one finished run."""
        try:
            text = paths.run_state.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            return {"state": RunState.UNFINISHED, "problem": f"{paths.run_state}: {exc}"}
        try:
            state = json.loads(text)
        except ValueError:
            state = None
        if isinstance(state, dict) and state.get("state") in RunState.STATES:
            return state
        problem = f"{paths.run_state} is not a run state ({text[:80]!r})"
        return {"state": RunState.UNFINISHED, "problem": problem}

    @staticmethod
    def write(paths: ArtifactPaths, state: str, **facts: object) -> None:
        from musicrec.io import write_json

        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        write_json({"state": state, "at": stamp, "pid": os.getpid(), **facts}, paths.run_state)

    @classmethod
    def unfinished_reason(cls, paths: ArtifactPaths) -> str | None:
        """Why the folder is not one finished run, in words; None when it is (or says
        nothing: no file)."""
        state = cls.read(paths)
        if state is None or state.get("state") == cls.COMPLETE:
            return None
        if "problem" in state:
            return f"{state['problem']}: whether a run finished here is unknown"
        return (
            f"{state.get('what', 'a stage was recomputed')} at {state.get('at')} (pid "
            f"{state.get('pid')}) and no run has reached its end since"
        )


#: the output schema of every recommender (`Columns.Recommendations`), with its kinds
_RANKED = {C.User: "integer", C.Item: "integer", C.Score: "number", C.Rank: "number"}
#: required columns of each artifact read back by `musicrec.io.read_artifact`, with the kind
#: of Arrow type each must have (file name -> column -> kind; the kinds are those of
#: `musicrec.io.COLUMN_KINDS`): the services read these parquet files, the pipeline items
#: and events (every column prepare writes: the stages use them all)
ARTIFACT_COLUMNS: dict[str, dict[str, str]] = {
    "top_popular.parquet": {C.Item: "integer", C.Rank: "number", C.Listeners: "number"},
    "personal_als.parquet": _RANKED,
    "recommendations.parquet": _RANKED,
    "similar.parquet": {
        C.Item1: "integer",
        C.Item2: "integer",
        C.Score: "number",
        C.Rank: "number",
    },
    "items.parquet": {
        C.Item: "integer",
        C.TrackName: "string",
        C.ArtistNames: "list of strings",
        C.AlbumNames: "list of strings",
        C.GenreNames: "list of strings",
        C.ArtistIds: "list of integers",
        C.GenreIds: "list of integers",
        C.MainGenre: "integer",
        C.MainGenreName: "string",
        C.MainArtist: "integer",
    },
    "events.parquet": {
        C.User: "integer",
        C.Item: "integer",
        C.Datetime: "timestamp",
        C.Seq: "integer",
    },
}

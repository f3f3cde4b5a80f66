"""The code hash of a pipeline stage: which modules it covers and what changes it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from musicrec import codehash
from musicrec.artifacts import ArtifactPaths
from musicrec.codehash import code_hash, imported_modules, module_closure
from musicrec.config import PipelineConfig
from musicrec.pipeline import PipelineContext, StageCache, build_plan

SERVICE_MODULES = {
    "blending",
    "coalesce",
    "fast_path",
    "serve",
    "service_common",
    "service_events",
    "service_recommendations",
    "service_similar",
    "event_store",
    "http_client",
    "verify",
}


def test_imported_modules_reads_every_form_of_import() -> None:
    source = """
import os
import musicrec
import musicrec.als
import musicrec.matrix as m
from musicrec.columns import Columns
from musicrec import io, config
from .split import Split
from . import popular
from numpy import musicrec_like
from othermusicrec.x import y

def later():
    from musicrec.features import collect_features
"""
    assert imported_modules(source) == {
        "als",
        "matrix",
        "columns",
        "io",
        "config",
        "__init__",  # `from musicrec import ...` runs the package's __init__
        "split",
        "popular",
        "features",
    }
    assert imported_modules("import musicrec\nimport numpy") == {"__init__"}


def write_package(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / f"{name}.py").write_text(text)
    return root


PACKAGE = {
    "__init__": "",
    "pipeline": "from musicrec.a import f\nfrom musicrec.d import g\n",
    "a": "def f():\n    from musicrec.b import h\n    return h()\n",
    "b": "from musicrec import c\nh = c.h\n",
    "c": "import numpy\nh = 1\n",
    "d": "g = 2\n",
}


def test_module_closure_follows_imports_at_any_depth(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "pkg", PACKAGE)
    assert module_closure(("a",), pkg) == ["__init__", "a", "b", "c"]
    assert module_closure(("d",), pkg) == ["d"]
    with pytest.raises(ValueError, match="nope"):
        module_closure(("nope",), pkg)


def test_code_hash_changes_with_the_code_a_stage_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = write_package(tmp_path / "pkg", PACKAGE)
    a, d = code_hash(("a",), pkg), code_hash(("d",), pkg)
    assert a != d
    # a copy elsewhere hashes the same: the content counts, not the folder
    assert code_hash(("a",), write_package(tmp_path / "copy", PACKAGE)) == a

    (pkg / "c.py").write_text("import numpy\nh = 2\n")  # imported by a, two levels down
    assert code_hash(("a",), pkg) != a
    assert code_hash(("d",), pkg) == d  # d does not run c
    a = code_hash(("a",), pkg)

    (pkg / "pipeline.py").write_text(PACKAGE["pipeline"] + "# edited\n")  # the driver
    assert code_hash(("a",), pkg) != a and code_hash(("d",), pkg) != d
    a, d = code_hash(("a",), pkg), code_hash(("d",), pkg)

    real = codehash._library_version

    def upgraded(name: str) -> Callable[[str], str]:
        return lambda n: "99.0" if n == name else real(n)

    monkeypatch.setattr(codehash, "MODULE_LIBRARIES", {"c": ("catboost",)})
    monkeypatch.setattr(codehash, "_library_version", upgraded("catboost"))
    assert code_hash(("a",), pkg) != a  # a runs c, which uses CatBoost
    assert code_hash(("d",), pkg) == d
    monkeypatch.setattr(codehash, "_library_version", upgraded("numpy"))  # every stage's
    assert code_hash(("a",), pkg) != a and code_hash(("d",), pkg) != d


def test_every_stage_names_real_modules_and_no_service_code() -> None:
    """Each stage's code exists, covers its own module, and a change to a service module
    (or the CLI) recomputes no stage."""

    cfg = PipelineConfig(final_fit="all")
    root = Path("unused")  # build_plan only names paths
    ctx = PipelineContext(root, ArtifactPaths(root), cfg, StageCache(root / "cache"))
    plan = build_plan(ctx)
    assert [s.name for s in plan][-1] == "final_fit"
    for stage in plan:
        assert stage.code, stage.name
        closure = set(module_closure(stage.code))
        assert set(stage.code) <= closure
        assert not closure & (SERVICE_MODULES | {"cli", "__main__", "s3"}), stage.name
    by_name = {s.name: set(module_closure(s.code)) for s in plan}
    assert {"features", "candidates", "ranker"} <= by_name["ranker"]
    assert "features" not in by_name["als"] and "features" not in by_name["prepare"]
    assert set(codehash.MODULE_LIBRARIES) <= set(codehash.module_closure(("ranker", "als")))
    assert "ranker" not in by_name["als"]  # a CatBoost upgrade refits no ALS


def test_a_module_edited_after_the_process_started_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A kernel that imported a module before it was edited runs the old code under the
    new hash: when an imported module's file is newer than the process, a warning says so
    (once per file); files older than the process are silent."""
    import musicrec.popular  # noqa: F401  (imported, as in a kernel that ran the stage)

    monkeypatch.setattr(codehash, "_warned", set())
    monkeypatch.setattr(codehash, "_imported_at", lambda: float("inf"))  # nothing newer
    with caplog.at_level("WARNING", logger="musicrec.codehash"):
        code_hash(("popular",))
    assert not caplog.records
    monkeypatch.setattr(codehash, "_imported_at", lambda: 0.0)  # every file newer
    with caplog.at_level("WARNING", logger="musicrec.codehash"):
        code_hash(("popular",))
        code_hash(("popular",))
    warned = [r.getMessage() for r in caplog.records]
    assert any("popular.py changed after this process started" in m for m in warned)
    assert len(warned) == len(set(warned))  # once per file
    # a copy of the package (not what this process imported) is never warned of
    caplog.clear()
    monkeypatch.setattr(codehash, "_warned", set())
    with caplog.at_level("WARNING", logger="musicrec.codehash"):
        code_hash(("a",), write_package(tmp_path / "pkg", PACKAGE))
    assert not caplog.records


def test_a_module_edited_during_a_run_is_not_reused_by_the_next_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A module edited while a long CLI run went on: the run computed the stage with the
    code it had imported (the old), but recorded it under the new file's hash, so the next
    run reused the old code's result as the new code's. Now the hash of a process that
    saw an imported module change holds a mark of that process: the same within it (its
    own cells still reuse), different from a process that started after the edit."""
    import musicrec.popular  # noqa: F401  (imported, as by a run that is going on)

    monkeypatch.setattr(codehash, "_warned", set())
    monkeypatch.setattr(codehash, "_imported_at", lambda: float("inf"))  # no edit seen
    after_the_edit = code_hash(("popular",))  # a process started after the edit
    monkeypatch.setattr(codehash, "_imported_at", lambda: 0.0)  # edited during this one
    during = code_hash(("popular",))
    assert during != after_the_edit
    assert code_hash(("popular",)) == during  # stable within the process
    monkeypatch.setattr(codehash.os, "getpid", lambda: -1)  # another process, also edited
    assert code_hash(("popular",)) not in (during, after_the_edit)


def test_an_edit_is_seen_by_the_file_the_process_imported_and_by_its_ctime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a file this process imported counts as edited under it: a copy of the package
    edited and written back (a test's, a second checkout) kept the hash off its first
    value. And a copy over the imported file that keeps the old mtime (`cp -p`, rsync)
    counts, by its ctime."""
    import os
    import time
    import types

    pkg = write_package(tmp_path / "pkg", PACKAGE)
    monkeypatch.setattr(codehash, "PACKAGE_DIR", pkg)
    monkeypatch.setattr(codehash, "_warned", set())
    monkeypatch.setattr(codehash, "_imported_at", lambda: time.time() - 60)
    # the package's `d` is edited after the start, but this process imported no `d` from
    # this folder (the real musicrec has none): nothing is marked
    before = code_hash(("d",))
    (pkg / "d.py").write_text("g = 3\n")
    (pkg / "d.py").write_text("g = 2\n")
    assert code_hash(("d",)) == before
    # imported from this folder, then replaced by a copy carrying an old mtime
    module = types.ModuleType("musicrec.d")
    module.__file__ = str(pkg / "d.py")
    monkeypatch.setitem(sys.modules, "musicrec.d", module)
    old = time.time() - 3600
    os.utime(pkg / "d.py", (old, old))
    assert (pkg / "d.py").stat().st_mtime < codehash._imported_at()
    assert code_hash(("d",)) != before  # marked: the ctime is newer than the import


def test_an_edit_that_keeps_size_and_mtime_still_follows_the_new_imports(tmp_path: Path) -> None:
    """The import list of a file was cached by its mtime and size: an edit of the same size
    copied back with the old mtime (`cp -p`, rsync, tar) kept the old list, so a module the
    file newly imported was left out of the hash and editing it changed nothing."""
    import os

    for name in ("pipeline", "b", "n"):
        (tmp_path / f"{name}.py").write_text("V = 1\n")
    (tmp_path / "a.py").write_text("import musicrec.b\n")
    code_hash(("a",), tmp_path)
    st = os.stat(tmp_path / "a.py")
    (tmp_path / "a.py").write_text("import musicrec.n\n")  # the same size
    os.utime(tmp_path / "a.py", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert module_closure(("a",), tmp_path) == ["a", "n"]
    before = code_hash(("a",), tmp_path)
    (tmp_path / "n.py").write_text("V = 2\n")
    assert code_hash(("a",), tmp_path) != before

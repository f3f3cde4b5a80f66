"""The code a pipeline stage's result depends on, as one hash (part of its fingerprint).

A stage names the package modules it runs (e.g. `("als", "matrix")`). Its code hash covers
- the source of those modules and of every package module they import, followed through
  imports at any depth (also imports inside functions),
- the source of the driver, `pipeline.py`, where every stage's own function lives (its
  imports are not followed: it imports every stage's modules),
- the installed versions of the libraries that compute results: `LIBRARIES` for every
  stage, and `MODULE_LIBRARIES` for the stages whose code includes that module.

So after an upgrade that changes `features.py` (or CatBoost) the ranker and the stages after
it run again, while `prepare` or `als` are reused; a change to a service module recomputes
nothing.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import os
import sys
from importlib import metadata
from pathlib import Path

log = logging.getLogger("musicrec.codehash")

PACKAGE = "musicrec"
PACKAGE_DIR = Path(__file__).resolve().parent
DRIVER = "pipeline"
# libraries whose version can change a stage's numbers: every stage's, and a module's
LIBRARIES = ("numpy", "pandas", "pyarrow", "scipy")
MODULE_LIBRARIES = {"als": ("implicit",), "ranker": ("catboost",)}


def imported_modules(source: str, package: str = PACKAGE) -> set[str]:
    """Names of the `package` modules that `source` imports (`import package.x`,
    `from package.x import y`, `from package import x`, `from .x import y`), anywhere in
    the file. `from package import name` gives `name` whether or not it is a module; the
    caller keeps the ones that are files."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package:  # `import package` runs its __init__ only
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level > 0 or module.split(".")[0] == package:
                parts = module.split(".") if node.level == 0 else [package, *module.split(".")]
                parts = [p for p in parts if p]
                if len(parts) > 1:
                    found.add(parts[1])
                else:  # `from package import x` / `from . import x`
                    found.update(alias.name for alias in node.names)
                    found.add("__init__")
    return found


def module_closure(roots: tuple[str, ...], package_dir: Path | None = None) -> list[str]:
    """`roots` and every package module they import, transitively; sorted names."""
    package_dir = PACKAGE_DIR if package_dir is None else package_dir
    unknown = [r for r in roots if not (package_dir / f"{r}.py").is_file()]
    if unknown:
        raise ValueError(f"no module {unknown} in {package_dir}")
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        imports = _imports_of((package_dir / f"{name}.py").read_bytes())
        todo += [m for m in imports if (package_dir / f"{m}.py").is_file()]
    return sorted(seen)


@functools.lru_cache(maxsize=256)
def _imports_of(source: bytes) -> frozenset[str]:
    """The package imports of one file, parsed once per content: a key of the file's mtime
    and size kept the old imports of a file edited to the same size and copied back with
    its old mtime (`cp -p`, rsync, tar), so a module it newly imported was left out."""
    return frozenset(imported_modules(source.decode("utf-8")))


def _library_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def code_hash(roots: tuple[str, ...], package_dir: Path | None = None) -> str:
    """sha256 (16 hex digits) of the driver, the closure of `roots` and the libraries'
    versions. Read afresh on every call: an edited module changes it in the same process
    (a notebook's kernel, a long CLI run), which may still run the old code. So when a
    module this process imported was edited after the process started
    (`_edited_since_start`), the hash also holds a mark of this process: what the stage
    computes is reused by this process only, and the next one (which imports the new
    code) computes it again instead of taking the old code's result for the new code's.
    `package_dir` defaults to `PACKAGE_DIR`, read at call time."""
    package_dir = PACKAGE_DIR if package_dir is None else package_dir
    h = hashlib.sha256()
    modules = module_closure(roots, package_dir)
    if package_dir == PACKAGE_DIR and _edited_since_start([DRIVER, *modules], package_dir):
        h.update(f"edited while process {os.getpid()} ran, from {_imported_at()}\0".encode())
    for name in sorted({DRIVER, *modules}):
        h.update(f"{name}\0".encode())
        h.update((package_dir / f"{name}.py").read_bytes())
    libraries = [*LIBRARIES, *(lib for m in modules for lib in MODULE_LIBRARIES.get(m, ()))]
    for lib in libraries:
        h.update(f"{lib}={_library_version(lib)}\0".encode())
    return h.hexdigest()[:16]


_warned: set[Path] = set()


def _edited_since_start(modules: list[str], package_dir: Path) -> list[str]:
    """The `modules` whose file this process imported and which changed after it imported
    the package (it may run their old code), with a warning once per file. A change is a
    newer mtime or ctime: a copy that keeps the old mtime (`cp -p`, rsync, tar) still
    sets the ctime, which nothing can set back."""
    started = _imported_at()
    edited = []
    for name in modules:
        path = package_dir / f"{name}.py"
        module = sys.modules.get(f"{PACKAGE}.{name}")
        loaded_from = getattr(module, "__file__", None)
        if loaded_from is None or Path(loaded_from).resolve() != path.resolve():
            continue  # not imported, or imported from elsewhere (a copy of the package)
        st = path.stat()
        if max(st.st_mtime, st.st_ctime) <= started:
            continue
        edited.append(name)
        if path not in _warned:
            _warned.add(path)
            log.warning(
                "%s changed after this process started: if it was imported before the "
                "change, this process runs the old code. What its stages compute now is "
                "not reused by a later run; restart the kernel (or reload the module) to "
                "run the new code",
                path,
            )
    return edited


def _imported_at() -> float:
    """When this process imported the package (seconds since the epoch, exact: psutil's
    process start time is derived from a boot time in whole seconds, up to 1 s early, so
    a file saved just before a run counted as edited during it)."""
    import musicrec

    return musicrec.IMPORTED_AT

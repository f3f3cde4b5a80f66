"""Mutation testing of one package module: which small changes to its code does the test
suite let through? Each surviving mutant is a behaviour no test checks (or an equivalent
change: read it before writing a test).

    python bench/mutation.py metrics                      # every mutant, its test files
    python bench/mutation.py candidates --limit 40 --seed 1
    python bench/mutation.py heard --tests tests/test_heard.py

The project (every file git tracks, as the working tree has it) is copied to a temporary
folder and each mutant is written there, one at a time, so the working tree is never
touched. The tests first run on the unchanged copy: if they fail there (exit code 1, no
mutant run), every mutant would have counted as killed. A mutant is
one of: a comparison flipped (`<` / `<=`, `==` / `!=`, `in` / `not in`, ...), `+` / `-`,
`&` / `|`, `and` / `or`, a `not` dropped, `True` / `False`, an integer +-1, `.copy()`
dropped, `head(k)` -> `head(k + 1)`, `ascending=False` added to a sort, a `return x` made
`return None`; none inside an annotation, an f-string, a `raise` or a log call. The tests
run are the files that import the module (or `--tests`), with `pytest -x`; a mutant is
killed when they fail or take longer than `--timeout`. Prints one line per mutant and the
survivors with their line and change; exit code 0 (a report, not a check).
"""

from __future__ import annotations

import argparse
import ast
import copy
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMPARE: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
BINARY: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
}
LOG_CALLS = {"debug", "info", "warning", "error", "exception"}


@dataclass(frozen=True)
class Mutant:
    node: int  # index of the node in `ast.walk` order
    kind: str
    what: str
    line: int


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes no mutant touches: annotations, f-strings, raises and log calls."""
    skip: set[int] = set()
    for n in ast.walk(tree):
        roots: list[ast.AST] = []
        if isinstance(n, ast.arg) and n.annotation is not None:
            roots.append(n.annotation)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.returns is not None:
            roots.append(n.returns)
        if isinstance(n, ast.AnnAssign):
            roots.append(n.annotation)
        if isinstance(n, ast.JoinedStr | ast.Raise):
            roots.append(n)
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr in LOG_CALLS
        ):
            roots.append(n)
        for r in roots:
            skip.update(id(x) for x in ast.walk(r))
    return skip


def mutants(tree: ast.AST) -> list[Mutant]:
    """Every mutant of `tree`, in source order of the nodes."""
    skip = _skipped_nodes(tree)
    out: list[Mutant] = []
    for i, n in enumerate(ast.walk(tree)):
        if id(n) in skip:
            continue
        line = getattr(n, "lineno", 0)
        if isinstance(n, ast.Compare):
            for j, op in enumerate(n.ops):
                if type(op) in COMPARE:
                    new = COMPARE[type(op)].__name__
                    out.append(Mutant(i, f"compare{j}", f"{type(op).__name__} -> {new}", line))
        elif isinstance(n, ast.BinOp | ast.AugAssign) and type(n.op) in BINARY:
            new = BINARY[type(n.op)].__name__
            out.append(Mutant(i, "binary", f"{type(n.op).__name__} -> {new}", line))
        elif isinstance(n, ast.BoolOp):
            out.append(Mutant(i, "boolop", "and <-> or", line))
        elif isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not):
            out.append(Mutant(i, "not", "not dropped", line))
        elif isinstance(n, ast.Constant) and isinstance(n.value, bool):
            out.append(Mutant(i, "bool", f"{n.value} -> {not n.value}", line))
        elif isinstance(n, ast.Constant) and type(n.value) is int:
            out.append(Mutant(i, "int+1", f"{n.value} -> {n.value + 1}", line))
            if n.value != 0:
                out.append(Mutant(i, "int-1", f"{n.value} -> {n.value - 1}", line))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            if n.func.attr == "copy" and not n.args:
                out.append(Mutant(i, "copy", ".copy() dropped", line))
            if n.func.attr in ("head", "nlargest", "nsmallest") and n.args:
                out.append(Mutant(i, "size", f"{n.func.attr}(k) -> (k + 1)", line))
            if n.func.attr == "sort_values" and all(k.arg != "ascending" for k in n.keywords):
                out.append(Mutant(i, "descending", "ascending=False added", line))
        elif isinstance(n, ast.Return) and n.value is not None:
            out.append(Mutant(i, "return", "return None", line))
    return out


def _replace(parent: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for field, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, field, new)
            return
        if isinstance(value, list) and any(v is old for v in value):
            value[[v is old for v in value].index(True)] = new
            return
    raise ValueError("node not found under its parent")


def apply(tree: ast.AST, m: Mutant) -> str:
    """The source of `tree` with mutant `m` applied (the tree itself is left alone)."""
    tree = copy.deepcopy(tree)
    nodes = list(ast.walk(tree))
    parent = {id(c): p for p in nodes for c in ast.iter_child_nodes(p)}
    n: ast.AST = nodes[m.node]
    if isinstance(n, ast.Compare):
        j = int(m.kind.removeprefix("compare"))
        n.ops[j] = COMPARE[type(n.ops[j])]()
    elif isinstance(n, ast.BinOp | ast.AugAssign):
        n.op = BINARY[type(n.op)]()
    elif isinstance(n, ast.BoolOp):
        n.op = ast.Or() if isinstance(n.op, ast.And) else ast.And()
    elif isinstance(n, ast.UnaryOp):
        _replace(parent[id(n)], n, n.operand)
    elif isinstance(n, ast.Constant) and isinstance(n.value, bool):
        n.value = not n.value
    elif isinstance(n, ast.Constant) and isinstance(n.value, int):
        n.value = n.value + (1 if m.kind == "int+1" else -1)
    elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
        if m.kind == "copy":
            _replace(parent[id(n)], n, n.func.value)
        elif m.kind == "size":
            n.args[0] = ast.BinOp(n.args[0], ast.Add(), ast.Constant(1))
        else:
            n.keywords.append(ast.keyword("ascending", ast.Constant(False)))
    elif isinstance(n, ast.Return):
        n.value = ast.Constant(None)
    return ast.unparse(ast.fix_missing_locations(tree))


def tests_of(module: str) -> list[str]:
    """The test files that import `musicrec.<module>`."""
    pattern = re.compile(
        rf"(from musicrec\.{module} import|import musicrec\.{module}\b|"
        rf"from musicrec import [^\n]*\b{module}\b)"
    )
    return sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("test_*.py")
        if pattern.search(p.read_text())
    )


def copy_project(dest: Path) -> None:
    """Every file git tracks (the tests read `configs/`, the Makefile, the notebook, ...),
    with the working tree's contents; without git, the package, the tests and the entry
    modules."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        names = [n for n in listed.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        entry = ["api_main.py", "event_storage.py", "similarity_store.py", "verify_service.py"]
        names = [
            p.relative_to(ROOT).as_posix()
            for folder in ("musicrec", "tests")
            for p in (ROOT / folder).rglob("*.py")
        ] + ["pyproject.toml", *entry]
    for name in names:
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def run_tests(work: Path, tests: list[str], timeout: float) -> str:
    """The tests run in `work`: "passed", "failed" or "timeout"."""
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=work,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    return "passed" if run.returncode == 0 else "failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="a module of the package, e.g. metrics")
    parser.add_argument("--tests", nargs="+", help="test files (default: those importing it)")
    parser.add_argument("--limit", type=int, help="a random sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    args = parser.parse_args(argv)
    source_path = ROOT / "musicrec" / f"{args.module}.py"
    if not source_path.is_file():
        parser.error(f"no module {source_path}")
    tests = args.tests or tests_of(args.module)
    if not tests:
        parser.error(f"no test file imports musicrec.{args.module}: give --tests")
    tree = ast.parse(source_path.read_text())
    base = ast.unparse(tree)
    todo = mutants(tree)
    n_all = len(todo)
    if args.limit is not None and args.limit < n_all:
        todo = sorted(random.Random(args.seed).sample(todo, args.limit), key=lambda m: m.node)
    print(f"{args.module}: {len(todo)} of {n_all} mutants; tests: {' '.join(tests)}", flush=True)
    counts = {"killed": 0, "survived": 0, "timeout": 0, "same code": 0}
    survivors: list[Mutant] = []
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        work = Path(tmp)
        copy_project(work)
        # the tests must pass on the unchanged copy: a test that fails there for a reason
        # of its own (a file the copy lacks) would count every mutant as killed
        if run_tests(work, tests, args.timeout) != "passed":
            print("the tests fail on the unchanged code in the copy: no mutant run")
            return 1
        target = work / "musicrec" / f"{args.module}.py"
        for m in todo:
            text = apply(tree, m)
            if text == base:
                counts["same code"] += 1
                continue
            target.write_text(text)
            t0 = time.perf_counter()
            result = run_tests(work, tests, args.timeout)
            status = {"passed": "survived", "failed": "killed"}.get(result, result)
            counts[status] += 1
            if status == "survived":
                survivors.append(m)
            print(
                f"  line {m.line:4d}  {m.what:32s} {status:8s} {time.perf_counter() - t0:5.1f} s",
                flush=True,
            )
    print("counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for m in survivors:
        print(f"survived: {args.module}.py:{m.line}  {m.what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Mutation testing of floodax: does the test suite reject wrong code?

Each mutant changes one thing in one module of ``floodax/`` (flips a
comparison, swaps an operator or a mean for a max, drops a check, swaps the
branches of a ``jnp.where``, …), and the tests that exercise that module run
against it in a scratch copy of the repository; the working tree is never
touched. A mutant is *killed* when a test fails (or the run times out), and
*survives* when every test passes: then either a test is missing, or the
mutant is equivalent to the original (tests/README.md lists those).

Usage (from the repository root, in the test environment)::

    python tests/mutation.py                      # every core module
    python tests/mutation.py floodax/_flooding.py # one module
    python tests/mutation.py --list               # the mutants, not run
    python tests/mutation.py --workers 2 --out mutation.json
    python tests/mutation.py --rerun mutation.json  # last run's survivors only

It first runs each module's tests on the unmutated code and stops if they
fail (a failing test would count every mutant as killed). It prints one line
per mutant and a score (killed / all), and writes the survivors with their
diffs to ``--out``.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Which tests exercise which module (the module's own doctests run too).
TESTS = {
    "floodax/_validation.py": [
        "tests/test_validation.py",
        "tests/test_suggest.py",
        "tests/test_bad_input.py",
        "tests/test_flooding.py",
        "tests/test_penalty.py",
        "tests/test_alternate.py",
        "tests/test_theory.py",
        "tests/test_adaflood.py",
        "tests/test_value_fn.py",
        "tests/test_diagnostics.py",
    ],
    "floodax/_schedules.py": [
        "tests/test_flooding.py",
        "tests/test_alternate.py",
        "tests/test_inject.py",
    ],
    "floodax/_flooding.py": [
        "tests/test_bad_input.py",
        "tests/test_flooding.py",
        "tests/test_adaflood.py",
        "tests/test_properties.py",
        "tests/test_meta_gradients.py",
        "tests/test_mixed_precision.py",
        "tests/test_inject.py",
        "tests/test_softad.py",
    ],
    "floodax/_softad.py": ["tests/test_softad.py", "tests/test_bad_input.py"],
    "floodax/_sam.py": [
        "tests/test_sam.py",
        "tests/test_bad_input.py",
        "tests/test_inject.py",
        "tests/test_mixed_precision.py",
    ],
    "floodax/_m_sharpness.py": [
        "tests/test_m_sharpness.py",
        "tests/test_bad_input.py",
    ],
    "floodax/_penalty.py": [
        "tests/test_bad_input.py",
        "tests/test_penalty.py",
        "tests/test_sam.py",
        "tests/test_mixed_precision.py",
        "tests/test_meta_gradients.py",
        "tests/test_properties.py",
        "tests/test_diagnostics.py",
        "tests/test_value_fn.py",
        "tests/test_inject.py",
    ],
    "floodax/_alternate.py": [
        "tests/test_bad_input.py",
        "tests/test_alternate.py",
        "tests/test_value_fn.py",
        "tests/test_inject.py",
        "tests/test_meta_gradients.py",
        "tests/test_mixed_precision.py",
        "tests/test_properties.py",
        "tests/test_checkpoint.py",
    ],
    "floodax/_theory.py": ["tests/test_bad_input.py", "tests/test_theory.py"],
    "floodax/_suggest.py": [
        "tests/test_bad_input.py",
        "tests/test_suggest.py",
        "tests/test_validation.py",
    ],
    "floodax/_adaflood.py": ["tests/test_adaflood.py", "tests/test_bad_input.py"],
    "floodax/_accumulation.py": [
        "tests/test_accumulation.py",
        "tests/test_bad_input.py",
        "tests/test_inject.py",
        "tests/test_data_parallel.py",
    ],
    "floodax/_diagnostics.py": ["tests/test_diagnostics.py", "tests/test_bad_input.py"],
    "floodax/_cli.py": ["tests/test_cli.py"],
    "floodax/_stats.py": ["tests/test_integrations.py"],
}

# Calls whose function is swapped for another: the same shape, other values.
CALL_SWAPS = {
    "mean": "max",
    "sum": "max",
    "max": "min",
    "min": "max",
    "maximum": "minimum",
    "minimum": "maximum",
    "pmean": "pmax",
    "psum": "pmean",
    "any": "all",
    "all": "any",
    "isnan": "isinf",
    "isfinite": "isnan",
}
# Calls replaced by their first argument: the operation dropped.
CALL_DROPS = {"stop_gradient", "abs", "sqrt", "astype", "square", "asarray"}
COMPARE_SWAPS = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
BINOP_SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.Pow: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
}


@dataclass
class Mutant:
    path: str
    line: int
    description: str
    original: str
    mutated: str
    start: int  # character offsets of the replaced text in the module
    end: int


def _offsets(source: str) -> list[int]:
    starts, total = [], 0
    for line in source.splitlines(keepends=True):
        starts.append(total)
        total += len(line)
    return starts


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes not to mutate: docstrings, messages, annotations, imports."""
    skip: set[int] = set()

    def skip_all(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip_all(node)  # docstrings
        elif isinstance(node, ast.JoinedStr | ast.Import | ast.ImportFrom):
            skip_all(node)
        elif isinstance(node, ast.Raise):
            skip_all(node.exc)  # the message; dropping the raise is a mutant
        elif isinstance(node, ast.arg | ast.AnnAssign):
            skip_all(node.annotation)
        elif isinstance(node, ast.FunctionDef):
            skip_all(node.returns)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            skip_all(node)
    return skip


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _variants(node: ast.AST) -> Iterator[tuple[str, ast.AST | str]]:
    """(description, replacement node or source text) for one node."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAPS:
                new = ast.Compare(node.left, list(node.ops), node.comparators)
                new.ops[i] = COMPARE_SWAPS[type(op)]()
                yield f"{type(op).__name__} -> {type(new.ops[i]).__name__}", new
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
        new_op = BINOP_SWAPS[type(node.op)]()
        desc = f"{type(node.op).__name__} -> {type(new_op).__name__}"
        yield desc, ast.BinOp(node.left, new_op, node.right)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
        yield f"drop {type(node.op).__name__}", node.operand
    elif isinstance(node, ast.BoolOp):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield (
            f"{type(node.op).__name__} -> {type(other).__name__}",
            ast.BoolOp(other, node.values),
        )
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            yield f"{value} -> {not value}", ast.Constant(not value)
        elif isinstance(value, int | float):
            new = 1 if value == 0 else (0 if value == 1 else value + 1)
            yield f"{value!r} -> {new!r}", ast.Constant(new)
    elif isinstance(node, ast.Call):
        name = _call_name(node)
        if name in CALL_SWAPS and isinstance(node.func, ast.Attribute | ast.Name):
            func = (
                ast.Attribute(node.func.value, CALL_SWAPS[name], ast.Load())
                if isinstance(node.func, ast.Attribute)
                else ast.Name(CALL_SWAPS[name], ast.Load())
            )
            yield (
                f"{name} -> {CALL_SWAPS[name]}",
                ast.Call(func, node.args, node.keywords),
            )
        if name in CALL_DROPS:
            if name == "astype" and isinstance(node.func, ast.Attribute):
                yield "drop astype", node.func.value
            elif node.args:
                yield f"drop {name}", node.args[0]
        if name == "where" and len(node.args) == 3:
            c, a, b = node.args
            yield "swap where branches", ast.Call(node.func, [c, b, a], node.keywords)


def mutants_of(path: str) -> list[Mutant]:
    """Every single-change mutant of the module at ``path``."""
    source = (ROOT / path).read_text()
    tree = ast.parse(source)
    skip = _skipped_nodes(tree)
    starts = _offsets(source)
    found = []

    def span(node: ast.AST) -> tuple[int, int]:
        return (
            starts[node.lineno - 1] + node.col_offset,
            starts[node.end_lineno - 1] + node.end_col_offset,
        )

    for node in ast.walk(tree):
        if id(node) in skip or not hasattr(node, "lineno"):
            continue
        if isinstance(node, ast.Raise):
            start, end = span(node)
            found.append(
                Mutant(
                    path,
                    node.lineno,
                    "drop raise",
                    source[start:end],
                    "pass",
                    start,
                    end,
                )
            )
            continue
        if isinstance(node, ast.If):
            start, end = span(node.test)
            text = source[start:end]
            found.append(
                Mutant(
                    path, node.lineno, "negate if", text, f"not ({text})", start, end
                )
            )
            continue
        for description, replacement in _variants(node):
            start, end = span(node)
            text = (
                replacement
                if isinstance(replacement, str)
                else ast.unparse(ast.fix_missing_locations(replacement))
            )
            original = source[start:end]
            # Keep the mutated text on one logical line inside brackets.
            mutated = (
                f"({text})"
                if "\n" in original
                or isinstance(node, ast.BinOp | ast.BoolOp | ast.Compare)
                else text
            )
            found.append(
                Mutant(path, node.lineno, description, original, mutated, start, end)
            )
    return found


def _copy_repository(destination: Path) -> None:
    ignore = shutil.ignore_patterns(
        ".git",
        ".venv",
        "__pycache__",
        "*.egg-info",
        ".pytest_cache",
        ".hypothesis",
        "floodax-demo",
        "benchmarks",
        "docs",
        "examples",
    )
    shutil.copytree(ROOT, destination, ignore=ignore)


def _run_tests(
    path: str, workdir: Path, timeout: float, cache: Path
) -> subprocess.CompletedProcess | None:
    """Runs the doctests of ``path`` and the test files that exercise it in
    ``workdir``; ``None`` when the run times out."""
    tests = [t for t in TESTS.get(path, []) if (ROOT / t).exists()]
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-n",
        "0",
        "--doctest-modules",
        path,
        *tests,
    ]
    # A shared compilation cache: unchanged functions are not recompiled for
    # every mutant (entries are keyed by the whole computation).
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }
    try:
        return subprocess.run(
            command,
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None


def check_baseline(
    paths: list[str], workdir: Path, timeout: float, cache: Path
) -> None:
    """Exits unless every module's tests pass on the unmutated code: a test
    that already fails would count every mutant of that module as killed."""
    for path in paths:
        result = _run_tests(path, workdir, timeout, cache)
        if result is None or result.returncode != 0:
            output = "timed out" if result is None else result.stdout[-3000:]
            sys.exit(
                f"{path}: its tests fail on the unmutated code, so no mutant of "
                f"it can be scored. Fix them first.\n{output}"
            )
        print(f"baseline: the tests of {path} pass unmutated", flush=True)


def run_mutant(
    mutant: Mutant, workdir: Path, timeout: float, cache: Path
) -> tuple[str, float]:
    """``("killed" | "survived" | "timeout", seconds)`` for one mutant."""
    target = workdir / mutant.path
    # The scratch copy's text, the one the mutants were found in: the
    # working tree may change while a long run goes on.
    original = target.read_text()
    if original[mutant.start : mutant.end] != mutant.original:
        raise RuntimeError(f"{mutant.path}:{mutant.line}: the source changed")
    target.write_text(
        original[: mutant.start] + mutant.mutated + original[mutant.end :]
    )
    start = time.perf_counter()
    try:
        result = _run_tests(mutant.path, workdir, timeout, cache)
    finally:
        target.write_text(original)
    if result is None:
        verdict = "timeout"
    else:
        verdict = "survived" if result.returncode == 0 else "killed"
    return verdict, time.perf_counter() - start


def _identity(mutant: dict) -> tuple[str, str, str, str]:
    return (
        mutant["path"],
        mutant["description"],
        mutant["original"],
        mutant["mutated"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=sorted(TESTS))
    parser.add_argument("--list", action="store_true", help="list mutants only")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", default="mutation.json")
    parser.add_argument(
        "--rerun",
        metavar="JSON",
        help="run only the survivors listed in an earlier --out file (matched "
        "by module, change and text, so edits elsewhere do not lose them)",
    )
    args = parser.parse_args(argv)
    mutants = [m for path in args.modules for m in mutants_of(path)]
    if args.rerun:
        with open(args.rerun) as f:
            wanted = {_identity(s) for s in json.load(f)["survivors"]}
        mutants = [m for m in mutants if _identity(asdict(m)) in wanted]
    if args.list:
        for m in mutants:
            print(
                f"{m.path}:{m.line}: {m.description}: {m.original!r} -> {m.mutated!r}"
            )
        print(f"{len(mutants)} mutants")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        workdirs = []
        for i in range(args.workers):
            workdirs.append(Path(scratch) / f"repo{i}")
            _copy_repository(workdirs[-1])
        check_baseline(
            sorted({m.path for m in mutants}),
            workdirs[0],
            args.timeout,
            Path(scratch) / "jax-cache",
        )
        results: list[tuple[Mutant, str, float]] = []
        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            free = list(workdirs)
            futures = {}
            pending = list(mutants)
            while pending or futures:
                while pending and free:
                    mutant, workdir = pending.pop(0), free.pop()
                    future = pool.submit(
                        run_mutant,
                        mutant,
                        workdir,
                        args.timeout,
                        Path(scratch) / "jax-cache",
                    )
                    futures[future] = (mutant, workdir)
                done, _ = concurrent.futures.wait(
                    futures, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    mutant, workdir = futures.pop(future)
                    free.append(workdir)
                    verdict, seconds = future.result()
                    results.append((mutant, verdict, seconds))
                    print(
                        f"[{len(results)}/{len(mutants)}] {verdict:8s} {seconds:5.0f}s "
                        f"{mutant.path}:{mutant.line} {mutant.description}: "
                        f"{mutant.original!r} -> {mutant.mutated!r}",
                        flush=True,
                    )
    killed = sum(v != "survived" for _, v, _ in results)
    score = killed / max(len(results), 1)
    print(f"mutation score: {killed}/{len(results)} killed ({score:.1%})")
    with open(args.out, "w") as f:
        json.dump(
            {
                "killed": killed,
                "total": len(results),
                "survivors": [asdict(m) for m, v, _ in results if v == "survived"],
            },
            f,
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

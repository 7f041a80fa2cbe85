"""The measurable code limits of the redesign (issue 15), read from the source with :mod:`ast`.

- No function in ``engine/`` over ``MAX_LINES`` lines: ``end_lineno - lineno + 1`` of every ``def``
  (methods and nested functions included; the decorators are not counted, the docstring is).
- No function over ``MAX_PARAMS`` parameters: positional-only, ordinary and keyword-only ones, without a
  leading ``self``/``cls``; a ``*args`` and a ``**kwargs`` count as one each (a ``**runtime`` typed with
  ``Unpack[...]`` is one declared group, which is the point of declaring it once).
- At most ``MAX_EXCEPTIONS`` functions over each of those two limits, and each of them says why with a
  ``# limit: <reason>`` comment on its ``def`` line (or on the line of its name, for a ``def`` split
  over lines).
- No file in ``engine/`` over ``MAX_FILE_LINES`` lines.
- No import cycle between the packages of ``engine`` (``engine.ops``, ``engine.active``, ... and the
  top-level modules such as ``engine.errors``): an edge ``X -> Y`` for every ``import engine.Y...`` or
  ``from engine.Y... import`` in a module of ``X``, at module level *and* inside functions (a deferred
  import hides a cycle from Python's import machinery, not from the reader). ``if TYPE_CHECKING:``
  imports count too.
- ``jobs/`` holds at most ``MAX_JOB_FILES`` files (all files below it, caches left out).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "engine"
MAX_LINES = 80
MAX_PARAMS = 10
MAX_EXCEPTIONS = 2
MAX_FILE_LINES = 500
MAX_JOB_FILES = 8
LIMIT_TAG = "# limit:"

Func = ast.FunctionDef | ast.AsyncFunctionDef


def _sources() -> list[Path]:
    return sorted(p for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts)


def _functions() -> Iterator[tuple[Path, list[str], Func]]:
    for path in _sources():
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield path, text.splitlines(), node


def _where(path: Path, node: Func) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"


def function_lines(node: Func) -> int:
    assert node.end_lineno is not None
    return node.end_lineno - node.lineno + 1


def parameter_count(node: Func) -> int:
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + (a.vararg is not None) + (a.kwarg is not None)


def _has_reason(lines: list[str], node: Func) -> bool:
    """A ``# limit: <reason>`` on the ``def`` line (the first line of the def, or the line with its name)."""
    for line in lines[node.lineno - 1 : node.lineno + 1]:
        if LIMIT_TAG in line and line.split(LIMIT_TAG, 1)[1].strip():
            return True
    return False


def _check_limit(measure: str, over: list[tuple[int, str, bool]]) -> list[str]:
    """Problems with the functions over a limit: those without a reason, and more than two with one."""
    problems = [f"{where}: {n} {measure} and no '{LIMIT_TAG} <reason>' comment" for n, where, ok in over if not ok]
    excused = [f"{where} ({n})" for n, where, ok in over if ok]
    if len(excused) > MAX_EXCEPTIONS:
        problems.append(f"{len(excused)} functions excused for {measure}, at most {MAX_EXCEPTIONS}: {excused}")
    return problems


def test_function_length() -> None:
    over = [(function_lines(f), _where(p, f), _has_reason(lines, f)) for p, lines, f in _functions() if function_lines(f) > MAX_LINES]
    problems = _check_limit(f"lines (over {MAX_LINES})", sorted(over, reverse=True))
    assert not problems, "\n".join(problems)


def test_parameter_count() -> None:
    over = [(parameter_count(f), _where(p, f), _has_reason(lines, f)) for p, lines, f in _functions() if parameter_count(f) > MAX_PARAMS]
    problems = _check_limit(f"parameters (over {MAX_PARAMS})", sorted(over, reverse=True))
    assert not problems, "\n".join(problems)


def test_file_length() -> None:
    big = sorted((len(p.read_text().splitlines()), str(p.relative_to(ROOT))) for p in _sources())
    over = [f"{name}: {n} lines" for n, name in big if n > MAX_FILE_LINES]
    assert not over, f"engine files over {MAX_FILE_LINES} lines:\n" + "\n".join(over)


def _package(path: Path) -> str:
    """``engine/ops/label.py`` -> ``ops``; ``engine/errors.py`` -> ``errors``."""
    rel = path.relative_to(ENGINE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def import_edges() -> dict[str, dict[str, set[str]]]:
    """``{X: {Y: {files of X that import engine.Y}}}`` over module-level and function-level imports."""
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in _sources():
        src = _package(path)
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] if node.module != "engine" else [f"engine.{a.name}" for a in node.names]
            for t in targets:
                parts = t.split(".")
                if parts[0] == "engine" and len(parts) > 1 and parts[1] != src and parts[1] != "__init__":
                    edges[src][parts[1]].add(str(path.relative_to(ROOT)))
    return edges


def import_cycles(edges: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def test_import_cycle_finder_sees_a_cycle() -> None:
    """The finder itself: a two-package cycle and a three-package one are found, a chain is not."""
    def g(pairs: list[tuple[str, str]]) -> dict[str, dict[str, set[str]]]:
        out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for a, b in pairs:
            out[a][b].add("x.py")
        return out

    assert import_cycles(g([("a", "b"), ("b", "a"), ("c", "a")])) == [["a", "b"]]
    assert import_cycles(g([("a", "b"), ("b", "c"), ("c", "a")])) == [["a", "b", "c"]]
    assert import_cycles(g([("a", "b"), ("b", "c")])) == []


def test_no_import_cycle_between_engine_packages() -> None:
    edges = import_edges()
    lines = []
    for comp in import_cycles(edges):
        lines.append(" <-> ".join(comp))
        for a in comp:
            for b in comp:
                if b in edges[a]:
                    lines.append(f"  engine.{a} -> engine.{b}: {sorted(edges[a][b])}")
    assert not lines, "import cycles between engine packages:\n" + "\n".join(lines)


def test_jobs_folder_size() -> None:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "jobs").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert len(files) <= MAX_JOB_FILES, f"jobs/ holds {len(files)} files, at most {MAX_JOB_FILES}: {files}"


@pytest.mark.parametrize(
    ("src", "lines", "params"),
    [
        ("def f(self, a, b=1, *c, d, **e):\n    return a\n", 2, 5),
        ("class K:\n    @classmethod\n    def f(cls, /, a):\n        pass\n", 2, 1),
        ("def f():\n    def g(a, b):\n        pass\n    return g\n", 4, 0),
    ],
)
def test_measures(src: str, lines: int, params: int) -> None:
    """The two measures on small known functions (the first ``def`` found, outermost first)."""
    node = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef))
    assert function_lines(node) == lines
    assert parameter_count(node) == params

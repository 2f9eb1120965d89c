"""The floors of LayerZero, written down and enforced.

A module may import only from its own floor or a lower one, so each floor can be read, tested and replaced
knowing only what lies beneath it. Every import counts: module level, inside functions (lazy), under
``if TYPE_CHECKING:``, ``importlib.import_module("layerzero...")`` literals and ``"module:function"``
strings (resolved later, still a dependency). The table :data:`FLOORS` *is* the architecture:

0 foundation   facts every floor shares and nothing above them: errors, the operation contracts, argument
               validation, the call context (``SelectionContext``, buckets, keys), config files, telemetry
               (recorder, log, Prometheus export through a protocol).
1 registry     kernel and backend specs, constraints, the registries and their process-wide defaults (which
               it is given, see the root below).
2 kernels      the built-in catalogue and the adapters around each library.
3 policy       the rules that rank kernels, and the data ranking reads: the tuning cache, measurements,
               cost tables, sweep progress.
4 selection    choosing a kernel for a call (engine, rankings) and dispatching it.
5 ops          the functional API models call, and model setup that is not tied to one framework. A new
               top-level ``layerzero.<x>`` not in the table lands here (:data:`NEW_TOP_LEVEL_FLOOR`); add
               it to the table when it has a floor of its own.
6 integrations ``layerzero_hf`` (Transformers) and ``layerzero_vllm`` (vLLM); vLLM must not need HF.
7 tools        the CLI, ``python -m layerzero``, the tuning tools (sweep, shapes, kernel comparison) and
               ``benchmarks/``.

Two rules follow from how Python imports packages:

- The package root ``layerzero`` is the composition root. It sits at :data:`ROOT_FLOOR` (it wires the
  built-in kernels into the registry and exposes ``use_kernels`` from dispatch, both lazily, inside
  functions), and its module level may import no higher than :data:`ROOT_EAGER_MAX`, because it runs
  before every other module and ``import layerzero`` must stay cheap. Lower floors never import it by name.
- Any other package's ``__init__`` runs before each of its modules, so it lives on the lowest floor of
  what it contains (``layerzero.tuning`` re-exports the cache and measurements, floor 3, not the sweep).

The graph must also be free of import cycles (all edges above), reported with one example path each.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("layerzero", "layerzero_hf", "layerzero_vllm")
FLOOR_NAMES = {0: "foundation", 1: "registry", 2: "kernels", 3: "policy", 4: "selection", 5: "ops",
               6: "integrations", 7: "tools"}

# Longest prefix wins: "layerzero.tuning.cache" (3) overrides "layerzero.tuning" (7).
FLOORS: dict[str, int] = {
    "layerzero.errors": 0,
    "layerzero.operations": 0,
    "layerzero.validation": 0,
    "layerzero.context": 0,
    "layerzero.config_files": 0,
    "layerzero.data_files": 0,
    "layerzero.telemetry": 0,
    "layerzero.registry": 1,
    "layerzero.kernels": 2,
    "layerzero.policy": 3,
    "layerzero.tuning.cache": 3,
    "layerzero.tuning.measure": 3,
    "layerzero.tuning.cost_bucket": 3,
    "layerzero.tuning.cost_table": 3,
    "layerzero.tuning.progress": 3,
    "layerzero.selection": 4,
    "layerzero.dispatch": 4,
    "layerzero.ops": 5,
    "layerzero.model_setup": 5,
    # measuring kernels on given shapes through the dispatcher: a library the integrations' compare() uses
    "layerzero.tuning.kernel_compare": 5,
    "layerzero.tuning.shapes": 5,
    "layerzero_hf": 6,
    "layerzero_vllm": 6,
    "layerzero.cli": 7,
    "layerzero.__main__": 7,
    "layerzero.tuning": 7,
    "benchmarks": 7,
}
NEW_TOP_LEVEL_FLOOR = 5
ROOT_FLOOR = 4
ROOT_EAGER_MAX = 1
# Same floor, still forbidden: a vLLM user need not install Transformers' integration.
FORBIDDEN = {("layerzero_vllm", "layerzero_hf")}

# Owned by another change; must be empty at merge.
PENDING_ELSEWHERE: set[str] = set()

_MODULE_FUNCTION = re.compile(r"^((?:layerzero|layerzero_hf|layerzero_vllm|benchmarks)(?:\.\w+)*):\w+$")
_IMPORTERS = {"import_module", "__import__", "find_spec"}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    lazy: bool  # inside a function: runs on call, not on import


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[_module_name(path)] = path
    return out


MODULES = discover()
PACKAGE_INITS = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _ours(name: str) -> bool:
    return name.split(".")[0] in (*PACKAGES, "benchmarks")


def _resolve_from(source: str, node: ast.ImportFrom) -> list[str]:
    base = node.module or ""
    if node.level:
        package = source if source in PACKAGE_INITS else source.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    # "from pkg import mod" imports the module pkg.mod; "from mod import name" imports mod.
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


class _Collector(ast.NodeVisitor):
    def __init__(self, source: str) -> None:
        self.source = source
        self.depth = 0
        self.edges: list[Edge] = []

    def _add(self, target: str, node: ast.AST) -> None:
        if _ours(target) and target != self.source:
            self.edges.append(Edge(self.source, target, getattr(node, "lineno", 0), self.depth > 0))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for target in _resolve_from(self.source, node):
            self._add(target, node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in _IMPORTERS and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str):
                self._add(node.args[0].value, node)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            m = _MODULE_FUNCTION.match(node.value)
            if m:
                self._add(m.group(1), node)


def collect_edges() -> list[Edge]:
    edges: list[Edge] = []
    for name, path in MODULES.items():
        collector = _Collector(name)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges.extend(collector.edges)
    return edges


def _table_floor(module: str) -> int:
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is not None:
        return FLOORS[best]
    if module.startswith("layerzero."):
        return NEW_TOP_LEVEL_FLOOR
    raise AssertionError(f"{module} has no floor; add it to FLOORS")


def floor_of(module: str) -> int:
    """The floor of a module; a package ``__init__`` takes the lowest floor of what it contains."""
    if module == "layerzero":
        return ROOT_FLOOR
    floor = _table_floor(module)
    if module in PACKAGE_INITS:
        inside = [_table_floor(m) for m in MODULES if m.startswith(module + ".")]
        floor = min([floor, *inside])
    return floor


def _label(floor: int) -> str:
    return f"{floor} {FLOOR_NAMES[floor]}"


def _forbidden(source: str, target: str) -> bool:
    top_s, top_t = source.split(".")[0], target.split(".")[0]
    return (top_s, top_t) in FORBIDDEN


def violations(edges: list[Edge]) -> dict[str, str]:
    """``"source -> target"`` keys, each with a readable line saying why it breaks the floors."""
    out: dict[str, str] = {}
    for e in edges:
        a, b = floor_of(e.source), floor_of(e.target)
        key = f"{e.source} -> {e.target}"
        where = f"{MODULES[e.source].relative_to(ROOT)}:{e.line}"
        if b > a:
            out.setdefault(key, f"{key} (floor {_label(a)} -> floor {_label(b)}) at {where}")
        elif _forbidden(e.source, e.target):
            out.setdefault(key, f"{key} (forbidden between integrations) at {where}")
        elif e.source == "layerzero" and not e.lazy and b > ROOT_EAGER_MAX:
            out.setdefault(key, f"{key} (the root imports floor {_label(b)} at import time) at {where}")
    return out


def _graph(edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in edges:
        target = e.target
        while target and target not in MODULES:  # "pkg.mod.Name" style targets fall back to the module
            target = target.rpartition(".")[0]
        if target and target != e.source:
            graph[e.source].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one module are import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def example_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    members, start = set(component), component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child not in parents:
                    parents[child] = node
                    nxt.append(child)
        frontier = nxt
    return component


def cycles(edges: list[Edge]) -> dict[str, str]:
    graph = _graph(edges)
    return {
        "cycle: " + ", ".join(c): "cycle: " + " -> ".join(example_cycle(graph, c))
        for c in strongly_connected(graph)
    }


EDGES = collect_edges()


def test_every_module_has_a_floor():
    for module in MODULES:
        assert floor_of(module) in FLOOR_NAMES, module


def test_no_module_imports_a_higher_floor():
    found = {k: v for k, v in violations(EDGES).items() if k not in PENDING_ELSEWHERE}
    assert not found, "imports that run up the floors:\n" + "\n".join(sorted(found.values()))


def test_no_import_cycles():
    found = {k: v for k, v in cycles(EDGES).items() if k not in PENDING_ELSEWHERE}
    assert not found, "import cycles:\n" + "\n".join(sorted(found.values()))


def test_pending_list_names_only_live_problems():
    """Fixed problems leave PENDING_ELSEWHERE, so the list only shrinks to empty."""
    live = violations(EDGES).keys() | cycles(EDGES).keys()
    stale = PENDING_ELSEWHERE - live
    assert not stale, f"fixed, remove from PENDING_ELSEWHERE: {sorted(stale)}"


def test_the_checker_sees_every_kind_of_import():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from layerzero.dispatch.core import Dispatcher\n"
        "def f():\n    import layerzero_hf.loading\n"
        "    importlib.import_module('layerzero.selection')\n"
        "IMPL = 'layerzero.ops:rms_norm'\n"
        "from . import catalog\n"
    )
    collector = _Collector("layerzero.kernels.liger")
    collector.visit(ast.parse(source))
    got = {(e.target, e.lazy) for e in collector.edges}
    assert got == {("layerzero.dispatch.core", False), ("layerzero_hf.loading", True),
                   ("layerzero.selection", True), ("layerzero.ops", False), ("layerzero.kernels.catalog", False)}
    assert floor_of("layerzero.tuning") == 3 and floor_of("layerzero.tuning.sweep") == 7
    assert floor_of("layerzero.model_setup_example") == NEW_TOP_LEVEL_FLOOR
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert example_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_the_checker_applies_each_rule():
    found = violations([
        Edge("layerzero.registry", "layerzero.kernels.catalog", 1, True),
        Edge("layerzero_vllm.kernels", "layerzero_hf.rules", 2, True),
        Edge("layerzero", "layerzero.dispatch.overrides", 3, False),
        Edge("layerzero", "layerzero.kernels.catalog", 4, True),
        Edge("layerzero.kernels.liger", "layerzero.registry", 5, False),
    ])
    assert sorted(found) == ["layerzero -> layerzero.dispatch.overrides",
                             "layerzero.registry -> layerzero.kernels.catalog",
                             "layerzero_vllm.kernels -> layerzero_hf.rules"]
    assert "(floor 1 registry -> floor 2 kernels)" in found["layerzero.registry -> layerzero.kernels.catalog"]

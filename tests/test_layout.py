"""The architecture, checked on the source: three parts, arrows one way, no import circles.

kernel (fleet/*.py and fleet/v1/) <- coordinator side (fleet/coordinator, fleet/results,
fleet/observe) and phone side (agents/). Every import counts, including those inside functions:
a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COORDINATOR_SIDE = ("fleet.coordinator", "fleet.results", "fleet.observe", "fleet.devices")
COORDINATOR_ONLY_LIBS = ("ray", "pydantic", "yaml", "rich", "matplotlib", "grafana_client")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in ("fleet", "agents") for p in (ROOT / pkg).rglob("*.py")}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module this one imports (first-party resolved to modules, others by top name)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(module: str) -> str:
    if module.startswith("agents"):
        return "phone"
    if module.startswith(COORDINATOR_SIDE):
        return "coordinator"
    return "kernel"


def _first_party(module: str) -> bool:
    return module.split(".")[0] in ("fleet", "agents")


def test_the_kernel_imports_neither_side():
    bad = {
        m: sorted(i for i in imps if _first_party(i) and _part(i) != "kernel")
        for m, imps in GRAPH.items()
        if _part(m) == "kernel"
    }
    assert not {m: i for m, i in bad.items() if i}


def test_the_coordinator_side_never_imports_the_phone_side():
    bad = {
        m: sorted(i for i in imps if i.startswith("agents"))
        for m, imps in GRAPH.items()
        if _part(m) == "coordinator"
    }
    assert not {m: i for m, i in bad.items() if i}


def test_results_and_observe_do_not_reach_back_into_the_coordinator():
    bad = {
        m: sorted(i for i in imps if i.startswith("fleet.coordinator"))
        for m, imps in GRAPH.items()
        if m.startswith(("fleet.results", "fleet.observe"))
    }
    assert not {m: i for m, i in bad.items() if i}


def test_the_phone_side_needs_no_coordinator_code_or_libraries():
    bad = {
        m: sorted(
            i for i in imps if _part(i) == "coordinator" or i.split(".")[0] in COORDINATOR_ONLY_LIBS
        )
        for m, imps in GRAPH.items()
        if _part(m) == "phone"
    }
    assert not {m: i for m, i in bad.items() if i}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _package(module: str) -> str:
    """Subpackages (agents.paradigms, fleet.results, ...) as one node; a top-level module of
    fleet/ or agents/ stands for itself."""
    return ".".join(module.split(".")[:2])


@pytest.mark.parametrize("level", ["module", "package"])
def test_there_are_no_import_circles(level):
    if level == "module":
        graph = GRAPH
    else:
        graph = {}
        for m, imps in GRAPH.items():
            edges = graph.setdefault(_package(m), set())
            edges |= {_package(i) for i in imps if i in MODULES and _package(i) != _package(m)}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_wire_and_the_servers_touch_protobuf_messages():
    """*_pb2 message types stay at the edges: the wire module, the servers (the agent's, the
    simulated phones' router, the model service's), the framing of the app <-> model IPC and
    the agent client that holds stubs."""
    edges = {
        "fleet.wire",
        "agents.agent_server",
        "agents.simulated.fleet_server",
        "agents.modelservice.slm_server",
        "agents.modelservice.slm_ipc",
        "fleet.coordinator.agent_client",
    }
    users = {
        m
        for m, imps in GRAPH.items()
        if not m.startswith("fleet.v1") and any(i.startswith("fleet.v1") for i in imps)
    }
    assert users <= edges, sorted(users - edges)

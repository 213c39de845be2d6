"""The layer rule and the absence of import cycles, read from the source (no imports run).

Layers, lowest first; a module may import its own layer and those below, never above:

* base: ``settings``, ``errors``, ``concurrency``, ``metrics`` and the plain-Python layers
  (``models``, ``inputs``, ``interrogation``, ``scheduling``, ``engines``), which import no
  web framework (docs/development.md, "Layer rules");
* ``process``: what every service process installs (hooks, logs, drain, cancellation);
* ``server``: the entry's HTTP side; ``runners``: the model services (never ``server``);
* ``service.py`` and ``cli``: the top.

A cycle is counted on every import but those under ``if TYPE_CHECKING:`` (an import moved
into a function to dodge a cycle is still one); a submodule importing its own package's
``__init__`` is not a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("bentoml", "_bentoml_impl", "_bentoml_sdk", "starlette", "fastapi", "uvicorn")
# What each part may import of the project (besides its own part).
ALLOWED = {
    "base": set(),
    "process": {"base"},
    "server": {"base", "process"},
    "runners": {"base", "process"},
    "cli": {"base"},
    "service": {"base", "process", "server", "runners"},
    "testing": {"base"},
}


def source_files() -> list[Path]:
    project = REPO / "clip_service"
    return sorted([*project.rglob("*.py"), *(REPO / "runners").glob("*.py"), REPO / "service.py"])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in source_files()}


def part(module: str) -> str:
    """The layer a project module belongs to."""
    top, *rest = module.split(".")
    if top != "clip_service":
        return top  # runners, service
    name = rest[0] if rest else ""
    return name if name in ALLOWED else "base"


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """(imported name, line) of a file, but those only a type checker runs; a
    ``from m import x`` names ``m.x`` when that is a project module, else ``m``."""
    for node in _run_at_some_point(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield (full if full in MODULES else node.module), node.lineno


def _run_at_some_point(tree: ast.AST) -> Iterator[ast.AST]:
    for node in ast.iter_child_nodes(tree):
        checker_only = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for kept in node.orelse if checker_only else [node]:
            yield kept
            yield from _run_at_some_point(kept)


def project_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        graph[module] = {
            name
            for name, _ in imports(path)
            if name in MODULES and name != module and not module.startswith(name + ".")
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_there_are_no_import_cycles():
    assert cycles(project_graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_its_layer_and_those_below(module):
    mine = part(module)
    plain = mine == "base"
    for name, line in imports(MODULES[module]):
        where = f"{MODULES[module].relative_to(REPO)}:{line} imports {name}"
        if name.split(".")[0] in ("clip_service", "runners", "service"):
            theirs = part(name)
            assert theirs == mine or theirs in ALLOWED[mine], where
        elif plain:
            assert name.split(".")[0] not in FRAMEWORKS, where


def test_the_rule_sees_a_violation():
    assert part("clip_service.models.clip") == "base"
    assert part("clip_service.server.jobs") == "server"
    assert "server" not in ALLOWED[part("runners.clip_encoder")]

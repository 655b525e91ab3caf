"""The house in rooms (docs/ARCHITECTURE.md): no module lives loose in ``r1edge/`` but the
constants modules, no import cycle between any two modules of the package (lazy imports
included: grimp reads every import statement, also those inside functions), handlers stay thin,
and the architecture is documented inside the repository. The layer rules themselves are
import-linter contracts (pyproject.toml), run by ``make lint``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers" / "r1edge" / "r1edge"
#: Module files allowed directly in the package: its __init__ and one constants module per kind.
TOP_LEVEL = {"__init__.py", "env.py", "headers.py"}
#: The most lines a functions/*/app.py may have: parse, one call, map.
HANDLER_LINES = 20


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's algorithm over the module graph: every set of two or more modules that import
    each other, directly or through others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.find_modules_directly_imported_by(module):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == module:
                    break
            if len(component) > 1:
                components.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return components


def test_no_import_cycle_anywhere_in_the_package():
    graph = grimp.build_graph("r1edge")
    assert len(graph.modules) > 30
    assert strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert strongly_connected(graph) == [{"p.a", "p.b"}]


def test_no_module_lives_loose_in_the_package():
    loose = {p.name for p in PACKAGE.glob("*.py")} - TOP_LEVEL
    assert loose == set()
    rooms = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert rooms >= {"protocol", "resilience", "routing", "edge", "cache", "jobs", "access", "configfiles"}
    assert rooms >= {"observe", "aws", "apps", "dialects"}


def test_every_room_says_what_lives_there():
    for init in PACKAGE.glob("*/__init__.py"):
        text = init.read_text()
        assert text.startswith('"""'), init
        assert len(text) > 200, init


def test_handlers_are_thin():
    handlers = sorted((ROOT / "functions").glob("*/app.py"))
    assert len(handlers) == 5
    for handler in handlers:
        lines = handler.read_text().splitlines()
        assert len(lines) <= HANDLER_LINES, f"{handler.relative_to(ROOT)} has {len(lines)} lines"


def test_the_architecture_is_documented_inside_the_repository():
    assert (ROOT / "docs" / "ARCHITECTURE.md").is_file()
    found = subprocess.run(
        ["git", "grep", "-l", "DESIGN" + ".md", "--", ":!docs/"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert found == []


def test_test_file_names_are_unique():
    # tests/ has no __init__.py files, so pytest imports each test file by its bare name: two files
    # of one name in different folders cannot both be collected.
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []

"""Package structure: what importing m3embed costs, and no import cycles between its modules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import m3embed

SRC = Path(m3embed.__file__).resolve().parent  # src/m3embed
HEAVY = ("torch", "transformers")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_import_m3embed_does_not_load_torch() -> None:
    assert _loaded_after("import m3embed\nimport m3embed.types") == []


def test_lazy_exports_resolve() -> None:
    from m3embed.modes import MODES

    assert m3embed.MODES is MODES
    for name in m3embed.__all__:
        assert getattr(m3embed, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m3embed.nope  # noqa: B018


@pytest.mark.parametrize("args", [["--help"], ["index", "--help"], ["train", "--help"]], ids=" ".join)
def test_cli_help_does_not_load_torch(args: list[str]) -> None:
    """What the `m3embed` console script runs, in a fresh interpreter: help needs no model libraries."""
    code = (
        f"import sys\nsys.argv = ['m3embed', *{args!r}]\nfrom m3embed.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
    )
    assert _loaded_after(code) == []


# ---- import graph ----


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or nested, except those under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _known(name: str) -> str | None:
    """`name` if it is one of our modules, else its longest prefix that is (None outside m3embed)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, dict[str, str]]:
    """module -> {imported m3embed module: "file:line" of the first such import}.

    `from m3embed.x import y` counts as importing m3embed.x.y when that is a module, else m3embed.x; the
    parent packages Python imports on the way are not counted.
    """
    graph: dict[str, dict[str, str]] = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                           for alias in node.names]
            for target in targets:
                target = _known(target) if target.split(".")[0] == "m3embed" else None
                if target is not None and target != name:
                    edges.setdefault(target, f"{path.relative_to(SRC.parent)}:{node.lineno}")
    return graph


def find_cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Every elementary cycle, each listed once, starting from its smallest module name."""
    cycles: list[list[str]] = []
    for start in sorted(graph):
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        while stack:
            node, successors = stack[-1]
            for nxt in successors:
                if nxt == start:
                    cycles.append([*path, start])
                elif nxt > start and nxt not in path:  # cycles through a smaller module were found from it
                    path.append(nxt)
                    stack.append((nxt, iter(sorted(graph.get(nxt, {})))))
                    break
            else:
                stack.pop()
                path.pop()
    return cycles


def test_graph_sees_imports() -> None:
    """The walk finds module-level, nested and `from package import module` imports, and skips TYPE_CHECKING."""
    graph = import_graph()
    assert "m3embed.types" in graph["m3embed.index.store"]  # module level
    assert "m3embed.model" in graph["m3embed.cli._common"]  # inside a function
    assert "m3embed.train.distributed" in graph["m3embed.train.losses"]  # from m3embed.train import distributed
    assert "m3embed.model" not in graph["m3embed.train.mine"]  # only under `if TYPE_CHECKING:`
    assert find_cycles({"a": {"b": ""}, "b": {"a": "", "c": ""}, "c": {"b": ""}}) == [["a", "b", "a"],
                                                                                        ["b", "c", "b"]]


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = find_cycles(graph)
    report = "\n".join(
        " -> ".join(cycle) + "\n" + "\n".join(f"    {a} -> {b} at {graph[a][b]}" for a, b in zip(cycle, cycle[1:]))
        for cycle in cycles
    )
    assert not cycles, f"{len(cycles)} import cycle(s) inside m3embed:\n{report}"

"""Package structure: what importing m3embed costs, no import cycles, and the layer order of docs/design.md."""

from __future__ import annotations

import ast
import importlib
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
    assert sorted(m3embed.__all__) == sorted(m3embed._EXPORTS)
    for name in m3embed.__all__:  # each name is the object its module defines
        assert getattr(m3embed, name) is getattr(importlib.import_module(m3embed._EXPORTS[name]), name), name
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
COMPILED = {_module_name(p) for p in SRC.rglob("*.c")}  # extension modules (their C imports nothing of ours)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement, at module level or nested, except those under `if TYPE_CHECKING:`, with
    whether it runs only when a function is called (inside a def or lambda)."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, lazy)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append((node, lazy))
        lazy = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, lazy)

    visit(tree, False)
    return found


def _known(name: str) -> str | None:
    """`name` if it is one of our modules, else its longest prefix that is (None outside m3embed)."""
    while name and name not in MODULES and name not in COMPILED:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(eager: bool = False) -> dict[str, dict[str, str]]:
    """module -> {imported m3embed module: "file:line" of the first such import}; `eager`: only the imports
    that run when the module is imported (not those inside functions).

    `from m3embed.x import y` counts as importing m3embed.x.y when that is a module, else m3embed.x; the
    parent packages Python imports on the way are not counted.
    """
    graph: dict[str, dict[str, str]] = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for node, lazy in _imports(ast.parse(path.read_text(), str(path))):
            if eager and lazy:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES.keys() | COMPILED else base
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
    assert "m3embed.model" not in import_graph(eager=True)["m3embed.cli._common"]  # the nested one is lazy
    assert "m3embed.index.store" in import_graph(eager=True)["m3embed.index.core"]
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


# ---- the layer order (docs/design.md, "Map: who may import whom") ----

# A module may import modules of its own row and of the rows above it, never of a row below (the cycle test
# keeps each row free of cycles). A name covers the module and, for a package, every module inside it; "m3embed"
# is the package's own __init__ only (its names are imported lazily, `m3embed.__getattr__`).
LAYERS = (
    ("leaves", ("m3embed", "m3embed._optional", "m3embed._progress", "m3embed.errors", "m3embed.modes",
                "m3embed.diskspace",
                "m3embed.documents", "m3embed.types", "m3embed.corpus", "m3embed.sparse_formats")),
    ("checkpoints", ("m3embed.checkpoint", "m3embed.e5q4", "m3embed.sources", "m3embed.identity")),
    ("text and scores", ("m3embed.tokenize", "m3embed.scoring")),
    ("inference", ("m3embed.encode", "m3embed.onednn", "m3embed.quantize", "m3embed.model", "m3embed.rerank",
                   "m3embed.numpy_encoder")),
    ("scale", ("m3embed.shards", "m3embed.pool", "m3embed.ray_data")),
    ("stores", ("m3embed.index",)),
    ("uses", ("m3embed.evaluate", "m3embed.train", "m3embed.flag", "m3embed.integrations")),
    ("shells", ("m3embed.cli", "m3embed.__main__", "m3embed.server", "m3embed.demo")),
)
# the shells, imported by nothing but shells; one shell uses another only inside a function (cli runs `serve`
# and `demo` lazily, so `m3embed --help` loads neither)
SHELLS = {"m3embed.cli": "cli", "m3embed.__main__": "cli", "m3embed.server": "server", "m3embed.demo": "demo"}


def _covers(name: str, module: str) -> bool:
    return module == name or (name != "m3embed" and module.startswith(name + "."))


def _row(module: str) -> int:
    rows = [i for i, (_, names) in enumerate(LAYERS) for name in names if _covers(name, module)]
    assert len(rows) == 1, f"{module} is in {len(rows)} rows of LAYERS; place it in exactly one"
    return rows[0]


def _shell(module: str) -> str | None:
    return next((shell for name, shell in SHELLS.items() if _covers(name, module)), None)


def test_every_module_has_one_row() -> None:
    for module in MODULES:
        _row(module)


def test_layer_order() -> None:
    """Each module imports only its own row and the rows above it; a shell imports another one only lazily."""
    graph, eager = import_graph(), import_graph(eager=True)
    problems = []
    for module, edges in sorted(graph.items()):
        for target, where in sorted(edges.items()):
            if _row(target) > _row(module):
                problems.append(f"{module} ({LAYERS[_row(module)][0]}) imports {target} "
                                f"({LAYERS[_row(target)][0]}, a lower row) at {where}")
            elif _shell(target) not in (None, _shell(module)) and target in eager[module]:
                problems.append(f"{module} imports the {_shell(target)} shell at module level at {where}; "
                                "import it inside the function that needs it")
    assert not problems, "\n".join(problems)


def test_layer_check_sees_a_break() -> None:
    assert _row("m3embed.index.store") < _row("m3embed.cli._common")
    assert _row("m3embed.model") > _row("m3embed.tokenize")
    assert _shell("m3embed.server.app") == "server" and _shell("m3embed.index.core") is None

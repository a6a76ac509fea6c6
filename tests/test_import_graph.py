"""Imports flow one way (SPEC §1): core <- backends <- API <- integrations / testing / cli, with no cycle.

Every import counts, wherever it stands (module level or inside a function), and so does
``importlib.import_module("kannuki.x")`` with a literal name; only imports under
``if TYPE_CHECKING:`` do not, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kannuki

PACKAGE = Path(kannuki.__file__).parent

CORE = {"_core", "_coreapi", "_native", "_pure", "errors", "options", "_fork", "_compat", "events", "circuit"}
API = {
    "__init__",
    "_hold",
    "_lock",
    "_locker",
    "_default",
    "_override",
    "_decorate",
    "_identity",
    "_handoff",
    "locker",
    "aio",
}
INTEGRATIONS = {"decorators", "records", "contrib", "testing", "pytest_plugin", "cli", "__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return "api"  # the package itself
    if parts[1] == "backends":
        return "backends"
    head = parts[1].removesuffix("_async")
    if head in CORE:
        return "core"
    if head in API:
        return "api"
    if head in INTEGRATIONS:
        return "integrations"
    raise AssertionError(f"{name} belongs to no layer: add it to one in {__file__}")


RANK = {"core": 0, "backends": 1, "api": 2, "integrations": 3}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, known: set[str], me: str = "") -> set[str]:
    """The kannuki modules ``path`` (the module ``me``) imports at run time."""
    me = me or module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:  # ``from kannuki.x import Name``: the module is kannuki.x
            name = name.rpartition(".")[0]
        if name and name != me:
            found.add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kannuki"):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.startswith("kannuki"):
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    add(full if full in known else base)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.startswith("kannuki")
        ):
            add(node.args[0].value)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def graph() -> dict[str, set[str]]:
    paths = list(PACKAGE.rglob("*.py"))
    # Compiled modules (kannuki._native) are importable names too, with no source to scan.
    compiled = {f"kannuki.{p.name.split('.')[0]}" for p in PACKAGE.glob("*.so")} | {"kannuki._native"}
    known = {module_name(p) for p in paths} | compiled
    return {module_name(p): imports_of(p, known) for p in paths}


def test_imports_flow_one_way() -> None:
    """No module imports a module of a higher layer (a backend never imports the API, the API no integration)."""
    wrong = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        if RANK[layer(target)] > RANK[layer(module)]
    ]
    assert wrong == []


def test_no_import_cycle() -> None:
    """Among kannuki's own modules the import graph has no cycle."""
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, [*path, target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def test_the_check_sees_a_function_level_import(tmp_path: Path) -> None:
    """The scanner counts imports inside functions and literal import_module calls, not TYPE_CHECKING ones."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from kannuki import testing\n"
        "def f():\n    from kannuki import decorators\n"
        "    import importlib\n    importlib.import_module('kannuki.records')\n"
    )
    known = {"kannuki", "kannuki.testing", "kannuki.decorators", "kannuki.records"}
    assert imports_of(source, known, "kannuki.probe") == {"kannuki.decorators", "kannuki.records"}

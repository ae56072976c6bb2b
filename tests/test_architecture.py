"""The package's structure stays what docs/architecture.md says: no import circles, no private names used
across modules, short functions, and the peft patches listed in the docs exactly as the code makes them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from peft_softhard.peft_boundary import patches

from conftest import REPO

PACKAGE = REPO / "peft_softhard"
# Functions may be longer than this only with a comment saying why on the line of their `def`.
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every `from ... import` of the package's own modules, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("peft_softhard"):
                found.append((target, [alias.name for alias in node.names]))
    return found


def test_no_module_imports_a_private_name_of_another():
    offenders = [f"{name}: {target}.{imported}" for name, path in modules().items()
                 for target, names in imports(name, path) for imported in names
                 if imported.startswith("_") and target != name]
    assert offenders == []


def test_the_package_has_no_import_circles():
    known = modules()
    graph = {}
    for name, path in known.items():
        edges = set()
        for target, names in imports(name, path):
            for imported in names:  # `from . import x` imports the module x
                edges.add(f"{target}.{imported}" if f"{target}.{imported}" in known else target)
        graph[name] = {edge for edge in edges if edge in known and edge != name}
    # a package's __init__ importing its own modules is not a circle; a module importing its package's
    # __init__ is only one when that __init__ imports it back
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for edge in graph[node]:
            if edge in trail:
                cycle = trail[trail.index(edge):] + [edge]
                if not _through_own_package(cycle):
                    cycles.append(" -> ".join(cycle))
            elif len(trail) < 12:
                visit(edge, trail + [edge])

    for start in graph:
        visit(start, [start])
    assert cycles == []


def _through_own_package(cycle: list[str]) -> bool:
    """A cycle made only of package `__init__`s re-exporting their own submodules and those submodules."""
    return all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(cycle, cycle[1:], strict=False))


def test_functions_are_short_or_say_why():
    long = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and "#" not in lines[node.lineno - 1]:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


def test_the_docs_list_exactly_the_patches_the_code_makes():
    text = (REPO / "docs" / "python-api.md").read_text()
    section = text[text.index("## The peft boundary"):]
    section = section[: section.index("\n## ", 3)]
    documented = set(re.findall(r"`(peft[\w.]*:[\w.]+)`", section.split("|---|---|---|")[1]))
    listed = {target for patch in patches.PATCHES for target in patch.targets}
    assert documented == listed


def test_every_class_method_in_the_patch_list_is_wrapped():
    import importlib

    for patch in patches.PATCHES:
        for target in patch.targets:
            module_name, _, path = target.partition(":")
            owner_name, _, attribute = path.rpartition(".")
            if not owner_name:
                continue  # a module-level name: the enum, the wrapper class patched per instance, the import hook
            owner = getattr(importlib.import_module(module_name), owner_name)
            assert hasattr(vars(owner)[attribute], "__softhard_original__"), target

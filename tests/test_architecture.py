"""The house keeps its floors: imports follow docs/architecture.md, no module-level cycle, no import inside a
function that would close one, and no family of prefixed files where a package belongs."""

from __future__ import annotations

import ast
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hybridtune"
DOC = ROOT / "docs" / "architecture.md"


def allowed_imports() -> dict[str, set[str] | None]:
    """The ```imports block of docs/architecture.md: ``package: dep dep``; ``*`` = anything (None)."""
    block = re.search(r"```imports\n(.*?)```", DOC.read_text(), re.S)
    assert block, f"{DOC} has no ```imports block"
    table: dict[str, set[str] | None] = {}
    for line in block.group(1).splitlines():
        name, _, deps = line.partition(":")
        table[name.strip()] = None if deps.strip() == "*" else set(deps.split())
    return table


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def floor_of(module: str) -> str:
    """The table's unit: the top-level package or module below ``hybridtune``."""
    return module.split(".")[1] if module.count(".") else ""


def imports(module: str) -> list[tuple[str, bool]]:
    """``(imported hybridtune module, inside a function)`` for every import statement of ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def resolve(base: str, names: list[str]) -> list[str]:
        # "from pkg import mod" imports the module pkg.mod; "from mod import name" imports mod
        subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
        return subs or [base]

    def visit(node: ast.AST, inner: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = inner or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                if base == "hybridtune" or base.startswith("hybridtune."):
                    found.extend((m, nested) for m in resolve(base, [a.name for a in child.names]))
            elif isinstance(child, ast.Import):
                found.extend((a.name, nested) for a in child.names if a.name.startswith("hybridtune"))
            visit(child, nested)

    visit(ast.parse(path.read_text()), False)
    return [(m, inner) for m, inner in found if m in MODULES]


GRAPH = {m: imports(m) for m in MODULES}


def test_every_package_has_a_place_in_the_table():
    table = allowed_imports()
    missing = sorted({floor_of(m) or "hybridtune/__init__" for m in MODULES} - set(table) - {"hybridtune/__init__"})
    assert not missing, f"add these to the imports table of {DOC.name}: {missing}"


def test_imports_follow_the_floors():
    table = allowed_imports()
    wrong = []
    for module, targets in GRAPH.items():
        source = floor_of(module)
        allowed = table.get(source, set())
        if not source or allowed is None:
            continue
        for target, _ in targets:
            dest = floor_of(target)
            if dest and dest != source and dest not in allowed:
                wrong.append(f"{module} -> {target}")
    assert not wrong, f"imports against the table in {DOC.name}:\n" + "\n".join(sorted(set(wrong)))


def _module_level_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        for target, inner in targets:
            if inner or target == module:
                continue
            edges[module].add(target)
            parts = target.split(".")  # importing a.b.c runs a.b's __init__ first (unless it encloses us)
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if not module.startswith(parent + ".") and parent != module:
                    edges[module].add(parent)
    return edges


def _reaches(edges: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return False


def test_no_module_level_cycle():
    edges = _module_level_edges()
    cycles = sorted(f"{a} <-> {b}" for a in edges for b in edges[a] if a < b and _reaches(edges, b, a))
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


def test_no_import_inside_a_function_closes_a_cycle():
    """An import inside a function is for laziness or an optional dependency, never to dodge a cycle."""
    edges = _module_level_edges()
    dodges = sorted({f"{module} -> {target}" for module, targets in GRAPH.items() for target, inner in targets
                     if inner and target != module and not module.startswith(target + ".")
                     and _reaches(edges, target, module)})
    assert not dodges, "in-function imports that would close a cycle at module level:\n" + "\n".join(dodges)


@pytest.mark.parametrize("folder", sorted({p.parent for p in PACKAGE.rglob("*.py")}), ids=lambda p: str(p.name))
def test_no_family_of_prefixed_files(folder):
    prefixes = Counter(p.stem.split("_")[0] for p in folder.glob("*.py") if "_" in p.stem.strip("_"))
    families = {prefix: n for prefix, n in prefixes.items() if n >= 3}  # a prefix shared with two or more siblings
    assert not families, f"{folder}: make a package of {families}"

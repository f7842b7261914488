"""Imports go one way (docs/architecture.md, "Rooms"): schemas <- broker (NATS plumbing,
then the features) <- workers, ingress <- cli. Checked on the source, function-level
imports included, so a shortcut cannot creep back in."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.procs import ROOT

# What each room may import from the project (besides itself and the standard library).
ALLOWED: dict[str, set[str]] = {
    "schemas": {"schemas"},
    "broker.nats": {"schemas", "broker.nats", "broker.observability"},
    "broker.observability": {"schemas", "broker.observability"},
    "broker": {"schemas", "broker"},
    "workers": {"schemas", "broker", "workers"},
    "ingress": {"schemas", "broker", "ingress"},
    "cli": {"schemas", "broker", "workers", "ingress", "cli"},
}
PROJECT = {"schemas", "broker", "workers", "ingress", "cli"}


def _room(module: str) -> str:
    """The most specific room a module belongs to."""
    return max((r for r in ALLOWED if module == r or module.startswith(r + ".")), key=len)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.split(".")[0] in PROJECT}


def test_imports_go_one_way() -> None:
    wrong: list[str] = []
    checked = 0
    for package in PROJECT:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            allowed = ALLOWED[_room(module)]
            checked += 1
            for imported in _imports(path):
                if not any(imported == a or imported.startswith(a + ".") for a in allowed):
                    wrong.append(f"{module} imports {imported}")
    assert checked > 80  # every module was read
    assert wrong == []


def test_every_room_is_a_package_with_a_docstring() -> None:
    """A newcomer reads what a folder holds from its __init__.py."""
    for init in sorted(ROOT.glob("*/**/__init__.py")):
        top = init.relative_to(ROOT).parts[0]
        if top not in PROJECT:
            continue
        assert ast.get_docstring(ast.parse(init.read_text())), init

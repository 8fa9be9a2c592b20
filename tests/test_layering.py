"""The layers import downwards only: platform (core) <- tenants <- api/app/cli; no module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dentalpin"

FORBIDDEN = {
    "platform": (
        "dentalpin.tenants",
        "dentalpin.modules",
        "dentalpin.api",
        "dentalpin.app",
        "dentalpin.cli",
    ),
    "tenants": ("dentalpin.modules", "dentalpin.api", "dentalpin.app", "dentalpin.cli"),
}


def imported_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(layer):
    offences = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for name in imported_names(path)
        if name.startswith(FORBIDDEN[layer])
    ]
    assert offences == []


def test_checker_sees_relative_imports():
    sample = PACKAGE / "platform" / "_db.py"
    assert "dentalpin.platform._settings.Settings" in imported_names(sample)

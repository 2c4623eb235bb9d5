"""Route modules share what they share through ``api/``, never by importing each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import layerwatch_server.api.routes

ROUTES = Path(layerwatch_server.api.routes.__file__).parent


@pytest.mark.parametrize("module", sorted(path.name for path in ROUTES.glob("*.py")))
def test_a_route_module_imports_no_other_route_module(module: str) -> None:
    tree = ast.parse((ROUTES / module).read_text())
    imported = [
        node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    ] + [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
         for alias in node.names]  # fmt: skip
    assert not [name for name in imported if name.startswith("layerwatch_server.api.routes")]

"""Route modules share what they share through ``api/``, never by importing each other; none
lets FastAPI read its body."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

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


def test_no_route_leaves_its_body_to_fastapi() -> None:
    """FastAPI reads a body it parses whole before any check: every route reads its own
    with `api.body.read_body`, under a size cap (`test_body.py`)."""
    modules = [importlib.import_module(f"layerwatch_server.api.routes.{path.stem}")
               for path in ROUTES.glob("*.py") if path.stem != "__init__"]  # fmt: skip
    routes = [route for module in modules for route in module.router.routes]
    assert len(routes) > 40
    assert [
        route.path for route in routes if isinstance(route, APIRoute) and route.body_field
    ] == []

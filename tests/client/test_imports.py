"""The client's modules import in any order, in a fresh interpreter: no import cycle
held together by imports placed inside functions."""

from __future__ import annotations

import ast
import json
import pkgutil
import random
import subprocess
import sys
from pathlib import Path

import pytest

import layerwatch

PACKAGE = Path(layerwatch.__file__).parent
# Imported inside functions on purpose: heavy or optional (see STYLE.md).
LAZY_ALLOWED = {"torch", "captum", "numpy", "httpx", "pandas", "fcntl", "importlib"}


def _modules() -> list[str]:
    names = ["layerwatch"]
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="layerwatch."):
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("seed", range(5))
def test_every_module_imports_first_in_random_order(seed: int) -> None:
    order = _modules()
    random.Random(seed).shuffle(order)
    code = (
        "import importlib, json, sys\n"
        f"for name in {order!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(len(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) > len(order)


def test_the_package_is_laid_out_along_the_data_path() -> None:
    subpackages = {info.name for info in pkgutil.iter_modules([str(PACKAGE)]) if info.ispkg}
    assert subpackages == {"capture", "reduce", "probe", "delivery", "query", "integrations"}
    assert "layerwatch.delivery.spool" in _modules()


def test_no_project_import_inside_a_function() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    roots = {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    roots = {(node.module or "").split(".")[0]}
                else:
                    continue
                if not roots <= LAZY_ALLOWED:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {sorted(roots)}")
    assert found == []


def test_modules_stay_small() -> None:
    """Past about 400 lines a module says why in its docstring (it mentions its size)."""
    big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 420 and "lines" not in (ast.get_docstring(ast.parse(text)) or ""):
            big.append(path.name)
    assert big == []

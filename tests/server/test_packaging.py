"""What an installed (non-editable) server contains: every package of the source tree."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]


def _packages(folder: Path, name: str) -> set[str]:
    return {
        ".".join((name, *init.parent.relative_to(folder).parts))
        for init in folder.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_every_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = (
        _packages(ROOT / "server" / "layerwatch_server", "layerwatch_server")
        | _packages(ROOT / "client" / "layerwatch", "layerwatch")
        | _packages(ROOT / "migrations", "layerwatch_server.migrations")
    )

    assert found - listed == set()
    assert config["package-dir"]["layerwatch_server"] == "server/layerwatch_server"

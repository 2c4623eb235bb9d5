"""The ``layerwatch`` command (``cli/commands.py``): its entry points and ``db upgrade``."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from layerwatch_server.cli import main
from layerwatch_server.db import make_engine
from layerwatch_server.migrate import is_up_to_date


def test_the_console_script_and_the_module_run_the_same_main() -> None:
    [script] = entry_points(group="console_scripts", name="layerwatch")
    assert script.load() is main
    listed = subprocess.run(
        [sys.executable, "-m", "layerwatch_server.cli", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    for command in ("server", "db", "demo", "sync"):
        assert command in listed


def test_db_upgrade_brings_a_new_database_to_the_newest_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert "is at head" in capsys.readouterr().out
    engine = make_engine(url)
    try:
        assert is_up_to_date(engine)
    finally:
        engine.dispose()

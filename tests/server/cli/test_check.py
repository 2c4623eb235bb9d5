"""``layerwatch check RUN_ID``: the findings as a table, and the exit status."""

from __future__ import annotations

import math

import httpx
import pytest
from batches import create_run, make_batch, new_id, post_batch, scalars_block

from layerwatch_server.cli import main


def _run_with_loss(api: httpx.Client, values: list[float]) -> str:
    run_id = create_run(api)
    batch = make_batch(scalars=[scalars_block("loss", range(len(values)), values)])
    post_batch(api, run_id, batch).raise_for_status()
    return run_id


@pytest.fixture(scope="module")
def nan_run(api: httpx.Client) -> str:
    return _run_with_loss(api, [2.3, 2.2, math.nan])


@pytest.fixture(scope="module")
def swinging_run(api: httpx.Client) -> str:
    """A loss bouncing between 50 and 5 from 2.3 on: an oscillation, a warning."""
    return _run_with_loss(api, [2.3] + [50.0, 5.0] * 20)


def test_an_error_prints_a_table_and_exits_1(
    live_server: str, nan_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", nan_run, "--server", live_server]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["SEVERITY", "KIND", "WHERE", "STEP", "SURE"]
    assert lines[1].split()[:5] == ["error", "loss_divergence", "loss", "2", "100%"]
    assert "NaN or infinite at step 2" in lines[1]


def test_a_warning_fails_only_with_fail_on_warning(
    live_server: str, swinging_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", swinging_run, "--server", live_server]) == 0
    assert "oscillating_loss" in capsys.readouterr().out
    assert main(["check", swinging_run, "--server", live_server, "--fail-on", "warning"]) == 1


def test_a_run_without_findings_says_so(
    api: httpx.Client, live_server: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("LAYERWATCH_SERVER", live_server)  # the default --server
    assert main(["check", create_run(api), "--fail-on", "warning"]) == 0
    assert capsys.readouterr().out == "no findings\n"


def test_an_unknown_run_exits_2(live_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = new_id("r")
    assert main(["check", run_id, "--server", live_server]) == 2
    assert f"no run `{run_id}` on {live_server}" in capsys.readouterr().err


def test_no_token_exits_2(
    live_server: str, nan_run: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.delenv("LAYERWATCH_TOKEN")
    assert main(["check", nan_run, "--server", live_server]) == 2
    assert "layerwatch check:" in capsys.readouterr().err


def test_an_unreachable_server_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "r", "--server", "http://127.0.0.1:9"]) == 2
    assert "layerwatch check:" in capsys.readouterr().err

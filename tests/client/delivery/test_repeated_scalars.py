"""A scalar logged several times at one step: what is stored, counted and said."""

from __future__ import annotations

import logging

import httpx
import pytest

import layerwatch


def test_a_scalar_logged_again_at_its_step_keeps_the_first_value_and_says_so(
    live_server: str, api: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="layerwatch"),
        layerwatch.Run(live_server, project="repeats", name="micro-loss") as run,
    ):
        for step in range(3):
            for micro in range(4):  # gradient accumulation: four micro-batches a step
                run.log({"micro_loss": 10.0 * step + micro, "lr": 0.1})
                if micro == 1:
                    assert run.flush(10)  # repeats also span batches
            run.log({"val": float(step)}, step=step)
            run.step()
        run_id = run.id
    counters = run.counters
    assert counters.repeated == 3 * 3 * 2  # micro_loss and lr, three extra values a step
    assert counters.dropped == 0
    assert counters.failed_batches == 0
    for name, values in {"micro_loss": [0.0, 10.0, 20.0], "lr": [0.1] * 3}.items():
        series = api.get(f"/runs/{run_id}/scalars/series", params={"name": name})
        assert series.raise_for_status().json()["steps"] == [0, 1, 2]
        assert series.json()["values"] == values  # the first value of each step
    messages = [r.getMessage() for r in caplog.records]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2  # once per name, then at DEBUG
    assert "`micro_loss` logged again at step 0" in warned[0]
    assert "`lr` logged again at step 0" in warned[1]
    [summary] = [m for m in messages if "records sent" in m]
    assert "0 dropped" in summary
    assert "18 repeated scalar values not sent (a scalar keeps its first value per step)" in summary

"""The loader reads a long run thinned, and keeps the exact first non-finite step."""

from __future__ import annotations

import math

import pytest
from batches import make_batch, scalars_block, stats_block, store_batch, store_run
from sqlalchemy.orm import Session

from layerwatch_server.diagnosis import find_problems, load_run_data, loader


def test_a_long_run_is_thinned_but_keeps_its_first_nan(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "MAX_STEPS", 10)
    monkeypatch.setattr(loader, "MAX_SCALAR_POINTS", 10)
    steps = range(100)
    nonfinite = [1 if step >= 37 else 0 for step in steps]
    losses = [2.0 if step < 53 else math.nan for step in steps]
    run_id = store_run(session)
    batch = make_batch(
        stats=[stats_block("fc1", steps, zero_frac=[0.0] * 100),
               stats_block("fc2", steps, zero_frac=[0.0] * 100, nonfinite=nonfinite)],
        scalars=[scalars_block("val_loss", steps, losses),
                 scalars_block("acc", steps, [1.0] * 100)],
    )  # fmt: skip
    store_batch(session, run_id, batch)

    data = load_run_data(session, run_id)
    assert len(data.steps) == 11  # ten evenly spaced, and step 37
    assert 37 in data.steps
    assert data.steps[0] == 0
    assert data.steps[-1] == 99
    assert set(data.scalars) == {"val_loss"}  # only losses are read
    loss_steps, _ = data.scalars["val_loss"]
    assert 53 in loss_steps.tolist()
    assert data.sentinel_events == []

    found = {f.kind: f for f in find_problems(data)}
    assert found["nonfinite"].tensor == "fc2"
    assert found["nonfinite"].step == 37
    assert found["loss_divergence"].step == 53

"""A reducer that cannot keep up: whole captures are skipped and counted, none half-kept,
no record lost, and the copies waiting stay within `max_copy_bytes`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

import layerwatch

if TYPE_CHECKING:
    from tests.client.conftest import FakeServer

MakeRun = Callable[..., layerwatch.Run]


@pytest.mark.parametrize("optimizer_given", [True, False])
def test_a_slow_reducer_skips_whole_captures_and_loses_nothing(
    server: FakeServer,
    make_run: MakeRun,
    slow_reducer: None,
    optimizer_given: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    capture_bytes = 2 * 4 * (64 * 256 + 256 + 256 * 4 + 4) + 4 * 32 * (256 * 2 + 4)
    run = make_run(max_copy_bytes=capture_bytes)  # about one capture may wait
    run.watch(model, optimizer if optimizer_given else None, every=1)
    pending = []
    for _ in range(40):
        optimizer.zero_grad(set_to_none=True)
        model(torch.randn(32, 64)).square().mean().backward()
        optimizer.step()
        if not optimizer_given:
            run.step()
        time.sleep(0.01)  # a step takes 10 ms; a capture's reductions (slowed) about 30
        pending.append(run._reducer._pending_bytes)
    with caplog.at_level(logging.INFO, logger="layerwatch"):
        assert run.finish()
    counters = run.counters
    assert counters.dropped == 0
    assert counters.skipped_captures > 0
    assert "captures skipped" in caplog.text
    # The bound holds, overshot by one capture at most.
    assert max(pending) <= 2 * capture_bytes + 4 * (256 * 64)
    # Every step kept is whole: each tensor at each kept step, and none elsewhere.
    stats = server.stats()
    kept = set(stats[("0", "activation")])
    # Steps 0-39 trained; step 40, which the loop ends on, may be counted as skipped too.
    assert len(kept) in (40 - counters.skipped_captures, 41 - counters.skipped_captures)
    assert len(kept) >= 2  # captures resume once the reducer has caught up
    for key in [(n, k) for n in ("0", "1", "2") for k in ["activation"]] + [
        (p, k) for p in ("0.weight", "0.bias", "2.weight", "2.bias") for k in ("weight", "grad")
    ]:
        assert set(stats[key]) == kept, key
    # Weight change of the kept steps: the update ratio is known wherever the update was
    # seen (with the optimizer); the reducer's lag never loses it.
    if optimizer_given:
        changes = server.rows("weight_changes")[("0.weight", "weight")]
        assert all(math.isfinite(row["update_ratio"]) for row in changes.values())

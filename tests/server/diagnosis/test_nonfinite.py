"""The origin of a NaN incident, on hand-made statistics, with and without sentinel events."""

from __future__ import annotations

import numpy as np

from layerwatch_server.diagnosis import RunData, SentinelEvent
from layerwatch_server.diagnosis.findings import first_lasting
from layerwatch_server.diagnosis.loader import STATS, TensorInfo
from layerwatch_server.diagnosis.nonfinite import detect_nonfinite

# (name, kind) in registration order: a forward pass, its gradients, its weights
TENSORS = [("fc1", "activation"), ("relu", "activation"), ("fc2", "activation"),
           ("fc2.weight", "grad"), ("fc1.weight", "grad"),
           ("fc1.weight", "weight"), ("fc2.weight", "weight")]  # fmt: skip


def _run(steps: list[int], nonfinite: dict[tuple[str, str], list[int]]) -> RunData:
    """A run captured at ``steps``; ``nonfinite[(name, kind)]``: counts per step (else 0)."""
    tensors = [TensorInfo(name, kind, i + 1, None, i) for i, (name, kind) in enumerate(TENSORS)]
    shape = (len(tensors), len(steps))
    stats = {stat: np.ones(shape) for stat in (*STATS, "present")}
    stats["nonfinite"] = np.zeros(shape)
    for (name, kind), counts in nonfinite.items():
        stats["nonfinite"][TENSORS.index((name, kind))] = counts
    changes = {m: np.full(shape, np.nan) for m in ("since_prev", "since_init", "update_ratio")}
    changes["present"] = np.full(shape, np.nan)
    return RunData("r", tensors, steps, stats, changes, unit_means={}, scalars={})


def test_the_origin_is_the_first_tensor_in_computation_order() -> None:
    # at step 20 the ReLU's output, the second layer and every gradient are NaN
    data = _run([0, 10, 20, 30], {
        ("relu", "activation"): [0, 0, 5, 5], ("fc2", "activation"): [0, 0, 5, 5],
        ("fc2.weight", "grad"): [0, 0, 9, 9], ("fc1.weight", "grad"): [0, 0, 9, 9],
        ("fc1.weight", "weight"): [0, 0, 0, 4],
    })  # fmt: skip
    [finding] = detect_nonfinite(data)
    assert (finding.tensor, finding.tensor_kind, finding.step) == ("relu", "activation", 20)
    assert finding.last_step == 30
    assert finding.evidence["exact_step"] is False  # the capture before was step 10
    assert finding.evidence["spread_to"] == [
        "fc2", "grad:fc2.weight", "grad:fc1.weight", "weight:fc1.weight"
    ]  # fmt: skip
    assert finding.severity == "error"
    assert "`relu`" in finding.message
    assert "20" in finding.message


def test_gradients_go_bad_from_the_output_back() -> None:
    data = _run([0, 1, 2], {("fc2.weight", "grad"): [0, 1, 1], ("fc1.weight", "grad"): [0, 1, 1]})
    [finding] = detect_nonfinite(data)
    assert (finding.tensor, finding.tensor_kind, finding.step) == ("fc2.weight", "grad", 1)
    assert finding.evidence["exact_step"] is True


def test_each_incident_is_one_finding() -> None:
    data = _run([0, 1, 2, 3, 4], {("fc2", "activation"): [0, 3, 0, 0, 0],
                                  ("fc1", "activation"): [0, 0, 0, 2, 2]})  # fmt: skip
    first, second = detect_nonfinite(data)
    assert (first.tensor, first.step, first.last_step) == ("fc2", 1, 1)
    assert (second.tensor, second.step, second.last_step) == ("fc1", 3, 4)


def test_the_earliest_sentinel_event_names_the_origin_at_its_exact_step() -> None:
    data = _run([0, 10, 20], {("fc2", "activation"): [0, 0, 5], ("fc2.weight", "grad"): [0, 0, 1]})
    events = [
        SentinelEvent(step=17, rank=0, tensor="fc2.weight", kind="grad", also=["fc2"]),
        SentinelEvent(step=13, rank=0, tensor="relu", kind="activation", also=["fc2"]),
    ]
    [finding] = detect_nonfinite(data, events)
    assert (finding.tensor, finding.tensor_kind, finding.step) == ("relu", "activation", 13)
    assert finding.last_step == 20
    assert finding.evidence["from_sentinel"] is True
    assert finding.evidence["exact_step"] is True
    assert finding.evidence["spread_to"] == ["fc2", "grad:fc2.weight"]


def test_a_sentinel_event_alone_is_a_finding() -> None:
    event = SentinelEvent(step=5, rank=0, tensor="fc1", kind="activation")
    [finding] = detect_nonfinite(_run([0, 10], {}), [event])
    assert (finding.tensor, finding.step, finding.last_step) == ("fc1", 5, 5)


def test_a_sentinel_event_after_the_first_captured_incident_changes_nothing() -> None:
    data = _run([0, 1], {("fc1", "activation"): [0, 1]})
    event = SentinelEvent(step=7, rank=0, tensor="fc2", kind="activation")
    [finding] = detect_nonfinite(data, [event])
    assert (finding.tensor, finding.step) == ("fc1", 1)
    assert finding.evidence["from_sentinel"] is False


def test_a_finite_run_has_no_finding() -> None:
    assert detect_nonfinite(_run([0, 1, 2], {})) == []


def test_a_condition_lasts_when_it_holds_at_most_later_captures() -> None:
    assert first_lasting([False, True, False, True, True, True, True]) == 1
    assert first_lasting([True, False, False, True, True]) == 3
    assert first_lasting([True, False, False, False]) is None
    assert first_lasting([]) is None

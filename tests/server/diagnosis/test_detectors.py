"""Each pathology, planted in a real short training, is found: its kind, tensor and step."""

from __future__ import annotations

import httpx

from diagnosis.conftest import NAN_STEP, Diagnosed
from diagnosis.training import EVERY

# Steps are counted from 0; a capture every EVERY steps sees a change at most EVERY late.


def test_a_healthy_mlp_with_sgd_has_no_warnings_or_errors(healthy_sgd: Diagnosed) -> None:
    assert healthy_sgd.serious == [], healthy_sgd.serious


def test_a_healthy_mlp_with_adam_has_no_warnings_or_errors(healthy_adam: Diagnosed) -> None:
    assert healthy_adam.serious == [], healthy_adam.serious


def test_a_healthy_cnn_has_no_warnings_or_errors(healthy_cnn: Diagnosed) -> None:
    assert healthy_cnn.serious == [], healthy_cnn.serious


def test_a_learning_rate_far_too_high_explodes_gradients_and_diverges(exploding: Diagnosed) -> None:
    [explosion] = exploding.of("exploding_gradients")
    [divergence] = exploding.of("loss_divergence")
    assert explosion["severity"] == divergence["severity"] == "error"
    assert explosion["tensor"] in ("0.weight", "1.weight")
    assert explosion["tensor_kind"] == "grad"
    assert divergence["scalar"] == "loss"
    assert divergence["tensor"] is None
    # the loss was already 100x its start before it overflowed, and so were the gradients
    assert 1 <= divergence["step"] < divergence["evidence"]["nonfinite_step"]
    assert abs(explosion["step"] - divergence["step"]) <= 2
    assert exploding.findings[0]["severity"] == "error"
    [ratio] = exploding.of("update_ratio")
    assert ratio["evidence"]["side"] == "high"
    assert ratio["evidence"]["median_ratio"] > 0.1


def test_a_bouncing_loss_oscillates(oscillating: Diagnosed) -> None:
    [finding] = oscillating.of("oscillating_loss")
    assert finding["scalar"] == "loss"
    assert finding["severity"] == "warning"
    assert finding["evidence"]["window_start"] == finding["step"] <= 8
    assert not oscillating.of("loss_divergence")


def test_a_learning_rate_far_too_low_is_slow_with_tiny_updates(too_slow: Diagnosed) -> None:
    [slow] = too_slow.of("slow_convergence")
    assert slow["scalar"] == "loss"
    assert slow["step"] == 0
    assert slow["evidence"]["window_end"] == slow["last_step"] == 39
    [ratio] = too_slow.of("update_ratio")
    assert ratio["evidence"]["side"] == "low"
    assert ratio["evidence"]["median_ratio"] < 1e-5
    assert ratio["step"] <= EVERY


def test_deep_sigmoids_with_tiny_weights_vanish(vanishing: Diagnosed) -> None:
    [finding] = vanishing.of("vanishing_gradients")
    assert finding["tensor"] == "0.weight"
    assert finding["tensor_kind"] == "grad"
    assert finding["step"] == 0
    assert finding["evidence"]["affected"][0] == "0.weight"
    assert finding["evidence"]["ratio_to_late"] < 1e-3
    assert "gradient-flow.png" in finding["view"]
    # tiny gradients that cannot move float32 weights are not a forgotten optimizer
    assert not [f for f in vanishing.of("not_updating") if f["severity"] == "warning"]


def test_a_parameter_left_out_of_the_optimizer_does_not_update(left_out: Diagnosed) -> None:
    found = {f["tensor"]: f for f in left_out.of("not_updating")}
    assert set(found) == {"0.weight", "0.bias"}
    for finding in found.values():
        assert finding["severity"] == "warning"
        assert finding["tensor_kind"] == "weight"
        assert finding["step"] <= EVERY
        assert "optimizer" in finding["message"]


def test_a_frozen_layer_is_information(frozen: Diagnosed) -> None:
    found = {f["tensor"]: f for f in frozen.of("not_updating")}
    assert set(found) == {"0.weight", "0.bias"}
    assert {f["severity"] for f in found.values()} == {"info"}
    assert frozen.serious == []


def test_a_relu_behind_a_large_negative_bias_is_dead(dead: Diagnosed) -> None:
    [finding] = dead.of("dead_units")
    assert finding["tensor"] == "3"
    assert finding["tensor_kind"] == "activation"
    assert finding["step"] == 0
    assert finding["severity"] == "error"
    assert finding["evidence"]["share"] == 1.0
    assert finding["view"].endswith("/plots/dead-units.png?tensor=3")


def test_tanh_behind_huge_weights_saturates(saturated: Diagnosed) -> None:
    [finding] = saturated.of("saturation")
    assert finding["tensor"] == "1"
    assert finding["step"] == 0
    assert finding["evidence"]["saturation"] >= 0.8


def test_nan_is_traced_to_the_module_that_made_it(poisoned: Diagnosed) -> None:
    [finding] = poisoned.of("nonfinite")
    assert finding["tensor"] == "2"
    assert finding["tensor_kind"] == "activation"
    assert finding["step"] == NAN_STEP
    assert finding["evidence"]["exact_step"] is True
    # it spread to the next layer and to every gradient of that step
    assert "3" in finding["evidence"]["spread_to"]
    assert "grad:0.weight" in finding["evidence"]["spread_to"]
    [loss] = poisoned.of("loss_divergence")
    assert loss["step"] == NAN_STEP


def test_findings_are_sorted_errors_first_then_by_step(poisoned: Diagnosed) -> None:
    order = {"error": 0, "warning": 1, "info": 2}
    keys = [(order[f["severity"]], f["step"]) for f in poisoned.findings]
    assert keys == sorted(keys)


def test_every_view_a_finding_names_exists(
    api: httpx.Client, exploding: Diagnosed, vanishing: Diagnosed, left_out: Diagnosed,
    dead: Diagnosed, saturated: Diagnosed, poisoned: Diagnosed, too_slow: Diagnosed,
) -> None:  # fmt: skip
    findings = [*exploding.findings, *vanishing.findings, *left_out.findings, *dead.findings,
                *saturated.findings, *poisoned.findings, *too_slow.findings]  # fmt: skip
    assert {f["kind"] for f in findings} >= {
        "exploding_gradients", "loss_divergence", "vanishing_gradients", "not_updating",
        "dead_units", "saturation", "nonfinite", "update_ratio", "slow_convergence",
    }  # fmt: skip
    for finding in findings:
        # the JSON twin of the plot: the same view and parameters, without drawing it
        path = finding["view"].removeprefix("/api/v1").replace(".png", ".json", 1)
        response = api.get(path)
        assert response.status_code == 200, (finding["view"], response.text)

"""Options of `Run.watch()` as value objects: checked at construction, without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import layerwatch
from layerwatch.options import CaptureOptions, capture_options, resolve_probe


def test_value_objects_need_no_torch() -> None:
    code = (
        "import sys, layerwatch\n"
        "layerwatch.Probe([1, 2], every=5)\n"
        "layerwatch.Histograms(bins=8, sample_size=0)\n"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_probe_defaults_and_shorthands() -> None:
    inputs, labels = object(), object()
    probe = layerwatch.Probe(inputs, labels)
    assert (probe.every, probe.features, probe.attributions, probe.attribution_steps) == (
        None, 1024, 0, 32,
    )  # fmt: skip
    assert resolve_probe(None) is None
    assert resolve_probe(probe) is probe
    paired = resolve_probe((inputs, labels))
    assert paired is not None
    assert (paired.inputs, paired.labels) == (inputs, labels)
    bare = resolve_probe(inputs)
    assert bare is not None
    assert (bare.inputs, bare.labels) == (inputs, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every": 0}, "every"),
        ({"every": 1.5}, "every"),
        ({"features": 0}, "features"),
        ({"features": 16385}, "features"),
        ({"attributions": 65}, "attributions"),
        ({"attributions": True}, "attributions"),
        ({"attribution_steps": 0}, "attribution_steps"),
    ],
)
def test_bad_probe_options_raise(options: dict[str, object], message: str) -> None:
    with pytest.raises(layerwatch.ConfigError, match=message):
        layerwatch.Probe(object(), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [({"bins": 0}, "bins"), ({"bins": 513}, "bins"), ({"bins": True}, "bins"),
     ({"sample_size": -1}, "sample_size"), ({"sample_size": 2.0}, "sample_size")],
)  # fmt: skip
def test_bad_histogram_options_raise(options: dict[str, object], message: str) -> None:
    with pytest.raises(layerwatch.ConfigError, match=message):
        layerwatch.Histograms(**options)  # type: ignore[arg-type]


def test_capture_switches() -> None:
    switches = dict(activations=True, weights=True, gradients=False, unit_means=True,
                    weight_change=False)  # fmt: skip
    options = capture_options(histograms=32, **switches)
    assert options == CaptureOptions(
        gradients=False, weight_change=False, histograms=layerwatch.Histograms(bins=32)
    )
    assert (options.bins, options.sample_size) == (32, 65_536)
    exact = capture_options(histograms=layerwatch.Histograms(sample_size=0), **switches)
    assert (exact.bins, exact.sample_size) == (64, 0)
    assert capture_options(histograms=None, **switches).bins is None
    with pytest.raises(layerwatch.ConfigError, match="histograms"):
        capture_options(histograms="64", **switches)
    with pytest.raises(layerwatch.ConfigError, match="weights"):
        capture_options(histograms=64, **{**switches, "weights": 1})

"""PNG plots over HTTP: valid images of the requested size, with something drawn."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest
from batches import body, make_batch, new_id, scalars_block, stats_block
from images import assert_drawn, pixels

from layerwatch_server.views import ImageParams, render_png
from layerwatch_server.views.series import SERIES, Line, LinesData


@pytest.fixture(scope="module")
def plot_run(api: httpx.Client) -> str:
    """A run with a long noisy series, non-finite values, a one-step tensor and scalars."""
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    steps = list(range(0, 3000, 3))
    rng = np.random.default_rng(1)
    noisy = rng.standard_normal(len(steps)).cumsum().tolist()
    odd = [math.nan, math.inf, -math.inf, 1.0, 2.0, math.nan]
    loss = [2.0 / (1 + s) for s in steps]
    loss[10] = math.nan
    batch = make_batch(
        stats=[
            stats_block("fc1", steps, mean=noisy),
            stats_block("fc2", steps, offset=-5.0),
            stats_block("odd", range(len(odd)), mean=odd),
            stats_block("nan", range(4), mean=[math.nan] * 4),
            stats_block("one", [7]),
        ],
        scalars=[scalars_block("loss", steps, loss), scalars_block("acc", [1, 2], [0.5, 0.6])],
    )
    api.post(f"/runs/{run_id}/batches", content=body(batch)).raise_for_status()
    return run_id


@pytest.mark.parametrize(
    "params",
    [
        {"tensor": "fc1"},
        {"tensor": ["fc1", "fc2"], "stat": "std", "max_points": 100},
        {"tensor": "fc1", "width": 640, "height": 480, "dpi": 80},
        {"tensor": "fc2", "logy": True},  # values from -5 up: non-positive points are left out
        {"tensor": "odd"},
        {"tensor": "nan"},
        {"tensor": "one"},
        {"tensor": "fc1", "start": 10**9},  # an empty range
        {"tensor": "fc1", "start": 30, "end": 30},
        {"tensor": "fc1", "width": 200, "height": 150, "dpi": 50},
        {"tensor": "fc1", "width": 4000, "height": 300, "dpi": 300},
        {},  # every activation of the run
    ],
    ids=lambda params: "-".join(f"{k}={v}" for k, v in params.items()),
)
def test_series_png(api: httpx.Client, plot_run: str, params: dict[str, object]) -> None:
    response = api.get(f"/runs/{plot_run}/plots/series.png", params=params)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert_drawn(response.content, int(params.get("width", 900)), int(params.get("height", 500)))


@pytest.mark.parametrize(
    "params",
    [
        {"name": "loss"},
        {"name": ["loss", "acc"], "logy": True, "width": 300, "height": 200},
        {"name": "acc", "start": 2, "end": 2},
        {"name": "loss", "start": 10**9},
        {},  # every scalar of the run
    ],
    ids=lambda params: "-".join(f"{k}={v}" for k, v in params.items()),
)
def test_scalars_png(api: httpx.Client, plot_run: str, params: dict[str, object]) -> None:
    response = api.get(f"/runs/{plot_run}/plots/scalars.png", params=params)

    assert response.status_code == 200, response.text
    assert_drawn(response.content, int(params.get("width", 900)), int(params.get("height", 500)))


def test_a_line_is_drawn(api: httpx.Client, plot_run: str) -> None:
    def ink(params: dict[str, object]) -> int:
        png = api.get(f"/runs/{plot_run}/plots/series.png", params=params).content
        rgb = pixels(png)[..., :3]
        blue = np.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's first line colour
        return int((np.abs(rgb - blue).max(axis=-1) < 0.1).sum())

    # Only the legend's line sample is blue when the range is empty.
    assert ink({"tensor": "fc1"}) > 5 * ink({"tensor": "fc1", "start": 10**9})


@pytest.mark.parametrize(
    ("path", "params", "status", "word"),
    [
        ("series.png", {"tensor": "fc1", "width": 199}, 422, "width"),
        ("series.png", {"tensor": "fc1", "height": 6001}, 422, "height"),
        ("series.png", {"tensor": "fc1", "width": 5000, "height": 5000}, 422, "pixels"),
        ("series.png", {"tensor": "fc1", "colour": "red"}, 422, "colour"),
        ("series.json", {"tensor": "fc1", "width": 300}, 422, "width"),  # the image's only
        ("series.png", {"tensor": "fc1", "dpi": 10}, 422, "dpi"),
        ("series.png", {"tensor": "fc1", "max_points": 3}, 422, "max_points"),
        ("series.png", {"tensor": "fc1", "stat": "median"}, 422, "stat"),
        ("series.png", {"tensor": "fc1", "start": -1}, 422, "start"),
        ("series.png", {"tensor": "fc1", "logy": "maybe"}, 422, "logy"),
        ("series.png", {"tensor": [f"t{i}" for i in range(33)]}, 422, "tensor"),
        ("series.png", {"tensor": "x" * 251}, 422, "250"),
        ("series.png", {"tensor": "fc9"}, 404, "fc9"),
        ("series.png", {"tensor": ["fc1", "fc9"]}, 404, "fc9"),
        ("series.png", {"tensor": "fc1", "kind": "grad"}, 404, "fc1"),
        ("scalars.png", {"compare": "no/such"}, 422, "compare"),
        ("scalars.png", {"compare": "nosuchrun"}, 404, "nosuchrun"),
        ("scalars.png", {"name": "nope"}, 404, "nope"),
        ("scalars.png", {"name": "loss", "width": 10_000}, 422, "width"),
    ],
)
def test_bad_plot_requests(
    api: httpx.Client, plot_run: str, path: str, params: dict[str, object], status: int, word: str
) -> None:
    response = api.get(f"/runs/{plot_run}/plots/{path}", params=params)

    assert response.status_code == status, response.text
    assert word in response.text


def test_unknown_run(api: httpx.Client) -> None:
    missing = new_id("r")
    response = api.get(f"/runs/{missing}/plots/series.png", params={"tensor": "fc1"})
    assert response.status_code == 404
    assert missing in response.json()["detail"]


def test_render_without_lines_or_points() -> None:
    for lines in ([], [Line(run_id="r", label="empty", steps=[], values=[], total=0,
                            downsampled=False)]):  # fmt: skip
        data = LinesData(view="series", run_id="r", title="nothing", ylabel="y", logy=False,
                         lines=lines)  # fmt: skip
        png = render_png(SERIES, data, ImageParams(width=300, height=200))
        assert_drawn(png, 300, 200)

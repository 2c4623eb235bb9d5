"""Newest values in one request: the layer table, the runs list's scalar columns and a
histogram slider's stops (`/layers/latest`, `/scalars/latest`, `/histograms/steps`)."""

from __future__ import annotations

import math

import httpx
from batches import body, histogram, make_batch, new_id, scalars_block, stats_block


def _run(api: httpx.Client, batch: object) -> str:
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": "latest"}).raise_for_status()
    api.post(f"/runs/{run_id}/batches", content=body(batch)).raise_for_status()  # type: ignore[arg-type]
    return run_id


def test_layers_latest_gives_each_tensor_newest_stats_and_trend(api: httpx.Client) -> None:
    run_id = _run(api, make_batch(stats=[
        stats_block("fc1", range(0, 100, 10), mean=[float(i) for i in range(10)]),
        stats_block("fc1.weight", range(0, 100, 10), kind="weight"),
        stats_block("fc1.weight", [0, 10], kind="grad", l2=[math.nan, 2.0]),
    ]))  # fmt: skip

    latest = api.get(f"/runs/{run_id}/layers/latest", params={"trend": 4}).json()

    assert [(t["name"], t["kind"]) for t in latest["data"]] == [
        ("fc1", "activation"), ("fc1.weight", "weight"), ("fc1.weight", "grad"),
    ]  # fmt: skip
    fc1 = latest["data"][0]
    assert fc1["step"] == 90
    assert fc1["stats"]["mean"] == 9.0
    assert fc1["trend_stat"] == "mean"
    assert fc1["trend_steps"] == [60, 70, 80, 90]
    assert fc1["trend"] == [6.0, 7.0, 8.0, 9.0]
    grad = latest["data"][2]
    assert grad["trend_stat"] == "l2"
    assert grad["trend"][1] == 2.0
    assert grad["trend"][0] in (None, "NaN")  # SQLite keeps NaN as NULL
    assert latest["count"] == 3


def test_scalars_latest_for_a_page_of_runs(api: httpx.Client) -> None:
    first = _run(api, make_batch(scalars=[
        scalars_block("loss", range(5), [5.0, 4.0, 3.0, 2.0, 1.0]),
        scalars_block("acc", [0, 7], [0.1, 0.9]),
    ]))  # fmt: skip
    second = _run(api, make_batch(stats=[stats_block("fc1", [0])]))

    answer = api.get("/scalars/latest", params={"run": [first, second]}).json()

    by_run = {entry["run_id"]: entry for entry in answer["data"]}
    assert by_run[first]["scalars"] == {
        "acc": {"step": 7, "value": 0.9}, "loss": {"step": 4, "value": 1.0},
    }  # fmt: skip
    assert by_run[first]["last_step"] == 7
    assert by_run[second] == {"run_id": second, "last_step": None, "scalars": {}}
    missing = api.get("/scalars/latest", params={"run": [first, "no-such-run"]})
    assert missing.status_code == 404
    assert missing.json()["code"] == "run_not_found"
    assert api.get("/scalars/latest").status_code == 422
    assert api.get("/scalars/latest", params={"run": ["r"] * 201}).status_code == 422


def test_histogram_steps_are_thinned_keeping_first_and_last(api: httpx.Client) -> None:
    run_id = _run(api, make_batch(
        histograms=[histogram("fc1", step, [1, 2, 3]) for step in range(0, 50, 5)],
    ))  # fmt: skip

    every = api.get(f"/runs/{run_id}/histograms/steps", params={"tensor": "fc1"}).json()
    assert every["steps"] == list(range(0, 50, 5))
    assert every["total"] == 10
    assert not every["downsampled"]
    few = api.get(
        f"/runs/{run_id}/histograms/steps", params={"tensor": "fc1", "max_points": 3}
    ).json()
    assert few["steps"][0] == 0
    assert few["steps"][-1] == 45
    assert len(few["steps"]) == 3
    assert few["downsampled"]
    missing = api.get(f"/runs/{run_id}/histograms/steps", params={"tensor": "nope"})
    assert missing.status_code == 404
    assert missing.json()["code"] == "tensor_not_found"

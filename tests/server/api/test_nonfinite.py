"""`GET /runs/{id}/nonfinite`: the events a batch carried; a batch without them is as before."""

from __future__ import annotations

import httpx
from batches import create_run, make_batch, post_batch

from layerwatch import wire


def test_events_are_answered_by_step(api: httpx.Client) -> None:
    run_id = create_run(api)
    batch = make_batch().model_copy(update={"nonfinite": [
        wire.NonfiniteEvent(step=40, tensor="head", kind="grad"),
        wire.NonfiniteEvent(step=37, tensor="enc.2", kind="activation", also=["enc.3"]),
        wire.NonfiniteEvent(step=44, tensor="enc.0.weight", kind="weight"),
    ]})  # fmt: skip
    assert post_batch(api, run_id, batch).status_code == 200

    response = api.get(f"/runs/{run_id}/nonfinite")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "data": [
            {"step": 37, "rank": 0, "tensor": "enc.2", "kind": "activation", "also": ["enc.3"]},
            {"step": 40, "rank": 0, "tensor": "head", "kind": "grad", "also": []},
            {"step": 44, "rank": 0, "tensor": "enc.0.weight", "kind": "weight", "also": []},
        ],
        "count": 3,
    }


def test_a_batch_without_the_field_is_taken_and_no_run_is_404(api: httpx.Client) -> None:
    run_id = create_run(api)
    response = api.post(f"/runs/{run_id}/batches", content=make_batch().body())
    assert response.status_code == 200, response.text
    assert api.get(f"/runs/{run_id}/nonfinite").json() == {"data": [], "count": 0}
    missing = api.get("/runs/no-such-run/nonfinite")
    assert missing.status_code == 404
    assert missing.json()["code"] == "run_not_found"

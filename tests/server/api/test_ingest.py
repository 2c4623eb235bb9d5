"""Batches over HTTP: stored and read back by every query, replayed, refused when they
contradict history, gzipped, with non-finite values."""

from __future__ import annotations

import gzip
import math

import httpx
from batches import (
    body,
    create_run,
    histogram,
    make_batch,
    post_batch,
    sample_batch,
    scalars_block,
    stats_block,
)

from layerwatch_server.schemas import HistogramsPublic, ScalarSeriesPublic, SeriesPublic


def test_ingest_then_query_everything(api: httpx.Client) -> None:
    run_id = create_run(api)
    batch = sample_batch(steps=(0, 5, 10))
    extra = make_batch(
        histograms=[histogram("fc1", 5, [3, 2**40], edges=[0.0, 0.25, 4.0])],
        scalars=[scalars_block("acc", [0, 5], [0.5, 0.75], times=[1.5, 2.5])],
    )

    receipt = post_batch(api, run_id, batch)
    assert receipt.status_code == 200
    assert receipt.json() == {
        "batch_id": batch.batch_id,
        "duplicate": False,
        "stats": 6,
        "histograms": 1,
        "scalars": 3,
        "unit_means": 3,
        "weight_changes": 3,
        "models": 1,
    }
    post_batch(api, run_id, extra).raise_for_status()

    tensors = api.get(f"/runs/{run_id}/tensors").json()
    assert [(t["name"], t["kind"]) for t in tensors["data"]] == [
        ("fc1", "activation"),
        ("fc1.weight", "weight"),
    ]
    assert tensors["data"][0]["module_type"] == "Linear"
    assert tensors["data"][0]["shape"] == [8, 16]
    weights = api.get(f"/runs/{run_id}/tensors", params={"kind": "weight"}).json()
    assert weights["count"] == 1

    series = api.get(f"/runs/{run_id}/series", params={"tensor": "fc1", "stat": "std"})
    parsed = SeriesPublic.model_validate_json(series.content)
    assert (parsed.steps, parsed.values) == ([0, 5, 10], stats_block("fc1", [0, 5, 10])["std"])
    weight = api.get(
        f"/runs/{run_id}/series", params={"tensor": "fc1.weight", "kind": "weight", "stat": "l2"}
    ).json()
    assert weight["steps"] == [0, 5, 10]

    hists = HistogramsPublic.model_validate_json(
        api.get(f"/runs/{run_id}/histograms", params={"tensor": "fc1"}).content
    )
    assert [(h.step, h.edges, h.counts) for h in hists.data] == [
        (0, [-1.0, -0.5, 0.0, 0.5, 1.0], [1, 2, 3, 4]),
        (5, [0.0, 0.25, 4.0], [3, 2**40]),
    ]
    one = api.get(f"/runs/{run_id}/histograms", params={"tensor": "fc1", "step": 5}).json()
    assert [h["step"] for h in one["data"]] == [5]

    assert api.get(f"/runs/{run_id}/scalars").json() == {"data": ["acc", "loss"], "count": 2}
    acc = ScalarSeriesPublic.model_validate_json(
        api.get(f"/runs/{run_id}/scalars/series", params={"name": "acc"}).content
    )
    assert (acc.steps, acc.values, acc.times) == ([0, 5], [0.5, 0.75], [1.5, 2.5])

    means = api.get(f"/runs/{run_id}/unit-means", params={"tensor": "fc1", "start": 5}).json()
    assert (means["steps"], means["units"]) == ([5, 10], 4)
    assert means["values"][0] == [5.0, 5.25, 5.5, 5.75]
    changes = api.get(f"/runs/{run_id}/weight-changes", params={"tensor": "fc1.weight"}).json()
    assert changes["steps"] == [0, 5, 10]
    assert changes["since_prev"][0] == "NaN"  # no previous capture at the first
    assert changes["since_init"] == [0.0, 0.05, 0.1]
    [tree] = api.get(f"/runs/{run_id}/model").json()["data"]
    assert [m["path"] for m in tree["modules"]] == ["", "fc1", "act"]
    assert api.get(f"/runs/{run_id}/unit-means", params={"tensor": "nope"}).status_code == 404
    assert api.get("/runs/nope/model").status_code == 404


def test_replayed_batch_is_answered_as_a_duplicate(api: httpx.Client) -> None:
    run_id = create_run(api)
    batch = sample_batch()
    post_batch(api, run_id, batch).raise_for_status()

    again = post_batch(api, run_id, batch)

    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    steps = api.get(f"/runs/{run_id}/series", params={"tensor": "fc1"}).json()["steps"]
    assert steps == [0, 1, 2]

    changed = make_batch(batch_id=batch.batch_id, stats=[stats_block("fc1", [7])])
    conflict = post_batch(api, run_id, changed)
    assert conflict.status_code == 409
    assert batch.batch_id in conflict.json()["detail"]


def test_contradicting_stored_history_is_a_conflict(api: httpx.Client) -> None:
    run_id = create_run(api)
    post_batch(api, run_id, make_batch(stats=[stats_block("fc1", [0, 1])])).raise_for_status()
    bad = make_batch(stats=[stats_block("fc2", [0]), stats_block("fc1", [1], mean=[99.0])])

    response = post_batch(api, run_id, bad)

    assert response.status_code == 409
    assert "fc1" in response.json()["detail"]
    assert "step 1" in response.json()["detail"]
    names = [t["name"] for t in api.get(f"/runs/{run_id}/tensors").json()["data"]]
    assert names == ["fc1"]


def test_non_finite_values_travel_as_strings(api: httpx.Client) -> None:
    run_id = create_run(api)
    odd = [math.nan, math.inf, -math.inf, 1.5]
    batch = make_batch(
        stats=[stats_block("fc1", range(4), mean=odd)],
        scalars=[scalars_block("loss", range(4), odd)],
    )
    sent = body(batch)
    assert b'"NaN"' in sent  # the client writes them as strings too
    post_batch(api, run_id, batch).raise_for_status()

    series = api.get(f"/runs/{run_id}/series", params={"tensor": "fc1"})
    assert series.json()["values"] == ["NaN", "Infinity", "-Infinity", 1.5]
    values = SeriesPublic.model_validate_json(series.content).values
    assert math.isnan(values[0])
    assert values[1:] == [math.inf, -math.inf, 1.5]

    loss = api.get(f"/runs/{run_id}/scalars/series", params={"name": "loss"})
    assert loss.json()["values"] == ["NaN", "Infinity", "-Infinity", 1.5]
    assert ScalarSeriesPublic.model_validate_json(loss.content).values[1] == math.inf


def test_bare_non_finite_literals_are_accepted_too(api: httpx.Client) -> None:
    run_id = create_run(api)
    raw = body(make_batch(scalars=[scalars_block("loss", [0, 1, 2], [0.0, 0.0, 0.0])]))
    raw = raw.replace(b"[0.0,0.0,0.0]", b"[NaN,Infinity,-Infinity]")

    api.post(f"/runs/{run_id}/batches", content=raw).raise_for_status()

    loss = api.get(f"/runs/{run_id}/scalars/series", params={"name": "loss"}).json()
    assert loss["values"] == ["NaN", "Infinity", "-Infinity"]


def test_gzip_bodies(api: httpx.Client) -> None:
    run_id = create_run(api)
    batch = sample_batch(steps=tuple(range(200)))

    response = api.post(
        f"/runs/{run_id}/batches",
        content=gzip.compress(body(batch)),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["stats"] == 400
    # The digest is of the decompressed body: the same batch sent plain is a replay.
    assert post_batch(api, run_id, batch).json()["duplicate"] is True

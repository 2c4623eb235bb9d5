"""Probe uploads and reads over HTTP: round trip, parts, replays, conflicts, bad input."""

from __future__ import annotations

import base64
import gzip

import httpx
import numpy as np
import pytest
from batches import new_id

from layerwatch import wire


@pytest.fixture
def run_id(api: httpx.Client) -> str:
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    return run_id


def b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode()


def features(samples: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((samples, width)).astype("<f2")


def layer(name: str, values: np.ndarray, **extra: object) -> dict[str, object]:
    return {"name": name, "features_shape": list(values.shape), "features": b64(values), **extra}


def probe(step: int, layers: list[dict[str, object]], samples: int = 6, **extra: object) -> dict:
    labels = np.arange(samples, dtype="<i4") % 3
    return {"step": step, "samples": samples, "labels": b64(labels), "layers": layers, **extra}


def post(api: httpx.Client, run_id: str, payload: object) -> httpx.Response:
    return api.post(f"/runs/{run_id}/probes", json=payload)


def decode(layer: dict[str, object]) -> np.ndarray:
    data = base64.b64decode(str(layer["features"]))
    return np.frombuffer(data, dtype="<f2").reshape(layer["features_shape"])  # type: ignore[arg-type]


def test_probe_round_trip(api: httpx.Client, run_id: str) -> None:
    hidden, output = features(6, 5), features(6, 3, seed=1)
    maps = np.ones((2, 4, 3, 3), dtype="<f2")
    predictions = np.array([0, 1, 2, 2, 1, 0], dtype="<i4")
    payload = probe(
        7,
        [
            layer("fc1", hidden),
            layer("conv", features(6, 4, seed=2), source_shape=[4, 3, 3], reduced="pooled",
                  maps_shape=[2, 4, 3, 3], maps=b64(maps)),
            layer("out", output),
        ],
        predictions=b64(predictions),
    )  # fmt: skip

    receipt = post(api, run_id, payload)
    assert receipt.status_code == 200, receipt.text
    assert receipt.json() == {"step": 7, "layers": 3}

    listing = api.get(f"/runs/{run_id}/probes").json()
    assert listing["count"] == 1
    [summary] = listing["data"]
    assert (summary["step"], summary["samples"], summary["labels"], summary["predictions"]) == (
        7, 6, True, True,
    )  # fmt: skip
    assert [(x["name"], x["features_shape"], x["reduced"]) for x in summary["layers"]] == [
        ("fc1", [6, 5], "none"),
        ("conv", [6, 4], "pooled"),
        ("out", [6, 3], "none"),
    ]

    stored = api.get(f"/runs/{run_id}/probes/7").json()
    got = wire.Probe.model_validate(stored)  # readable with the upload model
    assert np.frombuffer(got.labels or b"", "<i4").tolist() == [0, 1, 2, 0, 1, 2]
    assert np.frombuffer(got.predictions or b"", "<i4").tolist() == predictions.tolist()
    np.testing.assert_array_equal(decode(stored["layers"][0]), hidden)
    assert got.layers[1].maps == maps.tobytes()
    assert got.layers[1].source_shape == [4, 3, 3]

    one = api.get(f"/runs/{run_id}/probes/7", params={"layer": "out"}).json()
    assert [x["name"] for x in one["layers"]] == ["out"]
    np.testing.assert_array_equal(decode(one["layers"][0]), output)


def test_a_probe_in_parts_and_sent_again(api: httpx.Client, run_id: str) -> None:
    first = probe(3, [layer("fc1", features(6, 5))])
    second = probe(3, [layer("fc2", features(6, 2))], predictions=b64(np.zeros(6, "<i4")))
    second.pop("labels")  # a later part may leave the labels out
    assert post(api, run_id, first).json() == {"step": 3, "layers": 1}
    assert post(api, run_id, second).json() == {"step": 3, "layers": 1}
    assert post(api, run_id, first).json() == {"step": 3, "layers": 0}  # a replay stores nothing

    gzipped = gzip.compress(httpx.Request("POST", "/", json=second).read())
    again = api.post(
        f"/runs/{run_id}/probes", content=gzipped, headers={"Content-Encoding": "gzip"}
    )
    assert again.json() == {"step": 3, "layers": 0}

    [summary] = api.get(f"/runs/{run_id}/probes").json()["data"]
    assert [x["name"] for x in summary["layers"]] == ["fc1", "fc2"]
    assert (summary["labels"], summary["predictions"]) == (True, True)


ORIGINAL = probe(1, [layer("fc1", features(6, 5))])


@pytest.mark.parametrize(
    ("contradicting", "message"),
    [
        (probe(1, [layer("fc1", features(4, 5))], samples=4), "samples"),
        ({**ORIGINAL, "labels": b64(np.ones(6, "<i4"))}, "labels"),
        (probe(1, [layer("fc1", features(6, 5, seed=9))]), "layer `fc1`"),
    ],
)
def test_a_probe_contradicting_the_stored_one_is_refused_whole(
    api: httpx.Client, run_id: str, contradicting: dict[str, object], message: str
) -> None:
    post(api, run_id, ORIGINAL).raise_for_status()
    samples = int(contradicting["samples"])  # type: ignore[call-overload]
    new_layer = layer("new", features(samples, 2))
    with_new_layer = {**contradicting, "layers": [*contradicting["layers"], new_layer]}  # type: ignore[misc]

    response = post(api, run_id, with_new_layer)

    assert response.status_code == 409, response.text
    assert message in response.json()["detail"]
    [summary] = api.get(f"/runs/{run_id}/probes").json()["data"]
    assert [x["name"] for x in summary["layers"]] == ["fc1"]  # not even the new layer
    stored = api.get(f"/runs/{run_id}/probes/1").json()
    assert stored["layers"][0]["features"] == ORIGINAL["layers"][0]["features"]
    assert stored["labels"] == ORIGINAL["labels"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (probe(0, [layer("fc1", features(5, 5))]), "5 samples, the probe 6"),
        (probe(0, [layer("a", features(6, 5)), layer("a", features(6, 5))]), "unique"),
        ({**probe(0, []), "labels": b64(np.zeros(5, "<i4"))}, "labels"),
        ({**probe(0, [layer("a", features(6, 5))]), "step": -1}, "step"),
        (probe(0, [{**layer("a", features(6, 5)), "features_shape": [6, 4]}]), "features"),
        (probe(0, [{**layer("a", features(6, 5)), "features": "***"}]), "features"),
        (probe(0, [{**layer("a", features(6, 5)), "reduced": "magic"}]), "reduced"),
        ({"step": 0}, "samples"),
        ([1, 2], "should be an object"),
    ],
)
def test_invalid_probes_are_refused_with_the_reason(
    api: httpx.Client, run_id: str, payload: object, message: str
) -> None:
    response = post(api, run_id, payload)
    assert response.status_code == 422, response.text
    assert message in response.text
    assert api.get(f"/runs/{run_id}/probes").json()["count"] == 0


def test_missing_runs_probes_and_layers(api: httpx.Client, run_id: str) -> None:
    assert post(api, "nope", probe(0, [])).status_code == 404
    assert api.get("/runs/nope/probes").status_code == 404
    assert api.get(f"/runs/{run_id}/probes/5").status_code == 404
    post(api, run_id, probe(5, [layer("fc1", features(6, 5))])).raise_for_status()
    missing = api.get(f"/runs/{run_id}/probes/5", params={"layer": ["fc1", "fc9"]})
    assert missing.status_code == 404
    assert "fc9" in missing.json()["detail"]
    assert api.get(f"/runs/{run_id}/probes/-1").status_code == 422
    assert api.get(f"/runs/{run_id}/probes", params={"rank": 1}).json()["count"] == 0


def attributions(samples: int = 2, seed: int = 0, **extra: object) -> dict[str, object]:
    values = np.random.default_rng(seed).standard_normal((samples, 5)).astype("<f4")
    return {
        "shape": [samples, 5],
        "values": b64(values),
        "targets": b64(np.arange(samples, dtype="<i4")),
        "steps": 32,
        "deltas": [1e-4, "NaN"][:samples],  # a delta may be NaN
        **extra,
    }


def test_attributions_round_trip_once(api: httpx.Client, run_id: str) -> None:
    explained = attributions()
    payload = probe(2, [layer("fc1", features(6, 5))], attributions=explained)
    post(api, run_id, payload).raise_for_status()
    post(api, run_id, payload).raise_for_status()  # a replay

    [summary] = api.get(f"/runs/{run_id}/probes").json()["data"]
    assert summary["attributions"] == [2, 5]
    stored = wire.Probe.model_validate(api.get(f"/runs/{run_id}/probes/2").json())
    assert stored.attributions is not None
    assert stored.attributions.values == base64.b64decode(str(explained["values"]))
    assert np.frombuffer(stored.attributions.targets, "<i4").tolist() == [0, 1]
    assert stored.attributions.deltas is not None
    assert stored.attributions.deltas[0] == 1e-4

    other = probe(2, [], attributions=attributions(seed=1))
    refused = post(api, run_id, other)
    assert refused.status_code == 409
    assert "attributions" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("explained", "message"),
    [
        (attributions(shape=[2, 4]), "values"),
        (attributions(targets=b64(np.zeros(3, "<i4"))), "targets"),
        (attributions(deltas=[0.0]), "deltas"),
        (attributions(steps=0), "steps"),
        (attributions(method="saliency"), "method"),
        (attributions(samples=1, shape=[0, 5], values=b64(np.zeros(0, "<f4"))), "values"),
    ],
)
def test_invalid_attributions_are_refused(
    api: httpx.Client, run_id: str, explained: dict[str, object], message: str
) -> None:
    response = post(api, run_id, probe(0, [], attributions=explained))
    assert response.status_code == 422, response.text
    assert message in response.text


def test_attributions_of_more_samples_than_the_probe(api: httpx.Client, run_id: str) -> None:
    explained = attributions(samples=2)
    response = post(api, run_id, probe(0, [], samples=1, attributions=explained) | {"labels": None})
    assert response.status_code == 422
    assert "more samples" in response.text


def test_skipped_layers_are_stored_once_and_listed(api: httpx.Client, run_id: str) -> None:
    skipped = [{"name": "gru", "reason": "output (7, 6, 5) is not batch-first"}]
    first = probe(3, [layer("fc1", features(6, 5))], skipped=skipped)
    assert post(api, run_id, first).status_code == 200
    assert post(api, run_id, first).status_code == 200  # sent again: a no-op
    second = probe(3, [layer("out", features(6, 3))])  # a later part carries none
    assert post(api, run_id, second).status_code == 200
    other = probe(3, [], skipped=[{"name": "gru", "reason": "empty output"}])
    refused = post(api, run_id, other)
    assert refused.status_code == 409
    assert refused.json()["code"] == "conflict"
    [listed] = api.get(f"/runs/{run_id}/probes").raise_for_status().json()["data"]
    assert listed["skipped"] == skipped
    assert [item["name"] for item in listed["layers"]] == ["fc1", "out"]
    stored = api.get(f"/runs/{run_id}/probes/3").raise_for_status().json()
    assert stored["skipped"] == skipped
    missing = api.get(f"/runs/{run_id}/probes/3", params={"layer": "gru"})
    assert missing.status_code == 404
    assert missing.json()["detail"] == (
        "the probe at step 3 has no layer `gru`: the client left it out: "
        "output (7, 6, 5) is not batch-first"
    )
    plain = probe(4, [layer("fc1", features(6, 5))])
    assert post(api, run_id, plain).status_code == 200
    assert api.get(f"/runs/{run_id}/probes").json()["data"][1]["skipped"] == []

"""Export of a run as CSV (one table, streamed) and npz, checked against the JSON endpoints."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from batches import (
    body,
    histogram,
    make_batch,
    new_id,
    packed_floats,
    scalars_block,
    stats_block,
    weight_changes_block,
)

from layerwatch import wire
from layerwatch_server.store.export import HEADERS, PAGE_ROWS

NAN, INF = math.nan, math.inf
TENSORS = [("fc1", "activation"), ("fc1.weight", "weight"), ("fc1.weight", "grad")]
UNIT_MEANS = [[0.5, NAN, INF, -INF], [1.0, 2.0, 3.0, 4.0], [-0.25, 0.0, 0.125, 1e-3]]


def post(api: httpx.Client, run_id: str, batch: wire.Batch) -> None:
    api.post(f"/runs/{run_id}/batches", content=body(batch)).raise_for_status()


def new_run(api: httpx.Client) -> str:
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    return run_id


@pytest.fixture(scope="module")
def run_id(api: httpx.Client) -> str:
    """Three tensors at steps 0, 5, 10 on rank 0 (NaN and infinities among them), two
    steps of one tensor on rank 1, histograms, scalars, unit means, weight changes."""
    run_id = new_run(api)
    post(api, run_id, make_batch(
        tensors=[{"name": "fc1", "kind": "activation", "module_type": "Linear"}],
        stats=[stats_block("fc1", [0, 5, 10], mean=[NAN, INF, -INF], max=[1.0, INF, 2.0]),
               stats_block("fc1.weight", [0, 5, 10], kind="weight"),
               stats_block("fc1.weight", [0, 5, 10], kind="grad", offset=-3.0)],
        histograms=[histogram("fc1", 0, [1, 2, 3, 4]),
                    histogram("fc1", 5, [3, 2**40], edges=[0.0, 0.25, 4.0]),
                    {**histogram("fc1.weight", 0, [5, 6], kind="weight"), "sample_size": [100]}],
        scalars=[scalars_block("loss", [0, 5, 10], [1.0, NAN, INF], times=[1.5, 2.5, 3.5]),
                 scalars_block("acc", [0, 5], [0.5, -INF])],
        unit_means=[{"name": "fc1", "kind": "activation", "steps": [0, 5, 10],
                     "values": [packed_floats(v) for v in UNIT_MEANS]}],
        weight_changes=[weight_changes_block("fc1.weight", [0, 5, 10])],
    ))  # fmt: skip
    post(api, run_id, make_batch(rank=1, stats=[stats_block("fc1", [0, 5], offset=100.0)]))
    return run_id


def export(api: httpx.Client, run_id: str, **params: object) -> list[dict[str, str]]:
    response = api.get(f"/runs/{run_id}/export.csv", params=params)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    table = str(params.get("table", "stats"))
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="{run_id}-{table}.csv"'
    )
    reader = csv.DictReader(io.StringIO(response.text))
    assert tuple(reader.fieldnames or ()) == HEADERS[table]  # type: ignore[index]
    return list(reader)


def floats(values: Iterator[object] | list[object]) -> np.ndarray:
    """JSON numbers (NaN and infinities as strings) or CSV cells as float64."""
    return np.array([float(v) for v in values], dtype=np.float64)  # type: ignore[arg-type]


def served_series(api: httpx.Client, run_id: str, tensor: str, kind: str, stat: str) -> dict:
    params = {"tensor": tensor, "kind": kind, "stat": stat}
    return api.get(f"/runs/{run_id}/series", params=params).json()  # type: ignore[no-any-return]


# -- CSV -------------------------------------------------------------------------------


def test_stats_csv_matches_the_series(api: httpx.Client, run_id: str) -> None:
    rows = export(api, run_id)
    assert [(r["tensor"], r["kind"]) for r in rows if r["rank"] == "0"][::3] == TENSORS
    assert len(rows) == 3 * 3 + 2
    for tensor, kind in TENSORS:
        mine = [r for r in rows if (r["tensor"], r["kind"], r["rank"]) == (tensor, kind, "0")]
        for stat in wire.STAT_NAMES:
            series = served_series(api, run_id, tensor, kind, stat)
            assert [int(r["step"]) for r in mine] == series["steps"]
            np.testing.assert_array_equal(floats(r[stat] for r in mine), floats(series["values"]))
    fc1 = [r for r in rows if r["tensor"] == "fc1" and r["rank"] == "0"]
    assert [r["mean"] for r in fc1] == ["nan", "inf", "-inf"]
    assert [r["max"] for r in fc1] == ["1.0", "inf", "2.0"]
    assert {r["numel"] for r in rows} == {"64"}  # counts are integers
    ranked = [r for r in rows if r["rank"] == "1"]
    assert [(r["tensor"], r["step"], float(r["mean"])) for r in ranked] == [
        ("fc1", "0", 100.0),
        ("fc1", "5", 102.5),
    ]


def test_scalars_csv(api: httpx.Client, run_id: str) -> None:
    rows = export(api, run_id, table="scalars")
    assert [(r["name"], r["step"], r["value"], r["time"]) for r in rows] == [
        ("acc", "0", "0.5", ""),
        ("acc", "5", "-inf", ""),
        ("loss", "0", "1.0", "1.5"),
        ("loss", "5", "nan", "2.5"),
        ("loss", "10", "inf", "3.5"),
    ]
    loss = api.get(f"/runs/{run_id}/scalars/series", params={"name": "loss"}).json()
    np.testing.assert_array_equal(floats(r["value"] for r in rows[2:]), floats(loss["values"]))
    assert export(api, run_id, table="scalars", name="acc") == rows[:2]


def test_histograms_csv(api: httpx.Client, run_id: str) -> None:
    rows = export(api, run_id, table="histograms")
    assert [(r["tensor"], r["kind"], r["step"], r["sample_size"]) for r in rows] == [
        ("fc1", "activation", "0", ""),
        ("fc1", "activation", "5", ""),
        ("fc1.weight", "weight", "0", "100"),
    ]
    for row in rows:
        served = api.get(f"/runs/{run_id}/histograms", params={
            "tensor": row["tensor"], "kind": row["kind"], "step": row["step"]}).json()  # fmt: skip
        [one] = served["data"]
        assert json.loads(row["edges"]) == one["edges"]
        assert json.loads(row["counts"]) == one["counts"]
    assert json.loads(rows[1]["counts"]) == [3, 2**40]


def test_unit_means_csv_is_one_row_per_unit(api: httpx.Client, run_id: str) -> None:
    rows = export(api, run_id, table="unit_means")
    assert len(rows) == 3 * 4
    served = api.get(f"/runs/{run_id}/unit-means", params={"tensor": "fc1"}).json()
    for i, step in enumerate(served["steps"]):
        mine = [r for r in rows if r["step"] == str(step)]
        assert [r["unit"] for r in mine] == ["0", "1", "2", "3"]
        np.testing.assert_array_equal(floats(r["mean"] for r in mine), floats(served["values"][i]))
    assert [r["mean"] for r in rows[:4]] == ["0.5", "nan", "inf", "-inf"]
    assert float(rows[-1]["mean"]) == float(np.float32(1e-3))  # float32 as stored


def test_weight_changes_csv(api: httpx.Client, run_id: str) -> None:
    rows = export(api, run_id, table="weight_changes")
    served = api.get(f"/runs/{run_id}/weight-changes", params={"tensor": "fc1.weight"}).json()
    assert [int(r["step"]) for r in rows] == served["steps"] == [0, 5, 10]
    assert {r["tensor"] for r in rows} == {"fc1.weight"}
    for column in ("since_prev", "since_init", "update_ratio"):
        np.testing.assert_array_equal(floats(r[column] for r in rows), floats(served[column]))
    assert rows[0]["since_prev"] == "nan"


def test_csv_filters(api: httpx.Client, run_id: str) -> None:
    def keys(**params: object) -> list[tuple[str, str, str, str]]:
        return [
            (r["tensor"], r["kind"], r["rank"], r["step"]) for r in export(api, run_id, **params)
        ]

    assert {k[:2] for k in keys(kind="grad")} == {("fc1.weight", "grad")}
    assert {k[:2] for k in keys(tensor="fc1.weight")} == {("fc1.weight", "weight"),
                                                          ("fc1.weight", "grad")}  # fmt: skip
    assert keys(tensor="fc1", kind="activation", start=5, end=5) == [
        ("fc1", "activation", "0", "5"), ("fc1", "activation", "1", "5")]  # fmt: skip
    both = keys(tensor=["fc1.weight", "fc1"], end=0, rank=0)  # in network order
    assert both == [("fc1", "activation", "0", "0"), ("fc1.weight", "weight", "0", "0"),
                    ("fc1.weight", "grad", "0", "0")]  # fmt: skip
    assert keys(rank=1) == [("fc1", "activation", "1", "0"), ("fc1", "activation", "1", "5")]
    assert keys(start=11) == []
    assert export(api, run_id, table="weight_changes", kind="activation") == []


def test_csv_of_a_run_without_data_is_a_header(api: httpx.Client) -> None:
    run_id = new_run(api)
    for table in HEADERS:
        assert export(api, run_id, table=table) == []


def test_large_csv_streams_every_row_once_in_order(api: httpx.Client) -> None:
    """More rows than a page, with the two ranks of a step split across pages."""
    run_id = new_run(api)
    steps = range(PAGE_ROWS["stats"] // 2 + 300)
    for rank in (0, 1):  # rank 1 from step 1: a page of 5000 rows ends between ranks
        post(
            api,
            run_id,
            make_batch(rank=rank, stats=[stats_block("fc1", steps[rank:], offset=rank)]),
        )
    with api.stream("GET", f"/runs/{run_id}/export.csv") as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        assert response.headers["transfer-encoding"] == "chunked"
        text = response.read().decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    expected = [(s, k) for s in steps for k in (0, 1) if s or not k]
    assert [(int(r["step"]), int(r["rank"])) for r in rows] == expected
    assert expected[PAGE_ROWS["stats"] - 1 : PAGE_ROWS["stats"] + 1] == [(2500, 0), (2500, 1)]
    assert all(float(r["mean"]) == int(r["rank"]) + 0.5 * int(r["step"]) for r in rows)


# -- npz -------------------------------------------------------------------------------


def load_npz(api: httpx.Client, run_id: str, **params: object) -> dict[str, np.ndarray]:
    response = api.get(f"/runs/{run_id}/export.npz", params=params)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == f'attachment; filename="{run_id}.npz"'
    with np.load(io.BytesIO(response.content), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def test_npz_holds_every_series(api: httpx.Client, run_id: str) -> None:
    arrays = load_npz(api, run_id)
    for tensor, kind in TENSORS:
        prefix = f"stats/{kind}/{tensor}"
        assert arrays[f"{prefix}/steps"].dtype == np.int64
        for stat in wire.STAT_NAMES:
            served = served_series(api, run_id, tensor, kind, stat)
            np.testing.assert_array_equal(arrays[f"{prefix}/steps"], served["steps"])
            assert arrays[f"{prefix}/{stat}"].dtype == np.float64
            np.testing.assert_array_equal(arrays[f"{prefix}/{stat}"], floats(served["values"]))
    np.testing.assert_array_equal(arrays["stats/activation/fc1/mean"], [NAN, INF, -INF])
    np.testing.assert_array_equal(arrays["scalars/loss/steps"], [0, 5, 10])
    np.testing.assert_array_equal(arrays["scalars/loss/values"], [1.0, NAN, INF])
    np.testing.assert_array_equal(arrays["scalars/acc/values"], [0.5, -INF])
    np.testing.assert_array_equal(arrays["unit_means/fc1/steps"], [0, 5, 10])
    np.testing.assert_array_equal(arrays["unit_means/fc1/means"],
                                  np.array(UNIT_MEANS, dtype=np.float32))  # fmt: skip
    changes = api.get(f"/runs/{run_id}/weight-changes", params={"tensor": "fc1.weight"}).json()
    for column in ("steps", "since_prev", "since_init", "update_ratio"):
        np.testing.assert_array_equal(
            arrays[f"weight_changes/fc1.weight/{column}"], floats(changes[column])
        )
    hist = "histograms/activation/fc1"
    np.testing.assert_array_equal(arrays[f"{hist}/steps"], [0, 5])
    np.testing.assert_array_equal(arrays[f"{hist}/counts"], [[1, 2, 3, 4], [3, 2**40, 0, 0]])
    np.testing.assert_array_equal(arrays[f"{hist}/edges"][1], [0.0, 0.25, 4.0, NAN, NAN])
    np.testing.assert_array_equal(arrays["histograms/weight/fc1.weight/sample_size"], [100])


def test_npz_filters(api: httpx.Client, run_id: str) -> None:
    weights = load_npz(api, run_id, kind="weight", name="loss", start=5)
    assert {key.split("/")[0] for key in weights} == {"stats", "scalars", "weight_changes",
                                                      "histograms"}  # fmt: skip
    assert {key.rsplit("/", 1)[0] for key in weights if key.startswith("stats/")} == {
        "stats/weight/fc1.weight"
    }
    np.testing.assert_array_equal(weights["stats/weight/fc1.weight/steps"], [5, 10])
    np.testing.assert_array_equal(weights["scalars/loss/steps"], [5, 10])
    assert "scalars/acc/steps" not in weights
    assert weights["histograms/weight/fc1.weight/steps"].shape == (0,)
    rank1 = load_npz(api, run_id, rank=1, tensor="fc1")
    np.testing.assert_array_equal(rank1["stats/activation/fc1/mean"], [100.0, 102.5])
    empty = load_npz(api, new_run(api))
    assert empty == {}


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["csv", "npz"])
@pytest.mark.parametrize(
    ("params", "status", "named"),
    [
        ({"tensor": "nope"}, 404, "nope"),
        ({"tensor": "fc1", "kind": "weight"}, 404, "fc1"),
        ({"name": "nope"}, 404, "nope"),
        ({"kind": "bias"}, 422, "kind"),
        ({"start": 6, "end": 5}, 422, "start"),
        ({"start": -1}, 422, "start"),
        ({"end": 2**63}, 422, "end"),
        ({"rank": -1}, 422, "rank"),
        ({"tensor": ""}, 422, "tensor"),
    ],
)
def test_bad_exports_are_refused(
    api: httpx.Client, run_id: str, suffix: str, params: dict[str, object], status: int, named: str
) -> None:
    response = api.get(f"/runs/{run_id}/export.{suffix}", params=params)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert named in response.text


def test_unknown_run_and_table(api: httpx.Client, run_id: str) -> None:
    for suffix in ("csv", "npz"):
        missing = api.get(f"/runs/{new_id('r')}/export.{suffix}")
        assert missing.status_code == 404
        assert "does not exist" in missing.json()["detail"]
    bad = api.get(f"/runs/{run_id}/export.csv", params={"table": "probes"})
    assert bad.status_code == 422
    assert "table" in bad.text

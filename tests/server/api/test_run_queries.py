"""Cross-run queries: `GET /runs` filtered by name and config values, paged, on both backends."""

from __future__ import annotations

import httpx
import pytest
from batches import new_id


def create_run(api: httpx.Client, project: str, **spec: object) -> str:
    response = api.post("/runs", json={"id": new_id("r"), "project": project, **spec})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def ids(api: httpx.Client, **params: object) -> list[str]:
    response = api.get("/runs", params=params)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["data"])  # every test here fits in one page
    return [run["id"] for run in body["data"]]


@pytest.fixture
def runs(api: httpx.Client) -> tuple[str, dict[str, str]]:
    """A fresh project of five runs with assorted configs, and their ids by a short label."""
    project = new_id("p")
    configs = {
        "sgd": {"lr": 0.1, "optimizer": "sgd", "opt": {"momentum": 0.9}, "layers": [64, 32]},
        "adam": {"lr": 0.001, "optimizer": "adam", "opt": {"betas": [0.9, 0.999]}},
        "adam-big": {"lr": 1, "optimizer": "adam", "batch": 512, "flag": True},
        "count": {"lr": 1.0, "flag": 1, "opt.momentum": 0.5, "note": None},
        "empty": {},
    }
    made = {
        label: create_run(api, project, name=label, config=config, tags=["x"] if i % 2 else [])
        for i, (label, config) in enumerate(configs.items())
    }
    return project, made


def test_config_filters_match_json_values(
    api: httpx.Client, runs: tuple[str, dict[str, str]]
) -> None:
    project, run = runs

    def find(*filters: str, **params: object) -> set[str]:
        found = ids(api, project=project, config=list(filters), **params)
        return {label for label, run_id in run.items() if run_id in found}

    assert find("lr:0.1") == {"sgd"}
    assert find('optimizer:"adam"') == {"adam", "adam-big"}
    assert find("optimizer:adam") == {"adam", "adam-big"}  # not JSON: a string
    assert find("lr:1") == {"adam-big", "count"}  # 1 and 1.0 are the same number
    assert find("flag:true") == {"adam-big"}  # true is not 1
    assert find("flag:1") == {"count"}
    assert find("opt.momentum:0.9") == {"sgd"}  # a dotted key reaches into a dict
    assert find("opt.momentum:0.5") == {"count"}  # ... unless the key itself has the dot
    assert find("opt.betas:[0.9,0.999]") == {"adam"}
    assert find("layers.1:32") == {"sgd"}  # list items by index
    assert find('opt:{"momentum": 0.9}') == {"sgd"}
    assert find("note:null") == {"count"}
    assert find('lr:"0.1"') == set()  # a JSON string is not the number
    assert find("missing:1") == set()
    assert find("optimizer:adam", "lr:1") == {"adam-big"}  # all filters must match
    assert find("optimizer:adam", tag="x") == {"adam"}
    assert find("optimizer:adam", name="adam-big") == {"adam-big"}
    assert find(name="empty") == {"empty"}
    assert find(name="nope") == set()
    assert ids(api, config="lr:0.1", name="sgd") == [run["sgd"]]  # across projects too


def test_filtered_listing_pages_and_counts(api: httpx.Client) -> None:
    project = new_id("p")
    made = [create_run(api, project, config={"seed": i % 2, "i": i}) for i in range(7)]
    odd = made[1::2][::-1]  # newest first
    pages = [
        api.get(
            "/runs", params={"project": project, "config": "seed:1", "offset": offset, "limit": 2}
        ).json()
        for offset in (0, 2, 4)
    ]
    assert [page["count"] for page in pages] == [3, 3, 3]
    assert [[r["id"] for r in page["data"]] for page in pages] == [odd[:2], odd[2:], []]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"config": ":1"}, "key"),
        ({"config": "lr"}, "config"),
        ({"config": "k" * 251 + ":1"}, "longer than 250"),
        ({"config": "lr:" + "1" * 4097}, "longer than 4096"),
        ({"config": [f"k{i}:1" for i in range(17)]}, "at most 16"),
        ({"name": "n" * 251}, "name"),
    ],
)
def test_bad_filters_are_422(api: httpx.Client, params: dict[str, object], named: str) -> None:
    response = api.get("/runs", params=params)  # type: ignore[arg-type]
    assert response.status_code == 422, response.text
    assert named in response.text


def test_deeply_nested_value_is_a_string(api: httpx.Client) -> None:
    project = new_id("p")
    run_id = create_run(api, project, config={"deep": "[" * 2000})
    assert ids(api, project=project, config="deep:" + "[" * 2000) == [run_id]

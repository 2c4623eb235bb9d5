"""`GET /api/v1/runs/{run_id}/findings`: its answer, errors, authorization and cache."""

from __future__ import annotations

import math

import httpx
import pytest
from batches import create_run, make_batch, new_id, post_batch, scalars_block
from gallery import GalleryRuns
from sqlalchemy import Engine

from layerwatch_server.db import make_sessionmakers, managed_session
from layerwatch_server.diagnosis import diagnose
from layerwatch_server.schemas import FindingsPublic
from layerwatch_server.store.tokens import create_token

FIELDS = {"kind", "tensor", "tensor_kind", "scalar", "step", "last_step", "severity",
          "confidence", "message", "evidence", "view"}  # fmt: skip


def _run_with_a_nan_loss(api: httpx.Client) -> str:
    run_id = create_run(api)
    losses = [2.3, 2.1, 2.0, math.nan, math.nan]
    batch = make_batch(scalars=[scalars_block("train/loss", range(5), losses)])
    post_batch(api, run_id, batch).raise_for_status()
    return run_id


def test_the_answer_has_every_field_of_each_finding(api: httpx.Client) -> None:
    run_id = _run_with_a_nan_loss(api)
    response = api.get(f"/runs/{run_id}/findings")
    assert response.status_code == 200
    [finding] = response.json()["findings"]
    assert set(finding) == FIELDS
    assert finding["kind"] == "loss_divergence"
    assert finding["scalar"] == "train/loss"
    assert finding["tensor"] is None
    assert finding["tensor_kind"] is None
    assert (finding["step"], finding["last_step"]) == (3, 4)
    assert finding["severity"] == "error"
    assert 0 <= finding["confidence"] <= 1
    assert "step 3" in finding["message"]
    assert finding["view"] == f"/api/v1/runs/{run_id}/plots/scalars.png?name=train%2Floss&logy=true"
    FindingsPublic.model_validate(response.json())
    # the view it names exists
    assert api.get(finding["view"].removeprefix("/api/v1")).status_code == 200


def test_a_run_without_data_has_no_findings(api: httpx.Client) -> None:
    response = api.get(f"/runs/{create_run(api)}/findings")
    assert response.json() == {"findings": []}


def test_an_unknown_run_is_a_404(api: httpx.Client) -> None:
    response = api.get(f"/runs/{new_id('r')}/findings")
    assert response.status_code == 404
    assert response.json()["code"] == "run_not_found"


def test_a_read_token_may_ask_and_no_token_may_not(
    api: httpx.Client, live_server: str, engine: Engine
) -> None:
    run_id = _run_with_a_nan_loss(api)
    _, write = make_sessionmakers(engine)
    with managed_session(write) as session:
        secret = create_token(session, name=new_id("tok"), scope="read").secret
    url = f"{live_server}/api/v1/runs/{run_id}/findings"
    answer = httpx.get(url, headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 200
    assert len(answer.json()["findings"]) == 1
    assert httpx.get(url).status_code == 401


def test_findings_are_cached_until_new_data_arrives(
    api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _run_with_a_nan_loss(api)
    loads: list[str] = []
    load = diagnose.load_run_data

    def counting(session: object, run: str) -> diagnose.RunData:
        loads.append(run)
        return load(session, run)  # type: ignore[arg-type]

    monkeypatch.setattr(diagnose, "load_run_data", counting)  # the server runs in-process
    first = api.get(f"/runs/{run_id}/findings").json()
    assert api.get(f"/runs/{run_id}/findings").json() == first
    assert loads == [run_id]

    batch = make_batch(scalars=[scalars_block("val_loss", [4], [math.inf])])
    post_batch(api, run_id, batch).raise_for_status()
    again = api.get(f"/runs/{run_id}/findings").json()
    assert loads == [run_id, run_id]
    assert {f["scalar"] for f in again["findings"]} == {"train/loss", "val_loss"}


def test_every_gallery_run_is_diagnosed(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    """Trained, empty, one-step and NaN-riddled runs: an answer for each, never a 500."""
    answers = {}
    for name, run_id in gallery_runs.all.items():
        response = api.get(f"/runs/{run_id}/findings")
        assert response.status_code == 200, (name, response.text)
        answers[name] = FindingsPublic.model_validate(response.json()).findings
    assert answers["empty"] == []
    assert [f for f in answers["mlp"] if f.severity != "info"] == []
    assert [f for f in answers["cnn"] if f.severity != "info"] == []
    assert "loss_divergence" in {f.kind for f in answers["odd"]}  # its NaN and infinite loss

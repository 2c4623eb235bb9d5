"""Projects and runs in the store: create, resume, find, list."""

from __future__ import annotations

import pytest
from batches import new_id, store_run
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.errors import Conflict, NotFound, RunNotFound, ScalarNotFound, TensorNotFound


def test_create_then_resume_a_run(session: Session) -> None:
    project = new_id("p")
    spec = wire.RunCreate(
        id=new_id("r"), project=project, config={"lr": 0.1, "layers": [1, 2]}, tags=["a"]
    )
    run, created = store.create_or_resume_run(session, spec)
    session.commit()
    assert created
    assert (run.project, run.status, run.config, run.tags) == (
        project,
        "running",
        {"lr": 0.1, "layers": [1, 2]},
        ["a"],
    )
    assert run.name == f"run-{run.id[:8]}"
    assert run.finished_at is None
    assert run.started_at.tzinfo is not None

    finished = store.update_run(session, run.id, wire.RunUpdate(status="finished"))
    session.commit()
    assert finished.status == "finished"
    assert finished.finished_at is not None

    resumed, created = store.create_or_resume_run(session, spec)
    session.commit()
    assert not created
    assert (resumed.id, resumed.status, resumed.finished_at) == (run.id, "running", None)
    assert resumed.started_at == run.started_at

    elsewhere = spec.model_copy(update={"project": new_id("p")})
    with pytest.raises(Conflict, match=project):
        store.create_or_resume_run(session, elsewhere)


def test_a_run_without_an_id_gets_one(session: Session) -> None:
    first, _ = store.create_or_resume_run(session, wire.RunCreate(name="mine"))
    second, _ = store.create_or_resume_run(session, wire.RunCreate(name="mine"))
    assert first.id != second.id
    assert first.name == "mine"
    assert first.project == "default"


def test_unknown_runs(session: Session) -> None:
    with pytest.raises(RunNotFound):
        store.get_run(session, "nope")
    with pytest.raises(RunNotFound):
        store.update_run(session, "nope", wire.RunUpdate(status="failed"))
    with pytest.raises(RunNotFound):
        store.list_tensors(session, "nope")
    with pytest.raises(RunNotFound):
        store.get_series(session, "nope", tensor="fc1", kind="activation", stat="mean")
    with pytest.raises(RunNotFound):
        store.get_scalar_series(session, "nope", name="loss")
    run_id = store_run(session)
    with pytest.raises(TensorNotFound):
        store.get_series(session, run_id, tensor="fc1", kind="activation", stat="mean")
    with pytest.raises(TensorNotFound):
        store.get_histograms(session, run_id, tensor="fc1", kind="activation")
    with pytest.raises(ScalarNotFound):
        store.get_scalar_series(session, run_id, name="loss")


def test_list_projects_counts_runs(session: Session) -> None:
    busy, idle = new_id("p"), new_id("p")
    for _ in range(3):
        store_run(session, project=busy)
    store_run(session, project=idle)

    projects = {p.name: p.runs for p in store.list_projects(session).data}
    assert (projects[busy], projects[idle]) == (3, 1)
    names = [p.name for p in store.list_projects(session).data]
    assert names == sorted(names)


def test_list_runs_filters_and_pages(session: Session) -> None:
    project, tag = new_id("p"), new_id("tag")
    ids = [store_run(session, project=project, tags=[tag] if i % 2 else []) for i in range(5)]
    store.update_run(session, ids[0], wire.RunUpdate(status="failed"))
    store.update_run(session, ids[3], wire.RunUpdate(status="failed"))
    store_run(session, tags=[tag])  # another project, same tag
    session.commit()

    everything = store.list_runs(session, project=project)
    assert [r.id for r in everything.data] == ids[::-1]  # newest first
    assert everything.count == 5
    assert {r.project for r in everything.data} == {project}

    failed = store.list_runs(session, project=project, status="failed")
    assert sorted(r.id for r in failed.data) == sorted([ids[0], ids[3]])
    assert store.list_runs(session, project=project, tag=tag).count == 2
    assert store.list_runs(session, tag=tag).count == 3
    assert store.list_runs(session, project=project, tag=tag, status="failed").count == 1

    page = store.list_runs(session, project=project, offset=1, limit=2)
    assert [r.id for r in page.data] == [ids[3], ids[2]]
    assert page.count == 5
    assert store.list_runs(session, project=project, offset=5).data == []

    with pytest.raises(NotFound):
        store.list_runs(session, project=new_id("p"))

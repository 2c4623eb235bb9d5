"""Projects, runs and the tensors they watch; `require_run` and `require_tensor_id` for all."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.errors import Conflict, ProjectNotFound, RunNotFound, TensorNotFound
from layerwatch_server.models import (
    SqlBatch,
    SqlProbe,
    SqlProbeLayer,
    SqlProject,
    SqlRun,
    SqlTensor,
    utcnow,
)
from layerwatch_server.schemas import (
    ProjectPublic,
    ProjectsPublic,
    RunPublic,
    RunsPublic,
    TensorPublic,
    TensorsPublic,
)
from layerwatch_server.store.run_filters import ConfigFilter


def require_run(session: Session, run_id: str) -> SqlRun:
    """The run ``run_id``; raises `RunNotFound` when there is none."""
    run = session.get(SqlRun, run_id)
    if run is None:
        raise RunNotFound(f"run `{run_id}` does not exist")
    return run


def require_tensor_id(session: Session, run_id: str, name: str, kind: str) -> int:
    """The id of the run's ``kind`` tensor ``name``; raises when it, or the run, does not exist."""
    tensor_id = session.scalar(
        select(SqlTensor.id).where(
            SqlTensor.run_id == run_id, SqlTensor.name == name, SqlTensor.kind == kind
        )
    )
    if tensor_id is not None:
        return tensor_id
    require_run(session, run_id)
    raise no_such_tensor(run_id, name, kind)


def no_such_tensor(run_id: str, name: str, kind: str | None = None) -> TensorNotFound:
    of_kind = f"{kind} " if kind else ""
    return TensorNotFound(f"run `{run_id}` has no {of_kind}tensor `{name}`")


def _project_id(session: Session, name: str) -> int:
    """Find or create the project called ``name``; safe against a concurrent creator."""
    found = session.scalar(select(SqlProject.id).where(SqlProject.name == name))
    if found is not None:
        return found
    try:
        with session.begin_nested():
            project = SqlProject(name=name)
            session.add(project)
        return project.id
    except IntegrityError:
        return session.scalars(select(SqlProject.id).where(SqlProject.name == name)).one()


def _run_public(run: SqlRun, project: str) -> RunPublic:
    return RunPublic.model_validate(
        {
            **{c: getattr(run, c) for c in RunPublic.model_fields if c != "project"},
            "project": project,
        }
    )


def get_run(session: Session, run_id: str) -> RunPublic:
    run = require_run(session, run_id)
    project = session.scalars(select(SqlProject.name).where(SqlProject.id == run.project_id))
    return _run_public(run, project.one())


def create_or_resume_run(session: Session, spec: wire.RunCreate) -> tuple[RunPublic, bool]:
    """Create the run ``spec`` describes, or resume the one with its id.

    Returns the run and whether it was created. Resuming sets the status back
    to running; it refuses (Conflict) a run id that belongs to another project.
    """
    if spec.id is not None:
        existing = session.get(SqlRun, spec.id)
        if existing is not None:
            return _resume(session, existing, spec), False
    run_id = spec.id or uuid.uuid4().hex
    project_id = _project_id(session, spec.project)
    run = SqlRun(
        id=run_id,
        project_id=project_id,
        name=spec.name or f"run-{run_id[:8]}",
        config=dict(spec.config),
        tags=list(spec.tags),
        status="running",
        host=spec.host,
    )
    try:
        with session.begin_nested():
            session.add(run)
    except IntegrityError:
        # Another process created the same run id between our read and write.
        existing = session.get(SqlRun, run_id, populate_existing=True)
        if existing is None:
            raise
        return _resume(session, existing, spec), False
    return get_run(session, run_id), True


def _resume(session: Session, run: SqlRun, spec: wire.RunCreate) -> RunPublic:
    project = session.get(SqlProject, run.project_id)
    assert project is not None
    if project.name != spec.project:
        raise Conflict(f"run `{run.id}` belongs to project `{project.name}`, not `{spec.project}`")
    if run.status != "running":
        run.status = "running"
        run.finished_at = None
    run.updated_at = utcnow()
    session.flush()
    return _run_public(run, project.name)


def update_run(session: Session, run_id: str, update: wire.RunUpdate) -> RunPublic:
    run = require_run(session, run_id)
    run.status = update.status
    run.updated_at = utcnow()
    run.finished_at = None if update.status == "running" else run.updated_at
    session.flush()
    return get_run(session, run_id)


def list_projects(session: Session) -> ProjectsPublic:
    rows = session.execute(
        select(SqlProject.name, SqlProject.created_at, func.count(SqlRun.id))
        .outerjoin(SqlRun, SqlRun.project_id == SqlProject.id)
        .group_by(SqlProject.id)
        .order_by(SqlProject.name)
    ).all()
    data = [ProjectPublic(name=n, created_at=c, runs=r) for n, c, r in rows]
    return ProjectsPublic(data=data, count=len(data))


def list_runs(
    session: Session,
    *,
    project: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    name: str | None = None,
    config: Sequence[ConfigFilter] = (),
    offset: int = 0,
    limit: int = 100,
) -> RunsPublic:
    """Runs newest first, optionally of one project, status, tag, name and config values.

    Every filter given must match. Tags and config values are JSON, filtered
    portably in Python (see `run_filters`): with either, every run the SQL
    filters leave is read, then counted and paged here.
    """
    query = select(SqlRun, SqlProject.name).join(SqlProject, SqlProject.id == SqlRun.project_id)
    if project is not None:
        if session.scalar(select(SqlProject.id).where(SqlProject.name == project)) is None:
            raise ProjectNotFound(f"project `{project}` does not exist")
        query = query.where(SqlProject.name == project)
    if status is not None:
        query = query.where(SqlRun.status == status)
    if name is not None:
        query = query.where(SqlRun.name == name)
    query = query.order_by(SqlRun.started_at.desc(), SqlRun.id)
    if tag is None and not config:
        count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        page = session.execute(query.offset(offset).limit(limit)).all()
    else:
        rows = [
            row
            for row in session.execute(query)
            if (tag is None or tag in (row[0].tags or []))
            and all(match.matches(row[0].config or {}) for match in config)
        ]
        count, page = len(rows), rows[offset : offset + limit]
    return RunsPublic(data=[_run_public(run, owner) for run, owner in page], count=count)


def list_tensors(session: Session, run_id: str, *, kind: str | None = None) -> TensorsPublic:
    """The run's tensors in the order they were first seen (network order)."""
    require_run(session, run_id)
    query = select(SqlTensor).where(SqlTensor.run_id == run_id)
    if kind is not None:
        query = query.where(SqlTensor.kind == kind)
    tensors = session.scalars(query.order_by(SqlTensor.id)).all()
    data = [TensorPublic.model_validate(t) for t in tensors]
    return TensorsPublic(data=data, count=len(data))


def data_version(session: Session, run_id: str) -> tuple[str, str]:
    """(status, a token that changes whenever data for the run arrives): for ETags.

    Batches and probes are only ever added, so counting them (with the newest
    arrival time) changes exactly when something new is stored.
    """
    status = require_run(session, run_id).status
    counts = [
        session.execute(select(func.count(), func.max(column)).where(table_run_id == run_id)).one()
        for column, table_run_id in (
            (SqlBatch.received_at, SqlBatch.run_id),
            (SqlProbe.received_at, SqlProbe.run_id),
            (SqlProbeLayer.step, SqlProbeLayer.run_id),
        )
    ]
    return status, ";".join(f"{n}:{newest}" for n, newest in counts)

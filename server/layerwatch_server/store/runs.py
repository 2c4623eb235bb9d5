"""Projects, runs and the tensors they watch; `require_run` and `require_tensor_id` for all."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import ColumnElement, and_, func, or_, select, update
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
        raise no_such_run(run_id)
    return run


def no_such_run(run_id: str) -> RunNotFound:
    """The answer for a run that does not exist, or that the caller may not see: the same."""
    return RunNotFound(f"run `{run_id}` does not exist")


def no_such_project(name: str) -> ProjectNotFound:
    return ProjectNotFound(f"project `{name}` does not exist")


def run_project(session: Session, run_id: str) -> str | None:
    """The name of the run's project; None when there is no such run."""
    return session.scalar(
        select(SqlProject.name)
        .join(SqlRun, SqlRun.project_id == SqlProject.id)
        .where(SqlRun.id == run_id)
    )


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


_TOUCH_EVERY = timedelta(seconds=1)  # a run's row is written at most this often for it


def touch_run(session: Session, run_id: str) -> None:
    """Note that the run's process spoke now (data or a heartbeat).

    Writes only when the last note is older than a second, so ranks
    sending at once rarely wait on the run's row.
    """
    now = utcnow()
    session.execute(
        update(SqlRun)
        .where(
            SqlRun.id == run_id,
            or_(SqlRun.last_seen_at.is_(None), SqlRun.last_seen_at < now - _TOUCH_EVERY),
        )
        .values(last_seen_at=now)
        .execution_options(synchronize_session=False)
    )


def heartbeat(session: Session, run_id: str) -> None:
    """A sign of life from the run's process; raises `RunNotFound` for an unknown run."""
    require_run(session, run_id)
    touch_run(session, run_id)


def _silent_since(timeout: float | None) -> datetime | None:
    """Running runs last seen before this are reported crashed."""
    return None if timeout is None else utcnow() - timedelta(seconds=timeout)


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _run_public(run: SqlRun, project: str, silent_since: datetime | None = None) -> RunPublic:
    fields = {c: getattr(run, c) for c in RunPublic.model_fields if c != "project"}
    seen = run.last_seen_at
    if (
        silent_since is not None
        and run.status == "running"
        and seen is not None
        and _as_utc(seen) < silent_since
    ):
        fields["status"] = "crashed"  # until the process speaks again
    return RunPublic.model_validate({**fields, "project": project})


def get_run(session: Session, run_id: str, *, timeout: float | None = None) -> RunPublic:
    """The run; with `timeout` (seconds), a running run silent that long reads `crashed`."""
    run = require_run(session, run_id)
    project = session.scalars(select(SqlProject.name).where(SqlProject.id == run.project_id))
    return _run_public(run, project.one(), _silent_since(timeout))


def _status_is(status: str, silent_since: datetime | None) -> ColumnElement[bool]:
    """The runs reported with `status` (see `_run_public`)."""
    if silent_since is None or status not in ("running", "crashed"):
        return SqlRun.status == status
    silent = and_(
        SqlRun.status == "running",
        SqlRun.last_seen_at.is_not(None),
        SqlRun.last_seen_at < silent_since,
    )
    if status == "crashed":
        return or_(SqlRun.status == "crashed", silent)
    return and_(SqlRun.status == "running", ~silent)


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
    run.updated_at = run.last_seen_at = utcnow()
    session.flush()
    return _run_public(run, project.name)


def update_run(session: Session, run_id: str, update: wire.RunUpdate) -> RunPublic:
    run = require_run(session, run_id)
    run.status = update.status
    if update.skipped_captures is not None:
        run.skipped_captures = update.skipped_captures
    run.updated_at = utcnow()
    run.finished_at = None if update.status == "running" else run.updated_at
    session.flush()
    return get_run(session, run_id)


def list_projects(session: Session, *, projects: Collection[str] | None = None) -> ProjectsPublic:
    """Projects with their number of runs; only those named in `projects` unless it is None."""
    query = (
        select(SqlProject.name, SqlProject.created_at, func.count(SqlRun.id))
        .outerjoin(SqlRun, SqlRun.project_id == SqlProject.id)
        .group_by(SqlProject.id)
        .order_by(SqlProject.name)
    )
    if projects is not None:
        query = query.where(SqlProject.name.in_(sorted(projects)))
    rows = session.execute(query).all()
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
    timeout: float | None = None,
    projects: Collection[str] | None = None,
) -> RunsPublic:
    """Runs newest first, optionally of one project, status, tag, name and config values.

    Every filter given must match. With `timeout` (seconds), a running run silent
    that long is reported, and filtered, as `crashed`. With `projects`, only runs
    of those projects exist for this call: another `project` is not found. Tags
    and config values are JSON, filtered portably in Python (see `run_filters`):
    with either, every run the SQL filters leave is read, then counted and paged here.
    """
    query = select(SqlRun, SqlProject.name).join(SqlProject, SqlProject.id == SqlRun.project_id)
    if projects is not None:
        query = query.where(SqlProject.name.in_(sorted(projects)))
    if project is not None:
        hidden = projects is not None and project not in projects
        exists = session.scalar(select(SqlProject.id).where(SqlProject.name == project))
        if hidden or exists is None:
            raise no_such_project(project)
        query = query.where(SqlProject.name == project)
    silent_since = _silent_since(timeout)
    if status is not None:
        query = query.where(_status_is(status, silent_since))
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
    data = [_run_public(run, owner, silent_since) for run, owner in page]
    return RunsPublic(data=data, count=count)


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

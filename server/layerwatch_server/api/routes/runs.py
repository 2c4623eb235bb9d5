"""Projects and runs: create, resume, finish, list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import WithJsonSchema

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.api.auth import ReadableProjects, authorize_run_create
from layerwatch_server.api.body import RunCreateBody, RunUpdateBody
from layerwatch_server.api.deps import SessionDep, SettingsDep, WriteSessionDep
from layerwatch_server.api.openapi import error_responses, json_body
from layerwatch_server.api.params import ListLimit, Offset, RunId
from layerwatch_server.schemas import ProjectsPublic, RunPublic, RunsPublic, TensorsPublic
from layerwatch_server.store.run_filters import (
    MAX_CONFIG_FILTERS,
    MAX_KEY_LENGTH,
    MAX_VALUE_LENGTH,
    parse_config_filters,
)

router = APIRouter(tags=["runs"])

_RUN_NOT_FOUND = "`run_not_found`: no run with this id."
_PROJECT_NOT_FOUND = "`project_not_found`: no project of this name."
# Documents a `config=` filter, which `parse_config_filters` checks, saying what is wrong.
_CONFIG_FILTER = WithJsonSchema(
    {"type": "string", "pattern": f"^[^:]{{1,{MAX_KEY_LENGTH}}}:[\\s\\S]{{0,{MAX_VALUE_LENGTH}}}$"}
)


@router.get("/projects", response_model=ProjectsPublic, responses=error_responses(503))
def list_projects(session: SessionDep, readable: ReadableProjects) -> ProjectsPublic:
    """List projects with their number of runs."""
    return store.list_projects(session, projects=readable)


@router.get(
    "/projects/{project}/runs",
    response_model=RunsPublic,
    responses=error_responses(404, 422, 503, not_found=_PROJECT_NOT_FOUND),
)
def list_project_runs(
    session: SessionDep,
    settings: SettingsDep,
    readable: ReadableProjects,
    project: Annotated[str, Path(max_length=wire.MAX_NAME_LENGTH)],
    offset: Offset = 0,
    limit: ListLimit = 100,
) -> RunsPublic:
    """List the runs of one project, newest first."""
    return store.list_runs(
        session, project=project, offset=offset, limit=limit,
        timeout=settings.run_timeout_seconds, projects=readable,
    )  # fmt: skip


@router.get(
    "/runs",
    response_model=RunsPublic,
    responses=error_responses(404, 422, 503, not_found=_PROJECT_NOT_FOUND),
)
def list_runs(
    session: SessionDep,
    settings: SettingsDep,
    readable: ReadableProjects,
    project: Annotated[str | None, Query(max_length=wire.MAX_NAME_LENGTH)] = None,
    status: Annotated[wire.RunStatus | None, Query()] = None,
    tag: Annotated[str | None, Query(max_length=wire.MAX_NAME_LENGTH)] = None,
    name: Annotated[
        str | None, Query(max_length=wire.MAX_NAME_LENGTH, description="Exact run name.")
    ] = None,
    config: Annotated[
        list[Annotated[str, _CONFIG_FILTER]] | None,
        Query(
            json_schema_extra={"maxItems": MAX_CONFIG_FILTERS},
            description="`<key>:<json value>` (repeat; all must match): `lr:0.1`, "
            '`optimizer:"adam"`, `opt.momentum:0.9` for nested values; a value that is '
            "not JSON is a string.",
        ),
    ] = None,
    offset: Offset = 0,
    limit: ListLimit = 100,
) -> RunsPublic:
    """List runs newest first, optionally of one project, status, tag, name or config values."""
    return store.list_runs(
        session,
        project=project,
        status=status,
        tag=tag,
        name=name,
        config=parse_config_filters(config or []),
        offset=offset,
        limit=limit,
        timeout=settings.run_timeout_seconds,
        projects=readable,
    )


@router.post(
    "/runs",
    response_model=RunPublic,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=json_body(wire.RunCreate),
    responses={
        200: {"model": RunPublic, "description": "An existing run was resumed."},
        **error_responses(409, 413, 415, 422, 503),
    },
    dependencies=[Depends(authorize_run_create)],
)
def create_run(spec: RunCreateBody, session: WriteSessionDep, response: Response) -> RunPublic:
    """Create a run, or resume the run whose `id` is given."""
    run, created = store.create_or_resume_run(session, spec)
    if not created:
        response.status_code = status.HTTP_200_OK
    return run


@router.get(
    "/runs/{run_id}",
    response_model=RunPublic,
    responses=error_responses(404, 422, 503, not_found=_RUN_NOT_FOUND),
)
def get_run(session: SessionDep, settings: SettingsDep, run_id: RunId) -> RunPublic:
    """Get one run; a running run silent for `LAYERWATCH_RUN_TIMEOUT_SECONDS` reads `crashed`."""
    return store.get_run(session, run_id, timeout=settings.run_timeout_seconds)


@router.post(
    "/runs/{run_id}/heartbeat",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 422, 503, not_found=_RUN_NOT_FOUND),
)
def heartbeat(session: WriteSessionDep, run_id: RunId) -> Response:
    """Say that the run's process is alive; clients send it when they have nothing else to."""
    store.heartbeat(session, run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/runs/{run_id}",
    response_model=RunPublic,
    openapi_extra=json_body(wire.RunUpdate),
    responses=error_responses(404, 413, 415, 422, 503, not_found=_RUN_NOT_FOUND),
)
def update_run(update: RunUpdateBody, session: WriteSessionDep, run_id: RunId) -> RunPublic:
    """Set a run's status, e.g. finished when training ends."""
    return store.update_run(session, run_id, update)


@router.get(
    "/runs/{run_id}/tensors",
    response_model=TensorsPublic,
    responses=error_responses(404, 422, 503, not_found=_RUN_NOT_FOUND),
)
def list_tensors(
    session: SessionDep, run_id: RunId, kind: Annotated[wire.Kind | None, Query()] = None
) -> TensorsPublic:
    """List the tensors a run has measurements for, in network order."""
    return store.list_tensors(session, run_id, kind=kind)

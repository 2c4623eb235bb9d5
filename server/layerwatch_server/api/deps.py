"""FastAPI dependencies: settings and database sessions for one request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from layerwatch_server.config import Settings
from layerwatch_server.db import managed_session


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """A read session for this request."""
    with managed_session(request.app.state.read_sessions) as session:
        yield session


def get_write_session(request: Request) -> Iterator[Session]:
    """A write session; it commits before the response is sent (scope="function")."""
    with managed_session(request.app.state.write_sessions) as session:
        yield session


def get_write_sessions(request: Request) -> sessionmaker[Session]:
    """The write-session factory, for routes that run a whole unit of work in one thread."""
    factory: sessionmaker[Session] = request.app.state.write_sessions
    return factory


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
WriteSessionDep = Annotated[Session, Depends(get_write_session, scope="function")]
WriteSessionsDep = Annotated[sessionmaker[Session], Depends(get_write_sessions)]

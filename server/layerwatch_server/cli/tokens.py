"""``layerwatch token create|list|revoke``: API tokens, on the server host, in its database.

Like ``mlflow db`` or ``airflow users create``: these work on the database
directly (upgrading it to the newest schema first, as the server would), so
the first admin token needs no running server and no token.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy.orm import Session

from layerwatch_server.config import Settings
from layerwatch_server.db import make_engine, make_sessionmakers, managed_session
from layerwatch_server.errors import LayerwatchError
from layerwatch_server.migrate import upgrade_database
from layerwatch_server.schemas import TokenPublic
from layerwatch_server.store import tokens

_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([mhdw])")

T = TypeVar("T")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` as a timedelta; raises ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(
            f"{text!r} is not a duration like 30d, 12h, 90m or 2w (minutes, hours, days, weeks)"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _in_database(settings: Settings, work: Callable[[Session], T]) -> T:
    engine = make_engine(
        settings.resolved_database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms
    )
    try:
        upgrade_database(engine)
        _, write = make_sessionmakers(engine)
        with managed_session(write) as session:
            return work(session)
    finally:
        engine.dispose()


def create(args: argparse.Namespace, settings: Settings) -> int:
    try:
        expires_in = None if args.expires is None else parse_duration(args.expires)
    except ValueError as error:
        print(f"layerwatch token create: --expires {error}", file=sys.stderr)
        return 2
    secret = None
    if args.secret_env:
        secret = os.environ.get(args.secret_env)
        if not secret:
            print(f"layerwatch token create: ${args.secret_env} is not set", file=sys.stderr)
            return 2

    def work(session: Session) -> str | None:
        if args.if_missing and any(t.name == args.name for t in tokens.list_tokens(session).data):
            return None
        created = tokens.create_token(
            session,
            name=args.name,
            scope=args.scope,
            projects=args.project or None,
            expires_in=expires_in,
            secret=secret,
        )
        return created.secret

    try:
        made = _in_database(settings, work)
    except LayerwatchError as error:
        print(f"layerwatch token create: {error.detail}", file=sys.stderr)
        return 1
    if made is None:
        print(f"token {args.name!r} exists; left as it is")
        return 0
    covered = ", ".join(args.project) if args.project else "every project"
    expiry = f", expires in {args.expires}" if args.expires else ""
    print(f"token {args.name!r} created: scope {args.scope}, {covered}{expiry}")
    if secret is None:
        print("its secret, shown this once (set it as LAYERWATCH_TOKEN where clients run):")
        print(made)
    return 0


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M")


def _state(token: TokenPublic, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


def list_all(args: argparse.Namespace, settings: Settings) -> int:
    from layerwatch_server.models import utcnow

    listed = _in_database(settings, tokens.list_tokens)
    now = utcnow()
    header = ("NAME", "SCOPE", "PROJECTS", "STATE", "CREATED", "LAST USED", "EXPIRES")
    rows = [header] + [
        (
            t.name,
            t.scope,
            "*" if t.projects is None else ",".join(t.projects),
            _state(t, now),
            _when(t.created_at),
            _when(t.last_used_at),
            _when(t.expires_at),
        )
        for t in listed.data
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def revoke(args: argparse.Namespace, settings: Settings) -> int:
    try:
        _in_database(settings, lambda session: tokens.revoke_token(session, args.name))
    except LayerwatchError as error:
        print(f"layerwatch token revoke: {error.detail}", file=sys.stderr)
        return 1
    print(f"token {args.name!r} revoked: every server refuses it from its next request")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "create": create,
    "list": list_all,
    "revoke": revoke,
}


def run_token_command(args: argparse.Namespace, settings: Settings) -> int:
    return COMMANDS[args.token_command](args, settings)

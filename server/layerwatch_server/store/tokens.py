"""API tokens: create, list, revoke, and find the one a secret belongs to.

Only the SHA-256 of a secret is stored; the secret itself is returned once,
by `create_token`, and never again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from layerwatch_server.auth import credentials
from layerwatch_server.auth.access import Scope
from layerwatch_server.errors import Conflict, InvalidQuery, TokenNotFound
from layerwatch_server.models import SqlApiToken, utcnow
from layerwatch_server.schemas import TokenCreated, TokenPublic, TokensPublic

LAST_USED_EVERY = timedelta(seconds=60)
"""`last_used_at` is written at most this often per token."""


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def create_token(
    session: Session,
    *,
    name: str,
    scope: Scope,
    projects: Sequence[str] | None = None,
    expires_in: timedelta | None = None,
    secret: str | None = None,
) -> TokenCreated:
    """Create a token; its secret is new unless ``secret`` (well-formed) is given.

    Raises `Conflict` when the name, or the secret, is taken.
    """
    if secret is None:
        secret = credentials.new_secret()
    elif not credentials.is_well_formed(secret):
        raise InvalidQuery("a token secret is `lw_` and 43 URL-safe base64 characters")
    now = utcnow()
    token = SqlApiToken(
        name=name,
        secret_hash=credentials.hash_secret(secret),
        scope=scope,
        projects=None if projects is None else sorted(set(projects)),
        created_at=now,
        expires_at=None if expires_in is None else now + expires_in,
    )
    try:
        with session.begin_nested():
            session.add(token)
    except IntegrityError:
        raise Conflict(f"a token named `{name}` exists, or the secret is in use") from None
    return TokenCreated.model_validate({**_public(token).model_dump(), "secret": secret})


def _public(token: SqlApiToken) -> TokenPublic:
    return TokenPublic.model_validate(token)


def list_tokens(session: Session) -> TokensPublic:
    """Every token, revoked and expired ones included, oldest first; never a secret."""
    tokens = session.scalars(select(SqlApiToken).order_by(SqlApiToken.id)).all()
    data = [_public(token) for token in tokens]
    return TokensPublic(data=data, count=len(data))


def revoke_token(session: Session, name: str) -> TokenPublic:
    """Revoke the token ``name`` (again is a no-op); raises `TokenNotFound`."""
    token = session.scalar(select(SqlApiToken).where(SqlApiToken.name == name))
    if token is None:
        raise TokenNotFound(f"no token is named `{name}`")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()
    return _public(token)


def find_token(session: Session, secret: str) -> SqlApiToken | None:
    """The live token whose secret this is: None when unknown, expired or revoked."""
    if not credentials.is_well_formed(secret):
        return None
    token = session.scalar(
        select(SqlApiToken).where(SqlApiToken.secret_hash == credentials.hash_secret(secret))
    )
    if token is None or not credentials.matches(secret, token.secret_hash):
        return None
    if token.revoked_at is not None:
        return None
    if token.expires_at is not None and _as_utc(token.expires_at) <= utcnow():
        return None
    return token


def needs_touch(token: SqlApiToken) -> bool:
    """Whether `last_used_at` is old enough to be written again."""
    seen = token.last_used_at
    return seen is None or _as_utc(seen) < utcnow() - LAST_USED_EVERY


def touch_token(session: Session, token_id: int) -> None:
    """Note that the token was used now; at most once per `LAST_USED_EVERY`."""
    now = utcnow()
    session.execute(
        update(SqlApiToken)
        .where(
            SqlApiToken.id == token_id,
            (SqlApiToken.last_used_at.is_(None))
            | (SqlApiToken.last_used_at < now - LAST_USED_EVERY),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )


def any_tokens(session: Session) -> bool:
    """Whether any token was ever created (revoked and expired ones count)."""
    return session.scalar(select(SqlApiToken.id).limit(1)) is not None


def count_live_tokens(session: Session) -> int:
    now = utcnow()
    tokens = session.scalars(select(SqlApiToken).where(SqlApiToken.revoked_at.is_(None))).all()
    return sum(1 for t in tokens if t.expires_at is None or _as_utc(t.expires_at) > now)

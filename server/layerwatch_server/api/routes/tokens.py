"""API tokens, for admins: create (the secret is answered once), list, revoke."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from layerwatch_server.api.body import json_payload
from layerwatch_server.api.deps import SessionDep, WriteSessionDep
from layerwatch_server.api.openapi import error_responses, json_body
from layerwatch_server.schemas import (
    TOKEN_NAME_PATTERN,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    TokensPublic,
)
from layerwatch_server.store import tokens

router = APIRouter(tags=["tokens"])

TokenName = Annotated[str, Path(pattern=TOKEN_NAME_PATTERN, description="The token's name.")]
TokenCreateBody = Annotated[TokenCreate, Depends(json_payload(TokenCreate))]


@router.get("/tokens", response_model=TokensPublic, responses=error_responses(503))
def list_tokens(session: SessionDep) -> TokensPublic:
    """List every token, revoked and expired ones too; secrets are never shown."""
    return tokens.list_tokens(session)


@router.post(
    "/tokens",
    response_model=TokenCreated,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=json_body(TokenCreate),
    responses=error_responses(409, 413, 415, 422, 503),
)
def create_token(spec: TokenCreateBody, session: WriteSessionDep) -> TokenCreated:
    """Create a token; the answer holds its secret, which is never shown again."""
    seconds = spec.expires_in_seconds
    expires_in = None if seconds is None else timedelta(seconds=seconds)
    return tokens.create_token(
        session, name=spec.name, scope=spec.scope, projects=spec.projects, expires_in=expires_in
    )


@router.delete(
    "/tokens/{name}",
    response_model=TokenPublic,
    responses=error_responses(404, 422, 503, not_found="`token_not_found`: no token of this name."),
)
def revoke_token(session: WriteSessionDep, name: TokenName) -> TokenPublic:
    """Revoke a token: it is refused from now on, in every server process."""
    return tokens.revoke_token(session, name)

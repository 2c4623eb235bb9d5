"""Server settings, read from ``LAYERWATCH_*`` environment variables.

Settings are built on first use by :func:`get_settings`, never at import, so
tests and the command line can choose them before anything connects.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Lists come from the environment comma-separated: LAYERWATCH_ALLOWED_HOSTS=a.example,b.example
CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LAYERWATCH_", extra="ignore")

    data_dir: Path = Field(
        Path("layerwatch-data"), description="Where the embedded SQLite database lives."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; defaults to a SQLite file in `data_dir`. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        gt=0,
        description="Largest body of a batch or probe upload, before and after gzip.",
    )
    max_request_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="Largest body of any other request (creating or updating a run), before and "
        "after gzip: the largest valid one is a few hundred KiB.",
    )
    sqlite_busy_timeout_ms: int = Field(5000, ge=0)
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After sent with a 503.")
    max_concurrent_renders: int = Field(2, ge=1, description="Plots rendered at once.")
    answer_cache_bytes: int = Field(
        64 * 2**20, ge=0, description="Rendered plots and their JSON kept in memory, per process."
    )
    run_timeout_seconds: float = Field(
        300.0, gt=0, description="A running run silent this long is reported crashed."
    )

    allow_open: bool = Field(
        False,
        description="Serve without authentication while no API token exists. `layerwatch "
        "server` sets it on a loopback bind, or with --insecure; otherwise every route but "
        "the health checks needs a token.",
    )
    allowed_hosts: CommaList = Field(
        default_factory=lambda: ["*"],
        description="Host headers answered (`*` any, `*.example.com` subdomains); others get "
        "400. `layerwatch server` defaults to the loopback names on a loopback bind.",
    )
    cors_origins: CommaList = Field(
        default_factory=list,
        description="Origins that browsers may call the API from; none by default. "
        "Credentials (cookies) are never allowed: tokens travel in the Authorization header.",
    )
    ingest_rate_limit: float = Field(
        200.0, ge=0, description="Write requests per second per token (0: no limit)."
    )
    ingest_burst: int = Field(2000, ge=1, description="Write requests a token may burst.")

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'layerwatch.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()

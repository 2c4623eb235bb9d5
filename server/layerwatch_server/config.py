"""Server settings, read from ``LAYERWATCH_*`` environment variables.

Settings are built on first use by :func:`get_settings`, never at import, so
tests and the command line can choose them before anything connects.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
        32 * 1024 * 1024, gt=0, description="Largest request body accepted (after gzip)."
    )
    sqlite_busy_timeout_ms: int = Field(5000, ge=0)
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After sent with a 503.")
    max_concurrent_renders: int = Field(2, ge=1, description="Plots rendered at once.")
    run_timeout_seconds: float = Field(
        300.0, gt=0, description="A running run silent this long is reported crashed."
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'layerwatch.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()

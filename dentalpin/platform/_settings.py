"""Process settings, read once from the environment (and `.env`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url


class Settings(BaseSettings):
    """Everything a DentalPin process needs to know about its surroundings.

    `DATABASE_URL` and `REDIS_URL` keep their conventional names; every other
    variable is prefixed with `DENTALPIN_`. When either URL is missing, `dentalpin up`
    and the test runner start embedded servers and pass their URLs on.
    """

    model_config = SettingsConfigDict(
        env_prefix="DENTALPIN_", env_file=".env", extra="ignore", populate_by_name=True
    )

    environment: Literal["development", "test", "production"] = "development"
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "DENTALPIN_DATABASE_URL")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "DENTALPIN_REDIS_URL")
    )
    data_dir: Path = Path(".dentalpin")
    base_domain: str = "localhost"
    secret_key: SecretStr = SecretStr("dev-insecure-secret-change-me")
    archive_key: SecretStr | None = None
    """Fernet key that encrypts module and tenant archives at rest."""

    role_prefix: str = "dp_"
    """Prefix of the per-tenant PostgreSQL roles (roles are cluster-wide)."""

    pool_size: int = 10
    max_overflow: int = 10
    connection_max_lifetime_s: int = 1800
    """Backends cache catalogue entries for every schema they touch; recycle them."""
    statement_cache_size: int = 500
    ddl_lock_timeout_ms: int = 3000
    ddl_lock_retries: int = 5
    lifecycle_lock_wait_s: float = 10.0
    provision_with_ddl_images: bool = True
    """Install a module into a fresh tenant by replaying its captured DDL image instead of
    running its Alembic revisions (same result, tested); off to compare or to rule it out."""
    job_heartbeat_stale_s: float = 120.0
    archive_retention_days: int = 365 * 6
    """Spanish law keeps clinical records at least five years; archives outlive that."""

    @field_validator("role_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.replace("_", "").isalnum() or not value.islower() or len(value) > 20:
            raise ValueError("role_prefix must be lower-case letters, digits and '_'")
        return value

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "archives"

    def sqlalchemy_url(self) -> URL:
        """The database URL with the asyncpg driver, whatever scheme was configured."""
        if not self.database_url:
            raise RuntimeError(
                "DATABASE_URL is not set. Run through `python3 dev.py up` or `dentalpin up`, "
                "which start an embedded PostgreSQL, or point DATABASE_URL at a server."
            )
        return async_url(self.database_url)


def async_url(raw: str) -> URL:
    url = make_url(raw)
    if url.drivername in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        url = url.set(drivername="postgresql+asyncpg")
    return url


@functools.cache
def get_settings() -> Settings:
    return Settings()

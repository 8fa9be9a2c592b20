"""Process settings, read once from the environment (and `.env`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

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
    db_alive_bypass_s: float = Field(default=0.5, ge=0)
    """A pooled connection returned within this many seconds is lent without a ping."""
    max_overflow: int = 10
    connection_max_lifetime_s: int = 1800
    """Backends cache catalogue entries for every schema they touch; recycle them."""
    statement_cache_size: int = 500
    ddl_lock_timeout_ms: int = 3000
    ddl_lock_retries: int = 5
    lifecycle_lock_wait_s: float = 10.0
    provision_with_ddl_images: bool = True
    """Bring a tenant's module to head (a fresh install, or a fleet upgrade) by replaying a
    captured DDL image instead of running Alembic in the tenant, wherever that is exactly
    what the revisions would do (same result, tested); off to compare or to rule it out."""
    spare_schemas: int = Field(default=0, ge=0)
    """How many spare tenant schemas (`DENTALPIN_SPARE_SCHEMAS`) `dentalpin tenants spares
    --fill` keeps ready: provisioned in advance, claimed by `create_tenant`. 0: none."""
    job_heartbeat_stale_s: float = 120.0
    job_executor: Literal["auto", "celery", "inprocess"] = "auto"
    """Where lifecycle jobs run: `celery` (workers consuming the `lifecycle` queue),
    `inprocess` (the process that submits them), or `auto`: celery when REDIS_URL is set
    and the environment is not `test`, else in-process."""
    job_heartbeat_every_s: float = Field(default=10.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    """A job whose worker died is re-queued until it has been claimed this many times."""
    job_reap_every_s: float = Field(default=30.0, gt=0)
    """How often beat runs the reaper (dead workers' jobs, queued jobs nobody picked up)."""
    job_resend_after_s: float = Field(default=300.0, gt=0)
    """A job still queued this long after it was (re)sent is sent to the workers again."""
    celery_key_prefix: str = ""
    """Prefix of every Redis key the Celery transport uses (several installations or test
    runs sharing one Redis)."""
    worker_statement_timeout_ms: int = Field(default=600_000, ge=0)
    """`statement_timeout` of the workers' database sessions (0: none)."""
    worker_idle_in_transaction_timeout_ms: int = Field(default=120_000, ge=0)
    """`idle_in_transaction_session_timeout` of the workers' database sessions (0: none)."""
    worker_client_check_ms: int = Field(default=2_000, ge=0)
    """`client_connection_check_interval` of the workers' sessions: a worker killed in the
    middle of a statement has its transaction (and the locks it holds, such as an event's
    inbox row) ended within this time, not when the statement finishes (0: off)."""
    events_relay: Literal["auto", "celery", "inprocess", "off"] = "auto"
    """How a commit that published events nudges delivery: `celery` (a task on the `events`
    queue), `inprocess` (delivered by the publishing process, for tests and tools), `off`
    (only the sweep), or `auto`: as `job_executor` resolves."""
    events_max_attempts: int = Field(default=8, ge=1)
    """Deliveries are dead-lettered after this many attempts (lost workers count)."""
    events_backoff_s: float = Field(default=2.0, gt=0)
    """First retry delay; doubled per attempt, with jitter, up to `events_backoff_max_s`."""
    events_backoff_max_s: float = Field(default=600.0, gt=0)
    events_lease_s: float = Field(default=60.0, gt=0)
    """How long a worker holds a delivery before another may take it (a dead worker's)."""
    events_batch: int = Field(default=100, ge=1, le=10_000)
    """Deliveries claimed per round by one relay task."""
    events_nudge_interval_s: float = Field(default=0.01, ge=0, le=1)
    """The shortest time between two sends of one process's nudges (see `CeleryNudge`)."""
    events_pass_concurrency: int = Field(default=4, ge=1, le=64)
    """Tenants one relay task carries, whose passes a worker process runs side by side
    (each holds a pooled connection while it runs)."""
    events_retention_days: float = Field(default=30.0, ge=0)
    """Settled events (every delivery done or skipped) older than this are removed with
    their deliveries and inbox rows, hourly (`events_prune_every_s`); 0 keeps them all."""
    events_prune_every_s: float = Field(default=3600.0, gt=0)
    events_sweep_every_s: float = Field(default=2.0, gt=0)
    events_nudge_grace_s: float = Field(default=5.0, ge=0)
    """The sweep leaves a freshly published tenant alone this long: the nudge should win."""
    events_nudge_timeout_s: float = Field(default=0.5, gt=0)
    events_breaker_cooldown_s: float = Field(default=10.0, gt=0)
    """After a failed nudge, commits skip the broker this long (the sweep covers them)."""
    beat_standby_retry_s: float = Field(default=5.0, gt=0)
    """How often a standby beat tries to take the beat lock (`_beat`): the longest a
    platform goes without a leading beat after the leader's end."""
    beat_lock_check_s: float = Field(default=10.0, gt=0)
    """How often the leading beat checks the connection that holds its lock."""
    periodic_tick_s: float = Field(default=30.0, gt=0)
    """How often beat looks for due periodic jobs (their intervals are rounded up to it)."""
    periodic_chunk: int = Field(default=50, ge=1, le=10_000)
    """Tenants per periodic task: the unit of fan-out, spread with jitter."""
    metrics_token: SecretStr | None = None
    """Bearer token Prometheus sends to `/metrics`; in production, no token: no endpoint."""
    archive_retention_days: int = 365 * 6
    """Spanish law keeps clinical records at least five years; archives outlive that."""

    token_issuer: str = "dentalpin"  # noqa: S105 - an issuer name, not a secret
    """`iss` of the access tokens this platform signs (and the only one it accepts)."""
    access_token_ttl_s: int = Field(default=600, ge=30, le=3600)
    refresh_token_ttl_s: int = Field(default=14 * 24 * 3600, ge=300)
    signing_key_cache_s: float = 30.0
    """How long a process trusts its copy of the signing keys before reading them again."""

    cors_origins: list[str] = Field(default_factory=list)
    """Origins (`https://app.example.es`) whose browser scripts may call the API
    (`DENTALPIN_CORS_ORIGINS`, a JSON list). Empty: none, same-origin only."""
    hsts_max_age_s: int = Field(default=63_072_000, ge=0)
    """`Strict-Transport-Security` max-age sent on HTTPS responses (0: no header)."""
    sso_http_timeout_s: float = Field(default=10.0, gt=0)
    """Timeout of each call to an OpenID provider (discovery, JWKS, token endpoint)."""
    sso_discovery_cache_s: float = Field(default=3600.0, ge=0)
    """How long a process trusts a provider's discovery document and JWKS."""
    dns_nameservers: list[str] = Field(default_factory=list)
    """Nameservers (`1.1.1.1`, `127.0.0.1:5353`) that check custom domains' TXT records
    (`DENTALPIN_DNS_NAMESERVERS`, a JSON list). Empty: the system's resolver."""
    dns_timeout_s: float = Field(default=5.0, gt=0)
    domain_recheck_every_s: float = Field(default=86400.0, ge=60)
    """How often a verified custom domain's TXT record is looked up again."""
    domain_recheck_failures: int = Field(default=3, ge=1)
    """Failed re-checks in a row after which the domain stops serving its clinic."""
    public_url: str = "http://localhost:8000"
    """Where people reach the platform (scheme, `base_domain`, port): links in e-mails. A
    clinic's links put its slug before the host (https://<slug>.dentalpin.example)."""
    smtp_host: str | None = None
    """Unset (development): each message is written as an .eml file to `<data dir>/mail`."""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    """`starttls` (usually port 587), `tls` (implicit TLS, usually 465), `none` (a relay on
    the same host or network only: credentials and mail go in clear)."""
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_ca_file: Path | None = None
    """CA bundle that verifies the SMTP server's certificate (default: the system's)."""
    smtp_timeout_s: float = Field(default=30.0, gt=0)
    mail_from: str = "DentalPin <no-reply@localhost>"
    mail_retry_every_s: float = Field(default=30.0, gt=0)
    """How often beat retries queued messages the mail server did not take (with backoff
    per message: 30 s, 1, 2, 4... minutes, up to 8 attempts)."""
    invitation_ttl_s: int = Field(default=7 * 24 * 3600, ge=300, le=60 * 24 * 3600)
    password_reset_ttl_s: int = Field(default=1800, ge=300, le=24 * 3600)
    email_verification_ttl_s: int = Field(default=3 * 24 * 3600, ge=300, le=30 * 24 * 3600)
    support_grant_max_s: int = Field(default=7 * 24 * 3600, ge=3600, le=30 * 24 * 3600)
    """The longest support grant a clinic admin may give (each grant names its expiry)."""

    @field_validator("role_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.replace("_", "").isalnum() or not value.islower() or len(value) > 20:
            raise ValueError("role_prefix must be lower-case letters, digits and '_'")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        # An origin is scheme://host[:port]: no path, no wildcard (credentials are allowed).
        for origin in value:
            url = urlsplit(origin)
            if url.scheme not in ("https", "http") or not url.netloc or url.path or "*" in origin:
                raise ValueError(f"{origin!r} is not an origin such as https://app.example.es")
        return [origin.lower() for origin in value]

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "archives"

    @property
    def mail_dir(self) -> Path:
        """Where messages go when no SMTP host is configured (development)."""
        return self.data_dir / "mail"

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

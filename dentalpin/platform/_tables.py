"""Tables of the shared `platform` schema (the migrations in `migrations/` create them)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from ._module import NAMING_CONVENTION

PLATFORM_SCHEMA = "platform"
metadata = MetaData(schema=PLATFORM_SCHEMA, naming_convention=NAMING_CONVENTION)

TENANT_STATES = ("provisioning", "active", "archiving", "archived", "failed")
MODULE_STATES = ("installing", "installed", "uninstalling", "uninstalled", "failed")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
CATALOGUE_STATES = ("available", "quarantined", "missing")


def _now() -> Column[object]:
    return Column(
        "created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
    )


def _states(column: str, states: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{s}'" for s in states)
    return CheckConstraint(f"{column} in ({allowed})", name=f"{column}_valid")


tenants = Table(
    "tenants",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("slug", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("schema_name", Text, nullable=False, unique=True),
    Column("db_role", Text, nullable=False, unique=True),
    Column("status", Text, nullable=False),
    Column("placement", Text, nullable=False, server_default="default"),
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("archived_at", DateTime(timezone=True)),
    Column("archive_id", UUID(as_uuid=True)),
    _states("status", TENANT_STATES),
    Index(
        "uq_tenants_live_slug", "slug", unique=True, postgresql_where=text("status <> 'archived'")
    ),
)

domains = Table(
    "domains",
    metadata,
    Column("hostname", Text, primary_key=True),
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("verified", Boolean, nullable=False, server_default=text("false")),
    Column("verification_token", Text, nullable=False),
    _now(),
    Column("verified_at", DateTime(timezone=True)),
    CheckConstraint("hostname = lower(hostname)", name="hostname_lower"),
)

modules = Table(
    "modules",
    metadata,
    Column("name", Text, primary_key=True),
    Column("version", Text),
    Column("summary", Text),
    Column("category", Text),
    Column("distribution", Text),
    Column("state", Text, nullable=False),
    Column("reason", Text),
    Column("head_revision", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    _states("state", CATALOGUE_STATES),
)

tenant_modules = Table(
    "tenant_modules",
    metadata,
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("module", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("version", Text),
    Column("revision", Text),
    Column("error", Text),
    Column("settings", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("owned_objects", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("archive_id", UUID(as_uuid=True)),
    Column("installed_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    _states("state", MODULE_STATES),
    Index("ix_tenant_modules_module_revision", "module", "revision"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("tenant_id", UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="SET NULL")),
    Column("params", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("state", Text, nullable=False),
    Column("progress", Float, nullable=False, server_default=text("0")),
    Column("message", Text),
    Column("error", Text),
    Column("result", JSONB),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("worker", Text),
    _now(),
    Column("started_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    _states("state", JOB_STATES),
    # One lifecycle operation at a time per tenant: a second one is refused at enqueue.
    Index(
        "uq_jobs_one_active_per_tenant",
        "tenant_id",
        unique=True,
        postgresql_where=text("state in ('queued', 'running') and tenant_id is not null"),
    ),
    Index("ix_jobs_created_at", "created_at"),
)

job_log = Table(
    "job_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column(
        "job_id",
        UUID(as_uuid=True),
        ForeignKey("jobs.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("at", DateTime(timezone=True), nullable=False, server_default=text("clock_timestamp()")),
    Column("level", Text, nullable=False),
    Column("message", Text, nullable=False),
)

archives = Table(
    "archives",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False, index=True),
    Column("kind", Text, nullable=False),
    Column("module", Text),
    Column("version", Text),
    Column("revision", Text),
    Column("path", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("contents", JSONB, nullable=False),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("restored_at", DateTime(timezone=True)),
    CheckConstraint("kind in ('module', 'tenant')", name="kind_valid"),
)

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
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from ._module import NAMING_CONVENTION

PLATFORM_SCHEMA = "platform"
metadata = MetaData(schema=PLATFORM_SCHEMA, naming_convention=NAMING_CONVENTION)

TENANT_STATES = ("provisioning", "active", "archiving", "archived", "failed", "spare")
"""`spare`: provisioned in advance, not yet a clinic's (revision 0003_spare_schemas)."""
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


# Identity (revision 0002_identity) ------------------------------------------------------

users = Table(
    "users",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    # Stored lower-cased (the check), so the unique constraint is case-insensitive.
    Column("email", Text, nullable=False, unique=True),
    Column("name", Text, nullable=False, server_default=""),
    Column("password_hash", Text),
    Column("is_operator", Boolean, nullable=False, server_default=text("false")),
    Column("disabled", Boolean, nullable=False, server_default=text("false")),
    # Fernet token of the base32 TOTP secret (key derived from DENTALPIN_SECRET_KEY).
    Column("totp_secret", Text),
    Column("totp_enabled_at", DateTime(timezone=True)),
    Column("totp_last_step", BigInteger),
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("password_changed_at", DateTime(timezone=True)),
    CheckConstraint("email = lower(email)", name="email_lower"),
)

roles = Table(
    "roles",
    metadata,
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", Text, primary_key=True),
    Column("description", Text, nullable=False, server_default=""),
    Column("builtin", Boolean, nullable=False, server_default=text("false")),
    _now(),
    CheckConstraint("name ~ '^[a-z][a-z0-9_]{1,39}$'", name="name_valid"),
)

role_permissions = Table(
    "role_permissions",
    metadata,
    Column("tenant_id", UUID(as_uuid=True), primary_key=True),
    Column("role", Text, primary_key=True),
    Column("permission", Text, primary_key=True),
    ForeignKeyConstraint(
        ["tenant_id", "role"], ["roles.tenant_id", "roles.name"], ondelete="CASCADE"
    ),
)

memberships = Table(
    "memberships",
    metadata,
    Column(
        "user_id",
        UUID(as_uuid=True),
        ForeignKey("users.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
    # Empty: every location of the tenant; else only these (ids of the locations module).
    Column("location_ids", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    _now(),
)

membership_roles = Table(
    "membership_roles",
    metadata,
    Column("user_id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), primary_key=True),
    Column("role", Text, primary_key=True),
    ForeignKeyConstraint(
        ["user_id", "tenant_id"],
        ["memberships.user_id", "memberships.tenant_id"],
        ondelete="CASCADE",
    ),
    ForeignKeyConstraint(
        ["tenant_id", "role"], ["roles.tenant_id", "roles.name"], ondelete="CASCADE"
    ),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", Text, primary_key=True),
    Column("algorithm", Text, nullable=False),
    Column("public_jwk", JSONB, nullable=False),
    # Fernet token of the PKCS#8 PEM (key derived from DENTALPIN_SECRET_KEY).
    Column("private_key", Text, nullable=False),
    _now(),
    Column("retired_at", DateTime(timezone=True)),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("family_id", UUID(as_uuid=True), nullable=False, index=True),
    Column(
        "user_id",
        UUID(as_uuid=True),
        ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("tenant_id", UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE")),
    Column("token_hash", Text, nullable=False, unique=True),
    Column("mfa", Boolean, nullable=False, server_default=text("false")),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

mfa_challenges = Table(
    "mfa_challenges",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("token_hash", Text, nullable=False, unique=True),
    Column(
        "user_id",
        UUID(as_uuid=True),
        ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("tenant_id", UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE")),
    Column("purpose", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
    CheckConstraint("purpose in ('verify', 'enrol')", name="purpose_valid"),
)

auth_throttle = Table(
    "auth_throttle",
    metadata,
    Column("key", Text, primary_key=True),
    Column("failures", Integer, nullable=False, server_default=text("0")),
    Column("last_failure_at", DateTime(timezone=True)),
    Column("blocked_until", DateTime(timezone=True)),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=text("clock_timestamp()")),
    # No foreign keys: entries outlive users, memberships and tenants (append-only, trigger).
    Column("tenant_id", UUID(as_uuid=True)),
    Column("actor_id", UUID(as_uuid=True)),
    Column("actor", Text),
    Column("action", Text, nullable=False),
    Column("target", Text),
    Column("request_id", Text),
    Column("ip", Text),
    Column("details", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Index("ix_audit_log_tenant_id_at", "tenant_id", "at"),
)

resellers = Table(
    "resellers",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("plan", Text, nullable=False, server_default="standard"),
    _now(),
)

reseller_admins = Table(
    "reseller_admins",
    metadata,
    Column(
        "reseller_id",
        UUID(as_uuid=True),
        ForeignKey("resellers.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "user_id",
        UUID(as_uuid=True),
        ForeignKey("users.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    _now(),
)

api_clients = Table(
    "api_clients",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column(
        "reseller_id",
        UUID(as_uuid=True),
        ForeignKey("resellers.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # SHA-256 of a 256-bit random secret (a slow hash adds nothing at that entropy).
    Column("secret_hash", Text, nullable=False),
    Column("scopes", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    _now(),
    Column("revoked_at", DateTime(timezone=True)),
)

# Tenants with event work, and when the sweep should look at them (0004_events).
event_tenants = Table(
    "event_tenants",
    metadata,
    Column("tenant_id", UUID(as_uuid=True), primary_key=True),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Index("ix_event_tenants_due_at", "due_at"),
)

# Every dead-lettered delivery of every tenant, for operators to list and replay.
event_dead_letters = Table(
    "event_dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("delivery_id", BigInteger, nullable=False),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("event_name", Text, nullable=False),
    Column("subscriber", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error", Text),
    Column("dead_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    UniqueConstraint("tenant_id", "delivery_id"),
)

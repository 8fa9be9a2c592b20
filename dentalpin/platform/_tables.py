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
    LargeBinary,
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
    # The reseller owning the clinic (revision 0005_platform_api); none: the operator's own.
    Column(
        "reseller_id",
        UUID(as_uuid=True),
        ForeignKey("resellers.id"),
        index=True,
    ),
    _states("status", TENANT_STATES),
    Index(
        "uq_tenants_live_slug", "slug", unique=True, postgresql_where=text("status <> 'archived'")
    ),
)

domains = Table(
    "domains",
    metadata,
    # Several clinics may claim a host name (revision 0007_sso_domains): a claim alone must
    # not let a squatter block its owner; only one claim can be verified (the index).
    Column("hostname", Text, primary_key=True),
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("verified", Boolean, nullable=False, server_default=text("false")),
    Column("verification_token", Text, nullable=False),
    _now(),
    Column("verified_at", DateTime(timezone=True)),
    # The daily re-check of verified claims (revision 0010): a name whose record is gone
    # for `domain_recheck_failures` checks in a row stops routing.
    Column("checked_at", DateTime(timezone=True)),
    Column("failed_checks", Integer, nullable=False, server_default=text("0")),
    Column("last_check_error", Text),
    CheckConstraint("hostname = lower(hostname)", name="hostname_lower"),
    Index(
        "uq_domains_verified_hostname", "hostname", unique=True, postgresql_where=text("verified")
    ),
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
    # Set when the user followed a link sent to the address (revision 0006_invitations).
    Column("email_verified_at", DateTime(timezone=True)),
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
    Column("plan", Text, ForeignKey("plans.name"), nullable=False, server_default="standard"),
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

# When each module's periodic job last ran (fenced claims: one run per interval).
periodic_runs = Table(
    "periodic_runs",
    metadata,
    Column("module", Text, primary_key=True),
    Column("job", Text, primary_key=True),
    Column("last_run_at", DateTime(timezone=True), nullable=False),
)

# Platform API (revision 0005_platform_api) ----------------------------------------------

plans = Table(
    "plans",
    metadata,
    Column("name", Text, primary_key=True),
    Column("description", Text, nullable=False, server_default=""),
    # NULL: no limit. Counted: the reseller's clinics that are not archived.
    Column("max_tenants", Integer),
    # NULL: every installable module; else only these (auto-install modules always).
    Column("modules", JSONB),
    # NULL: every country pack; else packs of these countries only ([]: none).
    Column("countries", JSONB),
    _now(),
    # No pattern on names: resellers' plans were free text before 0005 and carry over.
    CheckConstraint("max_tenants is null or max_tenants >= 0", name="max_tenants_valid"),
)

APPROVAL_STATES = ("pending", "approved", "rejected", "expired")
APPROVAL_KINDS = ("lifecycle.uninstall", "tenant.archive")

approval_requests = Table(
    "approval_requests",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("kind", Text, nullable=False),
    Column("params", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("state", Text, nullable=False, server_default="pending"),
    Column("reason", Text, nullable=False, server_default=""),
    # Who asked: a reseller admin (user) or an integration client, on behalf of a reseller.
    Column("reseller_id", UUID(as_uuid=True)),
    Column("requested_by", Text, nullable=False),
    Column("requested_by_id", UUID(as_uuid=True)),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("decided_at", DateTime(timezone=True)),
    Column("decided_by", Text),
    Column("decided_by_id", UUID(as_uuid=True)),
    Column("note", Text),
    Column("job_id", UUID(as_uuid=True)),
    _states("state", APPROVAL_STATES),
    CheckConstraint("kind in ('lifecycle.uninstall', 'tenant.archive')", name="kind_valid"),
    Index("ix_approval_requests_tenant_id_state", "tenant_id", "state"),
)


# Single sign-on (revision 0007_sso_domains) ---------------------------------------------

oidc_providers = Table(
    "oidc_providers",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("name", Text, nullable=False),
    Column("issuer", Text, nullable=False),
    Column("client_id", Text, nullable=False),
    # Fernet token of the client secret (key derived from DENTALPIN_SECRET_KEY).
    Column("client_secret", Text, nullable=False),
    # Lower-case e-mail domains a sign-in must come from (a restriction, never an identity).
    Column("allowed_domains", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    _now(),
    UniqueConstraint("tenant_id", "issuer", "client_id"),
)

oidc_identities = Table(
    "oidc_identities",
    metadata,
    # An external identity is (issuer, subject), never an e-mail address.
    Column("issuer", Text, primary_key=True),
    Column("subject", Text, primary_key=True),
    Column(
        "user_id",
        UUID(as_uuid=True),
        ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("provider_id", UUID(as_uuid=True), ForeignKey("oidc_providers.id", ondelete="SET NULL")),
    Column("email", Text),
    _now(),
    Column("last_login_at", DateTime(timezone=True)),
)


# Invitations, e-mail links, support grants (revision 0006_invitations) ----------------

invitations = Table(
    "invitations",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("email", Text, nullable=False),
    Column("roles", JSONB, nullable=False),
    Column("location_ids", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("invited_by", UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL")),
    # SHA-256 of the signed token (`_links.py`): the row makes it single use and revocable.
    Column("token_hash", Text, nullable=False, unique=True),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("accepted_at", DateTime(timezone=True)),
    Column("accepted_by", UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL")),
    Column("revoked_at", DateTime(timezone=True)),
    CheckConstraint("email = lower(email)", name="email_lower"),
)

email_tokens = Table(
    "email_tokens",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "user_id",
        UUID(as_uuid=True),
        ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("purpose", Text, nullable=False),
    # The address the link went to: changing the user's e-mail voids it.
    Column("email", Text, nullable=False),
    Column("token_hash", Text, nullable=False, unique=True),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
    CheckConstraint("purpose in ('password_reset', 'email_verification')", name="purpose_valid"),
)

support_grants = Table(
    "support_grants",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column(
        "grantee_id",
        UUID(as_uuid=True),
        ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("roles", JSONB, nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    # No foreign keys: who granted and revoked stays known when their account goes.
    Column("granted_by", UUID(as_uuid=True)),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_by", UUID(as_uuid=True)),
    CheckConstraint("expires_at > created_at", name="expiry_after_creation"),
)

mail_queue = Table(
    "mail_queue",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("to_address", Text, nullable=False),
    # Subject and bodies, Fernet-sealed (their links are credentials); erased once sent.
    Column("sealed", LargeBinary),
    Column("state", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column(
        "next_attempt_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
    ),
    # When the link in it stops working: sending it later is pointless.
    Column("give_up_at", DateTime(timezone=True)),
    Column("last_error", Text),
    _now(),
    Column("sent_at", DateTime(timezone=True)),
    CheckConstraint("state in ('pending', 'sent', 'failed')", name="state_valid"),
    Index(
        "ix_mail_queue_due",
        "next_attempt_at",
        postgresql_where=text("state = 'pending'"),
    ),
    Index("ix_mail_queue_created_at", "created_at"),
)

"""The tenant catalogue: slugs, generated schema and role names, lookups."""

from __future__ import annotations

import re
import secrets
import string
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.platform import Conflict, InvalidInput, NotFound, TenantRef
from dentalpin.platform._db import TenantScope
from dentalpin.platform._errors import did_you_mean
from dentalpin.platform._kernel import create_kernel
from dentalpin.platform._settings import Settings
from dentalpin.platform._tables import tenant_modules, tenants

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,38}[a-z0-9])$")
RESERVED_SLUGS = frozenset(
    {
        "www",
        "api",
        "app",
        "admin",
        "static",
        "assets",
        "mail",
        "smtp",
        "ftp",
        "platform",
        "operator",
        "status",
        "docs",
        "help",
        "support",
        "login",
        "auth",
        "id",
        "sso",
        "cdn",
        "reseller",
        "resellers",
        "billing",
        "internal",
        "localhost",
        "test",
        "public",
    }
)
_ALPHABET = string.ascii_lowercase + string.digits
SPARE = "spare"
"""Status of a schema provisioned in advance: no clinic's, so no lookup or listing shows it."""
HIDDEN = ("archived", SPARE)


@dataclass(frozen=True)
class TenantRecord:
    id: uuid.UUID
    slug: str
    name: str
    schema_name: str
    db_role: str
    status: str
    placement: str
    created_at: datetime
    archived_at: datetime | None = None
    reseller_id: uuid.UUID | None = None
    archive_id: uuid.UUID | None = None

    @property
    def scope(self) -> TenantScope:
        return TenantScope(self.schema_name, self.db_role)

    @property
    def ref(self) -> TenantRef:
        return TenantRef(self.id, self.slug, self.name, self.schema_name, self.db_role)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "slug": self.slug,
            "name": self.name,
            "schema": self.schema_name,
            "role": self.db_role,
            "status": self.status,
            "placement": self.placement,
            "created_at": self.created_at.isoformat(),
            "archived_at": self.archived_at.isoformat() if self.archived_at else None,
            "reseller_id": str(self.reseller_id) if self.reseller_id else None,
            "archive_id": str(self.archive_id) if self.archive_id else None,
        }


def validate_slug(slug: str) -> str:
    """A slug becomes a host name label: lower-case letters, digits and inner hyphens."""
    if not SLUG.match(slug):
        raise InvalidInput(
            f"'{slug[:60]}' is not a valid tenant slug: use 3-40 lower-case letters, digits "
            "and hyphens, starting and ending with a letter or digit (it becomes a host name)"
        )
    if "--" in slug:
        raise InvalidInput(f"'{slug}' contains '--', which host names reserve for IDN encoding")
    if slug in RESERVED_SLUGS:
        raise InvalidInput(f"'{slug}' is reserved by the platform; choose another slug")
    return slug


def validate_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200 or any(ord(ch) < 32 for ch in name):
        raise InvalidInput("a tenant name must be 1-200 printable characters")
    return name


def new_schema_name() -> str:
    """`t_` + a random id: schema names never come from user input."""
    return "t_" + "".join(secrets.choice(_ALPHABET) for _ in range(10))


def tenant_record(row: Any) -> TenantRecord:
    return TenantRecord(
        id=row.id,
        slug=row.slug,
        name=row.name,
        schema_name=row.schema_name,
        db_role=row.db_role,
        status=row.status,
        placement=row.placement,
        created_at=row.created_at,
        archived_at=row.archived_at,
        reseller_id=row.reseller_id,
        archive_id=row.archive_id,
    )


async def find_tenant(conn: AsyncConnection, slug: str, *, lock: bool = False) -> TenantRecord:
    """The live (not archived, not spare) tenant with this slug."""
    query = select(tenants).where(tenants.c.slug == slug, tenants.c.status.not_in(HIDDEN))
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        known = (
            await conn.execute(select(tenants.c.slug).where(tenants.c.status.not_in(HIDDEN)))
        ).scalars()
        raise NotFound(f"No tenant with slug '{slug}'.{did_you_mean(slug, known)}")
    return tenant_record(row)


async def tenant_by_id(conn: AsyncConnection, tenant_id: uuid.UUID) -> TenantRecord:
    row = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
    if row is None:
        raise NotFound(f"no tenant with id {tenant_id}")
    return tenant_record(row)


async def all_tenants(
    conn: AsyncConnection, *, include_archived: bool = False
) -> list[TenantRecord]:
    query = select(tenants).where(tenants.c.status != SPARE).order_by(tenants.c.slug)
    if not include_archived:
        query = query.where(tenants.c.status != "archived")
    return [tenant_record(row) for row in await conn.execute(query)]


async def module_states(conn: AsyncConnection, tenant_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    rows = await conn.execute(
        select(tenant_modules)
        .where(tenant_modules.c.tenant_id == tenant_id)
        .order_by(tenant_modules.c.module)
    )
    return {
        row.module: {
            "state": row.state,
            "version": row.version,
            "revision": row.revision,
            "error": row.error,
            "archive_id": str(row.archive_id) if row.archive_id else None,
            "settings": row.settings,
            "owned_objects": row.owned_objects,
        }
        for row in rows
    }


async def create_schema_and_role(
    conn: AsyncConnection, tenant: TenantRecord, settings: Settings
) -> None:
    """The tenant's schema, a role that may use that schema and nothing else, and the
    platform's tables in it (the event kernel)."""
    schema, role = tenant.scope.schema, tenant.scope.role
    await conn.execute(text(f'create role "{role}" nologin'))
    # The login role must be a member to take the tenant role with SET LOCAL ROLE.
    await conn.execute(text(f'grant "{role}" to current_user'))
    await conn.execute(text(f'create schema "{schema}"'))
    await conn.execute(text(f'grant usage on schema "{schema}" to "{role}"'))
    for grant in (
        "select, insert, update, delete on tables",
        "usage, select, update on sequences",
        "execute on functions",
        "usage on types",
    ):
        await conn.execute(
            text(f'alter default privileges in schema "{schema}" grant {grant} to "{role}"')
        )
    await create_kernel(conn, schema, settings.events_nudge_grace_s)


async def drop_schema_and_role(conn: AsyncConnection, scope: TenantScope) -> None:
    await conn.execute(text(f'drop schema if exists "{scope.schema}" cascade'))
    exists = await conn.execute(
        text("select 1 from pg_roles where rolname = :role"), {"role": scope.role}
    )
    if exists.first() is not None:
        await conn.execute(text(f'drop owned by "{scope.role}"'))
        await conn.execute(text(f'drop role "{scope.role}"'))


async def lock_tenant(conn: AsyncConnection, tenant_id: uuid.UUID, wait_s: float) -> None:
    """Serialise lifecycle work on one tenant across processes (waits, then refuses)."""
    await conn.execute(text(f"set local lock_timeout = '{int(wait_s * 1000)}ms'"))
    try:
        await conn.execute(
            text("select pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"tenant:{tenant_id}"},
        )
    except Exception as exc:
        if "lock timeout" in str(exc) or "canceling statement" in str(exc):
            raise Conflict(
                "another lifecycle operation holds this tenant; try again when it has finished"
            ) from None
        raise

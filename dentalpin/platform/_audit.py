"""The platform audit log: append-only (a trigger refuses UPDATE, DELETE and TRUNCATE),
no foreign keys, so entries outlive users, memberships and archived tenants."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ._tables import audit_log


@dataclass(frozen=True)
class AuditContext:
    """Where a security event came from: the request id and client address, and who acted."""

    request_id: str | None = None
    ip: str | None = None
    actor_id: uuid.UUID | None = None
    actor: str | None = None

    def by(self, actor_id: uuid.UUID | None, actor: str | None) -> AuditContext:
        return AuditContext(self.request_id, self.ip, actor_id, actor)


CLI = AuditContext(actor="cli")
SYSTEM = AuditContext(actor="platform")
"""The platform acting on its own schedule (beat's checks), for nobody's request."""


async def record(
    conn: AsyncConnection | AsyncSession,
    ctx: AuditContext,
    action: str,
    *,
    tenant_id: uuid.UUID | None = None,
    target: str | None = None,
    **details: Any,
) -> None:
    """Append one entry (in the caller's transaction: it exists only if the change does)."""
    await conn.execute(
        insert(audit_log).values(
            tenant_id=tenant_id,
            actor_id=ctx.actor_id,
            actor=ctx.actor,
            action=action,
            target=target,
            request_id=ctx.request_id,
            ip=ctx.ip,
            details=details,
        )
    )


async def list_entries(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    *,
    limit: int = 100,
    before: int | None = None,
    action: str | None = None,
) -> list[dict[str, Any]]:
    query = (
        select(audit_log)
        .where(audit_log.c.tenant_id == tenant_id)
        .order_by(audit_log.c.id.desc())
        .limit(max(1, min(limit, 1000)))
    )
    if before is not None:
        query = query.where(audit_log.c.id < before)
    if action:
        query = query.where(audit_log.c.action == action)
    rows = await conn.execute(query)
    return [
        {
            "id": r.id,
            "at": r.at.isoformat(),
            "action": r.action,
            "actor_id": str(r.actor_id) if r.actor_id else None,
            "actor": r.actor,
            "target": r.target,
            "request_id": r.request_id,
            "ip": r.ip,
            "details": r.details,
        }
        for r in rows
    ]

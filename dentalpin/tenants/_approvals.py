"""Approval requests: a reseller's destructive operation on a clinic (uninstalling a
clinical module, archiving the clinic) waits for the clinic admin's decision.

A request records the lifecycle job it stands for (kind and parameters). Approving it
submits that job through `submit_lifecycle`, exactly as a direct request would; rejecting
it, or letting it expire, ends it. Every step is written to the platform audit log under
the clinic. See docs/adr/0011-approvals.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.platform import Category, Conflict, InvalidInput, NotFound
from dentalpin.platform._audit import AuditContext, record
from dentalpin.platform._jobs import JobRecord
from dentalpin.platform._roles import installed_modules
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import approval_requests

from ._catalogue import TenantRecord, tenant_by_id
from ._lifecycle import not_installed
from ._operations import submit_lifecycle

APPROVAL_TTL = timedelta(days=14)
"""A request nobody decided on expires: the reseller asks again if it still matters."""


@dataclass(frozen=True)
class Requester:
    """Who asks, as the audit log and the clinic admin see it."""

    name: str
    user_id: uuid.UUID | None
    reseller_id: uuid.UUID | None


async def needs_approval(
    platform: Platform, tenant: TenantRecord, kind: str, params: dict[str, Any]
) -> bool:
    """Whether a reseller's lifecycle request is destructive for the clinic: archiving it,
    or uninstalling a clinical module (itself or a dependent that a cascade would take)."""
    if kind == "tenant.archive":
        return True
    if kind != "lifecycle.uninstall":
        return False
    name = str(params.get("module") or "")
    registry = platform.registry
    registry.get(name)
    async with platform.db.engine.connect() as conn:
        installed = await installed_modules(conn, tenant.id)
    if name not in installed:  # nothing to approve: say so now, as the job would
        raise not_installed(name, tenant.slug)
    gone = [name, *(registry.dependents(name, installed) if params.get("cascade") else [])]
    return any(registry.get(m).manifest.category == Category.CLINICAL for m in gone)


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "tenant_id": str(row.tenant_id),
        "kind": row.kind,
        "params": row.params,
        "state": row.state,
        "reason": row.reason,
        "requested_by": row.requested_by,
        "reseller_id": str(row.reseller_id) if row.reseller_id else None,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "decided_at": row.decided_at.isoformat() if row.decided_at else None,
        "decided_by": row.decided_by,
        "note": row.note,
        "job_id": str(row.job_id) if row.job_id else None,
    }


async def _expire(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    await conn.execute(
        update(approval_requests)
        .where(
            approval_requests.c.tenant_id == tenant_id,
            approval_requests.c.state == "pending",
            approval_requests.c.expires_at < datetime.now(UTC),
        )
        .values(state="expired")
    )


async def request_approval(
    platform: Platform,
    tenant: TenantRecord,
    kind: str,
    params: dict[str, Any],
    requester: Requester,
    reason: str,
    ctx: AuditContext,
) -> dict[str, Any]:
    """Record a pending request (or return the identical one already pending)."""
    if tenant.status != "active":
        raise Conflict(f"tenant '{tenant.slug}' is {tenant.status}")
    async with platform.db.engine.begin() as conn:
        await _expire(conn, tenant.id)
        same = (
            await conn.execute(
                select(approval_requests).where(
                    approval_requests.c.tenant_id == tenant.id,
                    approval_requests.c.state == "pending",
                    approval_requests.c.kind == kind,
                    approval_requests.c.params == params,
                )
            )
        ).first()
        if same is not None:
            return _view(same)
        row = (
            await conn.execute(
                insert(approval_requests)
                .values(
                    id=uuid.uuid4(),
                    tenant_id=tenant.id,
                    kind=kind,
                    params=params,
                    reason=reason,
                    reseller_id=requester.reseller_id,
                    requested_by=requester.name,
                    requested_by_id=requester.user_id,
                    expires_at=datetime.now(UTC) + APPROVAL_TTL,
                )
                .returning(approval_requests)
            )
        ).one()
        await record(
            conn,
            ctx,
            "approval.requested",
            tenant_id=tenant.id,
            target=str(row.id),
            kind=kind,
            params=params,
            reseller_id=str(requester.reseller_id) if requester.reseller_id else None,
        )
    return _view(row)


async def list_approvals(
    conn: AsyncConnection, tenant_id: uuid.UUID, state: str | None = None
) -> list[dict[str, Any]]:
    await _expire(conn, tenant_id)
    query = (
        select(approval_requests)
        .where(approval_requests.c.tenant_id == tenant_id)
        .order_by(approval_requests.c.created_at.desc())
    )
    if state is not None:
        query = query.where(approval_requests.c.state == state)
    return [_view(r) for r in await conn.execute(query)]


async def get_approval(
    conn: AsyncConnection, tenant_id: uuid.UUID, approval_id: uuid.UUID
) -> dict[str, Any]:
    await _expire(conn, tenant_id)
    row = (await conn.execute(_one(tenant_id, approval_id))).first()
    if row is None:
        raise NotFound(f"this clinic has no approval request {approval_id}")
    return _view(row)


def _one(tenant_id: uuid.UUID, approval_id: uuid.UUID) -> Any:
    return select(approval_requests).where(
        and_(approval_requests.c.id == approval_id, approval_requests.c.tenant_id == tenant_id)
    )


async def decide(
    platform: Platform,
    tenant_id: uuid.UUID,
    approval_id: uuid.UUID,
    approve: bool,
    ctx: AuditContext,
    note: str = "",
) -> tuple[dict[str, Any], JobRecord | None]:
    """Approve (submitting the job) or reject a pending request of the clinic.

    The request row stays locked while the job is submitted, so two admins deciding at
    once cannot both submit it; if the submission is refused (another job is running),
    nothing is decided and the request stays pending."""
    if len(note) > 500:
        raise InvalidInput("a note is at most 500 characters")
    job: JobRecord | None = None
    async with platform.db.engine.begin() as conn:
        await _expire(conn, tenant_id)
        row = (await conn.execute(_one(tenant_id, approval_id).with_for_update())).first()
        if row is None:
            raise NotFound(f"this clinic has no approval request {approval_id}")
        if row.state != "pending":
            raise Conflict(f"this request is already {row.state}; nothing to decide")
        if approve:
            tenant = await tenant_by_id(conn, tenant_id)
            job = await submit_lifecycle(platform, tenant, row.kind, dict(row.params))
        decided = (
            await conn.execute(
                update(approval_requests)
                .where(approval_requests.c.id == row.id)
                .values(
                    state="approved" if approve else "rejected",
                    decided_at=datetime.now(UTC),
                    decided_by=ctx.actor,
                    decided_by_id=ctx.actor_id,
                    note=note or None,
                    job_id=job.id if job else None,
                )
                .returning(approval_requests)
            )
        ).one()
        await record(
            conn,
            ctx,
            "approval.approved" if approve else "approval.rejected",
            tenant_id=tenant_id,
            target=str(row.id),
            kind=row.kind,
            params=row.params,
            job_id=str(job.id) if job else None,
        )
    return _view(decided), job

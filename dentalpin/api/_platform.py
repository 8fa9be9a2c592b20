"""What the platform API's routers share: the actor's view of tenants, and how a lifecycle
request becomes a job (202 + Location) or, for a reseller's destructive one, an approval
request the clinic's admin decides on."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.platform._audit import record
from dentalpin.platform._errors import NotFound
from dentalpin.platform._http import Actor, Principal, get_platform
from dentalpin.platform._jobs import JobRecord
from dentalpin.platform._plans import Plan, plan_of
from dentalpin.platform._request_id import audit_context
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import tenants
from dentalpin.tenants import TenantRecord, submit_lifecycle
from dentalpin.tenants._approvals import Requester, needs_approval, request_approval
from dentalpin.tenants._catalogue import HIDDEN, tenant_record

from .schemas import ApprovalOut, AwaitingApproval, JobOut

API = "/api/v1"
PlatformDep = Annotated[Platform, Depends(get_platform)]
STANDARD = (401, 403, 404, 422)


def clinic_id(principal: Principal) -> uuid.UUID:
    """The clinic of a clinic-host route's caller (the token's clinic, which is the host's)."""
    tenant = principal.tenant_uuid
    if tenant is None:  # unreachable with a permission, which only a membership gives
        raise NotFound("sign in to a clinic first")
    return tenant


async def visible_tenant(
    conn: AsyncConnection, actor: Actor, slug: str, *, archived: bool = False
) -> TenantRecord:
    """The live tenant `slug`, if the actor may see it. Another reseller's tenant is
    reported exactly like one that does not exist: its existence is not revealed."""
    query = select(tenants).where(tenants.c.slug == slug[:63])
    query = query.where(tenants.c.status.not_in(HIDDEN if not archived else ("spare",)))
    row = (await conn.execute(query.order_by(tenants.c.created_at.desc()))).first()
    if row is None or not actor.sees(row.reseller_id):
        raise NotFound(f"no tenant with slug '{slug[:63]}'")
    return tenant_record(row)


async def clinic_plan(conn: AsyncConnection, tenant: TenantRecord) -> Plan | None:
    """The plan of the reseller the clinic belongs to: none for the operator's own clinics."""
    if tenant.reseller_id is None:
        return None
    return await plan_of(conn, tenant.reseller_id)


async def actor_plan(conn: AsyncConnection, actor: Actor, tenant: TenantRecord) -> Plan | None:
    """The plan binding this actor on this tenant: none for an operator."""
    return None if actor.is_operator else await clinic_plan(conn, tenant)


PLATFORM_JOBS = f"{API}/jobs"
"""Where the platform host serves a job."""
CLINIC_JOBS = f"{API}/modules/jobs"
"""Where a clinic's host serves the clinic's own jobs to its admins."""


def job_out(job: JobRecord, response: Response, jobs: str = PLATFORM_JOBS) -> JobOut:
    response.status_code = 202
    response.headers["Location"] = f"{jobs}/{job.id}"
    return JobOut.model_validate(job.as_dict())


async def submit_recorded(
    platform: Platform,
    tenant: TenantRecord,
    kind: str,
    params: dict[str, Any],
    plan: Plan | None,
    request: Request,
    as_role: str,
) -> JobRecord:
    """Submit a lifecycle job and audit who asked for it, in the clinic's log."""
    job = await submit_lifecycle(platform, tenant, kind, params, plan=plan)
    async with platform.db.engine.begin() as conn:
        await record(
            conn,
            audit_context(request),
            "lifecycle.submitted",
            tenant_id=tenant.id,
            target=kind,
            job_id=str(job.id),
            params=params,
            as_role=as_role,
        )
    return job


async def lifecycle(
    platform: Platform,
    actor: Actor,
    tenant: TenantRecord,
    kind: str,
    params: dict[str, Any],
    request: Request,
    response: Response,
    reason: str = "",
) -> JobOut | AwaitingApproval:
    """Submit a lifecycle job for the actor, or (a reseller's destructive operation) ask
    the clinic's admin first. Operators run everything directly (ADR 0011)."""
    if not actor.is_operator and await needs_approval(platform, tenant, kind, params):
        requester = Requester(actor.name, actor.principal.user_id, tenant.reseller_id)
        ctx = audit_context(request)
        approval = await request_approval(platform, tenant, kind, params, requester, reason, ctx)
        response.status_code = 202
        response.headers["Location"] = f"{API}/tenants/{tenant.slug}/approvals/{approval['id']}"
        return AwaitingApproval(approval=ApprovalOut.model_validate(approval))
    async with platform.db.engine.connect() as conn:
        plan = await actor_plan(conn, actor, tenant)
    job = await submit_recorded(platform, tenant, kind, params, plan, request, actor.role)
    return job_out(job, response)


async def tenant_ids_of(conn: AsyncConnection, resellers: frozenset[uuid.UUID]) -> list[uuid.UUID]:
    """Every tenant (archived ones too) of these resellers."""
    rows = await conn.execute(
        select(tenants.c.id).where(tenants.c.reseller_id.in_(sorted(resellers)))
    )
    return list(rows.scalars())

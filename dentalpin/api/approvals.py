"""A clinic's approval requests (on the clinic's host): its admins approve or reject what
a reseller asked to do to the clinic (uninstall a clinical module, archive the clinic).
Approving submits the job. See docs/adr/0011-approvals.md."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from dentalpin.platform import Principal, require_permission
from dentalpin.platform._http import get_principal
from dentalpin.platform._request_id import audit_context
from dentalpin.tenants._approvals import decide, get_approval, list_approvals

from ._platform import API, CLINIC_JOBS, STANDARD, PlatformDep, clinic_id, job_out
from .schemas import ApprovalOut, DecisionIn, JobOut, problems

APPROVALS = "platform.approval.manage"
router = APIRouter(prefix=f"{API}/approvals", tags=["clinic administration"])
Signed = Annotated[Principal, Depends(get_principal)]


@router.get(
    "",
    dependencies=[require_permission(APPROVALS)],
    response_model=list[ApprovalOut],
    responses=problems(401, 403, 404, 422),
)
async def list_(
    principal: Signed,
    platform: PlatformDep,
    state: Annotated[Literal["pending", "approved", "rejected", "expired"] | None, Query()] = None,
) -> list[ApprovalOut]:
    """This clinic's approval requests, newest first."""
    async with platform.db.engine.begin() as conn:
        found = await list_approvals(conn, clinic_id(principal), state)
    return [ApprovalOut.model_validate(a) for a in found]


@router.get(
    "/{approval_id}",
    dependencies=[require_permission(APPROVALS)],
    response_model=ApprovalOut,
    responses=problems(*STANDARD),
)
async def show(approval_id: uuid.UUID, principal: Signed, platform: PlatformDep) -> ApprovalOut:
    async with platform.db.engine.begin() as conn:
        return ApprovalOut.model_validate(
            await get_approval(conn, clinic_id(principal), approval_id)
        )


@router.post(
    "/{approval_id}/approve",
    dependencies=[require_permission(APPROVALS)],
    status_code=202,
    response_model=JobOut,
    responses=problems(*STANDARD, 409, 503),
)
async def approve(
    approval_id: uuid.UUID,
    principal: Signed,
    platform: PlatformDep,
    request: Request,
    response: Response,
    body: DecisionIn | None = None,
) -> JobOut:
    """Approve: the operation's job is submitted (202, Location: the job on this host)."""
    _, job = await decide(
        platform,
        clinic_id(principal),
        approval_id,
        True,
        audit_context(request),
        body.note if body else "",
    )
    assert job is not None
    return job_out(job, response, CLINIC_JOBS)


@router.post(
    "/{approval_id}/reject",
    dependencies=[require_permission(APPROVALS)],
    response_model=ApprovalOut,
    responses=problems(*STANDARD, 409),
)
async def reject(
    approval_id: uuid.UUID,
    principal: Signed,
    platform: PlatformDep,
    request: Request,
    body: DecisionIn | None = None,
) -> ApprovalOut:
    """Reject: nothing runs; the reseller sees the decision and the note."""
    decided, _ = await decide(
        platform,
        clinic_id(principal),
        approval_id,
        False,
        audit_context(request),
        body.note if body else "",
    )
    return ApprovalOut.model_validate(decided)

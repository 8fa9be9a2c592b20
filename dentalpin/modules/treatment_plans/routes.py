"""HTTP API of treatment plans: /api/v1/treatment_plans/..."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query, Response

from dentalpin.platform import (
    CurrentPrincipal,
    IfMatch,
    PageOf,
    Paging,
    TenantDB,
    etag,
    require_permission,
)

from . import service
from .schemas import (
    AcceptIn,
    CompleteItemIn,
    ItemIn,
    ItemOut,
    ItemPatch,
    PlanIn,
    PlanOut,
    PlanPatch,
    PlanStatus,
    PlanSummary,
    ProposeIn,
    QuoteOut,
    ReasonIn,
)

SUMMARY = require_permission("treatment_plans.plan.summary")
READ = require_permission("treatment_plans.plan.read")
WRITE = require_permission("treatment_plans.plan.write")
COMPLETE = require_permission("treatment_plans.item.complete")
QUOTES = require_permission("treatment_plans.quote.read")
CLINICAL = "treatment_plans.plan.read"
"""Quote readers without it (accounts) get quotes without teeth and surfaces."""

router = APIRouter()


def _plan(response: Response, plan: PlanOut) -> PlanOut:
    response.headers["ETag"] = etag(plan.version)
    return plan


def _item(response: Response, item: ItemOut) -> ItemOut:
    response.headers["ETag"] = etag(item.version)
    return item


@router.get("/plans", dependencies=[SUMMARY])
async def list_plans(
    db: TenantDB,
    paging: Paging,
    patient_id: uuid.UUID | None = None,
    status: Annotated[list[PlanStatus] | None, Query()] = None,
    sort: Annotated[
        str, Query(description="created_at, updated_at, status, title; '-' for descending")
    ] = "-created_at",
) -> PageOf[PlanSummary]:
    """Plans with their status and totals (no clinical detail)."""
    return await service.list_plans(
        db,
        patient_id=patient_id,
        statuses=status or [],
        sort=sort,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.post("/plans", status_code=201, dependencies=[WRITE])
async def create_plan(
    body: PlanIn, db: TenantDB, principal: CurrentPrincipal, response: Response
) -> PlanOut:
    return _plan(response, await service.create_plan(db, body, principal.user_id))


@router.get("/plans/{plan_id}", dependencies=[READ])
async def get_plan(plan_id: uuid.UUID, db: TenantDB, response: Response) -> PlanOut:
    return _plan(response, await service.get_plan(db, plan_id))


@router.get("/plans/{plan_id}/summary", dependencies=[SUMMARY])
async def get_summary(plan_id: uuid.UUID, db: TenantDB, response: Response) -> PlanSummary:
    summary = await service.get_summary(db, plan_id)
    response.headers["ETag"] = etag(summary.version)
    return summary


@router.patch("/plans/{plan_id}", dependencies=[WRITE])
async def patch_plan(
    plan_id: uuid.UUID, body: PlanPatch, version: IfMatch, db: TenantDB, response: Response
) -> PlanOut:
    return _plan(response, await service.update_plan(db, plan_id, body, version))


@router.post("/plans/{plan_id}/items", status_code=201, dependencies=[WRITE])
async def add_item(plan_id: uuid.UUID, body: ItemIn, db: TenantDB, response: Response) -> ItemOut:
    return _item(response, await service.add_item(db, plan_id, body))


@router.patch("/plans/{plan_id}/items/{item_id}", dependencies=[WRITE])
async def patch_item(
    plan_id: uuid.UUID,
    item_id: uuid.UUID,
    body: ItemPatch,
    version: IfMatch,
    db: TenantDB,
    response: Response,
) -> ItemOut:
    return _item(response, await service.update_item(db, plan_id, item_id, body, version))


@router.delete("/plans/{plan_id}/items/{item_id}", status_code=204, dependencies=[WRITE])
async def delete_item(
    plan_id: uuid.UUID, item_id: uuid.UUID, version: IfMatch, db: TenantDB
) -> None:
    await service.delete_item(db, plan_id, item_id, version)


@router.post("/plans/{plan_id}/propose", status_code=201, dependencies=[WRITE])
async def propose(
    plan_id: uuid.UUID, body: ProposeIn, db: TenantDB, principal: CurrentPrincipal
) -> QuoteOut:
    """Issue the next quote version and mark the plan proposed."""
    return await service.propose(db, plan_id, body.valid_until, principal.user_id)


@router.post("/plans/{plan_id}/revise", dependencies=[WRITE])
async def revise(plan_id: uuid.UUID, db: TenantDB, response: Response) -> PlanOut:
    return _plan(response, await service.revise(db, plan_id))


@router.post("/plans/{plan_id}/accept", dependencies=[WRITE])
async def accept(
    plan_id: uuid.UUID,
    body: AcceptIn,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> PlanOut:
    return _plan(response, await service.accept(db, plan_id, body, principal.user_id))


@router.post("/plans/{plan_id}/reject", dependencies=[WRITE])
async def reject(plan_id: uuid.UUID, body: ReasonIn, db: TenantDB, response: Response) -> PlanOut:
    return _plan(response, await service.close(db, plan_id, "rejected", body.reason))


@router.post("/plans/{plan_id}/cancel", dependencies=[WRITE])
async def cancel(plan_id: uuid.UUID, body: ReasonIn, db: TenantDB, response: Response) -> PlanOut:
    return _plan(response, await service.close(db, plan_id, "cancelled", body.reason))


@router.post("/plans/{plan_id}/start", dependencies=[WRITE])
async def start(plan_id: uuid.UUID, db: TenantDB, response: Response) -> PlanOut:
    return _plan(response, await service.start(db, plan_id))


@router.post("/plans/{plan_id}/complete", dependencies=[WRITE])
async def complete(plan_id: uuid.UUID, db: TenantDB, response: Response) -> PlanOut:
    return _plan(response, await service.complete(db, plan_id))


@router.post("/plans/{plan_id}/items/{item_id}/complete", dependencies=[COMPLETE])
async def complete_item(
    plan_id: uuid.UUID,
    item_id: uuid.UUID,
    body: CompleteItemIn,
    db: TenantDB,
    principal: CurrentPrincipal,
    response: Response,
) -> ItemOut:
    """Mark an item performed; the odontogram charts it (event `item_completed`)."""
    item = await service.complete_item(db, plan_id, item_id, body.completed_at, principal.user_id)
    return _item(response, item)


@router.post("/plans/{plan_id}/items/{item_id}/cancel", dependencies=[WRITE])
async def cancel_item(
    plan_id: uuid.UUID, item_id: uuid.UUID, db: TenantDB, response: Response
) -> ItemOut:
    return _item(response, await service.cancel_item(db, plan_id, item_id))


@router.get("/quotes", dependencies=[QUOTES])
async def list_quotes(
    db: TenantDB,
    paging: Paging,
    principal: CurrentPrincipal,
    plan_id: uuid.UUID | None = None,
    patient_id: uuid.UUID | None = None,
    created_from: date | None = None,
    created_to: date | None = None,
    sort: Annotated[
        str, Query(description="created_at, number, total; '-' for descending")
    ] = "-created_at",
) -> PageOf[QuoteOut]:
    """Every quote issued (each proposal's snapshot), newest first."""
    return await service.list_quotes(
        db,
        plan_id=plan_id,
        patient_id=patient_id,
        created_from=created_from,
        created_to=created_to,
        sort=sort,
        limit=paging.limit,
        offset=paging.offset,
        clinical=principal.can(CLINICAL),
    )


@router.get("/quotes/{quote_id}", dependencies=[QUOTES])
async def get_quote(quote_id: uuid.UUID, db: TenantDB, principal: CurrentPrincipal) -> QuoteOut:
    return await service.get_quote(db, quote_id, clinical=principal.can(CLINICAL))

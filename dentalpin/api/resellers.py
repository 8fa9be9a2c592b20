"""Platform API: resellers, their plans and usage, and their integration clients.

Operators create resellers, move them between plans, edit the plans, and see them all;
a reseller's admins and clients see their own (another reseller is a 404). Integration
clients never manage clients.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import func, select

from dentalpin.platform._clients import (
    create_client,
    create_reseller,
    list_clients,
    list_resellers,
    reseller_by_id,
    revoke_client,
    set_reseller_plan,
)
from dentalpin.platform._errors import Forbidden, InvalidInput, NotFound
from dentalpin.platform._http import Actor, platform_access
from dentalpin.platform._plans import (
    COUNTED_STATES,
    change_plan,
    create_plan,
    delete_plan,
    get_plan,
    list_plans,
    plan_impact,
)
from dentalpin.platform._request_id import audit_context
from dentalpin.platform._tables import memberships, tenant_modules, tenants

from ._platform import API, STANDARD, PlatformDep
from .schemas import (
    ClientIn,
    ClientOut,
    NewClientOut,
    PlanChange,
    PlanChangedOut,
    PlanIn,
    PlanOut,
    ResellerIn,
    ResellerOut,
    ResellerPlanIn,
    UsageOut,
    problems,
)

router = APIRouter(prefix=API, tags=["platform: resellers"])
UsageRead = Annotated[Actor, platform_access("usage:read")]
Operator = Annotated[Actor, platform_access("usage:read", operator_only=True)]
ClientAdmin = Annotated[Actor, platform_access("usage:read", users_only=True)]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.post(
    "/resellers",
    status_code=201,
    response_model=ResellerOut,
    responses=problems(*STANDARD, 409),
)
async def create(
    body: ResellerIn, actor: Operator, platform: PlatformDep, request: Request
) -> ResellerOut:
    """Create a reseller on a plan (operators only)."""
    async with platform.db.engine.begin() as conn:
        made = await create_reseller(conn, body.name, body.plan, ctx=audit_context(request))
    return ResellerOut(**made, admins=0, clients=0)


@router.get("/resellers", response_model=list[ResellerOut], responses=problems(401, 403, 404))
async def list_(actor: UsageRead, platform: PlatformDep) -> list[ResellerOut]:
    """Resellers (a reseller's admins and clients: their own)."""
    async with platform.db.engine.connect() as conn:
        found = await list_resellers(conn, actor.resellers)
    return [ResellerOut.model_validate(r) for r in found]


async def _reseller(platform: PlatformDep, actor: Actor, reseller_id: uuid.UUID) -> dict[str, Any]:
    if not actor.is_operator and reseller_id not in actor.reseller_ids:
        raise NotFound(f"no reseller with id {reseller_id}")
    async with platform.db.engine.connect() as conn:
        found = await list_resellers(conn, frozenset({reseller_id}))
    if not found:
        raise NotFound(f"no reseller with id {reseller_id}")
    return found[0]


@router.get("/resellers/{reseller_id}", response_model=ResellerOut, responses=problems(*STANDARD))
async def show(reseller_id: uuid.UUID, actor: UsageRead, platform: PlatformDep) -> ResellerOut:
    return ResellerOut.model_validate(await _reseller(platform, actor, reseller_id))


@router.get(
    "/resellers/{reseller_id}/usage", response_model=UsageOut, responses=problems(*STANDARD)
)
async def usage(reseller_id: uuid.UUID, actor: UsageRead, platform: PlatformDep) -> UsageOut:
    """The reseller's plan, how much of it is used, and each clinic's modules and members."""
    reseller = await _reseller(platform, actor, reseller_id)
    installed = (
        select(func.coalesce(func.array_agg(tenant_modules.c.module), []))
        .where(tenant_modules.c.tenant_id == tenants.c.id, tenant_modules.c.state == "installed")
        .scalar_subquery()
    )
    members = (
        select(func.count())
        .select_from(memberships)
        .where(memberships.c.tenant_id == tenants.c.id)
        .scalar_subquery()
    )
    async with platform.db.engine.connect() as conn:
        plan = await get_plan(conn, reseller["plan"])
        rows = (
            await conn.execute(
                select(
                    tenants.c.slug,
                    tenants.c.name,
                    tenants.c.status,
                    installed.label("modules"),
                    members.label("members"),
                )
                .where(tenants.c.reseller_id == reseller_id)
                .order_by(tenants.c.slug)
            )
        ).all()
    return UsageOut.model_validate(
        {
            "reseller": reseller,
            "plan": plan.as_dict(),
            "tenants_counted": sum(1 for r in rows if r.status in COUNTED_STATES),
            "tenants_allowed": plan.max_tenants,
            "tenants": [
                {
                    "slug": r.slug,
                    "name": r.name,
                    "status": r.status,
                    "modules": sorted(r.modules),
                    "members": r.members,
                }
                for r in rows
            ],
        }
    )


@router.patch("/resellers/{reseller_id}", response_model=ResellerOut, responses=problems(*STANDARD))
async def change(
    reseller_id: uuid.UUID,
    body: ResellerPlanIn,
    actor: Operator,
    platform: PlatformDep,
    request: Request,
) -> ResellerOut:
    """Move a reseller to another plan (operators only). Its clinics keep what they
    have; what it and its clinics' admins add next must fit the new plan."""
    async with platform.db.engine.begin() as conn:
        await set_reseller_plan(
            conn, await reseller_by_id(conn, reseller_id), body.plan, ctx=audit_context(request)
        )
    return ResellerOut.model_validate(await _reseller(platform, actor, reseller_id))


# Plans -----------------------------------------------------------------------------------


@router.get("/plans", response_model=list[PlanOut], responses=problems(401, 403, 404))
async def plans(actor: UsageRead, platform: PlatformDep) -> list[PlanOut]:
    """The plans resellers can be on."""
    async with platform.db.engine.connect() as conn:
        return [PlanOut.model_validate(p.as_dict()) for p in await list_plans(conn)]


@router.post("/plans", status_code=201, response_model=PlanOut, responses=problems(*STANDARD, 409))
async def create_plan_(
    body: PlanIn, actor: Operator, platform: PlatformDep, request: Request
) -> PlanOut:
    """Create a plan (operators only); what it does not limit is unlimited."""
    values = body.model_dump(exclude={"name"})
    async with platform.db.engine.begin() as conn:
        plan = await create_plan(
            conn, platform.registry, body.name, values, ctx=audit_context(request)
        )
    return PlanOut.model_validate(plan.as_dict())


@router.patch("/plans/{name}", response_model=PlanChangedOut, responses=problems(*STANDARD))
async def change_plan_(
    name: str, body: PlanChange, actor: Operator, platform: PlatformDep, request: Request
) -> PlanChangedOut:
    """Change the terms sent (operators only). Resellers on the plan keep what they have;
    `impact` names who is already beyond the new terms."""
    values = body.model_dump(include=body.model_fields_set)
    async with platform.db.engine.begin() as conn:
        plan = await change_plan(conn, platform.registry, name, values, ctx=audit_context(request))
        impact = await plan_impact(conn, platform.registry, plan)
    return PlanChangedOut.model_validate({**plan.as_dict(), "impact": impact})


@router.delete(
    "/plans/{name}", status_code=204, response_class=Response, responses=problems(*STANDARD, 409)
)
async def delete_plan_(
    name: str, actor: Operator, platform: PlatformDep, request: Request
) -> Response:
    """Delete a plan no reseller is on (operators only; 409 otherwise)."""
    async with platform.db.engine.begin() as conn:
        await delete_plan(conn, name, ctx=audit_context(request))
    return Response(status_code=204)


# Integration clients ---------------------------------------------------------------


def _client_owner(actor: Actor, wanted: uuid.UUID | None) -> uuid.UUID:
    if wanted is not None:
        if not actor.is_operator and wanted not in actor.reseller_ids:
            raise Forbidden("you can only create clients for your own reseller")
        return wanted
    if actor.is_operator or len(actor.reseller_ids) != 1:
        raise InvalidInput("say which reseller the client belongs to: reseller_id")
    return next(iter(actor.reseller_ids))


@router.post(
    "/clients",
    status_code=201,
    response_model=NewClientOut,
    responses=problems(*STANDARD, 409),
)
async def create_client_route(
    body: ClientIn, actor: ClientAdmin, platform: PlatformDep, request: Request, response: Response
) -> NewClientOut:
    """A new integration client (OAuth2 client credentials). Its secret is in this
    answer only: store it now."""
    owner = _client_owner(actor, body.reseller_id)
    async with platform.db.engine.begin() as conn:
        try:
            client_id, secret = await create_client(
                conn, body.name, owner, body.scopes, ctx=audit_context(request)
            )
        except NotFound:
            raise InvalidInput(f"no reseller with id {owner}") from None
        made = next(
            c for c in await list_clients(conn, frozenset({owner})) if c["client_id"] == client_id
        )
    response.headers.update(NO_STORE)
    return NewClientOut.model_validate({**made, "client_secret": secret})


@router.get("/clients", response_model=list[ClientOut], responses=problems(401, 403, 404))
async def clients(actor: ClientAdmin, platform: PlatformDep) -> list[ClientOut]:
    """Integration clients (never their secrets)."""
    async with platform.db.engine.connect() as conn:
        return [ClientOut.model_validate(c) for c in await list_clients(conn, actor.resellers)]


@router.post("/clients/{client_id}/revoke", response_model=ClientOut, responses=problems(*STANDARD))
async def revoke(
    client_id: str, actor: ClientAdmin, platform: PlatformDep, request: Request
) -> ClientOut:
    """Revoke a client: its access tokens stop working at once."""
    async with platform.db.engine.begin() as conn:
        revoked = await revoke_client(conn, client_id, actor.resellers, ctx=audit_context(request))
    return ClientOut.model_validate(revoked)

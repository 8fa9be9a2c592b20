"""Platform API: tenants, their modules (lifecycle jobs), roles, members and the approval
requests a reseller made for them. Operators see every tenant; resellers (admins and
integration clients) only their own, and another reseller's tenant is a 404."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.platform._audit import record
from dentalpin.platform._clients import reseller_by_id
from dentalpin.platform._errors import Conflict, Forbidden, InvalidInput, NotFound
from dentalpin.platform._http import Actor, platform_access
from dentalpin.platform._identity import (
    get_user,
    has_admin,
    list_members,
    list_roles,
    remove_membership,
    set_membership,
)
from dentalpin.platform._request_id import audit_context
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import tenants as tenants_table
from dentalpin.tenants import (
    TenantRecord,
    all_tenants,
    create_tenant,
    dry_run_uninstall,
    module_states,
)
from dentalpin.tenants._approvals import get_approval, list_approvals, needs_approval
from dentalpin.tenants._views import module_catalogue, tenant_details

from ._platform import API, STANDARD, PlatformDep, actor_plan, lifecycle, visible_tenant
from .schemas import (
    ApprovalOut,
    AwaitingApproval,
    CatalogueModule,
    InstallIn,
    JobOut,
    MemberIn,
    MemberOut,
    ReasonIn,
    RestoreIn,
    RoleOut,
    TenantDetailOut,
    TenantIn,
    TenantOut,
    UninstallIn,
    UninstallPlanOut,
    UpgradeIn,
    problems,
)

router = APIRouter(prefix=f"{API}/tenants", tags=["platform: tenants"])

TenantsRead = Annotated[Actor, platform_access("tenants:read")]
TenantsWrite = Annotated[Actor, platform_access("tenants:write")]
ModulesWrite = Annotated[Actor, platform_access("modules:write")]
MembersRead = Annotated[Actor, platform_access("members:read")]
MembersWrite = Annotated[Actor, platform_access("members:write")]
LIFECYCLE = problems(*STANDARD, 409, 503)


def _owner(actor: Actor, wanted: uuid.UUID | None) -> uuid.UUID | None:
    """The reseller a new tenant belongs to."""
    if actor.is_operator:
        return wanted
    if wanted is not None:
        if wanted not in actor.reseller_ids:
            raise Forbidden("you can only create clinics for your own reseller")
        return wanted
    if len(actor.reseller_ids) != 1:
        raise InvalidInput("you administer several resellers: say which one with reseller_id")
    return next(iter(actor.reseller_ids))


@router.post("", status_code=201, response_model=TenantOut, responses=problems(*STANDARD, 409))
async def create(
    body: TenantIn, actor: TenantsWrite, platform: PlatformDep, request: Request, response: Response
) -> TenantOut:
    """Create a clinic (with the auto-install modules and `modules`). A reseller's clinic
    counts against its plan, whose modules and country packs bind what it may install."""
    owner = _owner(actor, body.reseller_id)
    if owner is not None and actor.is_operator:
        async with platform.db.engine.connect() as conn:
            try:
                await reseller_by_id(conn, owner)
            except NotFound:
                raise InvalidInput(f"no reseller with id {owner}") from None
    tenant = await create_tenant(
        platform,
        body.slug,
        body.name,
        body.modules,
        reseller_id=owner,
        enforce_plan=not actor.is_operator,
    )
    async with platform.db.engine.begin() as conn:
        await record(
            conn,
            audit_context(request),
            "tenant.created",
            tenant_id=tenant.id,
            target=tenant.slug,
            reseller_id=str(owner) if owner else None,
            modules=body.modules,
        )
    response.headers["Location"] = f"{API}/tenants/{tenant.slug}"
    return TenantOut.model_validate(tenant.as_dict())


@router.get("", response_model=list[TenantOut], responses=problems(401, 403, 404))
async def list_(
    actor: TenantsRead,
    platform: PlatformDep,
    archived: Annotated[bool, Query(description="Include archived clinics")] = False,
) -> list[TenantOut]:
    """The clinics the caller may see (a reseller: its own)."""
    async with platform.db.engine.connect() as conn:
        found = await all_tenants(conn, include_archived=archived)
    return [TenantOut.model_validate(t.as_dict()) for t in found if actor.sees(t.reseller_id)]


@router.get("/{slug}", response_model=TenantDetailOut, responses=problems(*STANDARD))
async def show(slug: str, actor: TenantsRead, platform: PlatformDep) -> TenantDetailOut:
    """A clinic with its modules' states."""
    async with platform.db.engine.connect() as conn:
        tenant = await visible_tenant(conn, actor, slug)
        return TenantDetailOut.model_validate(await tenant_details(conn, tenant))


@router.post(
    "/{slug}/archive",
    status_code=202,
    response_model=JobOut | AwaitingApproval,
    responses=LIFECYCLE,
)
async def archive(
    slug: str,
    actor: TenantsWrite,
    platform: PlatformDep,
    request: Request,
    response: Response,
    body: ReasonIn | None = None,
) -> JobOut | AwaitingApproval:
    """Archive the clinic (its data into a restorable archive, then its schema dropped).
    A reseller's request waits for the clinic admin's approval."""
    async with platform.db.engine.connect() as conn:
        tenant = await visible_tenant(conn, actor, slug)
    reason = body.reason if body else ""
    return await lifecycle(platform, actor, tenant, "tenant.archive", {}, request, response, reason)


# Modules -----------------------------------------------------------------------------


@router.get("/{slug}/modules", response_model=list[CatalogueModule], responses=problems(*STANDARD))
async def modules(slug: str, actor: TenantsRead, platform: PlatformDep) -> list[CatalogueModule]:
    """The module catalogue with the clinic's state of each (and, for a reseller's clinic,
    whether its plan allows the module)."""
    async with platform.db.engine.connect() as conn:
        tenant = await visible_tenant(conn, actor, slug)
        states = await module_states(conn, tenant.id)
        plan = await actor_plan(conn, actor, tenant)
    rows = module_catalogue(platform, states)
    refused = plan.refusals(platform.registry, platform.registry.names) if plan else {}
    return [
        CatalogueModule.model_validate(
            {**r, "allowed_by_plan": (r["name"] not in refused) if plan else None}
        )
        for r in rows
    ]


async def _tenant(platform: Platform, actor: Actor, slug: str) -> TenantRecord:
    async with platform.db.engine.connect() as conn:
        return await visible_tenant(conn, actor, slug)


@router.post("/{slug}/modules", status_code=202, response_model=JobOut, responses=LIFECYCLE)
async def install(
    slug: str,
    body: InstallIn,
    actor: ModulesWrite,
    platform: PlatformDep,
    request: Request,
    response: Response,
) -> JobOut | AwaitingApproval:
    """Install modules (and the dependencies they lack): a job."""
    tenant = await _tenant(platform, actor, slug)
    params = {"modules": body.modules}
    return await lifecycle(platform, actor, tenant, "lifecycle.install", params, request, response)


@router.post("/{slug}/modules/upgrade", status_code=202, response_model=JobOut, responses=LIFECYCLE)
async def upgrade(
    slug: str,
    actor: ModulesWrite,
    platform: PlatformDep,
    request: Request,
    response: Response,
    body: UpgradeIn | None = None,
) -> JobOut | AwaitingApproval:
    """Upgrade the clinic's modules (all by default) to the code's head revision: a job."""
    tenant = await _tenant(platform, actor, slug)
    params = {"modules": (body.modules if body else None) or None}
    return await lifecycle(platform, actor, tenant, "lifecycle.upgrade", params, request, response)


@router.post(
    "/{slug}/modules/{module}/uninstall",
    status_code=202,
    response_model=JobOut | AwaitingApproval | UninstallPlanOut,
    responses={
        **LIFECYCLE,
        200: {"model": UninstallPlanOut, "description": "dry_run: the plan; nothing changed"},
    },
)
async def uninstall(
    slug: str,
    module: str,
    actor: ModulesWrite,
    platform: PlatformDep,
    request: Request,
    response: Response,
    body: UninstallIn | None = None,
) -> JobOut | AwaitingApproval | UninstallPlanOut:
    """Archive and drop a module's data: a job. A reseller uninstalling a clinical module
    (or cascading into one) waits for the clinic admin's approval. `dry_run` answers the
    plan (200) and changes nothing."""
    body = body or UninstallIn()
    tenant = await _tenant(platform, actor, slug)
    params = {"module": module, "cascade": body.cascade}
    if body.dry_run:
        plan = await dry_run_uninstall(platform, tenant, module, body.cascade)
        waits = not actor.is_operator and await needs_approval(
            platform, tenant, "lifecycle.uninstall", params
        )
        response.status_code = 200
        return UninstallPlanOut(**plan.as_dict(), needs_approval=waits)
    return await lifecycle(
        platform, actor, tenant, "lifecycle.uninstall", params, request, response, body.reason
    )


@router.post(
    "/{slug}/modules/{module}/restore",
    status_code=202,
    response_model=JobOut,
    responses=LIFECYCLE,
)
async def restore(
    slug: str,
    module: str,
    actor: ModulesWrite,
    platform: PlatformDep,
    request: Request,
    response: Response,
    body: RestoreIn | None = None,
) -> JobOut | AwaitingApproval:
    """Reinstall an uninstalled module and load its archived data: a job."""
    tenant = await _tenant(platform, actor, slug)
    archive_id = body.archive_id if body else None
    params = {"module": module, "archive_id": str(archive_id) if archive_id else None}
    return await lifecycle(platform, actor, tenant, "lifecycle.restore", params, request, response)


# Approval requests (the requester's view; the clinic decides on its own host) --------


@router.get("/{slug}/approvals", response_model=list[ApprovalOut], responses=problems(*STANDARD))
async def approvals(slug: str, actor: TenantsRead, platform: PlatformDep) -> list[ApprovalOut]:
    """The approval requests made for this clinic, newest first."""
    async with platform.db.engine.begin() as conn:
        tenant = await visible_tenant(conn, actor, slug)
        found = await list_approvals(conn, tenant.id)
    return [ApprovalOut.model_validate(a) for a in found]


@router.get(
    "/{slug}/approvals/{approval_id}", response_model=ApprovalOut, responses=problems(*STANDARD)
)
async def approval(
    slug: str, approval_id: uuid.UUID, actor: TenantsRead, platform: PlatformDep
) -> ApprovalOut:
    async with platform.db.engine.begin() as conn:
        tenant = await visible_tenant(conn, actor, slug)
        return ApprovalOut.model_validate(await get_approval(conn, tenant.id, approval_id))


# Roles and members -------------------------------------------------------------------


@router.get("/{slug}/roles", response_model=list[RoleOut], responses=problems(*STANDARD))
async def roles(slug: str, actor: TenantsRead, platform: PlatformDep) -> list[RoleOut]:
    """The clinic's roles (built-in and custom) and their permissions."""
    async with platform.db.engine.begin() as conn:
        tenant = await visible_tenant(conn, actor, slug)
        found = await list_roles(conn, platform.registry, tenant.id)
    return [RoleOut.model_validate(r) for r in found]


@router.get("/{slug}/members", response_model=list[MemberOut], responses=problems(*STANDARD))
async def members(slug: str, actor: MembersRead, platform: PlatformDep) -> list[MemberOut]:
    """Who works for the clinic, with which roles."""
    async with platform.db.engine.connect() as conn:
        tenant = await visible_tenant(conn, actor, slug)
        found = await list_members(conn, tenant.id)
    return [MemberOut.model_validate(m) for m in found]


async def _lock_before_admin(conn: AsyncConnection, tenant_id: uuid.UUID, slug: str) -> None:
    """Members are set up through the platform API only until the clinic has an admin;
    from then on its admins manage them (so nobody outside the clinic can give themselves,
    or anyone, access to its patients' data). Holds the tenant row's lock meanwhile."""
    await conn.execute(
        select(tenants_table.c.id).where(tenants_table.c.id == tenant_id).with_for_update()
    )
    if await has_admin(conn, tenant_id):
        raise Conflict(
            f"'{slug}' already has an admin: its members are managed by the clinic's admins "
            "(POST /api/v1/members on the clinic's host)"
        )


@router.post(
    "/{slug}/members",
    status_code=201,
    response_model=MemberOut,
    responses=problems(*STANDARD, 409),
)
async def add_member(
    slug: str, body: MemberIn, actor: MembersWrite, platform: PlatformDep, request: Request
) -> MemberOut:
    """Give an existing user a membership of a new clinic (its first admin and staff),
    while the clinic has no admin yet."""
    async with platform.db.engine.begin() as conn:
        tenant = await visible_tenant(conn, actor, slug)
        user = await get_user(conn, body.email)
        if user.id == actor.principal.user_id:
            raise Forbidden("you cannot make yourself a member of a clinic")
        await _lock_before_admin(conn, tenant.id, slug)
        held = await set_membership(
            conn,
            platform.registry,
            tenant.id,
            user.id,
            body.roles,
            body.location_ids,
            ctx=audit_context(request),
            add=True,
        )
    return MemberOut(
        user_id=user.id,
        email=user.email,
        name=user.name,
        roles=sorted(held),
        location_ids=sorted(set(body.location_ids)),
    )


@router.delete("/{slug}/members/{user_id}", status_code=204, responses=problems(*STANDARD, 409))
async def remove_member(
    slug: str, user_id: uuid.UUID, actor: MembersWrite, platform: PlatformDep, request: Request
) -> Response:
    """End a membership (and its sessions). Operators may at any time (a compromised
    account); resellers only while the clinic has no admin yet."""
    async with platform.db.engine.begin() as conn:
        tenant = await visible_tenant(conn, actor, slug)
        if not actor.is_operator:
            await _lock_before_admin(conn, tenant.id, slug)
        try:
            published = await remove_membership(
                conn, tenant.id, user_id, ctx=audit_context(request)
            )
        except NotFound:
            raise NotFound("that user is not a member of this clinic") from None
    platform.db.published(published)
    return Response(status_code=204)

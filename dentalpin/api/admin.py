"""A clinic's own administration: members, custom roles, audit log.

Everything acts on the clinic of the caller's token (which, on a clinic host, is that
host's clinic: `get_principal` refuses a mismatch). Nothing here touches credentials:
a tenant admin manages memberships, never another user's password or second factor.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from dentalpin.api._platform import clinic_id
from dentalpin.api.access import not_through_support
from dentalpin.platform import Principal, require_permission
from dentalpin.platform._audit import list_entries
from dentalpin.platform._errors import NotFound
from dentalpin.platform._http import get_platform, get_principal
from dentalpin.platform._identity import (
    delete_custom_role,
    get_user,
    list_members,
    list_roles,
    member_roles,
    remove_membership,
    save_custom_role,
    set_membership,
    user_by_id,
)
from dentalpin.platform._request_id import audit_context
from dentalpin.platform._roles import assignable_permissions, installed_modules
from dentalpin.platform._runtime import Platform

API = "/api/v1"
MEMBERS = "platform.member.manage"
ROLES = "platform.role.manage"
AUDIT = "platform.audit.read"

router = APIRouter(tags=["clinic administration"])
PlatformDep = Annotated[Platform, Depends(get_platform)]
Signed = Annotated[Principal, Depends(get_principal)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemberIn(Strict):
    email: str = Field(min_length=3, max_length=320)
    roles: list[str] = Field(min_length=1, max_length=20)
    location_ids: list[str] = Field(default_factory=list, max_length=200)


class MemberChange(Strict):
    roles: list[str] = Field(min_length=1, max_length=20)
    location_ids: list[str] = Field(default_factory=list, max_length=200)


class RoleIn(Strict):
    name: str = Field(min_length=2, max_length=40)
    description: str = Field(default="", max_length=200)
    permissions: list[str] = Field(default_factory=list, max_length=500)


class RoleChange(Strict):
    description: str = Field(default="", max_length=200)
    permissions: list[str] = Field(default_factory=list, max_length=500)


@router.get(f"{API}/members", dependencies=[require_permission(MEMBERS)])
async def members(principal: Signed, platform: PlatformDep) -> list[dict[str, Any]]:
    async with platform.db.engine.connect() as conn:
        return await list_members(conn, clinic_id(principal))


@router.post(f"{API}/members", dependencies=[require_permission(MEMBERS)], status_code=201)
async def add_member(
    body: MemberIn, principal: Signed, request: Request, platform: PlatformDep
) -> dict[str, Any]:
    """Give an existing user a membership (or more roles) in this clinic."""
    not_through_support(principal)
    tenant = clinic_id(principal)
    async with platform.db.engine.begin() as conn:
        user = await get_user(conn, body.email)
        held = await set_membership(
            conn,
            platform.registry,
            tenant,
            user.id,
            body.roles,
            body.location_ids,
            ctx=audit_context(request),
            grantor=principal.permissions,
            add=True,
        )
    return {"user_id": str(user.id), "email": user.email, "roles": sorted(held)}


@router.put(f"{API}/members/{{user_id}}", dependencies=[require_permission(MEMBERS)])
async def change_member(
    user_id: uuid.UUID,
    body: MemberChange,
    principal: Signed,
    request: Request,
    platform: PlatformDep,
) -> dict[str, Any]:
    not_through_support(principal)
    tenant = clinic_id(principal)
    async with platform.db.engine.begin() as conn:
        user = await user_by_id(conn, user_id)
        if await member_roles(conn, tenant, user.id) is None:
            raise NotFound("that user is not a member of this clinic")
        held = await set_membership(
            conn,
            platform.registry,
            tenant,
            user.id,
            body.roles,
            body.location_ids,
            ctx=audit_context(request),
            grantor=principal.permissions,
        )
    return {"user_id": str(user.id), "email": user.email, "roles": sorted(held)}


@router.delete(
    f"{API}/members/{{user_id}}", dependencies=[require_permission(MEMBERS)], status_code=204
)
async def delete_member(
    user_id: uuid.UUID, principal: Signed, request: Request, platform: PlatformDep
) -> Response:
    async with platform.db.engine.begin() as conn:
        published = await remove_membership(
            conn,
            clinic_id(principal),
            user_id,
            ctx=audit_context(request),
            grantor=principal.permissions,
        )
    platform.db.published(published)
    return Response(status_code=204)


@router.get(f"{API}/roles", dependencies=[require_permission(ROLES)])
async def roles(principal: Signed, platform: PlatformDep) -> dict[str, Any]:
    """The clinic's roles, and the permissions a custom role may hold here."""
    tenant = clinic_id(principal)
    async with platform.db.engine.begin() as conn:
        found = await list_roles(conn, platform.registry, tenant)
        assignable = assignable_permissions(
            platform.registry, await installed_modules(conn, tenant)
        )
    return {"roles": found, "assignable_permissions": assignable}


@router.post(f"{API}/roles", dependencies=[require_permission(ROLES)], status_code=201)
async def create_role(
    body: RoleIn, principal: Signed, request: Request, platform: PlatformDep
) -> dict[str, Any]:
    async with platform.db.engine.begin() as conn:
        return await save_custom_role(
            conn,
            platform.registry,
            clinic_id(principal),
            body.name,
            body.permissions,
            body.description,
            ctx=audit_context(request),
            grantor=principal.permissions,
        )


@router.put(f"{API}/roles/{{name}}", dependencies=[require_permission(ROLES)])
async def change_role(
    name: str, body: RoleChange, principal: Signed, request: Request, platform: PlatformDep
) -> dict[str, Any]:
    async with platform.db.engine.begin() as conn:
        return await save_custom_role(
            conn,
            platform.registry,
            clinic_id(principal),
            name,
            body.permissions,
            body.description,
            ctx=audit_context(request),
            grantor=principal.permissions,
            create=False,
        )


@router.delete(f"{API}/roles/{{name}}", dependencies=[require_permission(ROLES)], status_code=204)
async def delete_role(
    name: str, principal: Signed, request: Request, platform: PlatformDep
) -> Response:
    async with platform.db.engine.begin() as conn:
        await delete_custom_role(
            conn,
            clinic_id(principal),
            name,
            ctx=audit_context(request),
            grantor=principal.permissions,
        )
    return Response(status_code=204)


@router.get(f"{API}/audit", dependencies=[require_permission(AUDIT)])
async def audit(
    principal: Signed,
    platform: PlatformDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1)] = None,
    action: Annotated[str | None, Query(max_length=80)] = None,
) -> list[dict[str, Any]]:
    """This clinic's security events, newest first (`before`: an entry id, to page)."""
    async with platform.db.engine.connect() as conn:
        return await list_entries(
            conn, clinic_id(principal), limit=limit, before=before, action=action
        )

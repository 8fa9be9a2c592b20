"""Platform API: user accounts (platform-wide). Operators see every account; a reseller
sees the accounts that work for its clinics or administer it (another is a 404).

Accounts are created without a password: nobody sets another person's credentials; the
user sets their own (invitation or password reset)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response
from sqlalchemy import or_, select
from sqlalchemy.sql import Select

from dentalpin.platform._errors import NotFound
from dentalpin.platform._http import Actor, platform_access
from dentalpin.platform._identity import UserRecord, create_user, user_by_id
from dentalpin.platform._request_id import audit_context
from dentalpin.platform._tables import memberships, reseller_admins, tenants, users

from ._platform import API, STANDARD, PlatformDep
from .schemas import UserIn, UserOut, problems

router = APIRouter(prefix=f"{API}/users", tags=["platform: users"])
MembersRead = Annotated[Actor, platform_access("members:read")]
MembersWrite = Annotated[Actor, platform_access("members:write")]


def _visible(actor: Actor) -> Select[tuple[uuid.UUID]]:
    """Ids of the accounts a reseller may see: its clinics' members and its admins."""
    owned = sorted(actor.reseller_ids)
    return select(users.c.id).where(
        or_(
            users.c.id.in_(
                select(memberships.c.user_id)
                .join(tenants, tenants.c.id == memberships.c.tenant_id)
                .where(tenants.c.reseller_id.in_(owned))
            ),
            users.c.id.in_(
                select(reseller_admins.c.user_id).where(reseller_admins.c.reseller_id.in_(owned))
            ),
        )
    )


def _out(user: UserRecord) -> UserOut:
    return UserOut.model_validate(user.as_dict())


@router.post("", status_code=201, response_model=UserOut, responses=problems(*STANDARD, 409))
async def create(
    body: UserIn, actor: MembersWrite, platform: PlatformDep, request: Request, response: Response
) -> UserOut:
    """Create an account (no password: the user sets it). Then make it a member."""
    async with platform.db.engine.begin() as conn:
        user = await create_user(conn, body.email, body.name, None, ctx=audit_context(request))
    response.headers["Location"] = f"{API}/users/{user.id}"
    return _out(user)


@router.get("", response_model=list[UserOut], responses=problems(401, 403, 404))
async def list_(actor: MembersRead, platform: PlatformDep) -> list[UserOut]:
    query = select(users).order_by(users.c.email)
    if not actor.is_operator:
        query = query.where(users.c.id.in_(_visible(actor)))
    async with platform.db.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        UserOut(
            id=r.id,
            email=r.email,
            name=r.name,
            is_operator=r.is_operator,
            mfa_enabled=r.totp_enabled_at is not None,
        )
        for r in rows
    ]


@router.get("/{user_id}", response_model=UserOut, responses=problems(*STANDARD))
async def show(user_id: uuid.UUID, actor: MembersRead, platform: PlatformDep) -> UserOut:
    async with platform.db.engine.connect() as conn:
        if not actor.is_operator:
            seen = await conn.scalar(_visible(actor).where(users.c.id == user_id))
            if seen is None:
                raise NotFound("no such user")
        return _out(await user_by_id(conn, user_id))

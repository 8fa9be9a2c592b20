"""Invitations to join a clinic: a member who manages members invites an e-mail address
with roles (and optionally locations); the invitee follows the signed, expiring, single-use
link, which creates their account (with the password they choose) or links the account
they have, and makes them a member.

The same rules as adding a member directly apply (`_identity.set_membership`): nobody
invites into roles holding permissions they do not hold themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ._audit import AuditContext, record
from ._errors import Conflict, Forbidden, InvalidInput, NotFound
from ._identity import (
    _check_grantor,
    _check_locations,
    create_user,
    find_user,
    member_roles,
    normalize_email,
    role_names,
    set_membership,
)
from ._links import InvalidLink, issue, link, matches, read
from ._mail import Mail, compose
from ._roles import ensure_roles
from ._runtime import Platform
from ._tables import invitations, tenants, users

PAGE = "invitation"
WHAT = "invitation"


def _state(row: Any, now: datetime) -> str:
    if row.accepted_at is not None:
        return "accepted"
    if row.revoked_at is not None:
        return "revoked"
    return "expired" if row.expires_at <= now else "pending"


def _as_dict(row: Any, now: datetime) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "email": row.email,
        "roles": list(row.roles),
        "location_ids": list(row.location_ids),
        "state": _state(row, now),
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "accepted_at": row.accepted_at.isoformat() if row.accepted_at else None,
    }


async def _clinic(conn: AsyncConnection, tenant_id: uuid.UUID, lock: bool = False) -> Any:
    query = select(tenants.c.slug, tenants.c.name).where(
        tenants.c.id == tenant_id, tenants.c.status == "active"
    )
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound("this clinic is not active")
    return row


async def invite(
    conn: AsyncConnection,
    platform: Platform,
    tenant_id: uuid.UUID,
    email: str,
    role_list: Iterable[str],
    location_ids: Iterable[str] = (),
    *,
    ctx: AuditContext,
    grantor: frozenset[str] | None = None,
) -> tuple[dict[str, Any], Mail]:
    """Create an invitation (replacing a pending one for the same address) and the message
    that carries its link; the caller sends it once the transaction commits."""
    email = normalize_email(email)
    wanted = set(role_list)
    if not wanted:
        raise InvalidInput("an invitation needs at least one role")
    await ensure_roles(conn, platform.registry, tenant_id)
    unknown = sorted(wanted - await role_names(conn, tenant_id))
    if unknown:
        raise InvalidInput(f"this clinic has no role {', '.join(map(repr, unknown))}")
    locations = _check_locations(location_ids)
    await _check_grantor(conn, tenant_id, grantor, wanted, set())
    # Serialised per clinic: one pending invitation per address (revoke, then insert).
    clinic = await _clinic(conn, tenant_id, lock=True)
    existing = await find_user(conn, email)
    if existing is not None and await member_roles(conn, tenant_id, existing.id) is not None:
        raise Conflict(
            f"'{email}' is already a member of this clinic; change their roles with "
            f"PUT /api/v1/members/{existing.id}"
        )
    replaced = await conn.execute(
        update(invitations)
        .where(
            invitations.c.tenant_id == tenant_id,
            invitations.c.email == email,
            invitations.c.accepted_at.is_(None),
            invitations.c.revoked_at.is_(None),
        )
        .values(revoked_at=func.now())
    )
    invitation_id = uuid.uuid4()
    ttl = platform.settings.invitation_ttl_s
    token = issue(platform.settings, "invitation", invitation_id, ttl)
    row = (
        await conn.execute(
            insert(invitations)
            .values(
                id=invitation_id,
                tenant_id=tenant_id,
                email=email,
                roles=sorted(wanted),
                location_ids=locations,
                invited_by=ctx.actor_id,
                token_hash=token.stored_hash,
                expires_at=token.expires_at,
            )
            .returning(invitations)
        )
    ).one()
    await record(
        conn,
        ctx,
        "invitation.created",
        tenant_id=tenant_id,
        target=email,
        invitation=str(invitation_id),
        roles=sorted(wanted),
        locations=locations,
        replaced=replaced.rowcount,
    )
    mail = compose(
        email,
        f"Invitation to {clinic.name} on DentalPin",
        "invitation",
        inviter=ctx.actor or clinic.name,
        clinic=clinic.name,
        roles=sorted(wanted),
        expires=token.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        url=link(platform.settings, clinic.slug, PAGE, token),
        link_expires_at=token.expires_at,
    )
    return _as_dict(row, datetime.now(UTC)), mail


async def list_invitations(conn: AsyncConnection, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(invitations)
        .where(invitations.c.tenant_id == tenant_id)
        .order_by(invitations.c.created_at.desc())
        .limit(500)
    )
    now = datetime.now(UTC)
    return [_as_dict(r, now) for r in rows]


async def revoke_invitation(
    conn: AsyncConnection, tenant_id: uuid.UUID, invitation_id: uuid.UUID, *, ctx: AuditContext
) -> None:
    row = (
        await conn.execute(
            select(invitations)
            .where(invitations.c.id == invitation_id, invitations.c.tenant_id == tenant_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound("this clinic has no such invitation")
    if row.accepted_at is not None:
        raise Conflict(
            "this invitation was already accepted; remove the member instead "
            f"(DELETE /api/v1/members/{row.accepted_by})"
        )
    if row.revoked_at is None:
        await conn.execute(
            update(invitations).where(invitations.c.id == row.id).values(revoked_at=func.now())
        )
        await record(
            conn,
            ctx,
            "invitation.revoked",
            tenant_id=tenant_id,
            target=row.email,
            invitation=str(row.id),
        )


async def _pending(conn: AsyncConnection, platform: Platform, token: str) -> Any:
    parsed = read(platform.settings, "invitation", token, WHAT)
    row = (
        await conn.execute(
            select(invitations).where(invitations.c.id == parsed.row_id).with_for_update()
        )
    ).first()
    if row is None or not matches(parsed, row.token_hash):
        raise InvalidLink("this invitation is not valid; ask the clinic for a new one")
    state = _state(row, datetime.now(UTC))
    if state != "pending":
        raise InvalidLink(
            {
                "accepted": "this invitation was already used; sign in instead",
                "revoked": "the clinic withdrew this invitation; ask it for a new one",
                "expired": "this invitation has expired; ask the clinic for a new one",
            }[state]
        )
    return row


async def accept_invitation(
    platform: Platform,
    token: str,
    password: str | None,
    name: str | None,
    ctx: AuditContext,
    host_tenant_id: uuid.UUID | None,
) -> dict[str, Any]:
    """Spend the invitation: create the account (with `password`) or link the existing one,
    make it a member. On a clinic's host, only that clinic's invitations are accepted."""
    async with platform.db.engine.begin() as conn:
        row = await _pending(conn, platform, token)
        if host_tenant_id is not None and host_tenant_id != row.tenant_id:
            raise Forbidden("this invitation is for another clinic; open the link of the e-mail")
        clinic = await _clinic(conn, row.tenant_id)
        user = await find_user(conn, row.email)
        created = user is None
        if user is None:
            if not password:
                raise InvalidInput("choose a password (10 or more characters) for your account")
            user = await create_user(conn, row.email, name or "", password, ctx=ctx)
        elif password or name:
            raise InvalidInput(
                "an account with this e-mail already exists: accept without a password or "
                "name and sign in with your own password (forgotten? "
                "POST /api/v1/auth/password-reset)"
            )
        actor = ctx.by(user.id, user.email)
        # Following the link proved the address is the user's.
        await conn.execute(
            update(users)
            .where(users.c.id == user.id)
            .values(email_verified_at=func.coalesce(users.c.email_verified_at, func.now()))
        )
        await set_membership(
            conn,
            platform.registry,
            row.tenant_id,
            user.id,
            row.roles,
            row.location_ids,
            ctx=actor,
            add=True,
        )
        await conn.execute(
            update(invitations)
            .where(invitations.c.id == row.id)
            .values(accepted_at=func.now(), accepted_by=user.id)
        )
        await record(
            conn,
            actor,
            "invitation.accepted",
            tenant_id=row.tenant_id,
            target=user.email,
            invitation=str(row.id),
            account_created=created,
        )
    return {
        "tenant": clinic.slug,
        "email": user.email,
        "roles": list(row.roles),
        "account_created": created,
    }

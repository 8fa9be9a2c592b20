"""Who else may enter a clinic: invitations (by e-mail) and support grants, managed on the
clinic's host by its admins; and the public links the e-mails carry (accept an invitation,
reset a password, verify an address)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from dentalpin.api._platform import clinic_id
from dentalpin.api.auth import signed_user
from dentalpin.platform import Principal, require_permission
from dentalpin.platform._errors import Forbidden
from dentalpin.platform._http import authenticated, get_platform, get_principal, public
from dentalpin.platform._invitations import (
    accept_invitation,
    invite,
    list_invitations,
    revoke_invitation,
)
from dentalpin.platform._mail_queue import deliver, enqueue
from dentalpin.platform._recovery import (
    request_password_reset,
    reset_password,
    verification_mail,
    verify_email,
)
from dentalpin.platform._request_id import audit_context
from dentalpin.platform._roles import SUPPORT_ROLE
from dentalpin.platform._runtime import Platform
from dentalpin.platform._support import grant_support, list_grants, revoke_grant

API = "/api/v1"
MEMBERS = "platform.member.manage"
SUPPORT = "platform.support.manage"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

router = APIRouter(tags=["clinic administration"])
public_router = APIRouter(tags=["auth"])
PlatformDep = Annotated[Platform, Depends(get_platform)]
Signed = Annotated[Principal, Depends(get_principal)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InvitationIn(Strict):
    email: str = Field(min_length=3, max_length=320)
    roles: list[str] = Field(min_length=1, max_length=20)
    location_ids: list[str] = Field(default_factory=list, max_length=200)


class SupportGrantIn(Strict):
    email: str = Field(min_length=3, max_length=320)
    """An operator's or a reseller admin's account."""
    expires_at: datetime
    """When the access ends (required; at most DENTALPIN_SUPPORT_GRANT_MAX_S from now)."""
    roles: list[str] = Field(default_factory=lambda: [SUPPORT_ROLE], min_length=1, max_length=20)
    reason: str = Field(default="", max_length=500)


class AcceptIn(Strict):
    token: str = Field(min_length=1, max_length=200)
    password: str | None = Field(default=None, max_length=1024)
    """For a new account only."""
    name: str | None = Field(default=None, max_length=200)


class ResetRequestIn(Strict):
    email: str = Field(min_length=3, max_length=320)


class ResetIn(Strict):
    token: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class TokenIn(Strict):
    token: str = Field(min_length=1, max_length=200)


def not_through_support(
    principal: Principal, doing: str = "invite, add members or grant access"
) -> None:
    """Support access ends with its grant: it may not open other ways in that outlive it,
    nor do what the clinic's admin decides (what the clinic runs)."""
    if principal.support_grant_id is not None:
        raise Forbidden(f"support access cannot {doing}; ask the clinic's admin")


# Invitations (clinic host) --------------------------------------------------------------


@router.post(f"{API}/invitations", dependencies=[require_permission(MEMBERS)], status_code=201)
async def create_invitation(
    body: InvitationIn, principal: Signed, request: Request, platform: PlatformDep
) -> dict[str, Any]:
    """Invite an e-mail address into this clinic with roles; the invitee gets a link that
    works once, until it expires. A pending invitation for the address is replaced."""
    not_through_support(principal)
    async with platform.db.engine.begin() as conn:
        created, mail = await invite(
            conn,
            platform,
            clinic_id(principal),
            body.email,
            body.roles,
            body.location_ids,
            ctx=audit_context(request),
            grantor=principal.permissions,
        )
        queued = await enqueue(conn, platform.settings, mail)
    # Not sent now: queued, and retried while the mail server is down (`dentalpin mail`).
    created["mail_sent"] = (await deliver(platform, queued)).where is not None
    return created


@router.get(f"{API}/invitations", dependencies=[require_permission(MEMBERS)])
async def invitations(principal: Signed, platform: PlatformDep) -> list[dict[str, Any]]:
    """This clinic's invitations, newest first (pending, accepted, revoked, expired)."""
    async with platform.db.engine.connect() as conn:
        return await list_invitations(conn, clinic_id(principal))


@router.delete(
    f"{API}/invitations/{{invitation_id}}",
    dependencies=[require_permission(MEMBERS)],
    status_code=204,
)
async def delete_invitation(
    invitation_id: uuid.UUID, principal: Signed, request: Request, platform: PlatformDep
) -> Response:
    """Withdraw a pending invitation: its link stops working."""
    async with platform.db.engine.begin() as conn:
        await revoke_invitation(
            conn, clinic_id(principal), invitation_id, ctx=audit_context(request)
        )
    return Response(status_code=204)


# Support grants (clinic host) -----------------------------------------------------------


@router.post(f"{API}/support-grants", dependencies=[require_permission(SUPPORT)], status_code=201)
async def create_support_grant(
    body: SupportGrantIn, principal: Signed, request: Request, platform: PlatformDep
) -> dict[str, Any]:
    """Let an operator or a reseller admin act in this clinic until `expires_at`, with
    `roles` (default `support`). They sign in with a second factor; every request they
    make here is audited; revoking ends it at once."""
    not_through_support(principal)
    async with platform.db.engine.begin() as conn:
        grant, mail = await grant_support(
            conn,
            platform,
            clinic_id(principal),
            body.email,
            body.expires_at,
            body.roles,
            body.reason,
            ctx=audit_context(request),
            grantor=principal.permissions,
        )
        queued = await enqueue(conn, platform.settings, mail)
    grant["mail_sent"] = (await deliver(platform, queued)).where is not None
    return grant


@router.get(f"{API}/support-grants", dependencies=[require_permission(SUPPORT)])
async def support_grants(principal: Signed, platform: PlatformDep) -> list[dict[str, Any]]:
    """This clinic's support grants, newest first (active, expired, revoked)."""
    async with platform.db.engine.connect() as conn:
        return await list_grants(conn, clinic_id(principal))


@router.delete(f"{API}/support-grants/{{grant_id}}", dependencies=[require_permission(SUPPORT)])
async def delete_support_grant(
    grant_id: uuid.UUID, principal: Signed, request: Request, platform: PlatformDep
) -> dict[str, Any]:
    """End a support grant now (and the grantee's sessions in this clinic)."""
    async with platform.db.engine.begin() as conn:
        return await revoke_grant(conn, clinic_id(principal), grant_id, ctx=audit_context(request))


# Public links ---------------------------------------------------------------------------


async def _host_tenant(request: Request) -> uuid.UUID | None:
    resolver = getattr(request.app.state, "tenant_resolver", None)
    if resolver is not None and not hasattr(request.state, "host_tenant_id"):
        await resolver(request)
    host: uuid.UUID | None = getattr(request.state, "host_tenant_id", None)
    return host


@public_router.post(f"{API}/auth/invitations/accept", dependencies=[public()])
async def accept_route(
    body: AcceptIn, request: Request, response: Response, platform: PlatformDep
) -> dict[str, Any]:
    """Accept an invitation: a new account needs `password` (and may give `name`); an
    existing account is linked as it is. Then sign in as usual."""
    response.headers.update(NO_STORE)
    return await accept_invitation(
        platform,
        body.token,
        body.password,
        body.name,
        audit_context(request),
        await _host_tenant(request),
    )


@public_router.post(f"{API}/auth/password-reset", dependencies=[public()], status_code=202)
async def password_reset_request(
    body: ResetRequestIn, request: Request, background: BackgroundTasks, platform: PlatformDep
) -> dict[str, str]:
    """Ask for a password-reset link. The answer is the same whether or not the address
    has an account; repeated requests are slowed down (429 with Retry-After)."""
    queued = await request_password_reset(platform, body.email, audit_context(request))
    if queued is not None:
        # After the answer: its timing must not tell whether the account exists.
        background.add_task(deliver, platform, queued)
    return {"detail": "if an account uses this address, a link to reset its password is on its way"}


@public_router.post(f"{API}/auth/password-reset/confirm", dependencies=[public()], status_code=204)
async def password_reset_confirm(
    body: ResetIn, request: Request, platform: PlatformDep
) -> Response:
    """Set a new password with the link's token; every session of the account ends."""
    await reset_password(platform, body.token, body.password, audit_context(request))
    return Response(status_code=204, headers=NO_STORE)


@public_router.post(f"{API}/auth/verify-email", dependencies=[public()])
async def verify_email_route(
    body: TokenIn, request: Request, platform: PlatformDep
) -> dict[str, str]:
    """Confirm an e-mail address with the token of the link sent to it."""
    email = await verify_email(platform, body.token, audit_context(request))
    return {"email": email, "detail": "the address is verified"}


@public_router.post(
    f"{API}/auth/verify-email/send", dependencies=[authenticated()], status_code=202
)
async def verify_email_send(
    principal: Annotated[Principal, Depends(signed_user)], platform: PlatformDep
) -> dict[str, str]:
    """Send the signed-in user a new verification link."""
    assert principal.user_id is not None  # signed_user refuses integration clients
    async with platform.db.engine.begin() as conn:
        mail = await verification_mail(conn, platform.settings, principal.user_id)
        queued = await enqueue(conn, platform.settings, mail)
    await deliver(platform, queued)
    return {"detail": f"a verification link is on its way to {mail.to}"}

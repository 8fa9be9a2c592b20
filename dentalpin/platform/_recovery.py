"""Password reset and e-mail verification by links sent to the user's address.

A reset request is answered the same whether or not the account exists (the message is
the only difference, and it goes to the address, not to the caller), and is throttled
per address and per client like logins. A reset link works once, for a short time, and
only for the address it was sent to; using it ends every session of the user.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ._audit import AuditContext, record
from ._errors import Conflict
from ._identity import set_password
from ._links import InvalidLink, issue, link, matches, read
from ._mail import Mail, compose
from ._mail_queue import enqueue
from ._passwords import check_password_strength
from ._runtime import Platform
from ._settings import Settings
from ._tables import email_tokens, users
from ._throttle import Rule, account_key, address_key
from ._throttle import check as throttle_check
from ._throttle import failed as throttle_failed
from ._throttle import succeeded as throttle_succeeded

Kind = Literal["password_reset", "email_verification"]
# Past the free requests, a minute and doubling: nobody needs a fourth reset mail sooner.
RESET_PER_ACCOUNT = Rule(free=3, cap_s=3600, window_s=3600, base_s=60)
RESET_PER_ADDRESS = Rule(free=10, cap_s=3600, window_s=3600, base_s=60)
WHAT: dict[Kind, str] = {
    "password_reset": "password-reset link",
    "email_verification": "verification link",
}
PAGE: dict[Kind, str] = {"password_reset": "reset-password", "email_verification": "verify-email"}


def _ttl(settings: Settings, kind: Kind) -> int:
    if kind == "password_reset":
        return settings.password_reset_ttl_s
    return settings.email_verification_ttl_s


async def _new_link(
    conn: AsyncConnection, settings: Settings, user: Any, kind: Kind, template: str, subject: str
) -> Mail:
    """A fresh link for the user (earlier unused ones of the kind stop working)."""
    await conn.execute(
        update(email_tokens)
        .where(
            email_tokens.c.user_id == user.id,
            email_tokens.c.purpose == kind,
            email_tokens.c.used_at.is_(None),
        )
        .values(used_at=func.now())
    )
    token_id = uuid.uuid4()
    token = issue(settings, kind, token_id, _ttl(settings, kind))
    await conn.execute(
        insert(email_tokens).values(
            id=token_id,
            user_id=user.id,
            purpose=kind,
            email=user.email,
            token_hash=token.stored_hash,
            expires_at=token.expires_at,
        )
    )
    return compose(
        user.email,
        subject,
        template,
        name=user.name or user.email,
        email=user.email,
        expires=token.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        url=link(settings, None, PAGE[kind], token),
        link_expires_at=token.expires_at,
    )


async def _spend(conn: AsyncConnection, settings: Settings, kind: Kind, token: str) -> Any:
    """The user the link was sent to, once: the link is marked used."""
    parsed = read(settings, kind, token, WHAT[kind])
    row = (
        await conn.execute(
            select(email_tokens, users.c.email.label("current_email"), users.c.disabled)
            .join(users, users.c.id == email_tokens.c.user_id)
            .where(email_tokens.c.id == parsed.row_id, email_tokens.c.purpose == kind)
            .with_for_update(of=email_tokens)
        )
    ).first()
    if row is None or not matches(parsed, row.token_hash) or row.disabled:
        raise InvalidLink(f"this {WHAT[kind]} is not valid; ask for a new one")
    if row.used_at is not None:
        raise InvalidLink(f"this {WHAT[kind]} was already used (or a newer one was sent)")
    if row.expires_at <= datetime.now(UTC):
        raise InvalidLink(f"this {WHAT[kind]} has expired; ask for a new one")
    if row.email != row.current_email:
        raise InvalidLink(f"this {WHAT[kind]} was sent to an address the account no longer has")
    await conn.execute(
        update(email_tokens).where(email_tokens.c.id == row.id).values(used_at=func.now())
    )
    return row


async def _mark_verified(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    await conn.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(email_verified_at=func.coalesce(users.c.email_verified_at, func.now()))
    )


async def request_password_reset(
    platform: Platform, email: str, ctx: AuditContext
) -> uuid.UUID | None:
    """The queued message, if the address has an account; the caller answers the same
    either way and delivers the message without making the answer wait for it."""
    normalized = email.strip().lower()[:320]
    keys = {
        f"reset:{account_key(normalized)}": RESET_PER_ACCOUNT,
        f"reset:{address_key(ctx.ip)}": RESET_PER_ADDRESS,
    }
    async with platform.db.engine.begin() as conn:
        await throttle_check(conn, keys)
        await throttle_failed(conn, keys)  # every request counts, answered or not
        user = (await conn.execute(select(users).where(users.c.email == normalized))).first()
        queued = None
        if user is not None and not user.disabled:
            mail = await _new_link(
                conn,
                platform.settings,
                user,
                "password_reset",
                "password_reset",
                "Reset your DentalPin password",
            )
            queued = await enqueue(conn, platform.settings, mail)
        await record(
            conn,
            ctx.by(user.id if user else None, normalized),
            "password_reset.requested",
            target=normalized,
            sent=queued is not None,
        )
    return queued


async def reset_password(platform: Platform, token: str, password: str, ctx: AuditContext) -> None:
    """Set a new password through a reset link: every session of the user ends."""
    check_password_strength(password)
    async with platform.db.engine.begin() as conn:
        row = await _spend(conn, platform.settings, "password_reset", token)
        actor = ctx.by(row.user_id, row.email)
        await set_password(conn, row.user_id, password, ctx=actor)
        await _mark_verified(conn, row.user_id)
        # The owner proved the mailbox: their next sign-in is not made to wait.
        await throttle_succeeded(conn, account_key(row.email))
        await record(conn, actor, "password_reset.completed", target=row.email)


async def verification_mail(conn: AsyncConnection, settings: Settings, user_id: uuid.UUID) -> Mail:
    """A verification link for the user's address (after creating the account, or asked
    again); the caller sends it once the transaction commits."""
    user = (await conn.execute(select(users).where(users.c.id == user_id))).one()
    if user.email_verified_at is not None:
        raise Conflict(f"'{user.email}' is already verified")
    return await _new_link(
        conn,
        settings,
        user,
        "email_verification",
        "email_verification",
        "Confirm your e-mail address for DentalPin",
    )


async def verify_email(platform: Platform, token: str, ctx: AuditContext) -> str:
    """Mark the address verified; the address."""
    async with platform.db.engine.begin() as conn:
        row = await _spend(conn, platform.settings, "email_verification", token)
        await _mark_verified(conn, row.user_id)
        await record(conn, ctx.by(row.user_id, row.email), "email.verified", target=row.email)
    email: str = row.email
    return email

"""Sign-in and sessions: password login (throttled), TOTP second factor, access and refresh
tokens, refresh rotation with reuse detection, logout, tenant switch; and the principal of
a verified access token, with its permissions read from the database on every request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from ._audit import AuditContext, record
from ._clients import is_reseller_admin
from ._errors import Conflict, Forbidden, InvalidInput, NotFound, PlatformError, Unauthenticated
from ._passwords import (
    fernet,
    hash_password,
    needs_rehash,
    new_opaque_token,
    token_hash,
    verify_password,
)
from ._roles import ADMIN_ROLE, MFA_PERMISSIONS
from ._runtime import Platform
from ._tables import mfa_challenges, refresh_tokens, tenants, users
from ._throttle import ACCOUNT, ADDRESS, Rule, account_key, address_key
from ._throttle import check as throttle_check
from ._throttle import failed as throttle_failed
from ._throttle import succeeded as throttle_succeeded
from ._tokens import AccessClaims, InvalidToken, refresh_expiry, sign_access_token

MFA_CHALLENGE_TTL_S = 300
MFA_MAX_ATTEMPTS = 5
TOTP_ISSUER = "DentalPin"


class InvalidCredentials(Unauthenticated):
    problem = "invalid-credentials"


class MfaRequired(Unauthenticated):
    """Login succeeded with the password; a second factor must complete it."""

    def __init__(self, mfa_token: str, enrol: bool) -> None:
        self.problem = "mfa-enrolment-required" if enrol else "mfa-required"
        super().__init__(
            "enrol an authenticator app: POST /api/v1/auth/mfa/enrol, then /confirm"
            if enrol
            else "enter the code of your authenticator app: POST /api/v1/auth/mfa"
        )
        self.extra = {"mfa_token": mfa_token, "expires_in": MFA_CHALLENGE_TTL_S}


class NotAMember(Forbidden):
    problem = "not-a-member"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    tenant: str | None = None
    session_id: uuid.UUID | None = None
    """The refresh-token family (`sid`): what a web session's CSRF token is bound to."""

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if self.tenant:
            body["tenant"] = self.tenant
        return body


@dataclass(frozen=True)
class LoadedPrincipal:
    user_id: uuid.UUID
    email: str
    name: str
    is_operator: bool
    tenant_id: uuid.UUID | None
    roles: frozenset[str]
    permissions: frozenset[str]
    location_ids: tuple[str, ...] = field(default_factory=tuple)
    support_grant_id: uuid.UUID | None = None
    """Set when the user acts through a support grant, not a membership."""


class SupportNeedsMfa(Forbidden):
    problem = "mfa-required"


# Principal ---------------------------------------------------------------------------

_GRANTEE_ENTITLED = """(u.is_operator or exists (
            select 1 from platform.reseller_admins ra
             where ra.user_id = u.id and ra.reseller_id = t.reseller_id))"""
"""A support grant works only while its grantee (`u`) is still an operator or an admin of
the reseller that owns the clinic (`t`): one who left loses it at once, not at expiry."""

_PRINCIPAL = text(
    """
    select u.id, u.email, u.name, u.is_operator, u.disabled,
           extract(epoch from u.password_changed_at) as password_epoch,
           exists (select 1 from platform.refresh_tokens r
                    where r.family_id = :sid and r.revoked_at is not null) as revoked,
           m.user_id is not null as member, m.location_ids, t.status as tenant_status,
           g.id as grant_id, held.roles, perms.permissions
      from platform.users u
      left join platform.memberships m on m.user_id = u.id and m.tenant_id = :tenant
      left join platform.tenants t on t.id = :tenant
      -- A valid support grant counts only for a non-member, and only until it ends.
      left join lateral (
            select sg.id, sg.roles from platform.support_grants sg
             where sg.grantee_id = u.id and sg.tenant_id = :tenant and m.user_id is null
               and sg.revoked_at is null and sg.expires_at > now() and __GRANTEE_ENTITLED__
             order by sg.expires_at desc limit 1) g on true
      cross join lateral (
            select coalesce(array_agg(x.role order by x.role), '{}') as roles
              from (select mr.role from platform.membership_roles mr
                     where mr.user_id = u.id and mr.tenant_id = :tenant
                    union
                    select jsonb_array_elements_text(g.roles)) x) held
      cross join lateral (
            select coalesce(array_agg(distinct rp.permission), '{}') as permissions
              from platform.role_permissions rp
             where rp.tenant_id = :tenant and rp.role = any(held.roles)
               and (split_part(rp.permission, '.', 1) = 'platform'
                    or exists (select 1 from platform.tenant_modules tm
                                where tm.tenant_id = rp.tenant_id
                                  and tm.module = split_part(rp.permission, '.', 1)
                                  and tm.state = 'installed'))) perms
     where u.id = :user
    """.replace("__GRANTEE_ENTITLED__", _GRANTEE_ENTITLED)
).bindparams(
    bindparam("user", type_=UUID(as_uuid=True)),
    bindparam("tenant", type_=UUID(as_uuid=True)),
    bindparam("sid", type_=UUID(as_uuid=True)),
)


async def load_principal(platform: Platform, claims: AccessClaims) -> LoadedPrincipal:
    """Who the token's subject is *now*: active user, live session, membership, roles and
    the permissions those roles hold for the tenant's installed modules."""
    if claims.kind != "user":
        raise InvalidToken("this kind of token is not accepted here")
    try:
        user_id = uuid.UUID(claims.subject)
    except ValueError as exc:
        raise InvalidToken("the access token's subject is not valid") from exc
    async with platform.db.engine.connect() as conn:
        row = (
            await conn.execute(
                _PRINCIPAL,
                {"user": user_id, "tenant": claims.tenant_id, "sid": claims.session_id},
            )
        ).first()
    if row is None or row.disabled:
        raise InvalidToken("the account behind this token no longer exists or is disabled")
    if row.revoked:
        raise InvalidToken("this session has ended (logout or a reused refresh token)")
    if row.password_epoch is not None and claims.issued_at < int(row.password_epoch):
        raise InvalidToken("the password changed after this token was issued; sign in again")
    if claims.tenant_id is not None:
        if row.tenant_status != "active":
            raise Forbidden("this token's clinic is not active")
        if not row.member and row.grant_id is None:
            raise NotAMember("you are no longer a member of this clinic (nor have support access)")
        if row.grant_id is not None and not claims.mfa:
            raise SupportNeedsMfa("support access needs a session that passed a second factor")
    return LoadedPrincipal(
        user_id=row.id,
        email=row.email,
        name=row.name,
        is_operator=row.is_operator,
        tenant_id=claims.tenant_id,
        roles=frozenset(row.roles),
        permissions=frozenset(row.permissions),
        location_ids=tuple(row.location_ids or ()),
        support_grant_id=row.grant_id,
    )


def requires_mfa(is_operator: bool, roles: set[str] | frozenset[str], perms: set[str]) -> bool:
    """Operators and tenant admins (role admin, or managing members or roles) need TOTP."""
    return is_operator or ADMIN_ROLE in roles or bool(perms & MFA_PERMISSIONS)


# Membership lookup used at login, refresh and switch ---------------------------------

_MEMBERSHIP = text(
    """
    select t.id, t.slug,
           coalesce((select array_agg(mr.role) from platform.membership_roles mr
                      where mr.user_id = m.user_id and mr.tenant_id = t.id), '{}') as roles,
           coalesce((select array_agg(distinct rp.permission)
                       from platform.membership_roles mr
                       join platform.role_permissions rp
                         on rp.tenant_id = mr.tenant_id and rp.role = mr.role
                      where mr.user_id = m.user_id and mr.tenant_id = t.id), '{}') as permissions,
           false as support
      from platform.memberships m
      join platform.tenants t on t.id = m.tenant_id and t.status = 'active'
     where m.user_id = :user
    union all
    select t.id, t.slug,
           array(select jsonb_array_elements_text(g.roles)) as roles,
           coalesce((select array_agg(distinct rp.permission)
                       from platform.role_permissions rp
                      where rp.tenant_id = g.tenant_id
                        and rp.role in (select jsonb_array_elements_text(g.roles))), '{}'),
           true
      from platform.support_grants g
      join platform.tenants t on t.id = g.tenant_id and t.status = 'active'
      join platform.users u on u.id = g.grantee_id
     where g.grantee_id = :user and g.revoked_at is null and g.expires_at > now()
       and __GRANTEE_ENTITLED__
       and not exists (select 1 from platform.memberships m
                        where m.user_id = g.grantee_id and m.tenant_id = g.tenant_id)
     order by slug
    """.replace("__GRANTEE_ENTITLED__", _GRANTEE_ENTITLED)
).bindparams(bindparam("user", type_=UUID(as_uuid=True)))


@dataclass(frozen=True)
class Membership:
    tenant_id: uuid.UUID
    slug: str
    roles: frozenset[str]
    permissions: frozenset[str]
    support: bool = False
    """Through a valid support grant, not a membership."""


async def memberships_of(conn: AsyncConnection, user_id: uuid.UUID) -> list[Membership]:
    """The user's clinics: memberships, and valid support grants (flagged `support`)."""
    rows = await conn.execute(_MEMBERSHIP, {"user": user_id})
    return [
        Membership(r.id, r.slug, frozenset(r.roles), frozenset(r.permissions), r.support)
        for r in rows
    ]


def _choose(
    memberships: list[Membership], slug: str | None, is_operator: bool
) -> Membership | None:
    if slug:
        for m in memberships:
            if m.slug == slug:
                return m
        raise NotAMember("you are not a member of that clinic (or it does not exist)")
    # Support access is entered on purpose, by naming the clinic, never by default.
    memberships = [m for m in memberships if not m.support]
    if len(memberships) == 1:
        return memberships[0]
    if not memberships and is_operator:
        return None  # a platform session: no clinic, no clinic permissions
    if not memberships:
        raise NotAMember("this account is not a member of any clinic yet")
    raise InvalidInput(
        'this account works for several clinics; say which one with "tenant": '
        + ", ".join(m.slug for m in memberships)
    )


# Sessions ----------------------------------------------------------------------------


async def _new_session(
    platform: Platform,
    conn: AsyncConnection,
    user_id: uuid.UUID,
    membership: Membership | None,
    mfa: bool,
    family: uuid.UUID | None = None,
) -> TokenPair:
    family = family or uuid.uuid4()
    refresh = new_opaque_token("dprt")
    await conn.execute(
        insert(refresh_tokens).values(
            id=uuid.uuid4(),
            family_id=family,
            user_id=user_id,
            tenant_id=membership.tenant_id if membership else None,
            token_hash=token_hash(refresh),
            mfa=mfa,
            expires_at=refresh_expiry(platform),
        )
    )
    access, ttl = await sign_access_token(
        platform,
        subject=str(user_id),
        kind="user",
        tenant_id=membership.tenant_id if membership else None,
        session_id=family,
        mfa=mfa,
    )
    return TokenPair(access, refresh, ttl, membership.slug if membership else None, family)


async def _challenge(
    conn: AsyncConnection, user_id: uuid.UUID, membership: Membership | None, enrol: bool
) -> str:
    token = new_opaque_token("dpmfa")
    await conn.execute(
        insert(mfa_challenges).values(
            id=uuid.uuid4(),
            token_hash=token_hash(token),
            user_id=user_id,
            tenant_id=membership.tenant_id if membership else None,
            purpose="enrol" if enrol else "verify",
            expires_at=datetime.now(UTC) + timedelta(seconds=MFA_CHALLENGE_TTL_S),
        )
    )
    return token


async def sign_in(
    platform: Platform,
    conn: AsyncConnection,
    user: Any,
    membership: Membership | None,
    ctx: AuditContext,
    *,
    reseller_admin: bool,
    **details: Any,
) -> TokenPair | MfaRequired:
    """The first factor checked out (a password, an OpenID provider): open the session, or
    return the second-factor challenge the user owes first. Audited either way."""
    actor = ctx.by(user.id, user.email)
    tenant_id = membership.tenant_id if membership else None
    need_mfa = (
        user.totp_enabled_at is not None
        or requires_mfa(
            user.is_operator,
            membership.roles if membership else frozenset(),
            set(membership.permissions) if membership else set(),
        )
        or reseller_admin
        # Support access through a grant always takes a second factor.
        or (membership is not None and membership.support)
    )
    if need_mfa:
        enrol = user.totp_enabled_at is None
        challenge = await _challenge(conn, user.id, membership, enrol)
        await record(
            conn,
            actor,
            "login.mfa_challenge",
            tenant_id=tenant_id,
            target=user.email,
            enrol=enrol,
            **details,
        )
        return MfaRequired(challenge, enrol)
    pair = await _new_session(platform, conn, user.id, membership, mfa=False)
    await record(conn, actor, "login.succeeded", tenant_id=tenant_id, target=user.email, **details)
    return pair


async def login(
    platform: Platform, email: str, password: str, tenant: str | None, ctx: AuditContext
) -> TokenPair:
    """Password login. Raises Throttled (429), InvalidCredentials (401), MfaRequired (401
    with an mfa token), NotAMember (403)."""
    normalized = email.strip().lower()[:320]
    keys: dict[str, Rule] = {account_key(normalized): ACCOUNT, address_key(ctx.ip): ADDRESS}
    failure: PlatformError | None = None
    pair: TokenPair | None = None
    async with platform.db.engine.begin() as conn:
        await throttle_check(conn, keys)  # raises 429, nothing to keep
        row = (await conn.execute(select(users).where(users.c.email == normalized))).first()
        ok = await asyncio.to_thread(verify_password, row.password_hash if row else None, password)
        if not ok or row is None or row.disabled:
            await throttle_failed(conn, keys)
            await record(
                conn,
                ctx.by(row.id if row else None, normalized),
                "login.failed",
                target=normalized,
                reason="bad password" if row else "unknown account",
            )
            failure = InvalidCredentials("wrong e-mail or password")
        else:
            if needs_rehash(row.password_hash):
                await conn.execute(
                    update(users)
                    .where(users.c.id == row.id)
                    .values(password_hash=hash_password(password))
                )
            reseller_admin = await is_reseller_admin(conn, row.id)
            membership = _choose(
                await memberships_of(conn, row.id), tenant, row.is_operator or reseller_admin
            )
            outcome = await sign_in(
                platform, conn, row, membership, ctx, reseller_admin=reseller_admin
            )
            if isinstance(outcome, MfaRequired):
                failure = outcome
            else:
                # Cleared only when a session opens: a right password alone does not reset
                # the counter that also limits guesses at the second factor.
                await throttle_succeeded(conn, account_key(normalized))
                pair = outcome
    # Committed: the failure counters and audit entries stay even though we refuse.
    if failure is not None:
        raise failure
    assert pair is not None
    return pair


def _totp_ok(platform: Platform, encrypted: str, code: str, last_step: int | None) -> int | None:
    """The time step the code matches (current +/- 1), unless it was already used."""
    code = code.strip().replace(" ", "")
    if not code.isdigit() or len(code) != 6:
        return None
    secret = fernet(platform.settings, "totp").decrypt(encrypted.encode()).decode()
    totp = pyotp.TOTP(secret)
    now = int(time.time())
    for offset in (0, -1, 1):
        step = (now // 30) + offset
        if totp.at(step * 30) == code and (last_step is None or step > last_step):
            return step
    return None


async def _lock_challenge(conn: AsyncConnection, mfa_token: str, purpose: str) -> Any:
    row = (
        await conn.execute(
            select(mfa_challenges)
            .where(mfa_challenges.c.token_hash == token_hash(mfa_token))
            .with_for_update()
        )
    ).first()
    if (
        row is None
        or row.purpose != purpose
        or row.used_at is not None
        or row.expires_at < datetime.now(UTC)
        or row.attempts >= MFA_MAX_ATTEMPTS
    ):
        raise InvalidToken("this sign-in step expired or was already used; sign in again")
    return row


async def _membership_for(
    conn: AsyncConnection, user_id: uuid.UUID, tenant_id: uuid.UUID | None
) -> Membership | None:
    if tenant_id is None:
        return None
    for m in await memberships_of(conn, user_id):
        if m.tenant_id == tenant_id:
            return m
    raise NotAMember("you are no longer a member of that clinic")


async def complete_mfa(
    platform: Platform, mfa_token: str, code: str, ctx: AuditContext
) -> TokenPair:
    failure: PlatformError | None = None
    pair: TokenPair | None = None
    async with platform.db.engine.begin() as conn:
        challenge = await _lock_challenge(conn, mfa_token, "verify")
        user = (await conn.execute(select(users).where(users.c.id == challenge.user_id))).one()
        actor = ctx.by(user.id, user.email)
        # Wrong codes count against the account like wrong passwords (growing delays).
        keys: dict[str, Rule] = {account_key(user.email): ACCOUNT}
        await throttle_check(conn, keys)
        step = (
            _totp_ok(platform, user.totp_secret, code, user.totp_last_step)
            if user.totp_secret and user.totp_enabled_at
            else None
        )
        if step is None:
            await conn.execute(
                update(mfa_challenges)
                .where(mfa_challenges.c.id == challenge.id)
                .values(attempts=mfa_challenges.c.attempts + 1)
            )
            await throttle_failed(conn, keys)
            await record(
                conn, actor, "login.mfa_failed", tenant_id=challenge.tenant_id, target=user.email
            )
            failure = InvalidCredentials("the code is not valid")
        else:
            await conn.execute(
                update(users).where(users.c.id == user.id).values(totp_last_step=step)
            )
            pair = await _finish_mfa_login(platform, conn, actor, user, challenge)
    if failure is not None:
        raise failure
    assert pair is not None
    return pair


async def start_enrolment(
    platform: Platform,
    user_id: uuid.UUID | None,
    mfa_token: str | None,
    ctx: AuditContext,
    password: str | None = None,
) -> dict[str, str]:
    """A new TOTP secret for the user (pending until confirmed with a code). Signed in
    (no login challenge), the password is asked again: a stolen access token alone must
    not be able to bind the account to the thief's authenticator."""
    async with platform.db.engine.begin() as conn:
        if mfa_token:
            user_id = (await _lock_challenge(conn, mfa_token, "enrol")).user_id
        if user_id is None:
            raise Unauthenticated("authentication required")
        user = (await conn.execute(select(users).where(users.c.id == user_id))).one()
        if not mfa_token and not await asyncio.to_thread(
            verify_password, user.password_hash, password or ""
        ):
            raise InvalidCredentials("enrolling a second factor needs your current password")
        if user.totp_enabled_at is not None:
            raise Conflict("a second factor is already enrolled for this account")
        secret = pyotp.random_base32()
        encrypted = fernet(platform.settings, "totp").encrypt(secret.encode()).decode()
        await conn.execute(update(users).where(users.c.id == user.id).values(totp_secret=encrypted))
        await record(conn, ctx.by(user.id, user.email), "mfa.enrolment_started", target=user.email)
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)
    return {"secret": secret, "otpauth_uri": uri}


async def confirm_enrolment(
    platform: Platform,
    user_id: uuid.UUID | None,
    mfa_token: str | None,
    code: str,
    ctx: AuditContext,
) -> TokenPair | None:
    """Enable the pending TOTP secret; through a login's enrolment challenge, finish the login."""
    failure: PlatformError | None = None
    pair: TokenPair | None = None
    async with platform.db.engine.begin() as conn:
        challenge = await _lock_challenge(conn, mfa_token, "enrol") if mfa_token else None
        if challenge is not None:
            user_id = challenge.user_id
        if user_id is None:
            raise Unauthenticated("authentication required")
        user = (await conn.execute(select(users).where(users.c.id == user_id))).one()
        actor = ctx.by(user.id, user.email)
        keys = {account_key(user.email): ACCOUNT}
        await throttle_check(conn, keys)
        if user.totp_enabled_at is not None:
            raise Conflict("a second factor is already enrolled for this account")
        if not user.totp_secret:
            raise Conflict("start the enrolment first: POST /api/v1/auth/mfa/enrol")
        step = _totp_ok(platform, user.totp_secret, code, user.totp_last_step)
        if step is None:
            if challenge is not None:
                await conn.execute(
                    update(mfa_challenges)
                    .where(mfa_challenges.c.id == challenge.id)
                    .values(attempts=mfa_challenges.c.attempts + 1)
                )
            await throttle_failed(conn, keys)
            await record(conn, actor, "mfa.enrolment_failed", target=user.email)
            failure = InvalidCredentials("the code is not valid")
        else:
            await conn.execute(
                update(users)
                .where(users.c.id == user.id)
                .values(totp_enabled_at=func.now(), totp_last_step=step)
            )
            await record(conn, actor, "mfa.enrolled", target=user.email)
            if challenge is not None:
                pair = await _finish_mfa_login(platform, conn, actor, user, challenge)
    if failure is not None:
        raise failure
    return pair


async def _revoke_family(conn: AsyncConnection, family: uuid.UUID) -> None:
    await conn.execute(
        update(refresh_tokens)
        .where(refresh_tokens.c.family_id == family, refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )


async def refresh(platform: Platform, token: str, ctx: AuditContext) -> TokenPair:
    """Rotate a refresh token. Presenting one that was already rotated (or revoked) is
    reuse: the whole family is revoked, access tokens of the session included."""
    failure: PlatformError | None = None
    pair: TokenPair | None = None
    async with platform.db.engine.begin() as conn:
        row = (
            await conn.execute(
                select(refresh_tokens)
                .where(refresh_tokens.c.token_hash == token_hash(token[:200]))
                .with_for_update()
            )
        ).first()
        if row is None:
            raise InvalidToken("unknown refresh token")
        user = (await conn.execute(select(users).where(users.c.id == row.user_id))).one()
        actor = ctx.by(user.id, user.email)
        if row.used_at is not None or row.revoked_at is not None:
            await _revoke_family(conn, row.family_id)
            if row.used_at is not None:
                await record(
                    conn,
                    actor,
                    "token.reuse_detected",
                    tenant_id=row.tenant_id,
                    target=str(row.family_id),
                )
            failure = InvalidToken("this refresh token was already used; the session is revoked")
        elif row.expires_at < datetime.now(UTC) or user.disabled:
            failure = InvalidToken("the session has expired; sign in again")
        else:
            await conn.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.id == row.id)
                .values(used_at=func.now())
            )
            try:
                membership = await _membership_for(conn, user.id, row.tenant_id)
            except NotAMember:
                await _revoke_family(conn, row.family_id)
                failure = NotAMember("you are no longer a member of that clinic")
            else:
                pair = await _new_session(
                    platform, conn, user.id, membership, row.mfa, family=row.family_id
                )
    if failure is not None:
        raise failure
    assert pair is not None
    return pair


async def logout(
    platform: Platform,
    session_id: uuid.UUID | None,
    user_id: uuid.UUID,
    ctx: AuditContext,
    tenant_id: uuid.UUID | None,
) -> None:
    async with platform.db.engine.begin() as conn:
        if session_id is not None:
            await conn.execute(
                update(refresh_tokens)
                .where(
                    refresh_tokens.c.family_id == session_id,
                    refresh_tokens.c.user_id == user_id,
                    refresh_tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=func.now())
            )
        await record(conn, ctx, "logout", tenant_id=tenant_id, target=str(session_id))


async def switch(
    platform: Platform,
    user_id: uuid.UUID,
    slug: str,
    session_mfa: bool,
    ctx: AuditContext,
    from_tenant: uuid.UUID | None,
) -> TokenPair:
    """A new session in another clinic the user belongs to (a new sign-in for that clinic:
    if it needs a second factor the current session did not pass, a challenge instead)."""
    failure: PlatformError | None = None
    pair: TokenPair | None = None
    async with platform.db.engine.begin() as conn:
        user = (await conn.execute(select(users).where(users.c.id == user_id))).one()
        membership = _choose(await memberships_of(conn, user_id), slug, user.is_operator)
        assert membership is not None
        need = (
            requires_mfa(user.is_operator, membership.roles, set(membership.permissions))
            or membership.support
            or await is_reseller_admin(conn, user_id)
        )
        if (need or user.totp_enabled_at is not None) and not session_mfa:
            enrol = user.totp_enabled_at is None
            failure = MfaRequired(await _challenge(conn, user_id, membership, enrol), enrol)
        else:
            pair = await _new_session(platform, conn, user_id, membership, mfa=session_mfa)
        await record(
            conn,
            ctx,
            "tenant.switch",
            tenant_id=membership.tenant_id,
            target=membership.slug,
            from_tenant=str(from_tenant) if from_tenant else None,
        )
    if failure is not None:
        raise failure
    assert pair is not None
    return pair


async def change_password(
    platform: Platform, user_id: uuid.UUID, current: str, new: str, ctx: AuditContext
) -> None:
    from ._identity import set_password

    async with platform.db.engine.begin() as conn:
        row = (await conn.execute(select(users).where(users.c.id == user_id))).one()
        if not await asyncio.to_thread(verify_password, row.password_hash, current):
            raise InvalidCredentials("the current password is wrong")
        await set_password(conn, user_id, new, ctx=ctx)


async def tenant_summary(platform: Platform, tenant_id: uuid.UUID) -> dict[str, Any]:
    async with platform.db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(tenants.c.id, tenants.c.slug, tenants.c.name).where(
                    tenants.c.id == tenant_id
                )
            )
        ).first()
    if row is None:
        raise NotFound("no such clinic")
    return {"id": str(row.id), "slug": row.slug, "name": row.name}


async def _finish_mfa_login(
    platform: Platform, conn: AsyncConnection, actor: AuditContext, user: Any, challenge: Any
) -> TokenPair:
    """The second factor checked out: spend the challenge and open the session."""
    await conn.execute(
        update(mfa_challenges).where(mfa_challenges.c.id == challenge.id).values(used_at=func.now())
    )
    await throttle_succeeded(conn, account_key(user.email))
    membership = await _membership_for(conn, user.id, challenge.tenant_id)
    pair = await _new_session(platform, conn, user.id, membership, mfa=True)
    await record(
        conn, actor, "login.succeeded", tenant_id=challenge.tenant_id, target=user.email, mfa=True
    )
    return pair

"""Resellers, their admins, and their integration clients (OAuth2 client credentials).

A client authenticates with its id and secret at `POST /api/v1/auth/token` and gets a
short-lived access token of kind `client`, with the scopes it asked for among those it
was given. Client tokens name no tenant: they never reach a clinic's routes (clinical
data), whatever their scopes.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ._audit import AuditContext, record
from ._errors import Conflict, InvalidInput, NotFound, PlatformError, Unauthenticated
from ._identity import get_user
from ._passwords import token_hash
from ._plans import get_plan
from ._runtime import Platform
from ._tables import api_clients, reseller_admins, resellers
from ._throttle import ACCOUNT, ADDRESS, Rule, address_key
from ._throttle import check as throttle_check
from ._throttle import failed as throttle_failed
from ._throttle import succeeded as throttle_succeeded
from ._tokens import AccessClaims, InvalidToken, sign_access_token

SCOPES: dict[str, str] = {
    "tenants:read": "List and show the reseller's clinics, their modules and roles",
    "tenants:write": "Create the reseller's clinics; request a clinic's archive (approval)",
    "modules:write": "Install, upgrade, restore and uninstall modules the reseller's plan allows",
    "jobs:read": "Follow the lifecycle jobs of the reseller's clinics",
    "members:read": "List the members of the reseller's clinics",
    "members:write": "Create accounts and a new clinic's first members (until it has an admin)",
    "usage:read": "Read the reseller's plan and the usage of its clinics",
}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{1,79}$")
CLIENT_ID = re.compile(r"^dpc_[0-9a-f]{16}$")


class InvalidClient(Unauthenticated):
    problem = "invalid-client"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.extra = {"error": "invalid_client"}  # RFC 6749 §5.2, for OAuth libraries


class InvalidScope(PlatformError):
    status = 400
    problem = "invalid-scope"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.extra = {"error": "invalid_scope"}


class UnsupportedGrantType(PlatformError):
    status = 400
    problem = "unsupported-grant-type"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.extra = {"error": "unsupported_grant_type"}


def _name(value: str, what: str) -> str:
    value = value.strip()
    if not NAME.match(value):
        raise InvalidInput(f"a {what} name is 2-80 letters, digits, spaces, '.', '_' or '-'")
    return value


async def create_reseller(
    conn: AsyncConnection, name: str, plan: str = "standard", *, ctx: AuditContext
) -> dict[str, Any]:
    name = _name(name, "reseller")
    try:
        plan = (await get_plan(conn, plan)).name
    except NotFound as exc:
        raise InvalidInput(exc.detail) from None
    reseller_id = uuid.uuid4()
    try:
        async with conn.begin_nested():
            await conn.execute(insert(resellers).values(id=reseller_id, name=name, plan=plan))
    except IntegrityError:
        raise Conflict(f"a reseller named '{name}' already exists") from None
    await record(conn, ctx, "reseller.created", target=name, plan=plan)
    return {"id": str(reseller_id), "name": name, "plan": plan}


async def set_reseller_plan(
    conn: AsyncConnection, reseller: Any, plan: str, *, ctx: AuditContext
) -> dict[str, Any]:
    """Move a reseller (a row of `resellers`) to another plan: it binds what the
    reseller's actors and clinic admins do next; nothing they have is taken away."""
    try:
        plan = (await get_plan(conn, plan)).name
    except NotFound as exc:
        raise InvalidInput(exc.detail) from None
    await conn.execute(update(resellers).where(resellers.c.id == reseller.id).values(plan=plan))
    await record(
        conn, ctx, "reseller.plan_changed", target=reseller.name, before=reseller.plan, after=plan
    )
    return {"id": str(reseller.id), "name": reseller.name, "plan": plan}


async def reseller_by_name(conn: AsyncConnection, name: str) -> Any:
    row = (await conn.execute(select(resellers).where(resellers.c.name == name.strip()))).first()
    if row is None:
        raise NotFound(f"no reseller named '{name[:80]}'")
    return row


async def add_reseller_admin(
    conn: AsyncConnection, name: str, email: str, *, ctx: AuditContext
) -> None:
    reseller = await reseller_by_name(conn, name)
    user = await get_user(conn, email)
    try:
        async with conn.begin_nested():
            await conn.execute(
                insert(reseller_admins).values(reseller_id=reseller.id, user_id=user.id)
            )
    except IntegrityError:
        raise Conflict(f"{user.email} is already an admin of '{reseller.name}'") from None
    await record(conn, ctx, "reseller.admin_added", target=user.email, reseller=reseller.name)


async def reseller_by_id(conn: AsyncConnection, reseller_id: uuid.UUID) -> Any:
    row = (await conn.execute(select(resellers).where(resellers.c.id == reseller_id))).first()
    if row is None:
        raise NotFound("no such reseller")
    return row


async def resellers_of(conn: AsyncConnection, user_id: uuid.UUID) -> frozenset[uuid.UUID]:
    """The resellers a user administers (usually one)."""
    rows = await conn.execute(
        select(reseller_admins.c.reseller_id).where(reseller_admins.c.user_id == user_id)
    )
    return frozenset(rows.scalars())


async def is_reseller_admin(conn: AsyncConnection, user_id: uuid.UUID) -> bool:
    found = await conn.scalar(
        select(reseller_admins.c.user_id).where(reseller_admins.c.user_id == user_id).limit(1)
    )
    return found is not None


async def list_resellers(
    conn: AsyncConnection, only: frozenset[uuid.UUID] | None = None
) -> list[dict[str, Any]]:
    """Every reseller, or only those of `only`, with their plan and counts."""
    admins = (
        select(func.count())
        .select_from(reseller_admins)
        .where(reseller_admins.c.reseller_id == resellers.c.id)
        .scalar_subquery()
    )
    clients = (
        select(func.count())
        .select_from(api_clients)
        .where(api_clients.c.reseller_id == resellers.c.id, api_clients.c.revoked_at.is_(None))
        .scalar_subquery()
    )
    query = select(resellers, admins.label("admins"), clients.label("clients")).order_by(
        resellers.c.name
    )
    if only is not None:
        query = query.where(resellers.c.id.in_(sorted(only)))
    rows = await conn.execute(query)
    return [
        {"id": str(r.id), "name": r.name, "plan": r.plan, "admins": r.admins, "clients": r.clients}
        for r in rows
    ]


async def create_client(
    conn: AsyncConnection,
    name: str,
    reseller: str | uuid.UUID,
    scopes: list[str],
    *,
    ctx: AuditContext,
) -> tuple[str, str]:
    """A new client of a reseller (its name or id); returns (client id, secret). The
    secret is shown once."""
    name = _name(name, "client")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(
            f"scopes must be some of {', '.join(sorted(SCOPES))}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    owner = await (
        reseller_by_id(conn, reseller)
        if isinstance(reseller, uuid.UUID)
        else reseller_by_name(conn, reseller)
    )
    client_id = f"dpc_{secrets.token_hex(8)}"
    secret = f"dpcs_{secrets.token_urlsafe(32)}"
    await conn.execute(
        insert(api_clients).values(
            id=client_id,
            name=name,
            reseller_id=owner.id,
            secret_hash=token_hash(secret),
            scopes=sorted(set(scopes)),
        )
    )
    await record(
        conn, ctx, "client.created", target=client_id, reseller=owner.name, scopes=sorted(scopes)
    )
    return client_id, secret


def _client(row: Any) -> dict[str, Any]:
    return {
        "client_id": row.id,
        "name": row.name,
        "reseller_id": str(row.reseller_id),
        "scopes": list(row.scopes),
        "created_at": row.created_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


async def list_clients(
    conn: AsyncConnection, only: frozenset[uuid.UUID] | None = None
) -> list[dict[str, Any]]:
    """Integration clients (never their secrets), of every reseller or of `only`'s."""
    query = select(api_clients).order_by(api_clients.c.created_at, api_clients.c.id)
    if only is not None:
        query = query.where(api_clients.c.reseller_id.in_(sorted(only)))
    return [_client(r) for r in await conn.execute(query)]


async def revoke_client(
    conn: AsyncConnection,
    client_id: str,
    only: frozenset[uuid.UUID] | None = None,
    *,
    ctx: AuditContext,
) -> dict[str, Any]:
    """Revoke a client: its tokens stop working at once (`load_client` checks). A client
    of another reseller than `only`'s is reported as not found."""
    query = select(api_clients).where(api_clients.c.id == client_id[:64]).with_for_update()
    if only is not None:
        query = query.where(api_clients.c.reseller_id.in_(sorted(only)))
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"no client '{client_id[:64]}'")
    if row.revoked_at is None:
        row = (
            await conn.execute(
                update(api_clients)
                .where(api_clients.c.id == row.id)
                .values(revoked_at=func.now())
                .returning(api_clients)
            )
        ).one()
        await record(conn, ctx, "client.revoked", target=row.id)
    return _client(row)


@dataclass(frozen=True)
class ClientToken:
    access_token: str
    expires_in: int
    scopes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": " ".join(self.scopes),
        }


async def client_credentials(
    platform: Platform,
    client_id: str,
    secret: str,
    requested: list[str] | None,
    ctx: AuditContext,
) -> ClientToken:
    """RFC 6749 §4.4: an access token for a client that proves its secret (throttled like
    passwords, per client id and per address)."""
    client_id = client_id.strip()[:64]
    keys: dict[str, Rule] = {f"client:{client_id}": ACCOUNT, address_key(ctx.ip): ADDRESS}
    failure: Exception | None = None
    granted: tuple[str, ...] = ()
    async with platform.db.engine.begin() as conn:
        await throttle_check(conn, keys)
        row = (
            await conn.execute(select(api_clients).where(api_clients.c.id == client_id))
            if CLIENT_ID.match(client_id)
            else None
        )
        client = row.first() if row is not None else None
        expected = client.secret_hash if client is not None else token_hash(secrets.token_hex())
        ok = hmac.compare_digest(expected, await asyncio.to_thread(token_hash, secret[:200]))
        if client is None or not ok or client.revoked_at is not None:
            await throttle_failed(conn, keys)
            await record(conn, ctx.by(None, client_id), "client.auth_failed", target=client_id)
            failure = InvalidClient("unknown client or wrong secret")
        else:
            await throttle_succeeded(conn, f"client:{client_id}")
            allowed = tuple(client.scopes)
            wanted = tuple(dict.fromkeys(requested)) if requested else allowed
            beyond = sorted(set(wanted) - set(allowed))
            if beyond:
                failure = InvalidScope(f"this client was not given: {', '.join(beyond)}")
            else:
                granted = tuple(sorted(wanted))
                await record(
                    conn,
                    ctx.by(None, client_id),
                    "client.token_issued",
                    target=client_id,
                    scopes=list(granted),
                )
    if failure is not None:
        raise failure
    token, ttl = await sign_access_token(
        platform,
        subject=client_id,
        kind="client",
        tenant_id=None,
        session_id=None,
        mfa=False,
        scopes=granted,
    )
    return ClientToken(token, ttl, granted)


@dataclass(frozen=True)
class LoadedClient:
    client_id: str
    name: str
    reseller_id: uuid.UUID
    scopes: frozenset[str]


async def load_client(platform: Platform, claims: AccessClaims) -> LoadedClient:
    """The client behind a client token, now: not revoked; scopes those it still has."""
    if claims.tenant_id is not None or claims.session_id is not None:
        raise InvalidToken("the access token's claims are not valid")
    async with platform.db.engine.connect() as conn:
        row = (
            await conn.execute(select(api_clients).where(api_clients.c.id == claims.subject))
        ).first()
    if row is None or row.revoked_at is not None:
        raise InvalidToken("this client no longer exists or was revoked")
    return LoadedClient(
        row.id, row.name, row.reseller_id, frozenset(claims.scopes) & frozenset(row.scopes)
    )

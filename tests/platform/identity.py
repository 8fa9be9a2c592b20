"""Helpers for the identity tests: users, memberships, sessions, HTTP clients, TOTP codes."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import pyotp
from sqlalchemy import select

from dentalpin.app import create_app
from dentalpin.platform._audit import CLI
from dentalpin.platform._auth import TokenPair, _new_session, memberships_of
from dentalpin.platform._identity import UserRecord, create_user, set_membership
from dentalpin.platform._jobs import executor_of, submit
from dentalpin.platform._passwords import fernet
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import users
from dentalpin.tenants import TenantRecord

PASSWORD = "correct horse battery staple"


def random_ip() -> str:
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{1 + secrets.randbelow(250)}"


def client(platform: Platform, host: str = "localhost", ip: str | None = None) -> httpx.AsyncClient:
    """An HTTP client of the app; each gets its own client address so throttling by
    address in one test never spills into another."""
    transport = httpx.ASGITransport(
        app=create_app(platform), raise_app_exceptions=False, client=(ip or random_ip(), 4321)
    )
    return httpx.AsyncClient(transport=transport, base_url=f"http://{host}")


def host_of(tenant: TenantRecord) -> str:
    return f"{tenant.slug}.localhost"


async def make_user(
    platform: Platform,
    email: str | None = None,
    password: str | None = PASSWORD,
    *,
    operator: bool = False,
    name: str = "Test User",
) -> UserRecord:
    email = email or f"user-{secrets.token_hex(4)}@example.es"
    async with platform.db.engine.begin() as conn:
        user = await create_user(conn, email, name, password, ctx=CLI)
        if operator:
            await conn.execute(users.update().where(users.c.id == user.id).values(is_operator=True))
    return user


async def add_member(
    platform: Platform,
    tenant: TenantRecord,
    user: UserRecord,
    roles: Iterable[str],
    locations: Iterable[str] = (),
) -> None:
    async with platform.db.engine.begin() as conn:
        await set_membership(
            conn, platform.registry, tenant.id, user.id, list(roles), list(locations), ctx=CLI
        )


async def session(
    platform: Platform, user: UserRecord, tenant: TenantRecord | None, *, mfa: bool = True
) -> TokenPair:
    """Tokens for a member, minted the way a completed sign-in mints them (no TOTP dance)."""
    async with platform.db.engine.begin() as conn:
        membership = None
        if tenant is not None:
            membership = next(
                m for m in await memberships_of(conn, user.id) if m.tenant_id == tenant.id
            )
        return await _new_session(platform, conn, user.id, membership, mfa=mfa)


def bearer(pair: TokenPair | str) -> dict[str, str]:
    token = pair if isinstance(pair, str) else pair.access_token
    return {"authorization": f"Bearer {token}"}


async def totp_secret(platform: Platform, user_id: uuid.UUID) -> str:
    async with platform.db.engine.connect() as conn:
        encrypted = await conn.scalar(select(users.c.totp_secret).where(users.c.id == user_id))
    return fernet(platform.settings, "totp").decrypt(encrypted.encode()).decode()


def code(secret: str, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(int(time.time()) + 30 * offset_steps)


async def run_job(platform: Platform, kind: str, tenant: TenantRecord, **params: Any) -> Any:
    job = await submit(platform, kind, tenant.id, params)
    return await executor_of(platform).wait(platform, job.id)


async def clinic_with_admin(
    platform: Platform, prefix: str, modules: Iterable[str] = ("recall",)
) -> tuple[TenantRecord, dict[str, str]]:
    """A new clinic and the bearer headers of an admin of it."""
    from dentalpin.tenants import create_tenant
    from tests.conftest import unique_slug

    tenant = await create_tenant(platform, unique_slug(prefix), modules=list(modules))
    admin = await make_user(platform)
    await add_member(platform, tenant, admin, ["admin"])
    return tenant, bearer(await session(platform, admin, tenant))

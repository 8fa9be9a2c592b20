"""A small world for the platform API tests: two resellers with a clinic each, their
admins and integration clients, an operator, a clinic member who is none of these."""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from dentalpin.platform._audit import CLI
from dentalpin.platform._clients import SCOPES, add_reseller_admin, create_client, create_reseller
from dentalpin.platform._identity import UserRecord
from dentalpin.platform._jobs import JobRecord, executor_of
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import TenantRecord, create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import add_member, bearer, client, make_user, session

TOKEN = "/api/v1/auth/token"


@dataclass
class Reseller:
    id: uuid.UUID
    name: str
    admin: UserRecord
    admin_headers: dict[str, str]
    client_id: str
    client_headers: dict[str, str]
    tenant: TenantRecord


@dataclass
class World:
    operator: dict[str, str]
    r1: Reseller
    r2: Reseller
    outsider: dict[str, str]
    """A clinic admin (tenant token), neither operator nor reseller admin."""
    outsider_user: UserRecord
    extra: dict[str, Any] = field(default_factory=dict)


async def make_plan(
    platform: Platform,
    *,
    max_tenants: int | None = None,
    modules: list[str] | None = None,
    countries: list[str] | None = None,
) -> str:
    name = f"plan-{secrets.token_hex(3)}"
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            text(
                "insert into platform.plans (name, description, max_tenants, modules, countries) "
                "values (:n, 'test plan', :m, cast(:mods as jsonb), cast(:c as jsonb))"
            ),
            {
                "n": name,
                "m": max_tenants,
                "mods": json.dumps(modules) if modules is not None else None,
                "c": json.dumps(countries) if countries is not None else None,
            },
        )
    return name


async def client_token(platform: Platform, client_id: str, secret: str) -> dict[str, str]:
    async with client(platform) as http:
        response = await http.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
    assert response.status_code == 200, response.text
    return bearer(response.json()["access_token"])


async def make_reseller(
    platform: Platform,
    plan: str = "pro",
    scopes: tuple[str, ...] = tuple(SCOPES),
    modules: tuple[str, ...] = (),
) -> Reseller:
    name = f"Reseller {secrets.token_hex(3)}"
    admin = await make_user(platform)
    async with platform.db.engine.begin() as conn:
        made = await create_reseller(conn, name, plan, ctx=CLI)
        await add_reseller_admin(conn, name, admin.email, ctx=CLI)
        client_id, secret = await create_client(conn, "Provisioning", name, list(scopes), ctx=CLI)
    reseller_id = uuid.UUID(made["id"])
    tenant = await create_tenant(
        platform, unique_slug("rs"), modules=list(modules), reseller_id=reseller_id
    )
    return Reseller(
        id=reseller_id,
        name=name,
        admin=admin,
        admin_headers=bearer(await session(platform, admin, None)),
        client_id=client_id,
        client_headers=await client_token(platform, client_id, secret),
        tenant=tenant,
    )


async def make_world(platform: Platform) -> World:
    operator = await make_user(platform, operator=True)
    r1 = await make_reseller(platform)
    r2 = await make_reseller(platform)
    outsider = await make_user(platform)
    await add_member(platform, r1.tenant, outsider, ["admin"])
    return World(
        operator=bearer(await session(platform, operator, None)),
        r1=r1,
        r2=r2,
        outsider=bearer(await session(platform, outsider, r1.tenant)),
        outsider_user=outsider,
    )


async def wait(platform: Platform, job_id: str) -> JobRecord:
    return await executor_of(platform).wait(platform, uuid.UUID(job_id))

"""A clinic for the locations, catalog and patients tests: a tenant with the modules, and a
member of every role with a token (plus, optionally, members limited to a location)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from dentalpin.platform._jobs import executor_of, submit
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import TenantRecord, create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import add_member, bearer, client, host_of, make_user, session

ROLES = ("admin", "dentist", "hygienist", "assistant", "receptionist", "accountant")


@dataclass
class Clinic:
    platform: Platform
    tenant: TenantRecord
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)
    users: dict[str, uuid.UUID] = field(default_factory=dict)

    def http(self) -> httpx.AsyncClient:
        return client(self.platform, host_of(self.tenant))

    def as_(self, role: str) -> dict[str, str]:
        return self.tokens[role]

    async def member(self, name: str, roles: list[str], locations: tuple[str, ...] = ()) -> None:
        """Another member, e.g. an admin limited to one location; its token under `name`."""
        user = await make_user(self.platform, name=f"{name} {secrets.token_hex(2)}")
        await add_member(self.platform, self.tenant, user, roles, locations)
        self.users[name] = user.id
        self.tokens[name] = bearer(await session(self.platform, user, self.tenant))


async def open_clinic(platform: Platform, modules: list[str], prefix: str = "clinic") -> Clinic:
    tenant = await create_tenant(platform, unique_slug(prefix), modules=modules)
    clinic = Clinic(platform, tenant)
    for role in ROLES:
        await clinic.member(role, [role])
    return clinic


def if_match(response: httpx.Response) -> dict[str, str]:
    """Headers for a change to the row `response` returned (its ETag as If-Match)."""
    return {"If-Match": response.headers["ETag"]}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The RFC 9457 body of an error response, after checking its status and media type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


async def run_job(platform: Platform, tenant: TenantRecord, kind: str, **params: Any) -> Any:
    job = await submit(platform, kind, tenant.id, params)
    return await executor_of(platform).wait(platform, job.id)

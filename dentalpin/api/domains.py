"""A clinic's custom domains: claim, verify by DNS, list, remove (/api/v1/domains)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from dentalpin.platform import Principal, require_permission
from dentalpin.platform._domains import add_domain, list_domains, remove_domain, verify_domain
from dentalpin.platform._http import get_platform, get_principal
from dentalpin.platform._request_id import audit_context
from dentalpin.platform._runtime import Platform

from ._platform import clinic_id

API = "/api/v1"
DOMAINS = "platform.domain.manage"

router = APIRouter(tags=["custom domains"])
PlatformDep = Annotated[Platform, Depends(get_platform)]
Signed = Annotated[Principal, Depends(get_principal)]
Hostname = Annotated[str, Path(max_length=253)]


class DomainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hostname: str = Field(min_length=3, max_length=253)


@router.get(f"{API}/domains", dependencies=[require_permission(DOMAINS)])
async def domains(principal: Signed, platform: PlatformDep) -> list[dict[str, Any]]:
    async with platform.db.engine.connect() as conn:
        return await list_domains(conn, clinic_id(principal))


@router.post(f"{API}/domains", dependencies=[require_permission(DOMAINS)], status_code=201)
async def add(
    body: DomainIn, principal: Signed, request: Request, platform: PlatformDep
) -> dict[str, Any]:
    """Claim a host name. It is not routed here until verified: publish the TXT record the
    answer names, then POST /api/v1/domains/{hostname}/verify."""
    async with platform.db.engine.begin() as conn:
        return await add_domain(
            conn, platform.settings, clinic_id(principal), body.hostname, audit_context(request)
        )


@router.post(f"{API}/domains/{{hostname}}/verify", dependencies=[require_permission(DOMAINS)])
async def verify(
    hostname: Hostname, principal: Signed, request: Request, platform: PlatformDep
) -> dict[str, Any]:
    """Look the TXT record up now; 409 `domain-not-verified` says what is missing."""
    return await verify_domain(platform, clinic_id(principal), hostname, audit_context(request))


@router.delete(
    f"{API}/domains/{{hostname}}", dependencies=[require_permission(DOMAINS)], status_code=204
)
async def remove(
    hostname: Hostname, principal: Signed, request: Request, platform: PlatformDep
) -> Response:
    async with platform.db.engine.begin() as conn:
        await remove_domain(conn, clinic_id(principal), hostname, audit_context(request))
    return Response(status_code=204)

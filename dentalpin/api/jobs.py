"""Platform API: lifecycle jobs, with their state, progress and log. A reseller sees the
jobs of its own clinics only; another's job is a 404."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from dentalpin.platform._errors import NotFound
from dentalpin.platform._http import Actor, platform_access
from dentalpin.platform._jobs import get_job, job_log_lines, list_jobs
from dentalpin.platform._tables import tenants

from ._platform import API, PlatformDep, tenant_ids_of, visible_tenant
from .schemas import JobDetailOut, JobOut, problems

router = APIRouter(prefix=f"{API}/jobs", tags=["platform: jobs"])
JobsRead = Annotated[Actor, platform_access("jobs:read")]


@router.get("", response_model=list[JobOut], responses=problems(401, 403, 404, 422))
async def list_(
    actor: JobsRead,
    platform: PlatformDep,
    tenant: Annotated[str | None, Query(max_length=63, description="A clinic's slug")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[JobOut]:
    """Jobs, newest first (a reseller: those of its clinics)."""
    tenant_id = None
    among = None
    async with platform.db.engine.connect() as conn:
        if tenant:
            tenant_id = (await visible_tenant(conn, actor, tenant, archived=True)).id
        elif actor.resellers is not None:
            among = await tenant_ids_of(conn, actor.resellers)
    found = await list_jobs(platform, tenant_id, limit, among)
    return [JobOut.model_validate(j.as_dict()) for j in found]


@router.get("/{job_id}", response_model=JobDetailOut, responses=problems(401, 403, 404, 422))
async def show(job_id: uuid.UUID, actor: JobsRead, platform: PlatformDep) -> JobDetailOut:
    """A job: state, progress, result or error, and its log."""
    job = await get_job(platform, job_id)
    if not actor.is_operator:
        owner = None
        if job.tenant_id is not None:
            async with platform.db.engine.connect() as conn:
                owner = await conn.scalar(
                    tenants.select()
                    .with_only_columns(tenants.c.reseller_id)
                    .where(tenants.c.id == job.tenant_id)
                )
        if not actor.sees(owner):
            raise NotFound(f"no job with id {job_id}")
    lines = await job_log_lines(platform, job_id)
    return JobDetailOut.model_validate({**job.as_dict(), "log": lines})

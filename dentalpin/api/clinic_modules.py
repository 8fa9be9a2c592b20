"""A clinic's own modules, on the clinic's host: its admins see what the clinic has and may
have, install what the clinic's plan allows, upgrade, uninstall (archived, restorable) and
restore, and follow the jobs. See docs/adr/0022-clinic-admins-manage-modules.md.

The clinic's admin decides for the clinic, so nothing here waits for an approval; the
reseller's plan still binds, and support access (whose grant ends) may look but not act.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from dentalpin.platform import Principal, require_permission
from dentalpin.platform._errors import NotFound
from dentalpin.platform._http import get_principal
from dentalpin.platform._jobs import JobRecord, get_job, job_log_lines, list_jobs
from dentalpin.platform._plans import Plan
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import TenantRecord, dry_run_uninstall, module_states
from dentalpin.tenants._catalogue import tenant_by_id

from ._platform import (
    CLINIC_JOBS,
    STANDARD,
    PlatformDep,
    clinic_id,
    clinic_plan,
    job_out,
    submit_recorded,
)
from .access import not_through_support
from .schemas import (
    InstallIn,
    JobDetailOut,
    JobOut,
    RestoreIn,
    UninstallIn,
    UninstallPlanOut,
    UpgradeIn,
    problems,
)

MODULES = "platform.module.manage"
AS_ROLE = "clinic_admin"
"""How the audit log names who submitted a job from the clinic's host."""
SUPPORT_CANNOT = "install, upgrade, uninstall or restore modules"
LIFECYCLE = problems(*STANDARD, 409, 503)

router = APIRouter(prefix="/api/v1/modules", tags=["clinic administration"])
Signed = Annotated[Principal, Depends(get_principal)]
MANAGE = [require_permission(MODULES)]


class ClinicModuleOut(BaseModel):
    name: str
    version: str = Field(description="The version the platform runs")
    summary: str
    category: str
    countries: list[str] = Field(description="Country packs: where the module applies")
    depends: dict[str, str]
    state: str = Field(
        description="absent, installing, installed, uninstalling or uninstalled (restorable)"
    )
    installed_version: str | None
    installable: bool = Field(description="Whether the module may be installed at all")
    removable: bool = Field(description="Whether the module may be uninstalled")
    allowed_by_plan: bool | None = Field(
        description="Whether the clinic's plan includes it (null: the clinic has no plan)"
    )
    refused_because: str | None = Field(description="Why the plan does not include it")


async def _clinic(platform: Platform, principal: Principal) -> TenantRecord:
    async with platform.db.engine.connect() as conn:
        return await tenant_by_id(conn, clinic_id(principal))


async def _clinic_and_plan(
    platform: Platform, principal: Principal
) -> tuple[TenantRecord, Plan | None]:
    async with platform.db.engine.connect() as conn:
        tenant = await tenant_by_id(conn, clinic_id(principal))
        return tenant, await clinic_plan(conn, tenant)


async def _submit(
    platform: Platform,
    principal: Principal,
    kind: str,
    params: dict[str, Any],
    request: Request,
    response: Response,
) -> JobOut:
    not_through_support(principal, SUPPORT_CANNOT)
    tenant, plan = await _clinic_and_plan(platform, principal)
    job = await submit_recorded(platform, tenant, kind, params, plan, request, AS_ROLE)
    return _without_worker(job_out(job, response, CLINIC_JOBS))


def _without_worker(job: JobOut) -> JobOut:
    # The worker's host name and pid are the operator's business, not the clinic's.
    return job.model_copy(update={"worker": None})


@router.get(
    "", dependencies=MANAGE, response_model=list[ClinicModuleOut], responses=problems(*STANDARD)
)
async def catalogue(principal: Signed, platform: PlatformDep) -> list[ClinicModuleOut]:
    """Every module the platform offers, with the clinic's state of each and whether the
    clinic's plan includes it. Quarantined modules (broken code) are the operator's."""
    async with platform.db.engine.connect() as conn:
        tenant = await tenant_by_id(conn, clinic_id(principal))
        plan = await clinic_plan(conn, tenant)
        states = await module_states(conn, tenant.id)
    registry = platform.registry
    refused = plan.refusals(registry, registry.names) if plan else {}
    return [
        ClinicModuleOut(
            name=spec.name,
            version=spec.manifest.version,
            summary=spec.manifest.summary,
            category=spec.manifest.category.value,
            countries=list(spec.manifest.countries),
            depends=spec.manifest.depends,
            state=states.get(spec.name, {}).get("state", "absent"),
            installed_version=states.get(spec.name, {}).get("version"),
            installable=spec.manifest.installable,
            removable=spec.manifest.removable,
            allowed_by_plan=None if plan is None else spec.name not in refused,
            refused_because=refused.get(spec.name),
        )
        for spec in registry
    ]


@router.post("", dependencies=MANAGE, status_code=202, response_model=JobOut, responses=LIFECYCLE)
async def install(
    body: InstallIn, principal: Signed, platform: PlatformDep, request: Request, response: Response
) -> JobOut:
    """Install modules, with the dependencies the clinic lacks: a job (Location: the job)."""
    params = {"modules": body.modules}
    return await _submit(platform, principal, "lifecycle.install", params, request, response)


@router.post(
    "/upgrade", dependencies=MANAGE, status_code=202, response_model=JobOut, responses=LIFECYCLE
)
async def upgrade(
    principal: Signed,
    platform: PlatformDep,
    request: Request,
    response: Response,
    body: UpgradeIn | None = None,
) -> JobOut:
    """Upgrade the clinic's modules (all by default) to what the platform runs: a job."""
    params = {"modules": (body.modules if body else None) or None}
    return await _submit(platform, principal, "lifecycle.upgrade", params, request, response)


@router.post(
    "/{module}/uninstall",
    dependencies=MANAGE,
    status_code=202,
    response_model=JobOut | UninstallPlanOut,
    responses={
        **LIFECYCLE,
        200: {"model": UninstallPlanOut, "description": "dry_run: the plan; nothing changed"},
    },
)
async def uninstall(
    module: str,
    principal: Signed,
    platform: PlatformDep,
    request: Request,
    response: Response,
    body: UninstallIn | None = None,
) -> JobOut | UninstallPlanOut:
    """Archive and drop a module's data (restorable): a job. `dry_run` answers what would
    go, with row counts and any module's veto (200), and changes nothing."""
    body = body or UninstallIn()
    if body.dry_run:
        tenant = await _clinic(platform, principal)
        plan = await dry_run_uninstall(platform, tenant, module, body.cascade)
        response.status_code = 200
        return UninstallPlanOut(**plan.as_dict(), needs_approval=False)
    params = {"module": module, "cascade": body.cascade}
    return await _submit(platform, principal, "lifecycle.uninstall", params, request, response)


@router.post(
    "/{module}/restore",
    dependencies=MANAGE,
    status_code=202,
    response_model=JobOut,
    responses=LIFECYCLE,
)
async def restore(
    module: str,
    principal: Signed,
    platform: PlatformDep,
    request: Request,
    response: Response,
    body: RestoreIn | None = None,
) -> JobOut:
    """Reinstall an uninstalled module and load its archived data: a job."""
    archive_id = body.archive_id if body else None
    params = {"module": module, "archive_id": str(archive_id) if archive_id else None}
    return await _submit(platform, principal, "lifecycle.restore", params, request, response)


# Jobs ----------------------------------------------------------------------------------


@router.get(
    "/jobs", dependencies=MANAGE, response_model=list[JobOut], responses=problems(*STANDARD)
)
async def jobs(
    principal: Signed,
    platform: PlatformDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[JobOut]:
    """The clinic's jobs, newest first: its own, its reseller's and the operator's."""
    found = await list_jobs(platform, clinic_id(principal), limit)
    return [_without_worker(JobOut.model_validate(j.as_dict())) for j in found]


@router.get(
    "/jobs/{job_id}",
    dependencies=MANAGE,
    response_model=JobDetailOut,
    responses=problems(*STANDARD),
)
async def job(job_id: uuid.UUID, principal: Signed, platform: PlatformDep) -> JobDetailOut:
    """A job of the clinic: state, progress, result or error, and its log."""
    found = await _clinic_job(platform, principal, job_id)
    lines = await job_log_lines(platform, job_id)
    return JobDetailOut.model_validate({**found.as_dict(), "worker": None, "log": lines})


async def _clinic_job(platform: Platform, principal: Principal, job_id: uuid.UUID) -> JobRecord:
    """The job, if it is this clinic's: another clinic's is as missing as one that never was."""
    found = await get_job(platform, job_id)
    if found.tenant_id != clinic_id(principal):
        raise NotFound(f"no job with id {job_id}")
    return found

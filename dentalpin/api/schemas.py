"""Request and response models of the platform API (its OpenAPI document)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Requests ------------------------------------------------------------------------------


class TenantIn(Strict):
    slug: str = Field(min_length=3, max_length=40, description="Becomes the clinic's host name")
    name: str | None = Field(default=None, max_length=200)
    modules: list[str] = Field(default_factory=list, max_length=50)
    reseller_id: uuid.UUID | None = Field(
        default=None,
        description="The owning reseller. Operators may name any (or none); a reseller admin "
        "of several resellers must name one; others default to their own.",
    )


class ReasonIn(Strict):
    reason: str = Field(default="", max_length=500, description="Shown to the clinic's admin")


class InstallIn(Strict):
    modules: list[str] = Field(min_length=1, max_length=50)


class UpgradeIn(Strict):
    modules: list[str] | None = Field(default=None, max_length=50, description="None: all")


class UninstallIn(ReasonIn):
    cascade: bool = Field(default=False, description="Uninstall installed dependents first")
    dry_run: bool = Field(default=False, description="Answer the plan; change nothing")


class RestoreIn(Strict):
    archive_id: uuid.UUID | None = Field(default=None, description="Default: the latest")


class MemberIn(Strict):
    email: str = Field(min_length=3, max_length=320)
    roles: list[str] = Field(min_length=1, max_length=20)
    location_ids: list[str] = Field(default_factory=list, max_length=200)


class UserIn(Strict):
    email: str = Field(min_length=3, max_length=320)
    name: str = Field(default="", max_length=200)


class ResellerIn(Strict):
    name: str = Field(min_length=2, max_length=80)
    plan: str = Field(default="standard", max_length=40)


class ClientIn(Strict):
    name: str = Field(min_length=2, max_length=80)
    scopes: list[str] = Field(min_length=1, max_length=20)
    reseller_id: uuid.UUID | None = Field(
        default=None, description="Operators must name it; a reseller admin of one defaults"
    )


class DecisionIn(Strict):
    note: str = Field(default="", max_length=500)


# Responses -----------------------------------------------------------------------------


class TenantOut(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    status: str
    placement: str
    reseller_id: uuid.UUID | None
    created_at: datetime
    archived_at: datetime | None
    archive_id: uuid.UUID | None = Field(description="Its latest tenant archive, if any")


class ModuleState(BaseModel):
    state: str
    version: str | None
    revision: str | None
    error: str | None
    archive_id: str | None
    settings: dict[str, Any]


class TenantDetailOut(TenantOut):
    schema_present: bool
    modules: dict[str, ModuleState]


class CatalogueModule(BaseModel):
    name: str
    version: str | None
    summary: str | None
    category: str | None
    countries: list[str]
    depends: dict[str, str]
    auto_install: bool
    status: Literal["available", "quarantined"]
    reason: str | None
    head: str | None
    tenant_state: str | None = None
    allowed_by_plan: bool | None = Field(
        default=None, description="For a reseller's clinic: whether its plan allows it"
    )


class JobOut(BaseModel):
    id: uuid.UUID
    kind: str
    tenant_id: uuid.UUID | None
    params: dict[str, Any]
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    message: str | None
    error: str | None
    result: dict[str, Any] | None
    attempts: int
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None


class JobLogLine(BaseModel):
    at: datetime
    level: str
    message: str


class JobDetailOut(JobOut):
    log: list[JobLogLine]


class ApprovalOut(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    kind: Literal["lifecycle.uninstall", "tenant.archive"]
    params: dict[str, Any]
    state: Literal["pending", "approved", "rejected", "expired"]
    reason: str
    requested_by: str
    reseller_id: uuid.UUID | None
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    note: str | None
    job_id: uuid.UUID | None


class AwaitingApproval(BaseModel):
    """A reseller's destructive operation: it runs once the clinic's admin approves."""

    status: Literal["awaiting-approval"] = "awaiting-approval"
    approval: ApprovalOut


class UninstallPlanOut(BaseModel):
    modules: list[str] = Field(description="What would go, dependents first")
    tables: dict[str, dict[str, int]] = Field(description="Rows per table, per module")
    vetoes: dict[str, str] = Field(description="Modules refusing, with their reasons")
    needs_approval: bool = Field(description="Whether the caller's uninstall waits for approval")


class RoleOut(BaseModel):
    name: str
    description: str
    builtin: bool
    permissions: list[str]


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
    name: str
    roles: list[str]
    location_ids: list[str]


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    is_operator: bool
    mfa_enabled: bool


class PlanOut(BaseModel):
    name: str
    description: str
    max_tenants: int | None = Field(description="None: no limit")
    modules: list[str] | None = Field(description="None: every module")
    countries: list[str] | None = Field(description="None: every country pack; []: none")


class PlanIn(Strict):
    name: str = Field(min_length=2, max_length=40)
    description: str = Field(default="", max_length=200)
    max_tenants: int | None = Field(default=None, ge=0, description="None: no limit")
    modules: list[str] | None = Field(default=None, max_length=200, description="None: all")
    countries: list[str] | None = Field(
        default=None, max_length=250, description="None: every country pack; []: none"
    )


class PlanChange(Strict):
    """Only the terms sent change; `null` lifts a limit."""

    description: str | None = Field(default=None, max_length=200)
    max_tenants: int | None = Field(default=None, ge=0, description="null: no limit")
    modules: list[str] | None = Field(default=None, max_length=200, description="null: all")
    countries: list[str] | None = Field(
        default=None, max_length=250, description="null: every country pack; []: none"
    )


class ResellerOverLimit(BaseModel):
    reseller: str
    clinics: int


class PlanImpact(BaseModel):
    """What resellers on the plan already have beyond its terms: they keep it, and may
    only not add more."""

    resellers_over_limit: list[ResellerOverLimit]
    clinics_outside_plan: dict[str, list[str]] = Field(
        description="Clinic slug: its installed modules the plan does not allow"
    )


class PlanChangedOut(PlanOut):
    impact: PlanImpact


class ResellerPlanIn(Strict):
    plan: str = Field(min_length=1, max_length=40)


class ResellerOut(BaseModel):
    id: uuid.UUID
    name: str
    plan: str
    admins: int
    clients: int


class TenantUsage(BaseModel):
    slug: str
    name: str
    status: str
    modules: list[str]
    members: int


class UsageOut(BaseModel):
    reseller: ResellerOut
    plan: PlanOut
    tenants_counted: int = Field(description="Clinics counted against the plan (not archived)")
    tenants_allowed: int | None
    tenants: list[TenantUsage]


class ClientOut(BaseModel):
    client_id: str
    name: str
    reseller_id: uuid.UUID
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class NewClientOut(ClientOut):
    client_secret: str = Field(description="Shown once: only its hash is kept")


class Problem(BaseModel):
    """RFC 9457 problem details: every error of the API."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the problem statuses a route answers."""
    described = {
        400: "Bad request",
        401: "No valid access token",
        403: "Not allowed for this caller (role, scope, plan)",
        404: "Not found, or not the caller's to see",
        409: "Conflicts with the current state (a job running, a plan limit...)",
        422: "The request is not valid",
        503: "A dependency is unavailable; retry",
    }
    return {
        s: {
            "model": Problem,
            "description": described[s],
            "content": {"application/problem+json": {}},
        }
        for s in statuses
    }

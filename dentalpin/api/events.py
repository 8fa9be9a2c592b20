"""The event pipeline over HTTP: dead letters and their replay (operators), and the
Prometheus metrics of deliveries, outbox lag, dead letters, jobs, outgoing e-mail and custom
domains."""

from __future__ import annotations

import hmac
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from dentalpin.platform._domains import domain_counts
from dentalpin.platform._errors import InvalidInput, NotFound, Unauthenticated
from dentalpin.platform._http import Actor, bearer_token, get_platform, platform_access, public
from dentalpin.platform._mail_queue import queue_counts
from dentalpin.platform._relay import (
    STATS_MAX_TENANTS,
    dead_letters,
    pipeline_stats,
    retry_dead,
)
from dentalpin.platform._runtime import Platform

from ._platform import visible_tenant
from .schemas import problems

router = APIRouter(prefix="/api/v1/events", tags=["events"])
metrics_router = APIRouter(tags=["observability"])
PlatformDep = Annotated[Platform, Depends(get_platform)]


# Operators only (second factor included): dead letters name tenants and carry payload errors.
Operator = Annotated[Actor, platform_access("jobs:read", operator_only=True)]


class DeadLetter(BaseModel):
    id: int
    tenant: str
    event_id: str
    event: str
    subscriber: str
    attempts: int
    error: str | None
    dead_at: str


class Replay(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[int] | None = Field(
        default=None, max_length=10_000, description="Dead-letter ids; omit with all=true."
    )
    all: bool = False
    tenant: str | None = Field(default=None, description="Only this tenant's dead letters.")


class Replayed(BaseModel):
    tenants: list[str]


class BeatState(BaseModel):
    leader: str | None = Field(
        description="The leading beat's connection; null: no beat runs (nothing schedules "
        "the sweep, the job reaper or periodic jobs)"
    )
    standbys: int = Field(description="Beats waiting to take over")


class Stats(BaseModel):
    deliveries: dict[str, int] = Field(
        description="pending and running: counted in `tenants_counted` tenants; dead: all"
    )
    outbox_lag_s: float = Field(description="Age of the oldest undelivered event counted")
    tenants_with_work: int = Field(description="Tenants in the sweep's index")
    tenants_counted: int = Field(
        description="Tenants whose deliveries and lag were counted, the most overdue first "
        f"(at most {STATS_MAX_TENANTS}); fewer than `tenants_with_work` on a large backlog"
    )
    jobs: dict[str, int]
    beat: BeatState


async def _tenant_id(platform: Platform, actor: Actor, slug: str | None) -> uuid.UUID | None:
    if slug is None:
        return None
    async with platform.db.engine.connect() as conn:
        return (await visible_tenant(conn, actor, slug)).id


@router.get("/failed", response_model=list[DeadLetter], responses=problems(401, 403, 404, 422))
async def list_failed(
    platform: PlatformDep,
    actor: Operator,
    tenant: Annotated[str | None, Query(description="Only this tenant (slug).")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[dict[str, Any]]:
    """Dead letters: deliveries that failed every attempt, oldest first."""
    tenant_id = await _tenant_id(platform, actor, tenant)
    return await dead_letters(platform, tenant_id=tenant_id, limit=limit)


@router.post(
    "/failed/{letter_id}/retry",
    response_model=Replayed,
    status_code=202,
    responses=problems(401, 403, 404, 422),
)
async def retry_one(letter_id: int, platform: PlatformDep, _: Operator) -> dict[str, Any]:
    """Queue one dead letter again, with fresh attempts."""
    return {"tenants": [str(t) for t in await retry_dead(platform, [letter_id])]}


@router.post(
    "/retry", response_model=Replayed, status_code=202, responses=problems(401, 403, 404, 422)
)
async def retry_many(body: Replay, platform: PlatformDep, actor: Operator) -> dict[str, Any]:
    """Queue dead letters again: the ones named, or all (of a tenant)."""
    if bool(body.ids) == body.all:
        raise InvalidInput("name dead-letter ids, or set all=true (not both)")
    tenant_id = await _tenant_id(platform, actor, body.tenant)
    touched = await retry_dead(platform, None if body.all else body.ids, tenant_id=tenant_id)
    return {"tenants": [str(t) for t in touched]}


@router.get("/stats", response_model=Stats, responses=problems(401, 403, 404))
async def stats(platform: PlatformDep, _: Operator) -> dict[str, Any]:
    """Deliveries by state, outbox lag, dead letters, jobs by state, and which beat leads."""
    return await pipeline_stats(platform)


@metrics_router.get("/metrics", include_in_schema=False, dependencies=[public()])
async def metrics(request: Request, platform: PlatformDep) -> Response:
    """Prometheus exposition. With `metrics_token` set, scrapers send it as a Bearer token;
    in production without one, the endpoint does not exist."""
    token = platform.settings.metrics_token
    if token is None and platform.settings.environment == "production":
        raise NotFound("metrics are disabled: set DENTALPIN_METRICS_TOKEN to enable them")
    if token is not None:
        given = bearer_token(request) or ""
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise Unauthenticated("metrics need the Bearer token of DENTALPIN_METRICS_TOKEN")
    data = await pipeline_stats(platform)
    registry = CollectorRegistry()
    deliveries = Gauge(
        "dentalpin_event_deliveries",
        "Event deliveries by state (pending and running: in the tenants counted, the "
        f"{STATS_MAX_TENANTS} most overdue; dead: all)",
        ["state"],
        registry=registry,
    )
    for state, n in data["deliveries"].items():
        deliveries.labels(state).set(n)
    Gauge(
        "dentalpin_event_outbox_lag_seconds",
        "Age of the oldest event not yet delivered",
        registry=registry,
    ).set(data["outbox_lag_s"])
    Gauge(
        "dentalpin_event_tenants_with_work",
        "Tenants in the sweep's index",
        registry=registry,
    ).set(data["tenants_with_work"])
    Gauge(
        "dentalpin_event_tenants_counted",
        "Tenants whose pending and running deliveries the deliveries gauge counts",
        registry=registry,
    ).set(data["tenants_counted"])
    Gauge(
        "dentalpin_beat_leaders",
        "Beats leading: 1, or 0 when none runs (alert: nothing schedules the sweep, the job "
        "reaper or periodic jobs)",
        registry=registry,
    ).set(0 if data["beat"]["leader"] is None else 1)
    Gauge("dentalpin_beat_standbys", "Beats standing by to take over", registry=registry).set(
        data["beat"]["standbys"]
    )
    jobs = Gauge("dentalpin_jobs", "Lifecycle jobs by state", ["state"], registry=registry)
    for state in ("queued", "running", "succeeded", "failed", "cancelled"):
        jobs.labels(state).set(data["jobs"].get(state, 0))
    mail = Gauge(
        "dentalpin_mail_messages",
        "Outgoing e-mail by state (alert on failed, and on pending that keeps growing: the "
        "mail server is down)",
        ["state"],
        registry=registry,
    )
    custom_domains = Gauge(
        "dentalpin_custom_domains",
        "Custom domains by state (alert on failing: verified names whose record went missing)",
        ["state"],
        registry=registry,
    )
    async with platform.db.engine.connect() as conn:
        for state, n in (await queue_counts(conn)).items():
            mail.labels(state).set(n)
        for state, n in (await domain_counts(conn)).items():
            custom_domains.labels(state).set(n)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

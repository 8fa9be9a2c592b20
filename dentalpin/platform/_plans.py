"""Reseller plans: how many clinics a reseller may own, and which modules and country
packs its clinics may install. Stored in `platform.plans` (seeded by 0005_platform_api).

Plans bind a reseller's own actors (its admins and integration clients). The operator
sells the plans and is not bound by them (see docs/security.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ._errors import Conflict, Forbidden, NotFound
from ._errors import did_you_mean as _did_you_mean
from ._registry import Registry
from ._tables import plans, resellers, tenants

COUNTED_STATES = ("provisioning", "active", "archiving", "failed")
"""A reseller's clinics that count against its plan (archived ones do not)."""


class PlanExceeded(Forbidden):
    problem = "plan-exceeded"


class PlanLimitReached(Conflict):
    problem = "plan-limit-reached"


@dataclass(frozen=True)
class Plan:
    name: str
    description: str
    max_tenants: int | None
    modules: frozenset[str] | None
    """None: every installable module."""
    countries: frozenset[str] | None
    """None: every country pack; empty: none."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "max_tenants": self.max_tenants,
            "modules": sorted(self.modules) if self.modules is not None else None,
            "countries": sorted(self.countries) if self.countries is not None else None,
        }

    def refusals(self, registry: Registry, names: Iterable[str]) -> dict[str, str]:
        """Modules of `names` this plan does not allow, each with the reason."""
        auto = set(registry.auto_install())
        refused: dict[str, str] = {}
        for name in names:
            if name in auto:
                continue  # the base product every clinic gets
            if self.modules is not None and name not in self.modules:
                refused[name] = f"module '{name}' is not part of plan '{self.name}'"
                continue
            packs = set(registry.get(name).manifest.countries)
            if packs and self.countries is not None and not packs & self.countries:
                refused[name] = (
                    f"'{name}' is a country pack for {', '.join(sorted(packs))}, which plan "
                    f"'{self.name}' does not include"
                )
        return refused


def _plan(row: Any) -> Plan:
    return Plan(
        row.name,
        row.description,
        row.max_tenants,
        frozenset(row.modules) if row.modules is not None else None,
        frozenset(row.countries) if row.countries is not None else None,
    )


async def list_plans(conn: AsyncConnection) -> list[Plan]:
    return [_plan(r) for r in await conn.execute(select(plans).order_by(plans.c.name))]


async def get_plan(conn: AsyncConnection, name: str) -> Plan:
    """The plan named `name`; NotFound (listing the plans there are) otherwise."""
    row = (await conn.execute(select(plans).where(plans.c.name == name.strip()))).first()
    if row is None:
        known = [p.name for p in await list_plans(conn)]
        raise NotFound(
            f"no plan named '{name[:40]}'.{_did_you_mean(name, known)} "
            f"Plans: {', '.join(known) or 'none'}"
        )
    return _plan(row)


async def plan_of(conn: AsyncConnection, reseller_id: uuid.UUID) -> Plan:
    name = await conn.scalar(select(resellers.c.plan).where(resellers.c.id == reseller_id))
    if name is None:
        raise NotFound("no such reseller")
    return await get_plan(conn, name)


async def counted_tenants(conn: AsyncConnection, reseller_id: uuid.UUID) -> int:
    count = await conn.scalar(
        select(func.count())
        .select_from(tenants)
        .where(tenants.c.reseller_id == reseller_id, tenants.c.status.in_(COUNTED_STATES))
    )
    return int(count or 0)


async def claim_tenant_slot(conn: AsyncConnection, reseller_id: uuid.UUID) -> Plan:
    """Refuse a new clinic beyond the plan's limit. Locks the reseller row until the
    caller's transaction ends, so two concurrent creations cannot both take the last slot."""
    await conn.execute(
        select(resellers.c.id).where(resellers.c.id == reseller_id).with_for_update()
    )
    plan = await plan_of(conn, reseller_id)
    if plan.max_tenants is not None:
        owned = await counted_tenants(conn, reseller_id)
        if owned >= plan.max_tenants:
            raise PlanLimitReached(
                f"plan '{plan.name}' allows {plan.max_tenants} clinic(s) and this reseller "
                f"has {owned}; archive one or ask the operator for a larger plan"
            )
    return plan


def check_modules(plan: Plan, registry: Registry, names: Iterable[str]) -> None:
    """PlanExceeded (403) naming every module of `names` the plan does not allow."""
    refused = plan.refusals(registry, names)
    if refused:
        raise PlanExceeded(
            "; ".join(refused.values()) + ". Ask the operator for a plan that includes it"
        )

"""Reseller plans: how many clinics a reseller may own, and which modules and country
packs its clinics may install. Stored in `platform.plans` (seeded by 0005_platform_api).

Plans bind a reseller's own actors (its admins and integration clients). The operator
sells the plans and is not bound by them (see docs/security.md).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ._audit import AuditContext, record
from ._errors import Conflict, Forbidden, InvalidInput, NotFound
from ._errors import did_you_mean as _did_you_mean
from ._registry import Registry
from ._tables import plans, resellers, tenant_modules, tenants

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
            "; ".join(refused.values())
            + ". It needs a plan that includes it: a reseller asks the operator, a clinic "
            "its reseller"
        )


# Editing plans (operators) -------------------------------------------------------------

PLAN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{1,39}$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
TERMS = ("description", "max_tenants", "modules", "countries")
"""What a plan says; a change names only the terms it changes."""


def _plan_name(name: str) -> str:
    name = name.strip()
    if not PLAN_NAME.match(name):
        raise InvalidInput("a plan name is 2-40 letters, digits, spaces, '.', '_' or '-'")
    return name


def _modules(registry: Registry, names: Iterable[str]) -> list[str]:
    known = registry.names
    for name in names:
        if name not in known:
            raise InvalidInput(
                f"no module named '{name[:40]}'.{_did_you_mean(name, known)} "
                "A plan lists modules this platform runs (`dentalpin modules list`)"
            )
    return sorted(set(names))


def _countries(codes: Iterable[str]) -> list[str]:
    for code in codes:
        if not COUNTRY.match(code):
            raise InvalidInput(f"'{code[:10]}' is not a two-letter country code such as ES")
    return sorted(set(codes))


def _terms(registry: Registry, values: Mapping[str, Any]) -> dict[str, Any]:
    """The terms of `values`, checked: None means no limit (every module, every pack)."""
    unknown = sorted(set(values) - set(TERMS))
    if unknown:
        raise InvalidInput(f"a plan has no {', '.join(unknown)}; it has {', '.join(TERMS)}")
    terms: dict[str, Any] = {}
    if "description" in values:
        description = str(values["description"] or "").strip()
        if len(description) > 200:
            raise InvalidInput("a plan's description is at most 200 characters")
        terms["description"] = description
    if "max_tenants" in values:
        limit = values["max_tenants"]
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise InvalidInput("max_tenants is a number of clinics, or none for no limit")
        if limit is not None and limit < 0:
            raise InvalidInput("max_tenants cannot be negative")
        terms["max_tenants"] = limit
    if "modules" in values:
        found = values["modules"]
        terms["modules"] = None if found is None else _modules(registry, found)
    if "countries" in values:
        found = values["countries"]
        terms["countries"] = None if found is None else _countries(found)
    return terms


async def create_plan(
    conn: AsyncConnection,
    registry: Registry,
    name: str,
    values: Mapping[str, Any],
    *,
    ctx: AuditContext,
) -> Plan:
    """A new plan; terms it does not name are unlimited."""
    name = _plan_name(name)
    terms = _terms(registry, values)
    try:
        async with conn.begin_nested():
            await conn.execute(insert(plans).values(name=name, **terms))
    except IntegrityError:
        raise Conflict(f"a plan named '{name}' already exists; change it instead") from None
    await record(conn, ctx, "plan.created", target=name, **terms)
    return await get_plan(conn, name)


async def change_plan(
    conn: AsyncConnection,
    registry: Registry,
    name: str,
    values: Mapping[str, Any],
    *,
    ctx: AuditContext,
) -> Plan:
    """Change the terms `values` names. Binds what resellers on the plan do next: their
    clinics keep what they have (see `plan_impact`)."""
    before = await get_plan(conn, name)
    terms = _terms(registry, values)
    if not terms:
        raise InvalidInput(f"say what to change: {', '.join(TERMS)}")
    await conn.execute(update(plans).where(plans.c.name == before.name).values(**terms))
    old = before.as_dict()
    await record(
        conn,
        ctx,
        "plan.changed",
        target=before.name,
        before={k: old[k] for k in terms},
        after=terms,
    )
    return await get_plan(conn, before.name)


async def delete_plan(conn: AsyncConnection, name: str, *, ctx: AuditContext) -> None:
    """Delete a plan no reseller is on (409 naming how many are, otherwise)."""
    plan = await get_plan(conn, name)
    on_it = await conn.scalar(
        select(func.count()).select_from(resellers).where(resellers.c.plan == plan.name)
    )
    if on_it:
        raise _in_use(plan.name, int(on_it))
    try:
        async with conn.begin_nested():
            await conn.execute(delete(plans).where(plans.c.name == plan.name))
    except IntegrityError:  # a reseller moved onto it meanwhile
        raise _in_use(plan.name, 1) from None
    await record(conn, ctx, "plan.deleted", target=plan.name)


def _in_use(name: str, resellers_on_it: int) -> Conflict:
    return Conflict(
        f"{resellers_on_it} reseller(s) are on plan '{name}': move them to another plan "
        "first (`dentalpin resellers set-plan NAME PLAN`)"
    )


async def plan_impact(conn: AsyncConnection, registry: Registry, plan: Plan) -> dict[str, Any]:
    """What the plan's terms say of what its resellers already have: resellers over its
    clinic limit, and clinics with installed modules it would not allow. Nothing is taken
    away; they may only not add more."""
    counted = (
        select(resellers.c.name, func.count(tenants.c.id).label("clinics"))
        .join(tenants, tenants.c.reseller_id == resellers.c.id)
        .where(resellers.c.plan == plan.name, tenants.c.status.in_(COUNTED_STATES))
        .group_by(resellers.c.name)
        .order_by(resellers.c.name)
    )
    over = []
    if plan.max_tenants is not None:
        over = [
            {"reseller": r.name, "clinics": r.clinics}
            for r in await conn.execute(counted)
            if r.clinics > plan.max_tenants
        ]
    installed = await conn.execute(
        select(tenants.c.slug, tenant_modules.c.module)
        .join(resellers, resellers.c.id == tenants.c.reseller_id)
        .join(tenant_modules, tenant_modules.c.tenant_id == tenants.c.id)
        .where(
            resellers.c.plan == plan.name,
            tenants.c.status.in_(COUNTED_STATES),
            tenant_modules.c.state == "installed",
        )
    )
    outside: dict[str, list[str]] = {}
    for row in installed:
        if row.module in registry.names and plan.refusals(registry, [row.module]):
            outside.setdefault(row.slug, []).append(row.module)
    return {
        "resellers_over_limit": over,
        "clinics_outside_plan": {slug: sorted(m) for slug, m in sorted(outside.items())},
    }

"""What the CLI and the platform API show of tenants and modules (one shape for both)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.platform._runtime import Platform

from ._catalogue import TenantRecord, module_states
from ._introspect import schema_exists
from ._lineage import lineages


def module_catalogue(
    platform: Platform, states: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every module (available and quarantined); with a tenant's `states`, its state there."""
    heads = {n: lin.head for n, lin in lineages(platform.registry, platform.state).items()}
    rows = [
        {
            "name": s.name,
            "version": s.manifest.version,
            "summary": s.manifest.summary,
            "category": s.manifest.category.value,
            "countries": list(s.manifest.countries),
            "depends": s.manifest.depends,
            "auto_install": s.manifest.auto_install,
            "distribution": s.distribution,
            "head": heads.get(s.name),
            "status": "available",
            "reason": None,
            **(
                {"tenant_state": states.get(s.name, {}).get("state", "absent")}
                if states is not None
                else {}
            ),
        }
        for s in platform.registry
    ]
    return rows + [
        {
            "name": q.name,
            "version": None,
            "summary": None,
            "category": None,
            "countries": [],
            "depends": {},
            "auto_install": False,
            "distribution": q.distribution,
            "head": None,
            "status": "quarantined",
            "reason": q.reason,
        }
        for q in platform.registry.quarantined.values()
    ]


async def tenant_details(conn: AsyncConnection, tenant: TenantRecord) -> dict[str, Any]:
    """A tenant with its modules' states and whether its schema exists."""
    states = await module_states(conn, tenant.id)
    return {
        **tenant.as_dict(),
        "schema_present": await schema_exists(conn, tenant.schema_name),
        "modules": {
            n: {k: v for k, v in s.items() if k != "owned_objects"} for n, s in states.items()
        },
    }

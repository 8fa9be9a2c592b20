"""Tenant roles follow the tenant's modules: the lifecycle announces what a tenant gained
or lost, inside its transaction, and the built-in roles are recomputed there (so a role
never holds a permission of a module the tenant does not have, not even for a moment)."""

from __future__ import annotations

from dentalpin.platform._roles import sync_roles

from ._lifecycle import Operation, on_modules_changed


@on_modules_changed
async def sync_tenant_roles(op: Operation, changes: dict[str, str]) -> None:
    # The announced changes win over the module rows: a tenant archive announces before it
    # marks its modules uninstalled.
    await sync_roles(
        op.conn,
        op.platform.registry,
        op.tenant.id,
        adding=[m for m, change in changes.items() if change != "uninstalled"],
        removing=[m for m, change in changes.items() if change == "uninstalled"],
    )

"""A module uninstalled from a tenant receives nothing more: its undelivered (and dead)
deliveries there are removed in the uninstall transaction, and the relay checks the
installed modules again at delivery time (events still in the outbox never fan out to it)."""

from __future__ import annotations

from dentalpin.platform._relay import forget_subscriber

from ._lifecycle import Operation, on_modules_changed


@on_modules_changed
async def forget_uninstalled_subscribers(op: Operation, changes: dict[str, str]) -> None:
    for module, change in changes.items():
        if change == "uninstalled":
            removed = await forget_subscriber(op.conn, op.tenant.ref, module)
            if removed:
                await op.log(f"removed {removed} undelivered event(s) for '{module}'")

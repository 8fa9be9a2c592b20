"""Tenants: the catalogue, provisioning, schema routing, per-tenant module lifecycle, fleet."""

from ._catalogue import TenantRecord, all_tenants, find_tenant, module_states, validate_slug
from ._drift import Drift, find_drift
from ._fleet import (
    FleetReport,
    migrate_platform,
    module_heads,
    sync_catalogue,
    tenants_behind,
    upgrade_fleet,
    upgrade_fleet_on_workers,
)
from ._lifecycle import ModulesChanged, Operation, UninstallPlan, on_modules_changed
from ._lineage import Lineage, lineages, lint_lineage, load_lineage
from ._operations import (
    SchemaMissing,
    create_tenant,
    dry_run_uninstall,
    restore_tenant,
    run_locked,
    submit_lifecycle,
    tenant_operation,
)
from ._roles import sync_tenant_roles
from ._subscribers import forget_uninstalled_subscribers

__all__ = [
    "Drift",
    "FleetReport",
    "Lineage",
    "ModulesChanged",
    "Operation",
    "SchemaMissing",
    "TenantRecord",
    "UninstallPlan",
    "all_tenants",
    "create_tenant",
    "dry_run_uninstall",
    "find_drift",
    "find_tenant",
    "forget_uninstalled_subscribers",
    "lineages",
    "lint_lineage",
    "load_lineage",
    "migrate_platform",
    "module_heads",
    "module_states",
    "on_modules_changed",
    "restore_tenant",
    "run_locked",
    "submit_lifecycle",
    "sync_catalogue",
    "sync_tenant_roles",
    "tenant_operation",
    "tenants_behind",
    "upgrade_fleet",
    "upgrade_fleet_on_workers",
    "validate_slug",
]

"""The public platform API: everything a module may import from the core.

Everything else under `dentalpin.platform` is private (underscore modules) and may
change without notice. Like pluggy's `__init__` over `_manager.py` and `_hooks.py`.
"""

from ._errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PlatformError,
    UninstallVeto,
    UnknownModule,
)
from ._http import (
    CurrentPrincipal,
    Principal,
    Tenant,
    TenantDB,
    public,
    require_permission,
)
from ._manifest import Category, Manifest, NavEntry
from ._module import (
    NAMING_CONVENTION,
    LifecycleContext,
    Module,
    TenantRef,
    module_metadata,
)
from ._registry import Registry

__all__ = [
    "NAMING_CONVENTION",
    "Category",
    "Conflict",
    "CurrentPrincipal",
    "InvalidInput",
    "LifecycleContext",
    "Manifest",
    "Module",
    "NavEntry",
    "NotFound",
    "PlatformError",
    "Principal",
    "Registry",
    "Tenant",
    "TenantDB",
    "TenantRef",
    "UninstallVeto",
    "UnknownModule",
    "module_metadata",
    "public",
    "require_permission",
]

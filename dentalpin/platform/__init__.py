"""The public platform API: everything a module may import from the core.

Everything else under `dentalpin.platform` is private (underscore modules) and may
change without notice. Like pluggy's `__init__` over `_manager.py` and `_hooks.py`.
"""

from typing import TYPE_CHECKING, Any

from ._errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PlatformError,
    UninstallVeto,
    UnknownModule,
)
from ._events import Event, EventContext, Handler, publish
from ._manifest import Category, Manifest, NavEntry
from ._module import (
    NAMING_CONVENTION,
    LifecycleContext,
    Module,
    TenantRef,
    module_metadata,
)
from ._periodic import Periodic, PeriodicContext
from ._registry import Registry

if TYPE_CHECKING:
    from ._http import (
        CurrentPrincipal,
        Principal,
        Tenant,
        TenantDB,
        public,
        require_permission,
    )

_HTTP_NAMES = frozenset(
    {"CurrentPrincipal", "Principal", "Tenant", "TenantDB", "public", "require_permission"}
)


def __getattr__(name: str) -> Any:
    # The HTTP helpers pull in FastAPI; the CLI and workers should not pay for it at start-up.
    if name in _HTTP_NAMES:
        from . import _http

        return getattr(_http, name)
    raise AttributeError(f"module 'dentalpin.platform' has no attribute '{name}'")


__all__ = [
    "NAMING_CONVENTION",
    "Category",
    "Conflict",
    "CurrentPrincipal",
    "Event",
    "EventContext",
    "Handler",
    "InvalidInput",
    "LifecycleContext",
    "Manifest",
    "Module",
    "NavEntry",
    "NotFound",
    "Periodic",
    "PeriodicContext",
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
    "publish",
    "require_permission",
]

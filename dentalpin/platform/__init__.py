"""The public platform API: everything a module may import from the core.

Everything else under `dentalpin.platform` is private (underscore modules) and may
change without notice. Like pluggy's `__init__` over `_manager.py` and `_hooks.py`.
"""

from typing import TYPE_CHECKING, Any

from ._errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PlatformError,
    PreconditionFailed,
    PreconditionRequired,
    UninstallVeto,
    UnknownModule,
)
from ._events import Event, EventContext, Handler, MemberRemoved, publish
from ._manifest import Category, Manifest, NavEntry
from ._members import ClinicMembers, Member
from ._module import (
    NAMING_CONVENTION,
    LifecycleContext,
    Module,
    TenantRef,
    module_metadata,
)
from ._periodic import Periodic, PeriodicContext
from ._registry import Registry
from ._rows import (
    Page,
    PageOf,
    PatchBody,
    conflicts_as,
    etag,
    fetch_page,
    sort_order,
    update_versioned,
)

if TYPE_CHECKING:
    from ._http import (
        CurrentPrincipal,
        IfMatch,
        Members,
        PageParams,
        Paging,
        Principal,
        Tenant,
        TenantDB,
        public,
        require_permission,
    )

_HTTP_NAMES = frozenset(
    {
        "CurrentPrincipal",
        "IfMatch",
        "Members",
        "PageParams",
        "Paging",
        "Principal",
        "Tenant",
        "TenantDB",
        "public",
        "require_permission",
    }
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
    "ClinicMembers",
    "Conflict",
    "CurrentPrincipal",
    "Event",
    "EventContext",
    "Forbidden",
    "Handler",
    "IfMatch",
    "InvalidInput",
    "LifecycleContext",
    "Manifest",
    "Member",
    "MemberRemoved",
    "Members",
    "Module",
    "NavEntry",
    "NotFound",
    "Page",
    "PageOf",
    "PageParams",
    "Paging",
    "PatchBody",
    "Periodic",
    "PeriodicContext",
    "PlatformError",
    "PreconditionFailed",
    "PreconditionRequired",
    "Principal",
    "Registry",
    "Tenant",
    "TenantDB",
    "TenantRef",
    "UninstallVeto",
    "UnknownModule",
    "conflicts_as",
    "etag",
    "fetch_page",
    "module_metadata",
    "public",
    "publish",
    "require_permission",
    "sort_order",
    "update_versioned",
]

"""The module base class: what a module is made of and the hooks it may implement."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from sqlalchemy import ARRAY, Enum, MetaData
from sqlalchemy.dialects.postgresql import DOMAIN
from sqlalchemy.types import TypeDecorator, TypeEngine

from ._manifest import Manifest

if TYPE_CHECKING:
    from fastapi import APIRouter
    from sqlalchemy.ext.asyncio import AsyncSession

    from ._events import Event, Handler
    from ._periodic import Periodic

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Deterministic constraint and index names, so downgrades can name what they drop."""


def module_metadata() -> MetaData:
    """Schema-less metadata for a module's tables; the tenant's search path places them."""
    return MetaData(naming_convention=NAMING_CONVENTION)


PER_SCHEMA_TYPES = (
    "Such a type is created in every clinic's schema with its own OID, and a statement "
    'prepared for one clinic then fails for the next ("column is of type t_b.kind but '
    'expression is of type t_a.kind"): use Enum(..., native_enum=False), or text with a '
    "CHECK constraint (docs/modules.md, section 3)"
)


def check_metadata(metadata: MetaData | None) -> list[str]:
    """Columns of a module's tables whose type PostgreSQL would create in the tenant's
    schema (a native enum, a domain, or an array of one): see `PER_SCHEMA_TYPES`."""
    if metadata is None:
        return []
    return [
        f"column {table.name}.{column.name} has the PostgreSQL {found}"
        for table in metadata.tables.values()
        for column in table.columns
        if (found := _per_schema_type(column.type)) is not None
    ]


def _per_schema_type(kind: TypeEngine[Any]) -> str | None:
    if isinstance(kind, TypeDecorator):
        return _per_schema_type(kind.impl_instance)
    if isinstance(kind, ARRAY):
        return _per_schema_type(kind.item_type)
    if isinstance(kind, DOMAIN):
        return f"domain type '{kind.name}'"
    if isinstance(kind, Enum) and kind.native_enum:
        return f"enum type '{kind.name}'"
    return None


@dataclass(frozen=True)
class TenantRef:
    """The tenant a piece of work runs for, as modules see it."""

    id: UUID
    slug: str
    name: str
    schema: str
    role: str


@dataclass
class LifecycleContext:
    """What a lifecycle hook gets: its tenant, a session scoped to it, and a log."""

    tenant: TenantRef
    session: AsyncSession
    settings: dict[str, Any]
    log: Callable[[str], Awaitable[None]]
    from_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Module:
    """Base class of every DentalPin module, built in or third-party.

    A subclass declares `manifest` and may set `metadata` (its tables), keep Alembic
    revisions under `<package>/migrations/versions/`, return an API router from
    `router()`, and override the lifecycle hooks. Hooks run inside the lifecycle
    transaction, with a session scoped to the tenant's schema and role.
    """

    manifest: ClassVar[Manifest]
    metadata: ClassVar[MetaData | None] = None
    migrations_dir: ClassVar[str | None] = "migrations"
    """Directory of the module's Alembic lineage, relative to its package; None: no tables."""
    compatible_revision: ClassVar[str | None] = None
    """Oldest schema revision this code still works with (expand/contract); None: its head.
    Tenants whose schema is older get 503 for this module until the fleet upgrade reaches them."""

    events: ClassVar[tuple[type[Event], ...]] = ()
    """The events this module publishes; their names must start with `<module name>.`."""

    def subscriptions(self) -> dict[str, Handler]:
        """Event name -> async handler, run for each event once per tenant (see `_relay`)."""
        return {}

    def periodic(self) -> dict[str, Periodic]:
        """Job name -> `Periodic(every_s, handler)`, run in each tenant that has the module."""
        return {}

    def router(self) -> APIRouter | None:
        """The module's API router, mounted once at `/api/v1/<name>/`."""
        return None

    async def on_install(self, ctx: LifecycleContext) -> None:
        """Called after the module's migrations ran for a tenant."""

    async def seed(self, ctx: LifecycleContext) -> None:
        """Initial data for a tenant (a default location, reference tables...)."""

    async def on_upgrade(self, ctx: LifecycleContext) -> None:
        """Called after an upgrade; `ctx.from_version` is the version upgraded from."""

    async def before_uninstall(self, ctx: LifecycleContext) -> None:
        """Raise `UninstallVeto(reason)` to refuse the uninstall (legal retention...)."""

    async def on_uninstall(self, ctx: LifecycleContext) -> None:
        """Called inside the uninstall transaction, before the tables are dropped."""

    async def demo(self, ctx: LifecycleContext) -> None:
        """Sample data for the demo clinic (`dentalpin demo` / `dentalpin up`), after install."""

    @classmethod
    def package_dir(cls) -> Path:
        return Path(inspect.getfile(cls)).resolve().parent

    @classmethod
    def migrations_path(cls) -> Path | None:
        if cls.migrations_dir is None:
            return None
        path = cls.package_dir() / cls.migrations_dir
        return path if (path / "versions").is_dir() else None

"""DDL images: provisioning a module without running Alembic for every sign-up.

Running a module's lineage costs Alembic's environment set-up, catalogue probes and
two round trips per statement (asyncpg prepares everything). The statements
themselves are the same for every fresh tenant: module revisions are schema-less
and the version table is unqualified, so the tenant's search path decides where
everything lands. An image is those statements, captured online once per process
for (module, head revision, PostgreSQL major version): the lineage runs for real
in a scratch schema, inside a transaction that is rolled back, with a
`before_cursor_execute` listener recording what was sent. It is not built from
`pg_dump` output (which reflects the server's rendering, not the migrations) nor
from Alembic's offline mode (which cannot see what a revision does at run time).

An image replays only where the capture's conditions hold again: the module has
no version table in the tenant yet, the target is its head, and every dependency
the module has is at the revision it had in the scratch schema. Anywhere else the
lifecycle runs Alembic as before. The tests compare both paths object for object.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import Connection, event, text
from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Select, visitors
from sqlalchemy.sql.schema import Table

from dentalpin.platform._runtime import Platform

from ._lineage import CREATE_EXTENSION, Lineage, MigrationError, lineages, run_alembic

_STATE_KEY = "ddl_images"
_LOCKS_KEY = "ddl_image_locks"
_CATALOGUE_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
_SCRATCH_PREFIX = "dp_scratch_"
_locks_guard = threading.Lock()

ImageKey = tuple[str, str, int]
"""(module, head revision, PostgreSQL server major version)."""


@dataclass(frozen=True)
class Statement:
    """One statement as the driver received it: asyncpg's `$n` placeholders, positional args."""

    sql: str
    parameters: tuple[Any, ...] | None = None
    many: list[tuple[Any, ...]] | None = None
    """Argument rows of an `executemany` (`op.bulk_insert`)."""

    @property
    def bound(self) -> bool:
        return bool(self.parameters) or self.many is not None


@dataclass(frozen=True)
class DdlImage:
    """What a module's migrations send to a fresh schema to bring it to `revision`."""

    module: str
    revision: str
    server_major: int
    statements: tuple[Statement, ...]
    requires: dict[str, str | None] = field(default_factory=dict)
    """Revision of each dependency (with a lineage) in the scratch schema: replay needs
    the tenant to match, since a revision may build on its dependencies' tables."""

    @property
    def script(self) -> str | None:
        """Every statement as one script (asyncpg's simple-query protocol runs it in one
        round trip), or None when a statement has bound parameters."""
        if any(s.bound for s in self.statements):
            return None
        # A newline before each ';' so a statement ending in a `--` comment stays closed.
        return "\n;\n".join(s.sql.strip().rstrip(";") for s in self.statements)

    async def replay(self, conn: AsyncConnection) -> None:
        """Execute the image in `conn`'s open transaction (its search path decides where)."""
        for statement in self.statements:
            # Defence in depth: capture ran under `refuse_create_extension` already.
            if CREATE_EXTENSION.search(statement.sql):
                raise MigrationError(
                    f"module '{self.module}' ran CREATE EXTENSION in a revision; declare the "
                    "extension in the manifest's requires_extensions instead"
                )
        fairy = await conn.get_raw_connection()
        raw: asyncpg.Connection = fairy.driver_connection
        pending: list[str] = []

        async def flush() -> None:
            if pending:
                await raw.execute("\n;\n".join(pending))
                pending.clear()

        for statement in self.statements:
            if statement.many is not None:
                await flush()
                await raw.executemany(statement.sql, statement.many)
            elif statement.parameters:
                await flush()
                await raw.execute(statement.sql, *statement.parameters)
            else:
                pending.append(statement.sql.strip().rstrip(";"))
        await flush()


@dataclass(frozen=True)
class Unusable:
    """A module whose image must not be used in this process, and why."""

    reason: str


def enabled(platform: Platform) -> bool:
    return platform.settings.provision_with_ddl_images


def server_major(conn: AsyncConnection | Connection) -> int:
    info = conn.dialect.server_version_info
    if not info:
        raise RuntimeError("the server version is not known before the first connection")
    return int(info[0])


def _cache(platform: Platform) -> dict[ImageKey, DdlImage | Unusable]:
    cache: dict[ImageKey, DdlImage | Unusable] = platform.state.setdefault(_STATE_KEY, {})
    return cache


def _lock_for(platform: Platform, key: ImageKey) -> asyncio.Lock:
    """One lock per image and event loop: asyncio locks belong to the loop that first
    waits on them, and a platform may be shared by threads running loops of their own."""
    loop = asyncio.get_running_loop()
    with _locks_guard:
        per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[ImageKey, Any]] = (
            platform.state.setdefault(_LOCKS_KEY, weakref.WeakKeyDictionary())
        )
        locks = per_loop.setdefault(loop, {})
        lock: asyncio.Lock = locks.setdefault(key, asyncio.Lock())
        return lock


def dependencies(platform: Platform, module: str) -> list[str]:
    """The module's dependency closure (dependencies first) that has migrations."""
    every = lineages(platform.registry, platform.state)
    return [
        name
        for name in platform.registry.closure([module])
        if name != module and every[name].script is not None
    ]


async def image_for(platform: Platform, conn: AsyncConnection, module: str) -> DdlImage | None:
    """The module's image at its head for this server version, captured on first use
    (in a savepoint of `conn`'s open transaction, which must not be in a failed state)."""
    lineage = lineages(platform.registry, platform.state)[module]
    head = lineage.head
    if head is None:
        return None
    key: ImageKey = (module, head, server_major(conn))
    cache = _cache(platform)
    found = cache.get(key)
    if found is None:
        async with _lock_for(platform, key):
            # Another task may have captured it while this one waited.
            found = cache.get(key)
            if found is None:
                found = await _capture(platform, conn, lineage)
                if found is not None:
                    cache[key] = found
    return found if isinstance(found, DdlImage) else None


async def _capture(
    platform: Platform, conn: AsyncConnection, lineage: Lineage
) -> DdlImage | Unusable | None:
    """Run the lineage in a scratch schema and record it; None: failed, try again later.

    The scratch work happens in a savepoint of the caller's transaction, rolled back
    afterwards: no second connection is needed (a burst of sign-ups waiting for the
    first capture could otherwise exhaust the pool), and the rollback also restores
    the caller's transaction-local search path and lock timeout.
    """
    every = lineages(platform.registry, platform.state)
    deps = dependencies(platform, lineage.module)
    # Random, and unlike anything a revision would write, so a leak is unmistakable.
    scratch = f"{_SCRATCH_PREFIX}{secrets.token_hex(8)}"

    def run(sync: Connection) -> tuple[list[Statement], dict[str, str | None], str]:
        requires = {name: every[name].upgrade(sync) for name in deps}
        statements, revision = _record(sync, lineage)
        return statements, requires, revision

    try:
        savepoint = await conn.begin_nested()
        try:
            await conn.execute(text(f'create schema "{scratch}"'))
            await conn.execute(
                text("select set_config('search_path', :path, true)"),
                {"path": f'"{scratch}", extensions'},
            )
            statements, requires, revision = await run_alembic(conn, run)
        finally:
            await savepoint.rollback()
    except MigrationError as exc:
        # Deterministic (a revision ran CREATE EXTENSION...): the Alembic path will say so
        # in the tenant's own operation; don't capture again in this process.
        return Unusable(str(exc))
    except Exception:
        # Transient (a lock timeout...) or a migration that also fails in the tenant, where
        # the Alembic path reports it properly. Not cached: a later install tries again.
        return None
    leak = _leak(statements, scratch)
    if leak is not None:
        return Unusable(f"a revision wrote the scratch schema's name into its SQL: {leak[:200]}")
    return DdlImage(lineage.module, revision, server_major(conn), tuple(statements), requires)


def _record(sync: Connection, lineage: Lineage) -> tuple[list[Statement], str]:
    recorded: list[Statement] = []

    def listener(
        _conn: Connection,
        _cursor: DBAPICursor,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        if _is_catalogue_read(context) or _is_version_read(statement, lineage):
            return
        if executemany:
            recorded.append(Statement(statement, many=[tuple(p) for p in parameters]))
        else:
            recorded.append(Statement(statement, tuple(parameters) if parameters else None))

    event.listen(sync, "before_cursor_execute", listener)
    try:
        revision = lineage.upgrade(sync)
    finally:
        event.remove(sync, "before_cursor_execute", listener)
    if revision is None:
        raise MigrationError(f"module '{lineage.module}' has no revision to capture")
    return recorded, revision


def _is_catalogue_read(context: ExecutionContext | None) -> bool:
    """SQLAlchemy's reflection (Alembic's `has_table` probes): a Core SELECT over catalogue
    tables only. Its answer in a fresh schema is the same as in the scratch schema, and it
    changes nothing, so replay can skip it. Text SELECTs a revision runs are kept: they may
    have effects (`select setval(...)`)."""
    compiled = getattr(context, "compiled", None)
    statement = getattr(compiled, "statement", None)
    if not isinstance(statement, Select):
        return False
    tables = [e for e in visitors.iterate(statement) if isinstance(e, Table)]
    return bool(tables) and all(t.schema in _CATALOGUE_SCHEMAS for t in tables)


def _is_version_read(statement: str, lineage: Lineage) -> bool:
    """`Lineage.current` reading the revision back after the upgrade."""
    return statement.strip() == f"select version_num from {lineage.version_table}"


def _leak(statements: list[Statement], scratch: str) -> str | None:
    for statement in statements:
        texts = [statement.sql, repr(statement.parameters), repr(statement.many)]
        if any(scratch in t.lower() for t in texts):
            return statement.sql
    return None


async def install_from_image(
    platform: Platform,
    conn: AsyncConnection,
    lineage: Lineage,
    schema: str,
    target: str | None,
    before: set[str],
) -> str | None:
    """Bring a module from nothing to head by replaying its image, when that is exactly
    what its migrations would do here. Return the revision, or None: run Alembic instead."""
    if not enabled(platform) or lineage.script is None:
        return None
    head = lineage.head
    if head is None or (target is not None and target != head):
        return None
    if f"table:{lineage.version_table}" in before:
        return None  # already (partly) installed: pending revisions depend on its state
    image = await image_for(platform, conn, lineage.module)
    if image is None or not await _dependencies_match(conn, schema, image, before):
        return None
    await image.replay(conn)
    return image.revision


async def _dependencies_match(
    conn: AsyncConnection, schema: str, image: DdlImage, before: set[str]
) -> bool:
    """Whether every dependency is at the revision it had when the image was captured."""
    if not image.requires:
        return True
    tables = {name: f"alembic_version_{name}" for name in image.requires}
    if any(f"table:{table}" not in before for table in tables.values()):
        return False
    quoted = schema.replace('"', '""')
    union = " union all ".join(
        f"select '{name}' as module, version_num from \"{quoted}\".{table}"
        for name, table in tables.items()
    )
    rows = await conn.execute(text(union))
    found: dict[str, str | None] = {}
    for module, version in rows:
        if module in found:
            return False  # several rows: not a state Alembic would leave
        found[module] = version
    return found == image.requires

"""DDL images: migrating a tenant without running Alembic in it.

Running a module's lineage costs Alembic's environment set-up, catalogue probes and
two round trips per statement (asyncpg prepares everything), and Alembic work is
serialised per process (its `op` proxy is global). The statements themselves are
the same for every tenant that starts from the same place: module revisions are
schema-less and the version table is unqualified, so the tenant's search path
decides where everything lands.

An image is those statements, captured online once per process for (module, the
revision it starts from, head revision, PostgreSQL major version): the lineage runs
for real in a scratch schema, inside a savepoint that is rolled back, with a cursor
listener recording what was sent. It is not built from `pg_dump` output (the
server's rendering, not the migrations) nor from Alembic's offline mode (which
cannot see what a revision does at run time). The start is "nothing" for a fresh
install (provisioning), or an older revision for a fleet upgrade.

An image replays only where it means exactly what the migrations would do:
  - the tenant is where the capture started: no version table for a fresh install,
    or the version table at the start revision; every dependency (with a lineage) at
    the revision it had in the scratch schema; the target is the head;
  - the capture read nothing but Alembic's own bookkeeping. A revision that reads
    (the catalogue, data, `current_schema()`...) may send SQL that depends on the
    answer, which can differ per tenant, so its module keeps the Alembic path;
  - no statement names the scratch schema.
Anything else runs Alembic as before. The tests compare both paths object for object.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import Connection, event, text
from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Insert, Select, visitors
from sqlalchemy.sql.schema import Table

from dentalpin.platform._runtime import Platform

from ._lineage import CREATE_EXTENSION, Lineage, MigrationError, lineages, run_alembic

_STATE_KEY = "ddl_images"
_LOCKS_KEY = "ddl_image_locks"
_CATALOGUE_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
_SCRATCH_PREFIX = "dp_scratch_"
_READ = re.compile(r"^\s*(select|with|show|values|table|explain|fetch)\b", re.IGNORECASE)
_locks_guard = threading.Lock()

ImageKey = tuple[str, str, str, int]
"""(module, start revision or "" for a fresh install, head revision, server major)."""


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
    """What a module's migrations send to take a schema from `start` to `revision`."""

    module: str
    start: str | None
    """None: the module is not installed yet (no version table)."""
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
        return _join(s.sql for s in self.statements)

    async def replay(self, conn: AsyncConnection) -> None:
        """Execute the image in `conn`'s open transaction (its search path decides where)."""
        for statement in self.statements:
            # Defence in depth: the capture ran under `refuse_create_extension` already.
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
                await raw.execute(_join(pending))
                pending.clear()

        for statement in self.statements:
            if statement.many is not None:
                await flush()
                await raw.executemany(statement.sql, statement.many)
            elif statement.parameters:
                await flush()
                await raw.execute(statement.sql, *statement.parameters)
            else:
                pending.append(statement.sql)
        await flush()


def _join(statements: Any) -> str:
    # A newline before each ';' so a statement ending in a `--` comment stays closed.
    return "\n;\n".join(str(s).strip().rstrip(";") for s in statements)


@dataclass(frozen=True)
class Unusable:
    """A module (from a start revision) whose image is not used in this process, and why.
    Cached like an image: capturing again would give the same answer."""

    reason: str


def enabled(platform: Platform) -> bool:
    return platform.settings.provision_with_ddl_images


def server_major(conn: AsyncConnection | Connection) -> int:
    info = conn.dialect.server_version_info
    if not info:
        raise RuntimeError("the server version is not known before the first connection")
    return int(info[0])


def cached(platform: Platform) -> dict[ImageKey, DdlImage | Unusable]:
    """This process's images (and refusals), by key."""
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


async def image_for(
    platform: Platform, conn: AsyncConnection, module: str, start: str | None = None
) -> DdlImage | Unusable | None:
    """The module's image from `start` to its head on this server, captured on first use
    in a savepoint of `conn`'s open transaction (which must not be in a failed state).
    None: the module has no lineage."""
    lineage = lineages(platform.registry, platform.state)[module]
    head = lineage.head
    if head is None:
        return None
    key: ImageKey = (module, start or "", head, server_major(conn))
    cache = cached(platform)
    found = cache.get(key)
    if found is None:
        async with _lock_for(platform, key):
            # Another task may have captured it while this one waited.
            found = cache.get(key)
            if found is None:
                found = cache[key] = await _capture(platform, conn, lineage, start)
    return found


async def _capture(
    platform: Platform, conn: AsyncConnection, lineage: Lineage, start: str | None
) -> DdlImage | Unusable:
    """Run the lineage in a scratch schema and record what it sends.

    The scratch work happens in a savepoint of the caller's transaction, rolled back
    afterwards: no second connection is needed (a burst of sign-ups waiting for the
    first capture could otherwise exhaust the pool), and the rollback also restores
    the caller's transaction-local search path.
    """
    every = lineages(platform.registry, platform.state)
    deps = dependencies(platform, lineage.module)
    # Random, and unlike anything a revision would write, so a leak is unmistakable.
    scratch = f"{_SCRATCH_PREFIX}{secrets.token_hex(8)}"

    def run(sync: Connection) -> tuple[_Recording, dict[str, str | None], str | None]:
        requires = {name: every[name].upgrade(sync) for name in deps}
        if start is not None:
            lineage.upgrade(sync, start)
        recording = _Recording(lineage)
        event.listen(sync, "after_cursor_execute", recording.listener)
        try:
            revision = lineage.upgrade(sync)
        finally:
            event.remove(sync, "after_cursor_execute", recording.listener)
        return recording, requires, revision

    try:
        savepoint = await conn.begin_nested()
        try:
            await conn.execute(text(f'create schema "{scratch}"'))
            await conn.execute(
                text("select set_config('search_path', :path, true)"),
                {"path": f'"{scratch}", extensions'},
            )
            recording, requires, revision = await run_alembic(conn, run)
        finally:
            await savepoint.rollback()
    except Exception as exc:
        # The revisions fail here (CREATE EXTENSION, a bug, a start the lineage does not
        # know...): the Alembic path will fail in the tenant's operation and say why.
        return Unusable(f"capture failed: {type(exc).__name__}: {exc}"[:500])
    if recording.reads:
        return Unusable(
            "a revision reads the database, so its SQL may depend on the answer: "
            f"{recording.reads[0][:200]}"
        )
    for statement in recording.statements:
        sent = [statement.sql, repr(statement.parameters), repr(statement.many)]
        if any(scratch in s.lower() for s in sent):
            return Unusable(f"a revision wrote the scratch schema's name: {statement.sql[:200]}")
    if revision is None:
        return Unusable("the lineage ended without a revision")
    return DdlImage(
        lineage.module,
        start,
        revision,
        server_major(conn),
        tuple(recording.statements),
        requires,
    )


class _Recording:
    """What a lineage sends: statements to replay, Alembic's bookkeeping reads (skipped),
    and any other read (which makes the image unusable)."""

    def __init__(self, lineage: Lineage) -> None:
        self.version_table = lineage.version_table
        self.statements: list[Statement] = []
        self.reads: list[str] = []

    def listener(
        self,
        _conn: Connection,
        cursor: DBAPICursor,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        compiled = getattr(context, "compiled", None)
        construct = getattr(compiled, "statement", None)
        returns_rows = cursor.description is not None or bool(_READ.match(statement))
        if returns_rows and self._bookkeeping(construct, statement, parameters):
            return
        if returns_rows and not self._version_write(construct):
            self.reads.append(statement)
            return
        if executemany:
            self.statements.append(Statement(statement, many=[tuple(p) for p in parameters]))
        else:
            self.statements.append(Statement(statement, tuple(parameters) if parameters else None))

    def _bookkeeping(self, construct: Any, statement: str, parameters: Any) -> bool:
        """Alembic's and `Lineage.current`'s reads of the version table and of whether it
        exists. Replay checks their answers up front (the tenant is at the start)."""
        if statement.strip() == f"select version_num from {self.version_table}":
            return True
        if not isinstance(construct, Select):
            return False
        tables = {t for t in visitors.iterate(construct) if isinstance(t, Table)}
        if tables and all(t.name == self.version_table and t.schema is None for t in tables):
            return True
        return (
            bool(tables)
            and all(t.schema in _CATALOGUE_SCHEMAS for t in tables)
            and self.version_table in (parameters or ())
        )

    def _version_write(self, construct: Any) -> bool:
        """Alembic's INSERT of the first revision (SQLAlchemy adds RETURNING to it)."""
        return isinstance(construct, Insert) and getattr(construct.table, "name", None) == (
            self.version_table
        )


async def migrate_from_image(
    platform: Platform,
    conn: AsyncConnection,
    lineage: Lineage,
    schema: str,
    target: str | None,
    before: set[str],
) -> str | None:
    """Bring a module to its head by replaying an image, when that is exactly what its
    migrations would do here. Return the revision, or None: run Alembic instead.

    `before` is the schema's `owned_objects`: which version tables exist is read from it.
    """
    if not enabled(platform) or lineage.script is None:
        return None
    head = lineage.head
    if head is None or (target is not None and target != head):
        return None
    every = lineages(platform.registry, platform.state)
    deps = dependencies(platform, lineage.module)
    versions = await _versions(conn, schema, [lineage, *(every[d] for d in deps)], before)
    if versions is None:
        return None
    start = versions[lineage.module]
    if start == head:
        return head  # nothing pending: Alembic would send nothing either
    if start is not None and not _known_ancestor(lineage, start, head):
        return None  # Alembic will explain what is wrong with this revision
    if not _requirements_met(platform, lineage, start, versions):
        return None  # Alembic's requirement check will name the missing revision
    image = await image_for(platform, conn, lineage.module, start)
    if not isinstance(image, DdlImage):
        return None
    if image.requires != {d: versions[d] for d in deps}:
        return None
    await image.replay(conn)
    return image.revision


async def _versions(
    conn: AsyncConnection, schema: str, of: list[Lineage], before: set[str]
) -> dict[str, str | None] | None:
    """Each lineage's revision in the tenant (None: no version table), in one round trip;
    None when a version table holds other than exactly one row (Alembic's business)."""
    versions: dict[str, str | None] = {lin.module: None for lin in of}
    present = [lin for lin in of if f"table:{lin.version_table}" in before]
    if not present:
        return versions
    quoted = schema.replace('"', '""')
    union = " union all ".join(
        f"select '{lin.module}' as module, version_num from \"{quoted}\".{lin.version_table}"
        for lin in present
    )
    seen: set[str] = set()
    for module, version in await conn.execute(text(union)):
        if module in seen:
            return None
        seen.add(module)
        versions[module] = version
    if len(seen) != len(present):
        return None
    return versions


def _known_ancestor(lineage: Lineage, start: str, head: str) -> bool:
    assert lineage.script is not None
    try:
        return any(s.revision == start for s in lineage.script.iterate_revisions(head, "base"))
    except Exception:
        return False


def _requirements_met(
    platform: Platform, lineage: Lineage, start: str | None, versions: dict[str, str | None]
) -> bool:
    """`dentalpin_requires` of the pending revisions, against the versions already read."""
    every = lineages(platform.registry, platform.state)
    for script in lineage.pending(start):
        for other, revision in lineage.requires(script).items():
            other_lineage = every.get(other)
            if other_lineage is None or other not in versions:
                return False
            if not other_lineage.is_at_or_after(versions[other], revision):
                return False
    return True

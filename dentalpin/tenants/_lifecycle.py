"""Per-tenant module lifecycle: install, upgrade, uninstall (archived), restore.

Each operation runs in one transaction on one connection, holding the tenant's
advisory lock: it happens entirely or not at all. Migrations run as the schema
owner with the tenant's search path; module hooks run in a session that also
takes the tenant's role, so they can only touch that tenant's schema.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import Connection, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.platform import (
    Conflict,
    InvalidInput,
    LifecycleContext,
    Module,
    NotFound,
    UninstallVeto,
)
from dentalpin.platform._db import enter_tenant_schema
from dentalpin.platform._jobs import note_written_file
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import archives, tenant_modules

from . import _archive as archive_io
from ._catalogue import SPARE, TenantRecord, module_states
from ._images import migrate_from_image
from ._introspect import owned_objects, tables_in_load_order
from ._lineage import Lineage, MigrationError, lineages, run_alembic

Log = Callable[[str], Awaitable[None]]
Progress = Callable[[float, str], Awaitable[None]]


async def _quiet(*_args: Any) -> None:
    return None


ModulesChanged = Callable[["Operation", dict[str, str]], Awaitable[None]]
_listeners: list[ModulesChanged] = []


def on_modules_changed(listener: ModulesChanged) -> ModulesChanged:
    """Register `listener(op, {module: "installed" | "upgraded" | "uninstalled"})`, called in the
    lifecycle transaction after modules changed (tenant roles, pending deliveries...)."""
    _listeners.append(listener)
    return listener


async def announce(op: Operation, changes: dict[str, str]) -> None:
    for listener in _listeners:
        await listener(op, changes)


@dataclass
class Operation:
    """One lifecycle operation on one tenant, inside one open transaction."""

    platform: Platform
    conn: AsyncConnection
    tenant: TenantRecord
    log: Log = _quiet
    progress: Progress = _quiet
    written_files: list[str] = field(default_factory=list)

    @property
    def spare(self) -> bool:
        """A spare schema gets migrations only: hooks and listeners run when it is claimed
        (seeding belongs to the clinic)."""
        return self.tenant.status == SPARE

    @property
    def lineages(self) -> dict[str, Lineage]:
        return lineages(self.platform.registry, self.platform.state)

    async def begin(self) -> None:
        """Put the transaction in the tenant's schema and bound how long DDL waits for locks."""
        timeout = self.platform.settings.ddl_lock_timeout_ms
        await self.conn.execute(text(f"set local lock_timeout = '{int(timeout)}ms'"))
        await self.conn.run_sync(enter_tenant_schema, self.tenant.scope)

    async def states(self) -> dict[str, dict[str, Any]]:
        return await module_states(self.conn, self.tenant.id)

    async def installed(self) -> list[str]:
        states = await self.states()
        return [name for name, s in states.items() if s["state"] == "installed"]


# Install ---------------------------------------------------------------------------


async def install(op: Operation, names: list[str]) -> list[str]:
    """Install `names` and whatever they need that the tenant lacks, dependencies first."""
    registry = op.platform.registry
    for name in names:
        if not registry.get(name).manifest.installable:
            raise InvalidInput(f"module '{name}' is not installable")
    installed = set(await op.installed())
    already = [n for n in names if n in installed]
    if already and len(already) == len(names):
        raise Conflict(f"already installed for '{op.tenant.slug}': {', '.join(already)}")
    plan = [n for n in registry.closure(names) if n not in installed]
    await _check_extensions(op, plan)
    await op.log(f"installing {', '.join(plan)} for tenant '{op.tenant.slug}'")
    for index, name in enumerate(plan):
        revision, created, _dropped = await _migrate(op, name)
        manifest = registry.get(name).manifest
        settings = manifest.default_settings()
        await _save_state(
            op,
            name,
            state="installed",
            version=manifest.version,
            revision=revision,
            owned_objects=sorted(created),
            settings=settings,
            installed_at=datetime.now(UTC),
            archive_id=None,
            error=None,
        )
        if not op.spare:
            await _hooks(op, [HookCall(name, hook, settings) for hook in INSTALL_HOOKS])
        await op.progress((index + 1) / len(plan), f"installed {name}")
        await op.log(f"installed {name} {manifest.version} (revision {revision})")
    if not op.spare:
        await announce(op, dict.fromkeys(plan, "installed"))
    return plan


async def seed_installed(op: Operation, settings: dict[str, dict[str, Any]]) -> None:
    """What `install` does after the migrations, for modules a spare schema already has
    (`{module: settings}`, as the claim read them): their install and seed hooks,
    dependencies first, then the announcement (tenant roles). The claim stamped their
    `installed_at`."""
    ordered = op.platform.registry.ordered(settings)
    await _hooks(
        op, [HookCall(name, hook, settings[name]) for name in ordered for hook in INSTALL_HOOKS]
    )
    await announce(op, dict.fromkeys(ordered, "installed"))


async def _check_extensions(op: Operation, plan: list[str]) -> None:
    present = set(
        (
            await op.conn.execute(
                text(
                    "select extname from pg_extension "
                    "where extnamespace = 'extensions'::regnamespace"
                )
            )
        ).scalars()
    )
    for name in plan:
        missing = set(op.platform.registry.get(name).manifest.requires_extensions) - present
        if missing:
            raise InvalidInput(
                f"module '{name}' needs PostgreSQL extensions {sorted(missing)} in the "
                "'extensions' schema; an operator must create them "
                "(create extension ... with schema extensions)"
            )


async def _migrate(
    op: Operation, name: str, target: str | None = None
) -> tuple[str | None, set[str], set[str]]:
    """Run a module's revisions; return its new revision and the objects created and dropped."""
    lineage = op.lineages[name]
    schema = op.tenant.schema_name
    before = await owned_objects(op.conn, schema)
    requires_ok = _requirements_checker(op, lineage, target)
    try:
        # To head, replay the module's DDL image (from nothing, or from the tenant's revision)
        # where that is exactly what its revisions would do here; otherwise run Alembic.
        revision = await migrate_from_image(op.platform, op.conn, lineage, schema, target, before)
        if revision is None:
            revision = await run_alembic(
                op.conn, lambda c: (requires_ok(c), lineage.upgrade(c, target))[1]
            )
    except (MigrationError, InvalidInput):
        raise
    except Exception as exc:
        raise MigrationError(f"migration of '{name}' failed for '{op.tenant.slug}': {exc}") from exc
    after = await owned_objects(op.conn, schema)
    return revision, after - before, before - after


def _requirements_checker(
    op: Operation, lineage: Lineage, target: str | None
) -> Callable[[Connection], None]:
    """Revisions may need another module's revision; dependencies migrate first, so check."""

    def check(conn: Connection) -> None:
        for script in lineage.pending(lineage.current(conn), target):
            for other, revision in lineage.requires(script).items():
                other_lineage = op.lineages.get(other)
                if other_lineage is None or not other_lineage.is_at_or_after(
                    other_lineage.current(conn), revision
                ):
                    raise MigrationError(
                        f"{lineage.module} revision {script.revision} needs {other} at revision "
                        f"{revision}, which tenant '{op.tenant.slug}' does not have yet"
                    )

    return check


INSTALL_HOOKS = ("on_install", "seed")


@dataclass(frozen=True)
class HookCall:
    """One module hook to call, with the module's settings as the operation knows them
    (read or written by it: no hook changes them, so they are not read again)."""

    module: str
    hook: str
    settings: dict[str, Any] | None
    from_version: str | None = None


async def _hook(
    op: Operation,
    name: str,
    hook: str,
    settings: dict[str, Any] | None,
    from_version: str | None = None,
) -> None:
    """Call a module hook in a session confined to the tenant's schema and role."""
    await _hooks(op, [HookCall(name, hook, settings, from_version)])


async def _hooks(op: Operation, calls: list[HookCall]) -> None:
    """Call module hooks one after another, each in its own session (a savepoint) confined
    to the tenant's schema and role, then take the owner back for the DDL that follows.

    Each session sets the tenant's search path and role when it begins, so nothing between
    two hooks needs the owner: it is taken back once, after the last. A hook that raises
    leaves its savepoint rolled back (and with it its role switch) but an earlier hook's
    role in force, so a caller that goes on after an exception calls one hook at a time
    (`_hook`), as the uninstall plan does for vetoes."""
    switched = False
    for call in calls:
        switched = await _call_hook(op, call) or switched
    if switched:
        # The hooks' sessions took the tenant role for the rest of the transaction.
        await op.conn.execute(text("set local role none"))


async def _call_hook(op: Operation, call: HookCall) -> bool:
    """Run one hook; False when the module does not override it (no session was opened)."""
    module = op.platform.registry.get(call.module).module
    if getattr(type(module), call.hook) is getattr(Module, call.hook):
        return False  # not overridden: skip the session, its role switch and their round trips
    session = op.platform.db.session_on(op.conn, op.tenant.scope)
    async with session:
        ctx = LifecycleContext(
            tenant=op.tenant.ref,
            session=session,
            settings=dict(call.settings or {}),
            log=op.log,
            from_version=call.from_version,
        )
        await getattr(module, call.hook)(ctx)
        await session.commit()
    return True


async def _save_state(op: Operation, name: str, **values: Any) -> None:
    values["updated_at"] = datetime.now(UTC)
    stmt = pg_insert(tenant_modules).values(tenant_id=op.tenant.id, module=name, **values)
    await op.conn.execute(
        stmt.on_conflict_do_update(index_elements=["tenant_id", "module"], set_=values)
    )


# Upgrade ---------------------------------------------------------------------------


async def upgrade(op: Operation, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Bring installed modules to the code's head revision, dependencies first."""
    states = await op.states()
    installed = [n for n, s in states.items() if s["state"] == "installed"]
    unknown = [n for n in installed if n not in op.platform.registry]
    if unknown:
        await op.log(
            f"skipping modules no longer available here: {', '.join(unknown)}",
        )
    targets = op.platform.registry.ordered(
        n for n in installed if n not in unknown and (names is None or n in names)
    )
    done = []
    for index, name in enumerate(targets):
        state = states[name]
        lineage = op.lineages[name]
        manifest = op.platform.registry.get(name).manifest
        if state["revision"] == lineage.head and state["version"] == manifest.version:
            continue
        revision, created, dropped = await _migrate(op, name)
        owned = (set(state["owned_objects"]) | created) - dropped
        await _save_state(
            op,
            name,
            state="installed",
            version=manifest.version,
            revision=revision,
            owned_objects=sorted(owned),
            error=None,
        )
        if not op.spare:
            await _hook(op, name, "on_upgrade", state["settings"], from_version=state["version"])
        done.append(
            {
                "module": name,
                "from": state["revision"],
                "to": revision,
                "from_version": state["version"],
                "to_version": manifest.version,
            }
        )
        await op.progress((index + 1) / len(targets), f"upgraded {name}")
        await op.log(f"upgraded {name} {state['revision']} -> {revision}")
    if done and not op.spare:
        # A new version may grant roles differently; listeners recompute what depends on it.
        await announce(op, {d["module"]: "upgraded" for d in done})
    return done


# Uninstall -------------------------------------------------------------------------


@dataclass
class UninstallPlan:
    modules: list[str]
    tables: dict[str, dict[str, int]]
    vetoes: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"modules": self.modules, "tables": self.tables, "vetoes": self.vetoes}


def not_installed(module: str, tenant_slug: str) -> Conflict:
    return Conflict(f"module '{module}' is not installed for tenant '{tenant_slug}'")


async def plan_uninstall(op: Operation, name: str, cascade: bool) -> UninstallPlan:
    """What an uninstall would do: which modules go, in which order, with how many rows."""
    registry = op.platform.registry
    registry.get(name)
    states = await op.states()
    installed = [n for n, s in states.items() if s["state"] == "installed"]
    if name not in installed:
        raise not_installed(name, op.tenant.slug)
    dependents = registry.dependents(name, installed)
    if dependents and not cascade:
        raise Conflict(
            f"installed modules depend on '{name}': {', '.join(dependents)}. Uninstall them "
            "first, or pass --cascade to uninstall them too (dependents first)"
        )
    order = [*dependents, name]
    for module in order:
        if not registry.get(module).manifest.removable:
            raise Conflict(f"module '{module}' is not removable once installed")
    tables: dict[str, dict[str, int]] = {}
    for module in order:
        counts = {}
        for table in _owned_tables(states[module], op.lineages[module]):
            counts[table] = (
                await op.conn.execute(
                    text(f'select count(*) from "{op.tenant.schema_name}"."{table}"')
                )
            ).scalar_one()
        tables[module] = counts
    vetoes = {}
    for module in order:
        try:
            await _hook(op, module, "before_uninstall", states[module]["settings"])
        except UninstallVeto as veto:
            vetoes[module] = veto.detail
    return UninstallPlan(order, tables, vetoes)


def _owned_tables(state: dict[str, Any], lineage: Lineage) -> list[str]:
    return sorted(
        obj.split(":", 1)[1]
        for obj in state["owned_objects"]
        if obj.startswith("table:") and obj != f"table:{lineage.version_table}"
    )


async def uninstall(
    op: Operation,
    name: str,
    cascade: bool,
    on_plan: Callable[[UninstallPlan], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Archive and drop a module (and with `cascade` its dependents) in one transaction.

    Tables are locked in SHARE mode, copied out through this same connection, then
    dropped: the archive holds exactly what was dropped.
    """
    plan = await plan_uninstall(op, name, cascade)
    if plan.vetoes:
        reasons = "; ".join(f"{m}: {r}" for m, r in plan.vetoes.items())
        raise UninstallVeto(f"uninstall refused by the module: {reasons}")
    if on_plan is not None:
        await on_plan(plan)
    states = await op.states()
    schema = op.tenant.schema_name
    every_table = [t for m in plan.modules for t in plan.tables[m]]
    if every_table:
        names = ", ".join(f'"{schema}"."{t}"' for t in every_table)
        await op.conn.execute(text(f"lock table {names} in share mode"))
    archived = {}
    for index, module in enumerate(plan.modules):
        await _hook(op, module, "on_uninstall", states[module]["settings"])
        archive_id = await _archive_module(op, module, states[module], list(plan.tables[module]))
        await _drop_module(op, module, states[module])
        await _save_state(
            op,
            module,
            state="uninstalled",
            revision=None,
            owned_objects=[],
            settings={},
            archive_id=archive_id,
            error=None,
        )
        archived[module] = str(archive_id)
        await op.progress((index + 1) / len(plan.modules), f"uninstalled {module}")
        await op.log(f"uninstalled {module}; archive {archive_id}")
    await announce(op, dict.fromkeys(plan.modules, "uninstalled"))
    return {"modules": plan.modules, "archives": archived, "tables": plan.tables}


async def _raw(op: Operation) -> asyncpg.Connection:
    fairy = await op.conn.get_raw_connection()
    return fairy.driver_connection


async def _archive_module(
    op: Operation, module: str, state: dict[str, Any], tables: list[str]
) -> uuid.UUID:
    schema = op.tenant.schema_name
    ordered = await tables_in_load_order(op.conn, schema, tables)
    raw = await _raw(op)
    data = await archive_io.dump_tables(raw, schema, ordered)
    sequences = await archive_io.dump_sequences(
        raw, schema, ordered, _owned_of_kind(state, "sequence")
    )
    archive_id = uuid.uuid4()
    contents = {
        "kind": "module",
        "tenant_id": str(op.tenant.id),
        "tenant_slug": op.tenant.slug,
        "module": module,
        "version": state["version"],
        "revision": state["revision"],
        "settings": state["settings"],
        "created_at": datetime.now(UTC).isoformat(),
    }
    await _store_archive(
        op,
        archive_id,
        "module",
        contents,
        data,
        sequences,
        module=module,
        version=state["version"],
        revision=state["revision"],
    )
    return archive_id


def _owned_of_kind(state: dict[str, Any], kind: str) -> list[str]:
    return [o.split(":", 1)[1] for o in state["owned_objects"] if o.startswith(f"{kind}:")]


async def _store_archive(
    op: Operation,
    archive_id: uuid.UUID,
    kind: str,
    contents: dict[str, Any],
    data: list[archive_io.TableData],
    sequences: list[archive_io.SequenceValue],
    **columns: Any,
) -> None:
    settings = op.platform.settings
    key = archive_io.archive_key(settings)
    directory = settings.archive_dir / str(op.tenant.id)
    name = f"{contents.get('module') or 'tenant'}-{archive_id}"
    # Recorded before writing: if this transaction never commits, the file is removed (here
    # on failure; by the next holder of the tenant when the process died, see the job row).
    planned = archive_io.archive_path(directory, name)
    op.written_files.append(str(planned))
    await note_written_file(str(planned.resolve()))
    # Compressing and encrypting is CPU work: off the event loop, so the job's heartbeat
    # keeps beating while a large archive is written.
    file = await asyncio.to_thread(
        archive_io.write_archive,
        directory,
        name,
        {**contents, "archive_id": str(archive_id), "key": archive_io.fingerprint(key)},
        data,
        sequences,
        key,
    )
    await op.conn.execute(
        archives.insert().values(
            id=archive_id,
            tenant_id=op.tenant.id,
            kind=kind,
            path=str(file.path.resolve()),
            sha256=file.sha256,
            size_bytes=file.size_bytes,
            # The key's fingerprint stays readable outside the encrypted file, so an operator
            # can tell which key an archive needs when decryption fails.
            contents={
                "tables": {t.name: t.rows for t in data},
                "sequences": len(sequences),
                "key": archive_io.fingerprint(key),
            },
            expires_at=datetime.now(UTC) + timedelta(days=settings.archive_retention_days),
            **columns,
        )
    )


async def _drop_module(op: Operation, module: str, state: dict[str, Any]) -> None:
    """Downgrade to base, then drop whatever the module created that its downgrades left."""
    lineage = op.lineages[module]
    try:
        await run_alembic(op.conn, lineage.downgrade_to_base)
    except Exception as exc:
        raise MigrationError(
            f"downgrade of '{module}' failed for '{op.tenant.slug}': {exc}"
        ) from exc
    leftovers = set(state["owned_objects"]) & await owned_objects(op.conn, op.tenant.schema_name)
    schema = op.tenant.schema_name
    for kind in ("view", "table", "sequence", "function", "type"):
        for obj in sorted(o for o in leftovers if o.startswith(f"{kind}:")):
            name = obj.split(":", 1)[1]
            target = f'"{schema}".{name}' if kind == "function" else f'"{schema}"."{name}"'
            await op.conn.execute(text(f"drop {kind} if exists {target}"))
            await op.log(f"dropped {kind} {name} left behind by {module}'s downgrades")


# Restore ---------------------------------------------------------------------------


async def restore(op: Operation, name: str, archive_id: uuid.UUID | None = None) -> dict[str, Any]:
    """Reinstall an uninstalled module and load its archive (rows and sequence values)."""
    states = await op.states()
    if states.get(name, {}).get("state") == "installed":
        raise Conflict(f"module '{name}' is installed for '{op.tenant.slug}'; nothing to restore")
    row = await _find_archive(op, name, archive_id)
    contents, data, sequences = await asyncio.to_thread(
        archive_io.read_archive,
        Path(row.path),
        row.sha256,
        archive_io.archive_key(op.platform.settings),
    )
    await _bring_back_dependencies(op, name)
    lineage = op.lineages[name]
    revision = contents["revision"]
    if revision is not None and (lineage.script is None or not _has_revision(lineage, revision)):
        raise MigrationError(
            f"the archive of '{name}' is at revision {revision}, which this code does not know"
        )
    stored_revision, created, _ = await _migrate(op, name, revision)
    await load_module_data(op, data, sequences)
    manifest = op.platform.registry.get(name).manifest
    await _save_state(
        op,
        name,
        state="installed",
        version=contents["version"],
        revision=stored_revision,
        owned_objects=sorted(created),
        settings=contents.get("settings") or {},
        installed_at=datetime.now(UTC),
        archive_id=None,
        error=None,
    )
    await op.conn.execute(
        update(archives).where(archives.c.id == row.id).values(restored_at=datetime.now(UTC))
    )
    upgraded = (
        await upgrade(op, [name])
        if manifest.version != contents["version"] or (stored_revision != lineage.head)
        else []
    )
    await announce(op, {name: "installed"})
    await op.log(f"restored {name} from archive {row.id}")
    return {
        "module": name,
        "archive_id": str(row.id),
        "rows": {t.name: t.rows for t in data},
        "upgraded": upgraded,
    }


async def _bring_back_dependencies(op: Operation, name: str) -> None:
    """Dependencies the tenant lacks come back from their own archives when they have one
    (a cascade uninstall archived them together), otherwise they are installed fresh."""
    for dependency in op.platform.registry.closure([name]):
        if dependency == name or dependency in await op.installed():
            continue
        if await _find_archive(op, dependency, None, required=False) is not None:
            await restore(op, dependency)
        else:
            await install(op, [dependency])


def _has_revision(lineage: Lineage, revision: str) -> bool:
    return any(s.revision == revision for s in lineage.revisions())


async def load_module_data(
    op: Operation, data: list[archive_io.TableData], sequences: list[archive_io.SequenceValue]
) -> None:
    raw = await _raw(op)
    await archive_io.load_tables(raw, op.tenant.schema_name, data)
    await archive_io.load_sequences(raw, op.tenant.schema_name, sequences)


async def _find_archive(
    op: Operation, name: str, archive_id: uuid.UUID | None, *, required: bool = True
) -> Any:
    query = select(archives).where(
        archives.c.tenant_id == op.tenant.id, archives.c.kind == "module", archives.c.module == name
    )
    if archive_id is not None:
        query = query.where(archives.c.id == archive_id)
    else:
        query = query.where(archives.c.restored_at.is_(None)).order_by(archives.c.created_at.desc())
    row = (await op.conn.execute(query.limit(1))).first()
    if row is None and required:
        which = f"archive {archive_id}" if archive_id else "an unrestored archive"
        raise NotFound(f"tenant '{op.tenant.slug}' has no {which} of module '{name}'")
    return row


async def heal_interrupted(op: Operation) -> None:
    """Modules left `uninstalling` or `installing` by a process that died: the transaction
    rolled back, so their tables are as they were; put the state back to match."""
    await op.conn.execute(
        update(tenant_modules)
        .where(
            tenant_modules.c.tenant_id == op.tenant.id,
            tenant_modules.c.state.in_(("uninstalling", "installing")),
            tenant_modules.c.revision.is_not(None),
        )
        .values(state="installed")
    )

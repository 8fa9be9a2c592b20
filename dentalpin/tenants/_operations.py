"""Tenant operations as the CLI and the API call them: create, archive, restore, and the
lifecycle jobs (install, uninstall, upgrade, restore) with their retry and lock rules."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.platform import Conflict, InvalidInput, NotFound
from dentalpin.platform._jobs import (
    JobRecord,
    JobRecorder,
    files_written_by_jobs,
    forget_written_files,
    job_kind,
    submit,
)
from dentalpin.platform._plans import Plan, check_modules, claim_tenant_slot
from dentalpin.platform._roles import installed_modules
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import archives, tenant_modules, tenants

from . import _archive as archive_io
from ._catalogue import (
    TenantRecord,
    create_schema_and_role,
    drop_schema_and_role,
    find_tenant,
    lock_tenant,
    new_schema_name,
    tenant_by_id,
    tenant_record,
    validate_name,
    validate_slug,
)
from ._introspect import owned_objects, schema_exists, tables_in_load_order
from ._lifecycle import (
    Log,
    Operation,
    Progress,
    UninstallPlan,
    _migrate,
    _quiet,
    _raw,
    _save_state,
    _store_archive,
    announce,
    heal_interrupted,
    install,
    load_module_data,
    not_installed,
    plan_uninstall,
    restore,
    seed_installed,
    uninstall,
    upgrade,
)
from ._spares import claim_spare

T = TypeVar("T")
LOCK_NOT_AVAILABLE = "55P03"


class SchemaMissing(Conflict):
    problem = "tenant-schema-missing"


# Tenants -----------------------------------------------------------------------------


async def create_tenant(
    platform: Platform,
    slug: str,
    name: str | None = None,
    modules: list[str] | None = None,
    *,
    reseller_id: uuid.UUID | None = None,
    enforce_plan: bool = False,
    log: Log = _quiet,
    progress: Progress = _quiet,
) -> TenantRecord:
    """Provision a tenant: its row, schema and role, and its auto-install and chosen modules.

    A spare schema (see `_spares`) is claimed when one is ready; otherwise all is made here.
    `reseller_id` makes it that reseller's; `enforce_plan` holds the reseller to its plan
    (number of clinics, modules and country packs), checked in the creating transaction."""
    validate_slug(slug)
    name = validate_name(name or slug.replace("-", " ").title())
    wanted = list(dict.fromkeys([*platform.registry.auto_install(), *(modules or [])]))
    for module in wanted:
        platform.registry.get(module)
    async with platform.db.engine.connect() as conn, conn.begin():
        if reseller_id is not None and enforce_plan:
            plan = await claim_tenant_slot(conn, reseller_id)
            check_modules(plan, platform.registry, platform.registry.closure(wanted))
        claimed = await claim_spare(platform, conn, slug, name)
        if claimed is not None:
            # Migrated in advance; what remains is the clinic's: seed, hooks, roles, extras.
            # The claim already did what `Operation.begin` does (lock timeout, search path).
            op = Operation(platform, conn, claimed.tenant, log, progress)
            await seed_installed(op, claimed.settings)
            extra = [m for m in wanted if m not in claimed.settings]
            if extra:
                await install(op, extra)
            tenant = claimed.tenant
        else:
            tenant = await _provision(platform, conn, slug, name, wanted, log, progress)
        if reseller_id is not None:
            await conn.execute(
                update(tenants).where(tenants.c.id == tenant.id).values(reseller_id=reseller_id)
            )
            tenant = TenantRecord(**{**tenant.__dict__, "reseller_id": reseller_id})
    how = "spare schema" if claimed is not None else "schema"
    await log(f"created tenant '{slug}' in {how} {tenant.schema_name}")
    return tenant


async def _provision(
    platform: Platform,
    conn: AsyncConnection,
    slug: str,
    name: str,
    wanted: list[str],
    log: Log,
    progress: Progress,
) -> TenantRecord:
    """The tenant made from nothing: row, schema, role, every module's migrations and hooks."""
    schema = new_schema_name()
    try:
        row = (
            await conn.execute(
                insert(tenants)
                .values(
                    id=uuid.uuid4(),
                    slug=slug,
                    name=name,
                    schema_name=schema,
                    db_role=f"{platform.settings.role_prefix}{schema}",
                    status="provisioning",
                )
                .returning(*tenants.c)
            )
        ).one()
    except IntegrityError:
        raise Conflict(f"a tenant with slug '{slug}' already exists") from None
    tenant = tenant_record(row)
    await create_schema_and_role(conn, tenant, platform.settings)
    op = Operation(platform, conn, tenant, log, progress)
    await op.begin()
    if wanted:
        await install(op, wanted)
    await conn.execute(update(tenants).where(tenants.c.id == tenant.id).values(status="active"))
    return TenantRecord(**{**tenant.__dict__, "status": "active"})


@contextlib.asynccontextmanager
async def tenant_operation(
    platform: Platform,
    tenant: TenantRecord | uuid.UUID,
    log: Log = _quiet,
    progress: Progress = _quiet,
    statuses: tuple[str, ...] = ("active",),
) -> AsyncIterator[Operation]:
    """One transaction holding the tenant's lock, in the tenant's schema."""
    async with platform.db.engine.connect() as conn, conn.begin():
        record = await tenant_by_id(conn, tenant if isinstance(tenant, uuid.UUID) else tenant.id)
        if record.status not in statuses:
            raise Conflict(f"tenant '{record.slug}' is {record.status}")
        await lock_tenant(conn, record.id, platform.settings.lifecycle_lock_wait_s)
        if not await schema_exists(conn, record.schema_name):
            raise SchemaMissing(
                f"the schema {record.schema_name} of tenant '{record.slug}' does not exist in "
                "the database; it was dropped outside the platform. Restore it from a backup or "
                "archive the tenant"
            )
        op = Operation(platform, conn, record, log, progress)
        await op.begin()
        await heal_interrupted(op)
        try:
            yield op
        except BaseException:
            for path in op.written_files:
                for leftover in (path, str(Path(path).with_suffix(".tmp"))):
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
            raise


async def discard_orphan_files(op: Operation) -> None:
    """Delete archive files that an attempt of a job on this tenant recorded and wrote but
    never committed (its process died before the commit, so no `platform.archives` row
    names the file).

    Safe because it runs under the tenant's lifecycle lock: every archive writer holds
    that lock until its transaction ends, so no attempt that wrote one of these files can
    still commit. Files with a committed row are kept; each job's list is then cleared.
    Called by the operations that write archives (uninstall, tenant archive), so their
    retry after a dead worker cleans up after the dead attempt.
    """
    recorded = await files_written_by_jobs(op.platform, op.tenant.id)
    if not recorded:
        return
    paths = {path for listed in recorded.values() for path in listed}
    committed = set(
        (await op.conn.execute(select(archives.c.path).where(archives.c.path.in_(paths))))
        .scalars()
        .all()
    )
    for path in sorted(paths - committed):
        removed = False
        for leftover in (path, str(Path(path).with_suffix(".tmp"))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
                removed = True
        if removed:
            await op.log(f"removed {path}, written by an attempt that never committed")
    await forget_written_files(op.platform, list(recorded))


async def run_locked(
    platform: Platform,
    tenant_id: uuid.UUID,
    work: Callable[[Operation], Awaitable[T]],
    log: Log = _quiet,
    progress: Progress = _quiet,
    statuses: tuple[str, ...] = ("active",),
) -> T:
    """Run `work` in a tenant operation, retried when DDL could not get its locks in time."""
    retries = platform.settings.ddl_lock_retries
    for attempt in range(1, retries + 1):
        try:
            async with tenant_operation(platform, tenant_id, log, progress, statuses) as op:
                return await work(op)
        except DBAPIError as exc:
            # The transaction is gone either way, so the whole operation can run again.
            busy = getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE
            if not (busy or exc.connection_invalidated) or attempt == retries:
                raise
            reason = "a table was busy (lock timeout)" if busy else "lost the database connection"
            await log(f"{reason}; retrying, attempt {attempt + 1}/{retries}")
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


# Lifecycle jobs ---------------------------------------------------------------------

LIFECYCLE_KINDS = (
    "lifecycle.install",
    "lifecycle.upgrade",
    "lifecycle.uninstall",
    "lifecycle.restore",
    "tenant.archive",
)


PLAN_BOUND = ("lifecycle.install", "lifecycle.restore")
"""The lifecycle operations that add modules, so a reseller's plan must allow them."""


async def submit_lifecycle(
    platform: Platform,
    tenant: TenantRecord,
    kind: str,
    params: dict[str, Any],
    *,
    plan: Plan | None = None,
) -> JobRecord:
    """Check a lifecycle request up front (clear errors, no doomed job), then submit it.

    With a reseller's `plan`, modules the job would add (install, restore, and the
    dependencies they lack) must be ones the plan allows."""
    if kind not in LIFECYCLE_KINDS:
        raise InvalidInput(f"'{kind}' is not a lifecycle operation")
    if tenant.status != "active":
        raise Conflict(f"tenant '{tenant.slug}' is {tenant.status}")
    named = [*(params.get("modules") or []), *([params["module"]] if params.get("module") else [])]
    for name in named:
        platform.registry.get(name)
    if kind == "lifecycle.uninstall" or (plan is not None and kind in PLAN_BOUND):
        async with platform.db.engine.connect() as conn:
            present = set(await installed_modules(conn, tenant.id))
        if kind == "lifecycle.uninstall" and params["module"] not in present:
            raise not_installed(params["module"], tenant.slug)
        if plan is not None and kind in PLAN_BOUND:
            added = [m for m in platform.registry.closure(named) if m not in present]
            check_modules(plan, platform.registry, added)
    if params.get("archive_id"):
        try:
            uuid.UUID(str(params["archive_id"]))
        except ValueError:
            raise InvalidInput(f"'{params['archive_id']}' is not an archive id") from None
    return await submit(platform, kind, tenant.id, params)


def _tenant_of(job: JobRecord) -> uuid.UUID:
    if job.tenant_id is None:
        raise InvalidInput(f"job {job.id} has no tenant")
    return job.tenant_id


@job_kind("lifecycle.install")
async def _install_job(platform: Platform, job: JobRecord, rec: JobRecorder) -> dict[str, Any]:
    async def work(op: Operation) -> list[str]:
        return await install(op, list(job.params["modules"]))

    return {"installed": await run_locked(platform, _tenant_of(job), work, rec.log, rec.progress)}


@job_kind("lifecycle.upgrade")
async def _upgrade_job(platform: Platform, job: JobRecord, rec: JobRecorder) -> dict[str, Any]:
    async def work(op: Operation) -> list[dict[str, Any]]:
        return await upgrade(op, job.params.get("modules"))

    return {"upgraded": await run_locked(platform, _tenant_of(job), work, rec.log, rec.progress)}


@job_kind("lifecycle.uninstall")
async def _uninstall_job(platform: Platform, job: JobRecord, rec: JobRecorder) -> dict[str, Any]:
    tenant_id = _tenant_of(job)
    marked: list[str] = []

    async def mark_uninstalling(plan: UninstallPlan) -> None:
        # Visible at once (its routes answer 409) while the uninstall transaction runs.
        marked.extend(plan.modules)
        await _set_states(platform, tenant_id, plan.modules, "installed", "uninstalling")

    async def work(op: Operation) -> dict[str, Any]:
        await discard_orphan_files(op)
        return await uninstall(
            op, job.params["module"], bool(job.params.get("cascade")), mark_uninstalling
        )

    try:
        return await run_locked(platform, tenant_id, work, rec.log, rec.progress)
    except BaseException:
        if marked:
            await _set_states(platform, tenant_id, marked, "uninstalling", "installed")
        raise


async def _set_states(
    platform: Platform, tenant_id: uuid.UUID, modules: list[str], old: str, new: str
) -> None:
    async with platform.db.autocommit() as conn:
        await conn.execute(
            update(tenant_modules)
            .where(
                tenant_modules.c.tenant_id == tenant_id,
                tenant_modules.c.module.in_(modules),
                tenant_modules.c.state == old,
            )
            .values(state=new, updated_at=datetime.now(UTC))
        )


@job_kind("lifecycle.restore")
async def _restore_job(platform: Platform, job: JobRecord, rec: JobRecorder) -> dict[str, Any]:
    archive_id = job.params.get("archive_id")

    async def work(op: Operation) -> dict[str, Any]:
        return await restore(
            op, job.params["module"], uuid.UUID(archive_id) if archive_id else None
        )

    return await run_locked(platform, _tenant_of(job), work, rec.log, rec.progress)


async def dry_run_uninstall(
    platform: Platform, slug: str | TenantRecord, module: str, cascade: bool
) -> UninstallPlan:
    """The uninstall plan, computed in a transaction that is rolled back."""
    if isinstance(slug, TenantRecord):
        tenant = slug
    else:
        async with platform.db.engine.connect() as conn:
            tenant = await find_tenant(conn, slug)
    async with tenant_operation(platform, tenant) as op:
        plan = await plan_uninstall(op, module, cascade)
        await op.conn.rollback()
        return plan


# Tenant archive and restore ---------------------------------------------------------


@job_kind("tenant.archive")
async def _archive_tenant_job(
    platform: Platform, job: JobRecord, rec: JobRecorder
) -> dict[str, Any]:
    async def work(op: Operation) -> dict[str, Any]:
        await discard_orphan_files(op)
        return await archive_tenant(op)

    try:
        return await run_locked(platform, _tenant_of(job), work, rec.log, rec.progress)
    except SchemaMissing:
        return await _retire_without_schema(platform, _tenant_of(job), rec.log)


async def _retire_without_schema(
    platform: Platform, tenant_id: uuid.UUID, log: Log
) -> dict[str, Any]:
    """Archive a tenant whose schema was dropped outside the platform: there is nothing to
    copy, so record it as archived without an archive and remove its role."""
    async with platform.db.engine.connect() as conn, conn.begin():
        tenant = await tenant_by_id(conn, tenant_id)
        await lock_tenant(conn, tenant.id, platform.settings.lifecycle_lock_wait_s)
        await drop_schema_and_role(conn, tenant.scope)
        await conn.execute(
            update(tenant_modules)
            .where(tenant_modules.c.tenant_id == tenant.id)
            .values(state="uninstalled", revision=None, owned_objects=[])
        )
        await conn.execute(
            update(tenants)
            .where(tenants.c.id == tenant.id)
            .values(status="archived", archived_at=datetime.now(UTC), updated_at=datetime.now(UTC))
        )
    note = f"schema {tenant.schema_name} was already gone: nothing to archive; role removed"
    await log(note)
    return {"archive_id": None, "tables": {}, "note": note}


async def archive_tenant(op: Operation) -> dict[str, Any]:
    """Copy every table of the tenant into one archive, then drop its schema and role."""
    tenant = op.tenant
    states = {n: s for n, s in (await op.states()).items() if s["state"] == "installed"}
    objects = await owned_objects(op.conn, tenant.schema_name)
    tables = sorted(
        o.split(":", 1)[1]
        for o in objects
        if o.startswith("table:") and not o.startswith("table:alembic_version_")
    )
    ordered = await tables_in_load_order(op.conn, tenant.schema_name, tables)
    if ordered:
        names = ", ".join(f'"{tenant.schema_name}"."{t}"' for t in ordered)
        await op.conn.execute(text(f"lock table {names} in share mode"))
    raw = await _raw(op)
    data = await archive_io.dump_tables(raw, tenant.schema_name, ordered)
    standalone = [o.split(":", 1)[1] for o in objects if o.startswith("sequence:")]
    sequences = await archive_io.dump_sequences(raw, tenant.schema_name, ordered, standalone)
    archive_id = uuid.uuid4()
    modules = {
        n: {"version": s["version"], "revision": s["revision"], "settings": s["settings"]}
        for n, s in states.items()
    }
    contents = {
        "kind": "tenant",
        "tenant_id": str(tenant.id),
        "tenant_slug": tenant.slug,
        "tenant_name": tenant.name,
        "modules": modules,
        "created_at": datetime.now(UTC).isoformat(),
    }
    await _store_archive(op, archive_id, "tenant", contents, data, sequences)
    await op.log(f"archived {len(data)} tables of '{tenant.slug}' into {archive_id}")
    await announce(op, dict.fromkeys(states, "uninstalled"))
    await drop_schema_and_role(op.conn, tenant.scope)
    await op.conn.execute(
        update(tenant_modules)
        .where(tenant_modules.c.tenant_id == tenant.id)
        .values(state="uninstalled", revision=None, owned_objects=[])
    )
    await op.conn.execute(
        update(tenants)
        .where(tenants.c.id == tenant.id)
        .values(
            status="archived",
            archived_at=datetime.now(UTC),
            archive_id=archive_id,
            updated_at=datetime.now(UTC),
        )
    )
    return {"archive_id": str(archive_id), "tables": {t.name: t.rows for t in data}}


async def restore_tenant(
    platform: Platform,
    archive_id: uuid.UUID,
    slug: str | None = None,
    *,
    log: Log = _quiet,
) -> TenantRecord:
    """Bring an archived tenant back under a new schema (and optionally a new slug)."""
    async with platform.db.engine.connect() as conn, conn.begin():
        row = (
            await conn.execute(
                select(archives).where(archives.c.id == archive_id, archives.c.kind == "tenant")
            )
        ).first()
        if row is None:
            raise NotFound(f"no tenant archive with id {archive_id}")
        contents, data, sequences = archive_io.read_archive(
            Path(row.path), row.sha256, archive_io.archive_key(platform.settings)
        )
        old = await tenant_by_id(conn, row.tenant_id)
        if old.status != "archived":
            raise Conflict(f"tenant '{old.slug}' is {old.status}, not archived")
        new_slug = validate_slug(slug or old.slug)
        schema = new_schema_name()
        try:
            await conn.execute(
                update(tenants)
                .where(tenants.c.id == old.id)
                .values(
                    slug=new_slug,
                    schema_name=schema,
                    status="provisioning",
                    db_role=f"{platform.settings.role_prefix}{schema}",
                    archived_at=None,
                    updated_at=datetime.now(UTC),
                )
            )
        except IntegrityError:
            raise Conflict(f"slug '{new_slug}' is taken; restore with another slug") from None
        tenant = await tenant_by_id(conn, old.id)
        await create_schema_and_role(conn, tenant, platform.settings)
        op = Operation(platform, conn, tenant, log)
        await op.begin()
        modules: dict[str, Any] = contents["modules"]
        for name in platform.registry.ordered(modules):
            revision, created, _ = await _migrate(op, name, modules[name]["revision"])
            await _save_state(
                op,
                name,
                state="installed",
                version=modules[name]["version"],
                revision=revision,
                owned_objects=sorted(created),
                settings=modules[name]["settings"],
                installed_at=datetime.now(UTC),
                archive_id=None,
                error=None,
            )
        await load_module_data(op, data, sequences)
        await announce(op, dict.fromkeys(modules, "installed"))
        await upgrade(op)
        await conn.execute(update(tenants).where(tenants.c.id == old.id).values(status="active"))
        await conn.execute(
            update(archives)
            .where(archives.c.id == archive_id)
            .values(restored_at=datetime.now(UTC))
        )
    await log(f"restored tenant '{new_slug}' from archive {archive_id}")
    return await _reload(platform, old.id)


async def _reload(platform: Platform, tenant_id: uuid.UUID) -> TenantRecord:
    async with platform.db.engine.connect() as conn:
        return await tenant_by_id(conn, tenant_id)


async def with_conn(platform: Platform, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    async with platform.db.engine.connect() as conn:
        return await work(conn)

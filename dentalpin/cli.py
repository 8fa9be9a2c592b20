"""The `dentalpin` command: run the processes, migrate, manage tenants, modules and jobs.

Every list/show command takes `--json`. Errors print one clear line and exit non-zero.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError

from dentalpin import __version__
from dentalpin.cli_access import register as register_access_commands
from dentalpin.cli_domains import register as register_domain_commands
from dentalpin.cli_events import register as register_event_commands
from dentalpin.cli_identity import register as register_identity_commands
from dentalpin.cli_mail import register as register_mail_commands
from dentalpin.platform import PlatformError
from dentalpin.platform._jobs import (
    InProcessExecutor,
    JobRecord,
    executor_kind,
    executor_of,
    get_job,
    job_log_lines,
    list_jobs,
    reap_jobs,
)
from dentalpin.platform._runtime import Platform
from dentalpin.platform._settings import Settings, get_settings
from dentalpin.tenants import (
    TenantRecord,
    all_tenants,
    create_tenant,
    dry_run_uninstall,
    find_tenant,
    lineages,
    lint_lineage,
    migrate_platform,
    module_states,
    restore_tenant,
    submit_lifecycle,
    sync_catalogue,
    upgrade_fleet,
    upgrade_fleet_on_workers,
)
from dentalpin.tenants._views import module_catalogue, tenant_details

T = TypeVar("T")
app = typer.Typer(help="DentalPin: multi-tenant platform for dental clinics.", no_args_is_help=True)
tenants_app = typer.Typer(
    help="Create, list, show, archive and restore tenants.", no_args_is_help=True
)
modules_app = typer.Typer(
    help="The module catalogue and per-tenant lifecycle.", no_args_is_help=True
)
archives_app = typer.Typer(help="Module and tenant archives: list, prune.", no_args_is_help=True)
jobs_app = typer.Typer(help="Lifecycle jobs: state, progress and log.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(modules_app, name="modules")
app.add_typer(jobs_app, name="jobs")
app.add_typer(archives_app, name="archives")
register_identity_commands(app)
register_event_commands(app)
register_domain_commands(app)
register_access_commands(app)
register_mail_commands(app)

out = Console()
# Errors stay on one line when piped (no wrapping at 80 columns), so logs and greps keep them whole.
err = Console(stderr=True, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NoWaitOpt = Annotated[
    bool,
    typer.Option(
        "--no-wait",
        help="Print the job id and return at once; the job runs on the workers "
        "(follow it with `dentalpin jobs show ID`).",
    ),
]


def run(coro_fn: Callable[[Platform], Awaitable[T]]) -> T:
    """Run one command against a platform built from the environment; errors exit 1."""

    async def main() -> T:
        platform = Platform.create()
        try:
            return await coro_fn(platform)
        finally:
            await platform.close()

    try:
        return asyncio.run(main())
    except PlatformError as exc:
        err.print(f"[red]error:[/red] {escape(exc.detail)}")
        raise typer.Exit(1) from None
    except RuntimeError as exc:
        if "DATABASE_URL" in str(exc):
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from None
        raise
    except OSError as exc:
        err.print(
            f"[red]error:[/red] cannot reach the database ({escape(str(exc))}); check "
            "DATABASE_URL and that PostgreSQL is running"
        )
        raise typer.Exit(1) from None
    except DBAPIError as exc:
        hint = _DATABASE_HINTS.get(getattr(exc.orig, "sqlstate", None) or "")
        if hint is None:
            raise
        reason = str(exc.orig).strip().splitlines()[0]
        err.print(f"[red]error:[/red] {escape(reason)}: {hint}")
        raise typer.Exit(1) from None


# Database errors that mean "wrong setup", not "bug": say what to do instead of a traceback.
_DATABASE_HINTS = {
    "3D000": "the database in DATABASE_URL does not exist; create it or fix DATABASE_URL",
    "28000": "PostgreSQL refused the login; check the user in DATABASE_URL",
    "28P01": "PostgreSQL refused the password in DATABASE_URL",
    "57P03": "PostgreSQL is starting up or shutting down; retry shortly",
    "53300": "PostgreSQL has no free connections; retry shortly or raise max_connections",
    "42P01": "the platform schema is missing or incomplete; run `dentalpin migrate` first",
    "3F000": "the platform schema is missing; run `dentalpin migrate` first",
}


def _row(table: Table, *cells: object) -> None:
    """Add a row of data: cells are plain text, never Rich markup (names come from users)."""
    table.add_row(*(Text("" if c is None else str(c)) for c in cells))


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


# Processes ---------------------------------------------------------------------------


@app.command()
def version() -> None:
    """Print the core version."""
    typer.echo(__version__)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, help="Web worker processes."),
) -> None:
    """Run the web process (the Procfile's `web`)."""
    import uvicorn

    uvicorn.run(
        "dentalpin.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        log_level="info",
    )


@app.command()
def worker(
    queues: str = typer.Option("events,lifecycle,periodic", help="Queues to consume."),
    concurrency: int = typer.Option(2, help="Worker processes."),
) -> None:
    """Run a Celery worker (the Procfile's `worker`)."""
    from dentalpin.platform._celery import app as celery

    celery.worker_main(["worker", "-Q", queues, "-c", str(concurrency), "--loglevel=INFO"])


@app.command()
def beat() -> None:
    """Run the Celery beat scheduler (the Procfile's `beat`). Any number may run: one
    leads, the others stand by until it ends (a PostgreSQL advisory lock, ADR 0021)."""
    from dentalpin.platform._beat import lead
    from dentalpin.platform._celery import app as celery

    # Celery sets logging up only once this beat leads: until then, say what it waits for.
    said = logging.StreamHandler()
    said.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s] %(message)s"))
    waiting = logging.getLogger("dentalpin.platform._beat")
    waiting.addHandler(said)
    waiting.setLevel(logging.INFO)
    settings = get_settings()
    try:
        lead(settings)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except RuntimeError as exc:  # no DATABASE_URL: the lock, like the platform, needs one
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        waiting.removeHandler(said)
    schedule = settings.data_dir / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    celery.start(["beat", "--loglevel=INFO", "-s", str(schedule)])


@app.command()
def up(
    port: int = typer.Option(8000, help="Web port."),
    demo: str = typer.Option("demo", help="Slug of the demo clinic to create."),
) -> None:
    """Development all-in-one: servers (embedded when not configured), migrate, a demo
    clinic, then web + worker + beat until Ctrl-C."""
    from dentalpin.platform._embedded import services

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with services(settings) as urls:
        env = {
            **os.environ,
            "DATABASE_URL": urls.database_url,
            "REDIS_URL": urls.redis_url,
            "DENTALPIN_DATA_DIR": str(settings.data_dir.resolve()),
        }
        for name in urls.embedded:
            out.print(f"[green]started embedded {name}[/green]")
        me = [sys.executable, "-m", "dentalpin"]
        # In-process: the worker is started below, after the release step.
        subprocess.run([*me, "migrate", "--in-process"], env=env, check=True)
        subprocess.run([*me, "demo", "--slug", demo], env=env, check=True)
        banner = (
            f"\n[bold]DentalPin is up.[/bold] Demo clinic: http://{demo}.{settings.base_domain}:"
            f"{port}/api/v1/  ·  health: http://127.0.0.1:{port}/readyz  ·  API docs: "
            f"http://127.0.0.1:{port}/api/docs\n{_mail_note(settings)}\n"
            "Press Ctrl-C to stop.\n"
        )
        _supervise(
            {
                "web": [*me, "serve", "--port", str(port)],
                "worker": [*me, "worker"],
                "beat": [*me, "beat"],
            },
            env,
            # Said once the web process answers its readiness probe, not before.
            ready=(f"http://127.0.0.1:{port}/readyz", lambda: out.print(banner)),
        )


def _mail_note(settings: Settings) -> str:
    if settings.smtp_host:
        return f"E-mail goes out through {settings.smtp_host}:{settings.smtp_port}."
    return (
        f"E-mail (invitations, password resets) is written to {settings.mail_dir.resolve()}/ "
        "as .eml files (no DENTALPIN_SMTP_HOST set)."
    )


def _supervise(
    commands: dict[str, list[str]],
    env: dict[str, str],
    *,
    ready: tuple[str, Callable[[], None]] | None = None,
) -> None:
    """Run the processes together; when one stops or Ctrl-C arrives, stop them all.
    `ready` is a URL and what to do the first time it answers 200."""
    procs = {name: subprocess.Popen(cmd, env=env) for name, cmd in commands.items()}
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping and all(p.poll() is None for p in procs.values()):
            if ready is not None and _answers(ready[0]):
                ready[1]()
                ready = None
            time.sleep(0.5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [n for n, p in procs.items() if p.returncode not in (0, -signal.SIGTERM, None)]
    if failed and not stopping:
        err.print(f"[red]stopped because {', '.join(failed)} exited[/red]")
        raise typer.Exit(1)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - our own URL
            return bool(answer.status == 200)
    except OSError:
        return False


@app.command()
def demo(slug: str = typer.Option("demo", help="Slug of the demo clinic.")) -> None:
    """Create the demo clinic if it does not exist yet."""

    async def go(platform: Platform) -> None:
        async with platform.db.engine.connect() as conn:
            existing = [t.slug for t in await all_tenants(conn)]
        if slug in existing:
            out.print(f"demo clinic '{escape(slug)}' already exists")
            return
        modules = [m for m in DEMO_MODULES if m in platform.registry.names]
        tenant = await create_tenant(platform, slug, "Clínica Dental Demo", modules=modules)
        out.print(f"created demo clinic '{tenant.slug}' (schema {tenant.schema_name})")
        await _demo_user(platform, tenant)
        await _demo_data(platform, tenant)

    run(go)


DEMO_MODULES = ("locations", "catalog", "patients", "agenda", "odontogram", "treatment_plans")
"""What the demo clinic installs (those available), besides the auto-install modules."""


async def _demo_data(platform: Platform, tenant: TenantRecord) -> None:
    """Each installed module's sample data, dependencies first, one transaction each."""
    from dentalpin.platform import LifecycleContext

    async with platform.db.engine.connect() as conn:
        states = await module_states(conn, tenant.id)

    async def log(line: str) -> None:
        out.print(f"  {escape(line)}")

    for spec in platform.registry:
        state = states.get(spec.name, {})
        if state.get("state") != "installed":
            continue
        async with platform.db.tenant(tenant.scope) as session:
            ctx = LifecycleContext(tenant.ref, session, dict(state.get("settings") or {}), log)
            await spec.module.demo(ctx)


DEMO_EMAIL = "recepcion@demo.dentalpin.test"
DEMO_PASSWORD = "demo-password-123"  # noqa: S105 - a published demo login, development only


async def _demo_user(platform: Platform, tenant: TenantRecord) -> None:
    """A receptionist for the demo clinic, so `up` can be tried with a real login at once.
    (Admin roles require a second factor, so the demo login is not an admin.)"""
    from dentalpin.platform._audit import CLI
    from dentalpin.platform._identity import create_user, find_user, set_membership

    if platform.settings.environment == "production":
        return
    async with platform.db.engine.connect() as conn, conn.begin():
        user = await find_user(conn, DEMO_EMAIL) or await create_user(
            conn, DEMO_EMAIL, "Recepción Demo", DEMO_PASSWORD, ctx=CLI
        )
        await set_membership(
            conn, platform.registry, tenant.id, user.id, ["receptionist"], ctx=CLI, add=True
        )
    out.print(
        f"demo login: {DEMO_EMAIL} / {DEMO_PASSWORD} (receptionist of '{tenant.slug}'); "
        f'POST /api/v1/auth/login {{"email", "password", "tenant": "{tenant.slug}"}}'
    )


@app.command()
def migrate(
    concurrency: int = typer.Option(4, min=1, max=64, help="Tenants upgraded at the same time."),
    in_process: bool = typer.Option(
        False,
        "--in-process",
        help="Upgrade the tenants in this process even when jobs run on workers (a release "
        "step that must not depend on the workers, or workers still on the old release).",
    ),
    as_json: JsonOpt = False,
) -> None:
    """Migrate the platform schema, then upgrade every tenant that is behind (through the
    workers when jobs run there: one job per tenant, --concurrency at a time)."""

    async def go(platform: Platform) -> int:
        revision = await migrate_platform(platform)
        await sync_catalogue(platform)
        from dentalpin.tenants import tenants_behind

        behind = await tenants_behind(platform)
        if not as_json:
            out.print(f"platform schema at {revision}; {len(behind)} tenant(s) behind")
        if not behind:
            if as_json:
                emit_json({"platform_revision": revision, "behind": 0, "upgraded": 0, "failed": {}})
            return 0
        on_workers = not in_process and executor_kind(platform.settings) == "celery"
        if on_workers and not as_json:
            out.print(f"upgrading through the workers (lifecycle queue), {concurrency} at a time")
        with _progress(disable=as_json) as bar:
            task = bar.add_task("upgrading tenants", total=len(behind))

            def advance(slug: str, error: str | None) -> None:
                bar.advance(task)
                if error and not as_json:
                    bar.console.print(f"[red]✗ {escape(slug)}[/red]: {escape(error)}")

            fleet = upgrade_fleet_on_workers if on_workers else upgrade_fleet
            report = await fleet(platform, concurrency, advance)
        if as_json:
            emit_json({"platform_revision": revision, **report.as_dict()})
        else:
            out.print(
                f"upgraded {len(report.upgraded)} tenant(s), {len(report.failed)} failed, "
                f"in {report.seconds:.1f}s"
            )
        return 1 if report.failed else 0

    code = run(go)
    raise typer.Exit(code)


def _progress(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[message]}" if False else ""),
        TimeElapsedColumn(),
        console=err,
        disable=disable,
        transient=False,
    )


# Tenants -----------------------------------------------------------------------------


@tenants_app.command("create")
def tenants_create(
    slug: str,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    modules: Annotated[str, typer.Option(help="Comma-separated modules to install too.")] = "",
    reseller: Annotated[
        str | None,
        typer.Option(help="The reseller owning it (the operator is not bound by plans)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a tenant with the auto-install modules (and --modules)."""
    wanted = [m.strip() for m in modules.split(",") if m.strip()]

    async def go(platform: Platform) -> None:
        owner = None
        if reseller:
            from dentalpin.platform._clients import reseller_by_name

            async with platform.db.engine.connect() as conn:
                owner = (await reseller_by_name(conn, reseller)).id
        tenant = await create_tenant(platform, slug, name, wanted, reseller_id=owner)
        if as_json:
            emit_json(tenant.as_dict())
        else:
            out.print(f"created tenant '{tenant.slug}' (schema {tenant.schema_name})")

    run(go)


@tenants_app.command("list")
def tenants_list(
    archived: bool = typer.Option(False, "--archived", help="Include archived tenants."),
    as_json: JsonOpt = False,
) -> None:
    """List tenants."""

    async def go(platform: Platform) -> None:
        async with platform.db.engine.connect() as conn:
            rows = await all_tenants(conn, include_archived=archived)
        # `archive_id`: the id `tenants restore` needs, for the archived ones.
        if as_json:
            emit_json([t.as_dict() for t in rows])
            return
        table = Table(
            "slug", "name", "status", "schema", "created", *(["archive"] if archived else [])
        )
        for t in rows:
            _row(
                table,
                t.slug,
                t.name,
                t.status,
                t.schema_name,
                f"{t.created_at:%Y-%m-%d %H:%M}",
                *([str(t.archive_id) if t.archive_id else None] if archived else []),
            )
        out.print(table)

    run(go)


@tenants_app.command("show")
def tenants_show(slug: str, as_json: JsonOpt = False) -> None:
    """Show a tenant and its modules."""

    async def go(platform: Platform) -> None:
        async with platform.db.engine.connect() as conn:
            tenant = await find_tenant(conn, slug)
            data = await tenant_details(conn, tenant)
        present, states = data["schema_present"], data["modules"]
        if as_json:
            emit_json(data)
            return
        out.print(
            f"[bold]{escape(tenant.name)}[/bold] ({tenant.slug}) — {tenant.status}, "
            f"schema {tenant.schema_name}, placement {tenant.placement}"
        )
        if not present:
            err.print(
                f"[red]the schema {tenant.schema_name} does not exist:[/red] it was dropped "
                "outside the platform; restore it from a backup or archive the tenant"
            )
        table = Table("module", "state", "version", "revision", "error")
        for name, s in states.items():
            _row(table, name, s["state"], s["version"], s["revision"], s["error"])
        out.print(table)

    run(go)


@tenants_app.command("verify")
def tenants_verify(
    fix: bool = typer.Option(False, "--fix", help="Record what the schemas actually hold."),
    as_json: JsonOpt = False,
) -> None:
    """Compare each tenant's recorded module revisions with its schema's version tables."""
    from dentalpin.tenants import find_drift

    async def go(platform: Platform) -> int:
        drifts = await find_drift(platform, fix=fix)
        if as_json:
            emit_json([d.as_dict() for d in drifts])
        elif not drifts:
            out.print("no drift: every tenant's schema matches the catalogue")
        else:
            table = Table("tenant", "module", "recorded", "actual", "problem")
            for d in drifts:
                table.add_row(d.tenant, d.module or "", d.recorded or "", d.actual or "", d.problem)
            out.print(table)
            if fix:
                out.print("reconciled what could be; missing schemas or tables need a restore")
        return 1 if drifts and not fix else 0

    raise typer.Exit(run(go))


@tenants_app.command("spares")
def tenants_spares(
    fill: Annotated[
        int | None,
        typer.Option(
            "--fill",
            help="Create spares until N are ready (0: up to DENTALPIN_SPARE_SCHEMAS).",
            min=0,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Spare schemas: how many are ready for create_tenant to claim; --fill tops them up."""
    from dentalpin.tenants._spares import fill_spares, spare_pool

    async def go(platform: Platform) -> None:
        created = 0
        if fill is not None:
            created = await fill_spares(platform, fill or None)
        pool = await spare_pool(platform)
        if as_json:
            emit_json({**pool.as_dict(), "created": created})
            return
        if fill is not None:
            out.print(f"created {created} spare schema(s)")
        out.print(
            f"{pool.ready} spare schema(s) ready to claim, {pool.total} in all "
            f"(target {pool.target}, DENTALPIN_SPARE_SCHEMAS)"
        )

    run(go)


@tenants_app.command("archive")
def tenants_archive(
    slug: str,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    no_wait: NoWaitOpt = False,
) -> None:
    """Dump the tenant's schema into a restorable archive, then drop it."""
    if not yes:
        typer.confirm(f"Archive tenant '{slug}' and drop its schema?", abort=True)
    _tenant_job(slug, "tenant.archive", {}, no_wait)


@tenants_app.command("restore")
def tenants_restore(
    archive_id: uuid.UUID,
    slug: Annotated[str | None, typer.Option(help="Restore under another slug.")] = None,
) -> None:
    """Bring an archived tenant back from its archive."""

    async def go(platform: Platform) -> None:
        tenant = await restore_tenant(platform, archive_id, slug)
        out.print(f"restored tenant '{tenant.slug}' (schema {tenant.schema_name})")

    run(go)


# Modules -----------------------------------------------------------------------------


@modules_app.command("list")
def modules_list(
    tenant: Annotated[str | None, typer.Option(help="Show states for this tenant.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The module catalogue with states; quarantined modules with their reasons."""

    async def go(platform: Platform) -> None:
        states: dict[str, dict[str, Any]] = {}
        if tenant:
            async with platform.db.engine.connect() as conn:
                record = await find_tenant(conn, tenant)
                states = await module_states(conn, record.id)
        rows = module_catalogue(platform, states if tenant else None)
        if as_json:
            emit_json(rows)
            return
        table = Table(
            "module",
            "version",
            "category",
            "depends",
            "status",
            *(["tenant"] if tenant else []),
            "reason",
        )
        for r in rows:
            _row(
                table,
                r["name"],
                r["version"] or "",
                r["category"] or "",
                ", ".join(f"{k}{v}" for k, v in r["depends"].items()),
                r["status"],
                *([r.get("tenant_state", "")] if tenant else []),
                r["reason"] or "",
            )
        out.print(table)

    run(go)


@modules_app.command("install")
def modules_install(slug: str, modules: list[str], no_wait: NoWaitOpt = False) -> None:
    """Install modules (and the dependencies they lack) for a tenant."""
    _tenant_job(slug, "lifecycle.install", {"modules": modules}, no_wait)


@modules_app.command("upgrade")
def modules_upgrade(
    slug: str,
    modules: Annotated[list[str] | None, typer.Argument()] = None,
    no_wait: NoWaitOpt = False,
) -> None:
    """Upgrade a tenant's modules (all by default) to the code's head revision."""
    _tenant_job(slug, "lifecycle.upgrade", {"modules": modules or None}, no_wait)


@modules_app.command("uninstall")
def modules_uninstall(
    slug: str,
    module: str,
    cascade: bool = typer.Option(False, "--cascade", help="Uninstall dependents first."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and change nothing."),
    as_json: JsonOpt = False,
    no_wait: NoWaitOpt = False,
) -> None:
    """Archive and drop a module's data for a tenant."""
    if dry_run:

        async def plan(platform: Platform) -> None:
            result = await dry_run_uninstall(platform, slug, module, cascade)
            if as_json:
                emit_json(result.as_dict())
                return
            out.print(
                f"[bold]Plan[/bold] (nothing changed): uninstall {' → '.join(result.modules)}"
            )
            for name in result.modules:
                tables = result.tables[name]
                listed = ", ".join(f"{t} ({n} rows)" for t, n in tables.items()) or "no tables"
                out.print(f"  {name}: archive and drop {listed}")
            for name, reason in result.vetoes.items():
                out.print(f"  [red]{name} refuses:[/red] {escape(reason)}")

        run(plan)
        return
    _tenant_job(slug, "lifecycle.uninstall", {"module": module, "cascade": cascade}, no_wait)


@modules_app.command("restore")
def modules_restore(
    slug: str,
    module: str,
    backup: Annotated[
        str | None, typer.Option("--backup", help="Archive id (default: latest).")
    ] = None,
    no_wait: NoWaitOpt = False,
) -> None:
    """Reinstall an uninstalled module and load its archived data."""
    _tenant_job(slug, "lifecycle.restore", {"module": module, "archive_id": backup}, no_wait)


@modules_app.command("lint")
def modules_lint() -> None:
    """Check every module's revisions (no CREATE EXTENSION, known requirements, one head)."""
    from dentalpin.platform import Registry

    registry = Registry.discover()
    problems = [p for lin in lineages(registry, {}).values() for p in lint_lineage(lin, registry)]
    for q in registry.quarantined.values():
        problems.append(f"{q.name}: quarantined: {q.reason}")
    for problem in problems:
        err.print(f"[red]✗[/red] {escape(problem)}")
    if problems:
        raise typer.Exit(1)
    out.print(f"{len(registry)} module(s) clean")


def _tenant_job(slug: str, kind: str, params: dict[str, Any], no_wait: bool = False) -> None:
    async def go(platform: Platform) -> int:
        if no_wait and executor_kind(platform.settings) != "celery":
            raise PlatformError(
                "--no-wait needs jobs to run on workers (DENTALPIN_JOB_EXECUTOR=celery, or "
                "auto with REDIS_URL set); here the job runs inside this command"
            )
        async with platform.db.engine.connect() as conn:
            tenant = await find_tenant(conn, slug)
        return await _run_job(platform, kind, tenant, params, wait=not no_wait)

    raise typer.Exit(run(go))


WORKER_HINT_AFTER_S = 10.0


async def _run_job(
    platform: Platform, kind: str, tenant: TenantRecord, params: dict[str, Any], wait: bool = True
) -> int:
    """Submit a job and follow its progress until it ends; 0 when it succeeded."""
    job = await submit_lifecycle(platform, tenant, kind, params)
    if not wait:
        typer.echo(str(job.id))
        err.print(f"job {job.id} ({kind}) queued; follow it with `dentalpin jobs show {job.id}`")
        return 0
    out.print(f"job {job.id} ({kind}) queued")
    executor = executor_of(platform)
    on_workers = not isinstance(executor, InProcessExecutor)
    waiting = asyncio.ensure_future(executor.wait(platform, job.id))
    started, hinted = time.monotonic(), False
    try:
        with _progress() as bar:
            task = bar.add_task(kind, total=1.0)
            while not waiting.done():
                current = await get_job(platform, job.id)
                bar.update(
                    task, completed=current.progress, description=escape(current.message or kind)
                )
                if (
                    on_workers
                    and not hinted
                    and current.state == "queued"
                    and time.monotonic() - started > WORKER_HINT_AFTER_S
                ):
                    hinted = True
                    bar.console.print(
                        "[yellow]no worker has taken the job yet:[/yellow] is `dentalpin worker` "
                        "running with the lifecycle queue? Still waiting (Ctrl-C stops waiting; "
                        "the job stays queued)."
                    )
                await asyncio.sleep(0.2)
            final = await waiting
            bar.update(task, completed=final.progress)
    except asyncio.CancelledError:
        if on_workers:
            err.print(
                f"stopped waiting; job {job.id} goes on on the workers: "
                f"`dentalpin jobs show {job.id}`"
            )
        raise
    return _report(final)


def _report(job: JobRecord) -> int:
    if job.state == "succeeded":
        out.print(f"[green]✓[/green] {job.kind} succeeded")
        if job.result:
            out.print_json(json.dumps(job.result, default=str))
        return 0
    err.print(f"[red]✗ {job.kind} {job.state}:[/red] {escape(job.error or '')}")
    return 1


# Archives ----------------------------------------------------------------------------


@archives_app.command("list")
def archives_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's archives.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List archives, newest first, with their retention dates."""
    from dentalpin.tenants._retention import list_archives

    async def go(platform: Platform) -> None:
        tenant_id = None
        if tenant:
            async with platform.db.engine.connect() as conn:
                tenant_id = (await find_tenant(conn, tenant)).id
        rows = await list_archives(platform, tenant_id)
        if as_json:
            emit_json(rows)
            return
        table = Table("id", "tenant", "kind", "module", "created", "expires", "restored")
        for r in rows:
            _row(
                table,
                r["id"],
                r["tenant"],
                r["kind"],
                r["module"],
                r["created_at"][:10],
                r["expires_at"][:10],
                (r["restored_at"] or "")[:10],
            )
        out.print(table)

    run(go)


@archives_app.command("prune")
def archives_prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would go; delete nothing."),
    as_json: JsonOpt = False,
) -> None:
    """Delete archives past their retention date (file and record)."""
    from dentalpin.tenants._retention import prune_archives

    async def go(platform: Platform) -> None:
        pruned = await prune_archives(platform, dry_run=dry_run)
        if as_json:
            emit_json(pruned)
            return
        verb = "would delete" if dry_run else "deleted"
        out.print(f"{verb} {len(pruned)} expired archive(s)")
        for p in pruned:
            out.print(f"  {p['id']} (expired {p['expired'][:10]})")

    run(go)


# Jobs --------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's jobs.")] = None,
    limit: int = typer.Option(50, help="How many, newest first."),
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""

    async def go(platform: Platform) -> None:
        tenant_id = None
        if tenant:
            async with platform.db.engine.connect() as conn:
                tenant_id = (await find_tenant(conn, tenant)).id
        rows = await list_jobs(platform, tenant_id, limit)
        if as_json:
            emit_json([j.as_dict() for j in rows])
            return
        table = Table("id", "kind", "state", "progress", "created", "error")
        for j in rows:
            _row(
                table,
                str(j.id),
                j.kind,
                j.state,
                f"{j.progress:.0%}",
                f"{j.created_at:%Y-%m-%d %H:%M:%S}",
                (j.error or "")[:80],
            )
        out.print(table)

    run(go)


@jobs_app.command("show")
def jobs_show(job_id: uuid.UUID, as_json: JsonOpt = False) -> None:
    """Show a job with its log."""

    async def go(platform: Platform) -> None:
        job = await get_job(platform, job_id)
        lines = await job_log_lines(platform, job_id)
        if as_json:
            emit_json({**job.as_dict(), "log": lines})
            return
        out.print(
            f"[bold]{job.kind}[/bold] {job.id}: {job.state} ({job.progress:.0%}), "
            f"attempt {job.attempts}{f' on {escape(job.worker)}' if job.worker else ''}"
        )
        if job.error:
            out.print(f"[red]error:[/red] {escape(job.error)}")
        for line in lines:
            out.print(f"  {line['at'][11:19]} {line['level']:5} {escape(line['message'])}")

    run(go)


@jobs_app.command("reap")
def jobs_reap(as_json: JsonOpt = False) -> None:
    """Re-queue jobs whose worker died (stale heartbeat), fail those out of attempts, and
    re-send queued jobs nobody took. Beat runs this every DENTALPIN_JOB_REAP_EVERY_S."""

    async def go(platform: Platform) -> int:
        executor = executor_of(platform)
        report = await reap_jobs(platform, executor)
        finished: list[JobRecord] = []
        if isinstance(executor, InProcessExecutor):
            # In-process, the re-queued jobs run here; wait for them before exiting.
            finished = [await executor.wait(platform, job.id) for job in report.submitted]
        if as_json:
            emit_json({**report.as_dict(), "ran": {str(j.id): j.state for j in finished}})
        else:
            out.print(
                f"{len(report.requeued)} re-queued, {len(report.failed)} failed (no attempts "
                f"left), {len(report.resent)} re-sent"
            )
            for job in report.requeued:
                out.print(f"  re-queued {job.id} ({job.kind}), attempt {job.attempts + 1} next")
            for job in report.failed:
                out.print(f"  [red]failed[/red] {job.id} ({job.kind}) after {job.attempts}")
            for job in report.resent:
                out.print(f"  re-sent {job.id} ({job.kind})")
            for job_id, problem in report.unsent.items():
                err.print(f"[red]could not send {job_id}:[/red] {escape(problem)}")
            for job in finished:
                out.print(f"  ran {job.id}: {job.state}")
        return 1 if report.unsent else 0

    raise typer.Exit(run(go))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

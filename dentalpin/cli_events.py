"""`dentalpin events failed|retry|stats|deliver|prune`: the event pipeline, for operators."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer
from rich.table import Table

from dentalpin.platform._relay import dead_letters, deliver, pipeline_stats, prune, retry_dead
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import find_tenant

events_app = typer.Typer(
    help="Events: dead letters, replays, pipeline state.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Only this tenant (slug).")]


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")


async def _tenant_id(platform: Platform, slug: str | None) -> uuid.UUID | None:
    if slug is None:
        return None
    async with platform.db.engine.connect() as conn:
        return (await find_tenant(conn, slug)).id


@events_app.command("failed")
def events_failed(
    tenant: TenantOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Dead letters: deliveries that failed every attempt, oldest first."""
    from dentalpin.cli import _row, emit_json, out, run

    async def go(platform: Platform) -> None:
        rows = await dead_letters(
            platform, tenant_id=await _tenant_id(platform, tenant), limit=limit
        )
        if as_json:
            emit_json(rows)
            return
        table = Table("id", "tenant", "event", "subscriber", "attempts", "dead at", "error")
        for r in rows:
            _row(
                table,
                r["id"],
                r["tenant"],
                r["event"],
                r["subscriber"],
                r["attempts"],
                r["dead_at"][:19],
                (r["error"] or "")[:80],
            )
        out.print(table)
        if not rows:
            out.print("no dead letters")

    run(go)


@events_app.command("retry")
def events_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead-letter ids.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter (of --tenant).")] = False,
    tenant: TenantOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay dead letters with fresh attempts (after fixing what made them fail)."""
    from dentalpin.cli import emit_json, err, out, run

    if bool(ids) == all_:
        err.print("[red]error:[/red] name dead-letter ids, or pass --all (not both)")
        raise typer.Exit(2)

    async def go(platform: Platform) -> None:
        touched = await retry_dead(
            platform, None if all_ else ids, tenant_id=await _tenant_id(platform, tenant)
        )
        if as_json:
            emit_json({"tenants": [str(t) for t in touched]})
        else:
            out.print(f"queued again for delivery in {len(touched)} tenant(s)")

    run(go)


@events_app.command("stats")
def events_stats(as_json: JsonOpt = False) -> None:
    """Deliveries by state, outbox lag, dead letters, jobs by state, and which beat leads."""
    from dentalpin.cli import emit_json, out, run

    async def go(platform: Platform) -> None:
        stats: dict[str, Any] = await pipeline_stats(platform)
        if as_json:
            emit_json(stats)
            return
        table = Table("measure", "value")
        for state, n in stats["deliveries"].items():
            table.add_row(f"deliveries {state}", str(n))
        table.add_row("outbox lag (s)", str(stats["outbox_lag_s"]))
        table.add_row("tenants with work", str(stats["tenants_with_work"]))
        if stats["tenants_counted"] < stats["tenants_with_work"]:
            table.add_row(
                "",
                f"[yellow]deliveries and lag counted in the {stats['tenants_counted']} "
                "most overdue[/yellow]",
            )
        for state, n in sorted(stats["jobs"].items()):
            table.add_row(f"jobs {state}", str(n))
        leader = stats["beat"]["leader"]
        table.add_row(
            "beat leader",
            leader or "[red]none: nothing schedules the sweep, reaper or periodic jobs[/red]",
        )
        table.add_row("beat standbys", str(stats["beat"]["standbys"]))
        out.print(table)

    run(go)


@events_app.command("deliver")
def events_deliver(slug: str, as_json: JsonOpt = False) -> None:
    """Run one relay pass for a tenant in this process (no worker needed)."""
    from dentalpin.cli import emit_json, out, run

    async def go(platform: Platform) -> None:
        tenant_id = await _tenant_id(platform, slug)
        assert tenant_id is not None
        report = await deliver(platform, tenant_id, budget_s=60)
        if as_json:
            emit_json(report.as_dict())
        else:
            out.print(
                f"fanned out {report.fanned_out}, delivered {report.delivered}, "
                f"retrying {report.retried}, dead {report.dead}, skipped {report.skipped}"
                + (" (more left: run again)" if report.more else "")
            )

    run(go)


@events_app.command("prune")
def events_prune(
    tenant: TenantOpt = None,
    older_than_days: Annotated[
        float | None,
        typer.Option(
            min=0, help="Age of settled events to remove (default DENTALPIN_EVENTS_RETENTION_DAYS)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove settled events past their retention, with their deliveries and inbox rows
    (beat does it hourly); events still pending, running or dead are kept."""
    from dentalpin.cli import emit_json, out, run

    async def go(platform: Platform) -> None:
        days = (
            platform.settings.events_retention_days if older_than_days is None else older_than_days
        )
        report = await prune(
            platform, older_than_s=days * 86400, tenant_id=await _tenant_id(platform, tenant)
        )
        if as_json:
            emit_json(report.as_dict())
        else:
            out.print(
                f"removed {report.events} settled events older than {days:g} days "
                f"({report.inbox} inbox rows) in {report.tenants} tenants"
            )

    run(go)

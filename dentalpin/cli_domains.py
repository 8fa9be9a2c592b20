"""`dentalpin domains add|verify|list|remove|recheck`: clinics' custom domains, as the
operator.

A domain is routed to its clinic only once verified: its DNS publishes the TXT record
`_dentalpin.<domain>` with the claim's token (`verify` looks it up now). Verified domains
are looked up again daily (beat; `recheck` does it now) and stop routing after
`DENTALPIN_DOMAIN_RECHECK_FAILURES` misses in a row.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dentalpin.platform._audit import CLI
from dentalpin.platform._domains import (
    add_domain,
    list_domains,
    recheck_domains,
    remove_domain,
    verify_domain,
)
from dentalpin.platform._identity import tenant_id_by_slug
from dentalpin.platform._runtime import Platform

domains_app = typer.Typer(
    help="A clinic's custom domains (routed only once verified by DNS).", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def register(app: typer.Typer) -> None:
    app.add_typer(domains_app, name="domains")


def _txt_hint(domain: dict[str, object]) -> str:
    record = domain["txt_record"]
    assert isinstance(record, dict)
    return f"publish the TXT record {record['name']} = {record['value']}"


@domains_app.command("add")
def domains_add(slug: str, hostname: str, as_json: JsonOpt = False) -> None:
    """Claim HOSTNAME for the clinic SLUG and print the TXT record that proves it."""
    from dentalpin.cli import emit_json, out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            tenant = await tenant_id_by_slug(conn, slug)
            domain = await add_domain(conn, platform.settings, tenant, hostname, CLI)
        if as_json:
            emit_json(domain)
        else:
            name = escape(str(domain["hostname"]))
            out.print(f"claimed {name}: {escape(_txt_hint(domain))},")
            out.print(f"then run `dentalpin domains verify {escape(slug)} {name}`")

    run(go)


@domains_app.command("verify")
def domains_verify(slug: str, hostname: str, as_json: JsonOpt = False) -> None:
    """Look the TXT record up now; on success the host is routed to the clinic."""
    from dentalpin.cli import emit_json, out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.connect() as conn:
            tenant = await tenant_id_by_slug(conn, slug)
        domain = await verify_domain(platform, tenant, hostname, CLI)
        if as_json:
            emit_json(domain)
        else:
            out.print(f"verified {escape(str(domain['hostname']))}: it now serves {escape(slug)}")

    run(go)


@domains_app.command("list")
def domains_list(slug: str, as_json: JsonOpt = False) -> None:
    """The clinic's domains, verified or not, with their TXT records."""
    from dentalpin.cli import _row, emit_json, out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.connect() as conn:
            found = await list_domains(conn, await tenant_id_by_slug(conn, slug))
        if as_json:
            emit_json(found)
            return
        table = Table("hostname", "verified", "checked", "misses", "TXT record", "value")
        for d in found:
            record = d["txt_record"]
            _row(
                table,
                d["hostname"],
                d["verified"],
                d["checked_at"] or "",
                d["failed_checks"],
                record["name"],
                record["value"],
            )
        out.print(table)

    run(go)


@domains_app.command("remove")
def domains_remove(slug: str, hostname: str) -> None:
    """Remove the clinic's claim on HOSTNAME (if verified, it stops serving the clinic)."""
    from dentalpin.cli import out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            await remove_domain(conn, await tenant_id_by_slug(conn, slug), hostname, CLI)
        out.print(f"removed {escape(hostname)} from {escape(slug)}")

    run(go)


@domains_app.command("recheck")
def domains_recheck(
    every: Annotated[
        bool, typer.Option("--all", help="Every verified domain, not only those due.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Look verified domains up again now (beat does it hourly for those due): a missing
    record is counted, and the clinic's admins are told; enough misses in a row stop it."""
    from dentalpin.cli import emit_json, err, out, run

    async def go(platform: Platform) -> None:
        report = await recheck_domains(platform, every_s=0 if every else None)
        if as_json:
            emit_json(report.as_dict())
            return
        out.print(
            f"confirmed {len(report.confirmed)}; record missing {len(report.failing)}; "
            f"stopped {len(report.unverified)}; DNS did not answer {len(report.unanswered)}"
        )
        for name in report.failing:
            err.print(f"[yellow]missing:[/yellow] {escape(name)} (still served)")
        for name in report.unverified:
            err.print(f"[red]stopped:[/red] {escape(name)} no longer serves its clinic")

    run(go)

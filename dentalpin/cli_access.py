"""`dentalpin members invite` and `dentalpin support grant|list|revoke`: invitations and
support grants for operators (holding DATABASE_URL), audited as `cli`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dentalpin.cli_identity import JsonOpt, members_app
from dentalpin.platform._audit import CLI
from dentalpin.platform._identity import tenant_id_by_slug
from dentalpin.platform._invitations import invite
from dentalpin.platform._mail_queue import deliver, enqueue
from dentalpin.platform._roles import SUPPORT_ROLE
from dentalpin.platform._runtime import Platform
from dentalpin.platform._support import grant_support, list_grants, revoke_grant

support_app = typer.Typer(
    help="Time-limited support access to a clinic for operators and reseller admins.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(support_app, name="support")


async def deliver_queued(platform: Platform, queued: uuid.UUID, done: str) -> None:
    """Deliver the message of a change already committed: say what was done, and where
    the message went, or why it did not go yet (it stays queued and is retried)."""
    from dentalpin.cli import err, out

    sent = await deliver(platform, queued)
    if sent.where is not None:
        out.print(f"{done}; e-mail: {escape(sent.where)}")
        return
    out.print(done)
    if sent.queued:
        err.print(
            f"[yellow]note:[/yellow] the e-mail did not go now ({escape(sent.error or '')}); "
            "it is queued and retried while the mail server is down (`dentalpin mail list`)"
        )
    else:
        err.print(f"[red]error:[/red] the e-mail cannot be sent: {escape(sent.error or '')}")
        raise typer.Exit(1)


@members_app.command("invite")
def members_invite(
    slug: str,
    email: str,
    role: Annotated[list[str], typer.Option("--role", help="A role (repeat for several).")],
    location: Annotated[
        list[str] | None, typer.Option("--location", help="Limit to a location (repeatable).")
    ] = None,
) -> None:
    """E-mail an invitation to join a clinic (the link works once, until it expires)."""
    from dentalpin.cli import run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            tenant_id = await tenant_id_by_slug(conn, slug)
            created, mail = await invite(
                conn, platform, tenant_id, email, role, location or [], ctx=CLI
            )
            queued = await enqueue(conn, platform.settings, mail)
        await deliver_queued(
            platform,
            queued,
            f"invited {escape(created['email'])} to '{escape(slug)}' as "
            f"{', '.join(created['roles'])} until {created['expires_at']}",
        )

    run(go)


@support_app.command("grant")
def support_grant(
    slug: str,
    email: str,
    hours: Annotated[float, typer.Option("--hours", help="How long the access lasts.")],
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help=f"A role (repeatable; default {SUPPORT_ROLE})."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "",
) -> None:
    """Let an operator or reseller admin act in a clinic for --hours."""
    from dentalpin.cli import run

    async def go(platform: Platform) -> None:
        expires = datetime.now(UTC) + timedelta(hours=hours)
        async with platform.db.engine.begin() as conn:
            tenant_id = await tenant_id_by_slug(conn, slug)
            grant, mail = await grant_support(
                conn,
                platform,
                tenant_id,
                email,
                expires,
                role or [SUPPORT_ROLE],
                reason,
                ctx=CLI,
            )
            queued = await enqueue(conn, platform.settings, mail)
        await deliver_queued(
            platform,
            queued,
            f"support access {grant['id']} for {escape(grant['grantee'])} in '{escape(slug)}' "
            f"as {', '.join(grant['roles'])} until {grant['expires_at']}",
        )

    run(go)


@support_app.command("list")
def support_list(slug: str, as_json: JsonOpt = False) -> None:
    """A clinic's support grants (active, expired, revoked)."""
    from dentalpin.cli import _row, emit_json, out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.connect() as conn:
            data = await list_grants(conn, await tenant_id_by_slug(conn, slug))
        if as_json:
            emit_json(data)
            return
        table = Table("id", "grantee", "roles", "state", "expires")
        for d in data:
            _row(table, d["id"], d["grantee"], ", ".join(d["roles"]), d["state"], d["expires_at"])
        out.print(table)

    run(go)


@support_app.command("revoke")
def support_revoke(slug: str, grant_id: str) -> None:
    """End a support grant now (and the grantee's sessions in the clinic)."""
    from dentalpin.cli import out, run

    try:
        parsed = uuid.UUID(grant_id)
    except ValueError:
        raise typer.BadParameter("GRANT_ID is the id `dentalpin support list SLUG` shows") from None

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            grant = await revoke_grant(conn, await tenant_id_by_slug(conn, slug), parsed, ctx=CLI)
        out.print(f"support access of {escape(grant['grantee'])} in '{escape(slug)}' revoked")

    run(go)

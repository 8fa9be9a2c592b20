"""`dentalpin mail list|retry`: the platform's mail queue for operators (see ADR 0023)."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table

from dentalpin.cli_identity import JsonOpt
from dentalpin.platform._mail_queue import State, list_mail, requeue, retry_due
from dentalpin.platform._runtime import Platform

mail_app = typer.Typer(
    help="Outgoing e-mail: what is queued, sent or failed; send it again.", no_args_is_help=True
)
STATES: dict[str, State] = {"pending": "pending", "sent": "sent", "failed": "failed"}
StateOpt = Annotated[
    str | None,
    typer.Option("--state", help="pending, sent or failed.", case_sensitive=False),
]


def register(app: typer.Typer) -> None:
    app.add_typer(mail_app, name="mail")


@mail_app.command("list")
def mail_list(
    state: StateOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Queued messages, newest first (never their bodies: their links are credentials)."""
    from dentalpin.cli import _row, emit_json, out, run

    if state is not None and state.lower() not in STATES:
        raise typer.BadParameter("--state is pending, sent or failed")
    wanted = STATES[state.lower()] if state else None

    async def go(platform: Platform) -> None:
        async with platform.db.engine.connect() as conn:
            found = await list_mail(conn, wanted, limit)
        if as_json:
            emit_json(found)
            return
        # The id is what `mail retry` takes: never cut short.
        table = Table(Column("id", no_wrap=True, min_width=36), "kind", "to", "state")
        for header in ("attempts", "next / sent", "last error"):
            table.add_column(header)
        for m in found:
            when = m["sent_at"] or m["next_attempt_at"] or ""
            _row(
                table, m["id"], m["kind"], m["to"], m["state"], m["attempts"], when, m["last_error"]
            )
        out.print(table)

    run(go)


@mail_app.command("retry")
def mail_retry(
    ids: Annotated[list[str] | None, typer.Argument(help="Failed messages to send again.")] = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="Every failed message that can still be sent.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send the due messages now (beat does it every DENTALPIN_MAIL_RETRY_EVERY_S); with
    IDS or --failed, make those failed messages due again first."""
    from dentalpin.cli import emit_json, err, out, run

    if ids and failed:
        raise typer.BadParameter("name messages or say --failed, not both")
    try:
        chosen = [uuid.UUID(i) for i in ids] if ids else None
    except ValueError:
        raise typer.BadParameter("a message id is the id `dentalpin mail list` shows") from None

    async def go(platform: Platform) -> None:
        requeued = 0
        if chosen is not None or failed:
            async with platform.db.engine.begin() as conn:
                requeued = await requeue(conn, chosen)
            if chosen is not None and requeued < len(chosen):
                err.print(
                    f"[yellow]note:[/yellow] {len(chosen) - requeued} of the messages named are "
                    "not failed ones that can still be sent (sent, pending, or expired)"
                )
        report = await retry_due(platform)
        if as_json:
            emit_json({"requeued": requeued, **report.as_dict()})
            return
        out.print(
            f"sent {report.sent}; still retrying {report.retrying}; given up "
            f"{len(report.failed)}" + (f" (requeued {requeued})" if chosen or failed else "")
        )
        for mail_id in report.failed:
            err.print(f"[red]failed:[/red] {escape(mail_id)} (see `dentalpin mail list`)")

    run(go)

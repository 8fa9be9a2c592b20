"""`dentalpin users|members|operators|roles|keys`: identity administration for operators.

These commands act as the operator (the person holding DATABASE_URL): they are not
limited by tenant permissions, and each change is written to the audit log as `cli`.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from dentalpin.platform._audit import CLI
from dentalpin.platform._clients import (
    SCOPES,
    add_reseller_admin,
    create_client,
    create_reseller,
    list_resellers,
    reseller_by_name,
    set_reseller_plan,
)
from dentalpin.platform._identity import (
    create_user,
    get_user,
    list_members,
    list_roles,
    remove_membership,
    set_membership,
    set_operator,
    set_password,
    tenant_id_by_slug,
)
from dentalpin.platform._roles import sync_roles
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import users as users_table
from dentalpin.platform._tokens import list_keys, rotate_keys

users_app = typer.Typer(help="Platform-wide user accounts.", no_args_is_help=True)
members_app = typer.Typer(
    help="Who works for which clinic, with which roles.", no_args_is_help=True
)
operators_app = typer.Typer(help="Platform operators (TOTP mandatory).", no_args_is_help=True)
roles_app = typer.Typer(help="A clinic's roles and their permissions.", no_args_is_help=True)
keys_app = typer.Typer(help="Access-token signing keys (JWKS).", no_args_is_help=True)
resellers_app = typer.Typer(help="Resellers and their admins.", no_args_is_help=True)
plans_app = typer.Typer(
    help="Reseller plans: clinics, modules, country packs.", no_args_is_help=True
)
clients_app = typer.Typer(
    help="Integration clients of resellers (OAuth2 client credentials).", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(members_app, name="members")
    app.add_typer(operators_app, name="operators")
    app.add_typer(roles_app, name="roles")
    app.add_typer(keys_app, name="keys")
    app.add_typer(resellers_app, name="resellers")
    app.add_typer(plans_app, name="plans")
    app.add_typer(clients_app, name="clients")


def _read_password() -> str:
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise typer.BadParameter("no password on standard input")
    return password


# Users -------------------------------------------------------------------------------


@users_app.command("create")
def users_create(
    email: str,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a user (without --password-stdin it has no password and cannot sign in yet)
    and e-mail them a link that verifies their address."""
    from dentalpin.cli import emit_json, out, run
    from dentalpin.platform._mail_queue import deliver, enqueue
    from dentalpin.platform._recovery import verification_mail

    password = _read_password() if password_stdin else None

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            user = await create_user(conn, email, name, password, ctx=CLI)
            mail = await verification_mail(conn, platform.settings, user.id)
            queued = await enqueue(conn, platform.settings, mail)
        sent = await deliver(platform, queued)
        if as_json:
            emit_json({**user.as_dict(), "verification_sent": sent.where is not None})
        else:
            note = "" if password else " (no password: it cannot sign in yet)"
            out.print(f"created user {escape(user.email)} ({user.id}){note}")
            out.print(
                f"verification e-mail: {escape(sent.where)}"
                if sent.where
                else "[yellow]the verification e-mail did not go now; it is queued and "
                "retried (`dentalpin mail list`)[/yellow]"
            )

    run(go)


@users_app.command("list")
def users_list(as_json: JsonOpt = False) -> None:
    """Every user account."""
    from sqlalchemy import select

    from dentalpin.cli import _row, emit_json, out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.connect() as conn:
            rows = (await conn.execute(select(users_table).order_by(users_table.c.email))).all()
        data = [
            {
                "id": str(r.id),
                "email": r.email,
                "name": r.name,
                "operator": r.is_operator,
                "mfa": r.totp_enabled_at is not None,
                "disabled": r.disabled,
            }
            for r in rows
        ]
        if as_json:
            emit_json(data)
            return
        table = Table("email", "name", "operator", "mfa", "disabled")
        for d in data:
            _row(table, d["email"], d["name"], d["operator"], d["mfa"], d["disabled"])
        out.print(table)

    run(go)


@users_app.command("set-password")
def users_set_password(email: str) -> None:
    """Set a user's password from standard input (ends every session of the user)."""
    from dentalpin.cli import out, run

    password = _read_password()

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            user = await get_user(conn, email)
            await set_password(conn, user.id, password, ctx=CLI)
        out.print(f"password of {escape(user.email)} changed; its sessions are revoked")

    run(go)


@users_app.command("reset-mfa")
def users_reset_mfa(email: str) -> None:
    """Remove a user's second factor (lost phone); they enrol again at the next sign-in."""
    from sqlalchemy import update

    from dentalpin.cli import out, run
    from dentalpin.platform._audit import record

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            user = await get_user(conn, email)
            await conn.execute(
                update(users_table)
                .where(users_table.c.id == user.id)
                .values(totp_secret=None, totp_enabled_at=None)
            )
            await record(conn, CLI, "mfa.reset", target=user.email)
        out.print(f"second factor of {escape(user.email)} removed")

    run(go)


# Members -----------------------------------------------------------------------------


@members_app.command("add")
def members_add(
    slug: str,
    email: str,
    role: Annotated[list[str], typer.Option("--role", help="A role (repeat for several).")],
    location: Annotated[
        list[str] | None, typer.Option("--location", help="Limit to a location (repeatable).")
    ] = None,
) -> None:
    """Make a user a member of a clinic, or give a member more roles."""
    from dentalpin.cli import out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            tenant_id = await tenant_id_by_slug(conn, slug)
            user = await get_user(conn, email)
            held = await set_membership(
                conn, platform.registry, tenant_id, user.id, role, location or [], ctx=CLI, add=True
            )
        out.print(f"{escape(user.email)} in '{escape(slug)}': {', '.join(sorted(held))}")

    run(go)


@members_app.command("remove")
def members_remove(slug: str, email: str) -> None:
    """End a user's membership of a clinic (and their sessions there)."""
    from dentalpin.cli import out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            tenant_id = await tenant_id_by_slug(conn, slug)
            user = await get_user(conn, email)
            published = await remove_membership(conn, tenant_id, user.id, ctx=CLI)
        platform.db.published(published)
        out.print(f"{escape(user.email)} is no longer a member of '{escape(slug)}'")

    run(go)


@members_app.command("list")
def members_list(slug: str, as_json: JsonOpt = False) -> None:
    """A clinic's members and their roles."""
    from dentalpin.cli import _row, emit_json, out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.connect() as conn:
            data = await list_members(conn, await tenant_id_by_slug(conn, slug))
        if as_json:
            emit_json(data)
            return
        table = Table("email", "name", "roles", "locations")
        for d in data:
            _row(table, d["email"], d["name"], ", ".join(d["roles"]), ", ".join(d["location_ids"]))
        out.print(table)

    run(go)


# Operators ---------------------------------------------------------------------------


@operators_app.command("add")
def operators_add(email: str) -> None:
    """Make a user a platform operator (they must enrol TOTP at their next sign-in)."""
    from dentalpin.cli import out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            user = await set_operator(conn, email, True, ctx=CLI)
        out.print(f"{escape(user.email)} is a platform operator")

    run(go)


@operators_app.command("remove")
def operators_remove(email: str) -> None:
    """Take the operator flag away from a user."""
    from dentalpin.cli import out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            user = await set_operator(conn, email, False, ctx=CLI)
        out.print(f"{escape(user.email)} is no longer a platform operator")

    run(go)


# Roles -------------------------------------------------------------------------------


@roles_app.command("list")
def roles_list(slug: str, as_json: JsonOpt = False) -> None:
    """A clinic's roles (built-in and custom) and their permissions."""
    from dentalpin.cli import _row, emit_json, out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            data = await list_roles(conn, platform.registry, await tenant_id_by_slug(conn, slug))
        if as_json:
            emit_json(data)
            return
        table = Table("role", "built in", "permissions")
        for d in data:
            _row(table, d["name"], d["builtin"], ", ".join(d["permissions"]))
        out.print(table)

    run(go)


@roles_app.command("sync")
def roles_sync(slug: str) -> None:
    """Recompute a clinic's built-in roles from its installed modules (after an upgrade that
    changed a module's role_grants)."""
    from dentalpin.cli import out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            await sync_roles(conn, platform.registry, await tenant_id_by_slug(conn, slug))
        out.print(f"roles of '{escape(slug)}' follow its installed modules")

    run(go)


# Keys --------------------------------------------------------------------------------


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Sign new access tokens with a new key; the old one stays in the JWKS (and verifies)
    until the tokens it signed have expired. Nobody is signed out."""
    from dentalpin.cli import out, run

    async def go(platform: Platform) -> None:
        kid = await rotate_keys(platform)
        out.print(f"new signing key {kid}; web processes pick it up within their key cache time")

    run(go)


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """Signing keys, newest last (retired keys drop out of the JWKS after the token TTL)."""
    from dentalpin.cli import _row, emit_json, out, run

    async def go(platform: Platform) -> None:
        data = await list_keys(platform)
        if as_json:
            emit_json(data)
            return
        table = Table("kid", "algorithm", "created", "retired")
        for d in data:
            _row(table, d["kid"], d["algorithm"], d["created_at"], d["retired_at"] or "")
        out.print(table)

    run(go)


# Resellers and clients -----------------------------------------------------------------


@resellers_app.command("create")
def resellers_create(
    name: str,
    plan: Annotated[str, typer.Option(help="The reseller's plan.")] = "standard",
    as_json: JsonOpt = False,
) -> None:
    """Create a reseller."""
    from dentalpin.cli import emit_json, out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            reseller = await create_reseller(conn, name, plan, ctx=CLI)
        if as_json:
            emit_json(reseller)
        else:
            out.print(f"created reseller '{escape(reseller['name'])}' (plan {escape(plan)})")

    run(go)


@resellers_app.command("add-admin")
def resellers_add_admin(name: str, email: str) -> None:
    """Make a user an admin of a reseller (they must enrol TOTP at their next sign-in)."""
    from dentalpin.cli import out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            await add_reseller_admin(conn, name, email, ctx=CLI)
        out.print(f"{escape(email.lower())} is an admin of reseller '{escape(name)}'")

    run(go)


@resellers_app.command("list")
def resellers_list(as_json: JsonOpt = False) -> None:
    """Resellers with their plan, admins and active clients."""
    from dentalpin.cli import _row, emit_json, out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.connect() as conn:
            data = await list_resellers(conn)
        if as_json:
            emit_json(data)
            return
        table = Table("name", "plan", "admins", "clients")
        for d in data:
            _row(table, d["name"], d["plan"], d["admins"], d["clients"])
        out.print(table)

    run(go)


@plans_app.command("list")
def plans_list(as_json: JsonOpt = False) -> None:
    """The plans a reseller can be on (`resellers create --plan`) and their limits."""
    from dentalpin.cli import _row, emit_json, out, run
    from dentalpin.platform._plans import list_plans

    async def go(platform: Platform) -> None:
        async with platform.db.engine.connect() as conn:
            data = [p.as_dict() for p in await list_plans(conn)]
        if as_json:
            emit_json(data)
            return
        table = Table("plan", "clinics", "modules", "country packs", "description")
        for d in data:
            _row(
                table,
                d["name"],
                d["max_tenants"] if d["max_tenants"] is not None else "unlimited",
                ", ".join(d["modules"]) if d["modules"] is not None else "all",
                (", ".join(d["countries"]) or "none") if d["countries"] is not None else "all",
                d["description"],
            )
        out.print(table)

    run(go)


MaxClinics = Annotated[
    int | None, typer.Option("--max-clinics", min=0, help="Clinics a reseller may have.")
]
ModulesOpt = Annotated[
    str | None, typer.Option("--modules", help="Comma-separated modules the plan allows.")
]
CountriesOpt = Annotated[
    str | None,
    typer.Option(
        "--countries", help="Comma-separated countries whose packs it allows ('' for none)."
    ),
]


def _listed(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _one_of(given: dict[str, bool]) -> None:
    named = [option for option, used in given.items() if used]
    if len(named) > 1:
        raise typer.BadParameter(f"{' and '.join(named)} contradict each other")


def _print_plan(plan: dict[str, Any], impact: dict[str, Any] | None = None) -> None:
    from dentalpin.cli import err, out

    limit = plan["max_tenants"]
    modules = plan["modules"]
    countries = plan["countries"]
    out.print(
        f"plan '{escape(plan['name'])}': "
        f"{'unlimited' if limit is None else limit} clinic(s); "
        f"modules: {'all' if modules is None else escape(', '.join(modules)) or 'none'}; "
        f"country packs: {'all' if countries is None else ', '.join(countries) or 'none'}"
    )
    impact = impact or {"resellers_over_limit": [], "clinics_outside_plan": {}}
    for over in impact["resellers_over_limit"]:
        err.print(
            f"[yellow]note:[/yellow] reseller '{escape(over['reseller'])}' has "
            f"{over['clinics']} clinics, over the limit: it keeps them and cannot add more"
        )
    for slug, extra in impact["clinics_outside_plan"].items():
        err.print(
            f"[yellow]note:[/yellow] clinic '{escape(slug)}' has {escape(', '.join(extra))} "
            "outside the plan: it keeps them and cannot install more such modules"
        )


@plans_app.command("create")
def plans_create(
    name: str,
    description: Annotated[str, typer.Option(help="What the plan is for.")] = "",
    max_clinics: MaxClinics = None,
    modules: ModulesOpt = None,
    countries: CountriesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a plan. Whatever it does not limit is unlimited: every module, every
    country pack, any number of clinics."""
    from dentalpin.cli import emit_json, run
    from dentalpin.platform._plans import create_plan

    values: dict[str, Any] = {"description": description, "max_tenants": max_clinics}
    if modules is not None:
        values["modules"] = _listed(modules)
    if countries is not None:
        values["countries"] = _listed(countries)

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            plan = await create_plan(conn, platform.registry, name, values, ctx=CLI)
        if as_json:
            emit_json(plan.as_dict())
        else:
            _print_plan(plan.as_dict())

    run(go)


@plans_app.command("set")
def plans_set(
    name: str,
    description: Annotated[str | None, typer.Option(help="What the plan is for.")] = None,
    max_clinics: MaxClinics = None,
    unlimited: Annotated[bool, typer.Option("--unlimited", help="No clinic limit.")] = False,
    modules: ModulesOpt = None,
    all_modules: Annotated[
        bool, typer.Option("--all-modules", help="Every module the platform runs.")
    ] = False,
    countries: CountriesOpt = None,
    all_countries: Annotated[
        bool, typer.Option("--all-countries", help="Every country pack.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change a plan's terms (only those named). Resellers on it keep what they have;
    what they add next must fit. Notes name who is already over the new terms."""
    from dentalpin.cli import emit_json, run
    from dentalpin.platform._plans import change_plan, plan_impact

    _one_of({"--max-clinics": max_clinics is not None, "--unlimited": unlimited})
    _one_of({"--modules": modules is not None, "--all-modules": all_modules})
    _one_of({"--countries": countries is not None, "--all-countries": all_countries})
    values: dict[str, Any] = {}
    if description is not None:
        values["description"] = description
    if max_clinics is not None or unlimited:
        values["max_tenants"] = max_clinics
    if modules is not None or all_modules:
        values["modules"] = None if all_modules else _listed(modules or "")
    if countries is not None or all_countries:
        values["countries"] = None if all_countries else _listed(countries or "")

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            plan = await change_plan(conn, platform.registry, name, values, ctx=CLI)
            impact = await plan_impact(conn, platform.registry, plan)
        if as_json:
            emit_json({**plan.as_dict(), "impact": impact})
        else:
            _print_plan(plan.as_dict(), impact)

    run(go)


@plans_app.command("delete")
def plans_delete(name: str) -> None:
    """Delete a plan no reseller is on."""
    from dentalpin.cli import out, run
    from dentalpin.platform._plans import delete_plan

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            await delete_plan(conn, name, ctx=CLI)
        out.print(f"deleted plan '{escape(name.strip())}'")

    run(go)


@resellers_app.command("set-plan")
def resellers_set_plan(name: str, plan: str, as_json: JsonOpt = False) -> None:
    """Move a reseller to another plan. Its clinics keep what they have; what it (and its
    clinics' admins) add next must fit the new plan."""
    from dentalpin.cli import emit_json, out, run

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            reseller = await reseller_by_name(conn, name)
            moved = await set_reseller_plan(conn, reseller, plan, ctx=CLI)
        if as_json:
            emit_json(moved)
        else:
            out.print(f"reseller '{escape(moved['name'])}' is on plan '{escape(moved['plan'])}'")

    run(go)


@clients_app.command("create")
def clients_create(
    name: str,
    reseller: Annotated[str, typer.Option("--reseller", help="The reseller owning it.")],
    scope: Annotated[
        list[str], typer.Option("--scope", help=f"Repeatable: {', '.join(sorted(SCOPES))}.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Create an integration client; prints its id and secret ONCE (only a hash is kept)."""
    from dentalpin.cli import emit_json, out, run

    scopes = [s for item in scope for s in item.replace(",", " ").split()]

    async def go(platform: Platform) -> None:
        async with platform.db.engine.begin() as conn:
            client_id, secret = await create_client(conn, name, reseller, scopes, ctx=CLI)
        if as_json:
            emit_json({"client_id": client_id, "client_secret": secret, "scopes": scopes})
        else:
            out.print(f"client_id:     {client_id}\nclient_secret: {secret}")
            out.print("store the secret now: it cannot be shown again")

    run(go)

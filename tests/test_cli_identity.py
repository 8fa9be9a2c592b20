"""`dentalpin users|members|operators|roles|keys`, run for real in subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from dentalpin.app import create_app
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.test_cli import Cli, Result, rows, scalar


class IdentityCli(Cli):
    def feed(self, stdin: str, *args: str, code: int = 0) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "dentalpin", *args],
            env=self.env,
            cwd=self.cwd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        result = Result(args, proc.returncode, proc.stdout, proc.stderr)
        assert result.code == code, f"{args} exited {result.code}:\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        return result


@pytest.fixture
def cli(fresh_platform: Platform, tmp_path: Path) -> IdentityCli:
    work = tmp_path / "cwd"
    work.mkdir()
    return IdentityCli(fresh_platform, work)


async def test_users_members_operators_and_login(fresh_platform: Platform, cli: IdentityCli):
    tenant = await create_tenant(fresh_platform, unique_slug("cli-id"), modules=["recall"])
    created = cli.feed(
        "a long enough password\n",
        "users",
        "create",
        "Ana@Example.ES",
        "--name",
        "Ana Pérez",
        "--password-stdin",
        "--json",
    )
    assert created.json()["email"] == "ana@example.es"
    cli.feed(
        "another password!!\n", "users", "create", "ANA@example.es", "--password-stdin", code=1
    )
    assert "already exists" in cli("users", "create", "ana@EXAMPLE.es", code=1).output
    assert "not an e-mail" in cli("users", "create", "not-an-email", code=1).output
    assert (
        "at least 10"
        in cli.feed("short\n", "users", "create", "b@example.es", "--password-stdin", code=1).output
    )

    added = cli(
        "members",
        "add",
        tenant.slug,
        "ana@example.es",
        "--role",
        "receptionist",
        "--location",
        "madrid",
    )
    assert "receptionist" in added.output
    assert (
        "no role 'overlord'"
        in cli("members", "add", tenant.slug, "ana@example.es", "--role", "overlord", code=1).output
    )
    assert (
        "no user"
        in cli(
            "members", "add", tenant.slug, "nobody@example.es", "--role", "dentist", code=1
        ).output
    )
    listed = cli("members", "list", tenant.slug, "--json").json()
    assert listed == [
        {
            "user_id": created.json()["id"],
            "email": "ana@example.es",
            "name": "Ana Pérez",
            "roles": ["receptionist"],
            "location_ids": ["madrid"],
        }
    ]
    roles = {r["name"]: r for r in cli("roles", "list", tenant.slug, "--json").json()}
    assert "recall.reminder.read" in roles["receptionist"]["permissions"]

    transport = httpx.ASGITransport(app=create_app(fresh_platform), client=("10.9.8.7", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        login = await http.post(
            "/api/v1/auth/login",
            json={"email": "ana@example.es", "password": "a long enough password"},
        )
        assert login.status_code == 200, login.text
        cli("operators", "add", "ana@example.es")
        assert await scalar(
            fresh_platform, "select is_operator from platform.users where email = 'ana@example.es'"
        )
        # An operator must pass a second factor now.
        again = await http.post(
            "/api/v1/auth/login",
            json={"email": "ana@example.es", "password": "a long enough password"},
        )
        assert again.status_code == 401 and "mfa" in again.json()["type"]
        cli.feed("a brand new password\n", "users", "set-password", "ana@example.es")
        stale = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": login.json()["refresh_token"]}
        )
        assert stale.status_code == 401  # sessions ended with the password change

    cli("operators", "remove", "ana@example.es")
    cli("members", "remove", tenant.slug, "ana@example.es")
    assert cli("members", "list", tenant.slug, "--json").json() == []
    actions = [
        r.action
        for r in await rows(
            fresh_platform, "select action from platform.audit_log where actor = 'cli' order by id"
        )
    ]
    assert actions[:3] == ["user.created", "membership.added", "operator.granted"]
    assert {"user.password_changed", "operator.revoked", "membership.removed"} <= set(actions)


async def test_keys_rotate_and_list(fresh_platform: Platform, cli: IdentityCli):
    cli("keys", "rotate")
    first = cli("keys", "list", "--json").json()
    cli("keys", "rotate")
    second = cli("keys", "list", "--json").json()
    assert len(second) == len(first) + 1
    assert [k["retired_at"] is None for k in second].count(True) == 1
    assert second[-1]["retired_at"] is None and second[-1]["algorithm"] == "Ed25519"


async def test_resellers_and_clients(fresh_platform: Platform, cli: IdentityCli):
    cli("users", "create", "partner@example.es")
    cli("resellers", "create", "Dental Partners", "--plan", "pro")
    assert "already exists" in cli("resellers", "create", "Dental Partners", code=1).output
    cli("resellers", "add-admin", "Dental Partners", "partner@example.es")
    created = cli(
        "clients",
        "create",
        "Provisioning",
        "--reseller",
        "Dental Partners",
        "--scope",
        "tenants:read",
        "--scope",
        "tenants:write",
        "--json",
    ).json()
    assert created["client_id"].startswith("dpc_") and created["client_secret"]
    plain = cli(
        "clients", "create", "Reports", "--reseller", "Dental Partners", "--scope", "usage:read"
    )
    assert "client_secret:" in plain.stdout and "cannot be shown again" in plain.output
    assert (
        "scopes must be"
        in cli(
            "clients", "create", "Xy", "--reseller", "Dental Partners", "--scope", "root", code=1
        ).output
    )
    assert (
        "no reseller"
        in cli(
            "clients", "create", "Xy", "--reseller", "Nobody", "--scope", "usage:read", code=1
        ).output
    )
    listed = cli("resellers", "list", "--json").json()
    assert [(r["name"], r["plan"], r["admins"], r["clients"]) for r in listed] == [
        ("Dental Partners", "pro", 1, 2)
    ]
    # Only a hash of the secret is stored.
    stored = await scalar(
        fresh_platform,
        "select secret_hash from platform.api_clients where id = :id",
        id=created["client_id"],
    )
    assert stored != created["client_secret"] and len(stored) == 64
    transport = httpx.ASGITransport(app=create_app(fresh_platform), client=("10.9.8.6", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        token = await http.post(
            "/api/v1/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": created["client_id"],
                "client_secret": created["client_secret"],
            },
        )
    assert token.status_code == 200, token.text
    assert token.json()["scope"] == "tenants:read tenants:write"

"""The `dentalpin` command, run for real in subprocesses against a database of its own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from dentalpin.platform import Registry
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import create_tenant, find_tenant, module_heads

JOB_QUEUED = re.compile(r"job ([0-9a-f-]{36}) \(([a-z.]+)\) queued")


@dataclass
class Result:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr with whitespace collapsed (Rich may wrap long lines)."""
        return " ".join(f"{self.stdout}\n{self.stderr}".split())

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def job_id(self) -> uuid.UUID:
        match = JOB_QUEUED.search(self.stdout)
        assert match, self.stdout
        return uuid.UUID(match.group(1))


class Cli:
    def __init__(self, platform: Platform, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {
            **os.environ,
            "DATABASE_URL": platform.settings.database_url or "",
            "DENTALPIN_ROLE_PREFIX": platform.settings.role_prefix,
            "DENTALPIN_DATA_DIR": str(platform.settings.data_dir),
            # No worker runs here: jobs run inside the command (tests/platform/test_workers.py
            # covers the workers).
            "DENTALPIN_JOB_EXECUTOR": "inprocess",
        }

    def __call__(self, *args: str, code: int = 0) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "dentalpin", *args],
            env=self.env,
            cwd=self.cwd,
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
def cli(fresh_platform: Platform, tmp_path: Path) -> Cli:
    work = tmp_path / "cwd"  # no stray .env is read from the repository
    work.mkdir()
    return Cli(fresh_platform, work)


async def scalar(platform: Platform, sql: str, **params: Any) -> Any:
    async with platform.db.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def rows(platform: Platform, sql: str, **params: Any) -> list[Any]:
    async with platform.db.engine.connect() as conn:
        return list(await conn.execute(text(sql), params))


async def states(platform: Platform, slug: str) -> dict[str, str]:
    found = await rows(
        platform,
        "select tm.module, tm.state from platform.tenant_modules tm"
        " join platform.tenants t on t.id = tm.tenant_id"
        " where t.slug = :slug and t.status = 'active'",
        slug=slug,
    )
    return {r.module: r.state for r in found}


def only(found: dict[str, Any], *names: str) -> dict[str, Any]:
    """The entries for `names`: a new clinic also gets every auto-install module."""
    return {n: found[n] for n in names if n in found}


async def schema_of(platform: Platform, slug: str) -> str:
    schema: str = await scalar(
        platform,
        "select schema_name from platform.tenants where slug = :slug and status = 'active'",
        slug=slug,
    )
    return schema


async def people(platform: Platform, slug: str) -> list[str]:
    schema = await schema_of(platform, slug)
    found = await rows(platform, f'select name from "{schema}".people order by id')
    return [r.name for r in found]


async def add_people(platform: Platform, slug: str, *names: str) -> None:
    schema = await schema_of(platform, slug)
    async with platform.db.engine.begin() as conn:
        for name in names:
            await conn.execute(
                text(f"insert into \"{schema}\".people (name, kind) values (:name, 'patient')"),
                {"name": name},
            )


# Migrate, tenants, catalogue -------------------------------------------------------------


async def test_migrate_create_list_show(cli: Cli, fresh_platform: Platform) -> None:
    first = cli("migrate")
    assert "0 tenant(s) behind" in first.output

    created = cli("tenants", "create", "alpha", "--name", "Clínica Alfa", "--modules", "recall")
    assert "created tenant 'alpha'" in created.output

    again = cli("migrate", "--concurrency", "2", "--json").json()
    assert again["behind"] == 0
    assert again["failed"] == {}
    assert again["platform_revision"] == await scalar(
        fresh_platform, "select version_num from platform.alembic_version"
    )

    listed = cli("tenants", "list", "--json").json()
    assert [(t["slug"], t["name"], t["status"]) for t in listed] == [
        ("alpha", "Clínica Alfa", "active")
    ]
    assert listed[0]["schema"].startswith("t_")

    heads = module_heads(fresh_platform)
    shown = cli("tenants", "show", "alpha", "--json").json()
    assert shown["slug"] == "alpha"
    modules = {n: (m["state"], m["revision"]) for n, m in shown["modules"].items()}
    assert only(modules, "fx_people", "patients", "recall") == {
        "fx_people": ("installed", heads["fx_people"]),
        "patients": ("installed", heads["patients"]),  # recall needs it
        "recall": ("installed", heads["recall"]),
    }

    catalogue = {m["name"]: m for m in cli("modules", "list", "--json").json()}
    assert catalogue["fx_people"]["auto_install"] is True
    assert catalogue["recall"]["depends"] == {"patients": ">=1.0"}
    assert catalogue["recall"]["distribution"] == "dentalpin-recall"
    for name in ("fx_people", "fx_visits", "recall"):
        assert catalogue[name]["status"] == "available"
        assert catalogue[name]["head"] == heads[name]
    for name, quarantine in Registry.discover().quarantined.items():
        assert catalogue[name]["status"] == "quarantined"
        assert catalogue[name]["reason"] == quarantine.reason

    for_tenant = {
        m["name"]: m for m in cli("modules", "list", "--tenant", "alpha", "--json").json()
    }
    assert for_tenant["fx_people"]["tenant_state"] == "installed"
    assert for_tenant["recall"]["tenant_state"] == "installed"
    assert for_tenant["fx_visits"]["tenant_state"] == "absent"

    missing = cli("tenants", "show", "alpah", code=1)
    assert "No tenant with slug 'alpah'. Did you mean 'alpha'?" in missing.output


# Module lifecycle and jobs ---------------------------------------------------------------


async def test_module_lifecycle_and_jobs(cli: Cli, fresh_platform: Platform) -> None:
    p = fresh_platform
    await create_tenant(p, "beta")
    await add_people(p, "beta", "Ana", "Luis")

    installed = cli("modules", "install", "beta", "fx_visits")
    assert "lifecycle.install succeeded" in installed.output
    assert only(await states(p, "beta"), "fx_people", "fx_visits") == {
        "fx_people": "installed",
        "fx_visits": "installed",
    }
    install_job = installed.job_id
    assert await scalar(p, "select result from platform.jobs where id = :id", id=install_job) == {
        "installed": ["fx_visits"]  # fx_people was there already: nothing extra
    }
    cli("modules", "install", "beta", "recall")

    plan = cli("modules", "uninstall", "beta", "fx_people", "--cascade", "--dry-run")
    assert "nothing changed" in plan.output
    assert "uninstall fx_visits → fx_people" in plan.output  # dependents first
    assert "people (3 rows)" in plan.output
    assert await people(p, "beta") == ["Front desk", "Ana", "Luis"]
    assert set((await states(p, "beta")).values()) == {"installed"}
    jobs_before = await scalar(p, "select count(*) from platform.jobs")
    assert jobs_before == 2  # a dry run submits no job

    refused = cli("modules", "uninstall", "beta", "fx_people", code=1)
    assert "installed modules depend on 'fx_people': " in refused.output
    assert "fx_visits" in refused.output
    assert "recall" not in refused.output  # recall depends on patients, not fx_people
    assert "--cascade" in refused.output
    assert await people(p, "beta") == ["Front desk", "Ana", "Luis"]

    cascade = cli("modules", "uninstall", "beta", "fx_people", "--cascade")
    assert "lifecycle.uninstall succeeded" in cascade.output
    assert only(await states(p, "beta"), "fx_people", "fx_visits", "recall") == {
        "fx_people": "uninstalled",
        "fx_visits": "uninstalled",
        "recall": "installed",
    }
    schema = await schema_of(p, "beta")
    assert await scalar(p, "select to_regclass(:t)", t=f"{schema}.people") is None
    uninstall_job = cascade.job_id
    result = await scalar(p, "select result from platform.jobs where id = :id", id=uninstall_job)
    archives = result["archives"]
    assert set(archives) == {"fx_people", "fx_visits"}

    restored = cli("modules", "restore", "beta", "fx_people")
    assert "lifecycle.restore succeeded" in restored.output
    assert await people(p, "beta") == ["Front desk", "Ana", "Luis"]

    cli("modules", "restore", "beta", "fx_visits", "--backup", archives["fx_visits"])
    assert (await states(p, "beta"))["fx_visits"] == "installed"
    assert await scalar(
        p,
        "select restored_at is not null from platform.archives where id = :id",
        id=archives["fx_visits"],
    )
    bad_backup = cli("modules", "restore", "beta", "recall", "--backup", "nope", code=1)
    assert "'nope' is not an archive id" in bad_backup.output

    jobs = cli("jobs", "list", "--json").json()
    assert [j["kind"] for j in jobs] == [
        "lifecycle.restore",
        "lifecycle.restore",
        "lifecycle.uninstall",
        "lifecycle.uninstall",
        "lifecycle.install",
        "lifecycle.install",
    ]
    assert [j["state"] for j in jobs] == [
        "succeeded",
        "succeeded",
        "succeeded",
        "failed",
        "succeeded",
        "succeeded",
    ]
    assert "installed modules depend on 'fx_people'" in jobs[3]["error"]

    shown = cli("jobs", "show", str(uninstall_job), "--json").json()
    assert shown["state"] == "succeeded"
    assert shown["progress"] == 1.0
    messages = [line["message"] for line in shown["log"]]
    assert any(m.startswith("uninstalled fx_people; archive ") for m in messages), messages
    assert all({"at", "level", "message"} <= line.keys() for line in shown["log"])

    text_view = cli("jobs", "show", str(uninstall_job))
    assert "uninstalled fx_visits; archive" in text_view.output
    unknown = cli("jobs", "show", str(uuid.UUID(int=0)), code=1)
    assert f"no job with id {uuid.UUID(int=0)}" in unknown.output


# Tenant archive and restore --------------------------------------------------------------


async def test_archive_and_restore_a_tenant(cli: Cli, fresh_platform: Platform) -> None:
    p = fresh_platform
    await create_tenant(p, "gamma", "Gamma Dental", ["recall"])
    await add_people(p, "gamma", "Marta")
    old_schema = await schema_of(p, "gamma")

    archived = cli("tenants", "archive", "gamma", "--yes")
    assert "tenant.archive succeeded" in archived.output
    assert await scalar(p, "select to_regnamespace(:s)", s=old_schema) is None

    listed = cli("tenants", "list", "--archived", "--json").json()
    assert [(t["slug"], t["status"]) for t in listed] == [("gamma", "archived")]
    archive_id = listed[0]["archive_id"]
    job_result = await scalar(
        p, "select result from platform.jobs where id = :id", id=archived.job_id
    )
    assert job_result["archive_id"] == archive_id
    assert job_result["tables"]["people"] == 2

    restored = cli("tenants", "restore", archive_id)
    assert "restored tenant 'gamma'" in restored.output
    assert await people(p, "gamma") == ["Front desk", "Marta"]
    assert only(await states(p, "gamma"), "fx_people", "patients", "recall") == {
        "fx_people": "installed",
        "patients": "installed",
        "recall": "installed",
    }
    shown = cli("tenants", "show", "gamma", "--json").json()
    assert shown["status"] == "active"
    assert shown["schema"] != old_schema

    twice = cli("tenants", "restore", archive_id, code=1)
    assert "tenant 'gamma' is active, not archived" in twice.output


# Hostile and mistaken input --------------------------------------------------------------


async def test_bad_input_is_refused_clearly_and_creates_nothing(
    cli: Cli, fresh_platform: Platform
) -> None:
    p = fresh_platform
    await create_tenant(p, "taken")
    refused = {
        "x'; drop table--": "is not a valid tenant slug",
        "../etc": "is not a valid tenant slug",
        "admin": "'admin' is reserved by the platform",
        "a" * 41: "is not a valid tenant slug",
        "[/red]": "is not a valid tenant slug",  # Rich markup in the input is shown, not parsed
        "taken": "a tenant with slug 'taken' already exists",
    }
    for slug, message in refused.items():
        result = cli("tenants", "create", slug, code=1)
        assert result.stderr.lstrip().startswith("error: ") or "\nerror: " in result.stderr
        assert message in result.output, result.output

    typo = cli("tenants", "create", "delta", "--modules", "recal", code=1)
    assert "No module named 'recal' is available. Did you mean 'recall'?" in typo.output
    install_typo = cli("modules", "install", "taken", "fx_visit", code=1)
    assert "Did you mean 'fx_visits'?" in install_typo.output

    assert await scalar(p, "select array_agg(slug) from platform.tenants") == ["taken"]
    assert await scalar(p, "select count(*) from platform.jobs") == 0
    schemas = await scalar(
        p, "select count(*) from pg_namespace where nspname like 't\\_%' escape '\\'"
    )
    assert schemas == 1
    roles = await scalar(
        p,
        "select count(*) from pg_roles where rolname like :prefix",
        prefix=f"{p.settings.role_prefix}%",
    )
    assert roles == 1

    # A name is data: markup-like text is stored and printed literally.
    cli("tenants", "create", "epsilon", "--name", "[/b] [red]Odonto")
    assert "[/b] [red]Odonto" in cli("tenants", "list").output


async def test_tenant_whose_schema_was_dropped_behind_the_platform(
    cli: Cli, fresh_platform: Platform
) -> None:
    p = fresh_platform
    await create_tenant(p, "zeta")
    schema = await schema_of(p, "zeta")
    async with p.db.engine.begin() as conn:
        await conn.execute(text(f'drop schema "{schema}" cascade'))

    install = cli("modules", "install", "zeta", "fx_visits", code=1)
    assert f"the schema {schema} of tenant 'zeta' does not exist" in install.output
    assert "dropped outside the platform" in install.output
    plan = cli("modules", "uninstall", "zeta", "fx_people", "--dry-run", code=1)
    assert "does not exist" in plan.output
    assert only(await states(p, "zeta"), "fx_people", "fx_visits") == {
        "fx_people": "installed"
    }  # nothing pretended


async def test_demo_clinic_comes_with_a_working_login(cli: Cli, fresh_platform: Platform) -> None:
    import httpx

    from dentalpin.app import create_app

    first = cli("demo")
    assert "created demo clinic 'demo'" in first.stdout
    assert "recepcion@demo.dentalpin.test" in first.stdout
    # Every installed module added its sample data, dependencies first.
    assert "locations demo: 2 locations" in first.stdout
    assert "patients demo: 300 patients" in first.stdout
    assert "agenda demo: 5 professionals" in first.stdout  # one per cabinet, a week booked
    assert "odontogram demo:" in first.stdout and "treatment plans demo: 24 plans" in first.stdout
    async with fresh_platform.db.engine.connect() as conn:
        demo = await find_tenant(conn, "demo")
    async with fresh_platform.db.tenant(demo.scope) as s:
        counts = (
            await s.execute(
                text(
                    "select (select count(*) from locations_locations),"
                    " (select count(*) from locations_cabinets),"
                    " (select count(*) from catalog_items),"
                    " (select count(*) from patients_patients),"
                    " (select count(*) from patients_patients where guardian_patient_id is not null)"
                )
            )
        ).one()
    assert tuple(counts) == (2, 5, 25, 300, 40)
    assert "already exists" in cli("demo").stdout  # idempotent: `up` runs it every time

    transport = httpx.ASGITransport(app=create_app(fresh_platform))
    async with httpx.AsyncClient(transport=transport, base_url="http://demo.localhost") as http:
        login = await http.post(
            "/api/v1/auth/login",
            json={
                "email": "recepcion@demo.dentalpin.test",
                "password": "demo-password-123",
                "tenant": "demo",
            },
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        listed = await http.get(
            "/api/v1/fx_people/people", headers={"Authorization": f"Bearer {token}"}
        )
    assert listed.status_code == 200
    assert [p["name"] for p in listed.json()] == ["Front desk"]


async def test_spare_schemas_are_filled_claimed_and_hidden(
    cli: Cli, fresh_platform: Platform
) -> None:
    assert cli("tenants", "spares", "--json").json() == {
        "ready": 0,
        "total": 0,
        "target": 0,
        "created": 0,
    }
    cli.env["DENTALPIN_SPARE_SCHEMAS"] = "2"
    filled = cli("tenants", "spares", "--fill", "0", "--json").json()
    assert filled == {"ready": 2, "total": 2, "target": 2, "created": 2}
    assert cli("tenants", "list", "--json").json() == []
    already = cli("tenants", "spares", "--fill", "1").output
    assert "created 0 spare schema(s)" in already and "2 spare schema(s) ready" in already
    cli("tenants", "create", "gamma")
    assert await people(fresh_platform, "gamma") == ["Front desk"]
    assert cli("tenants", "spares", "--json").json()["ready"] == 1
    assert [t["slug"] for t in cli("tenants", "list", "--json").json()] == ["gamma"]


def test_up_announces_itself_only_once_the_web_process_answers(tmp_path):
    """`_supervise` calls `ready`'s callback the first time its URL answers 200, and
    never while nothing listens."""
    import socket

    from dentalpin.cli import _supervise

    before = signal.getsignal(signal.SIGINT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = (
        "import http.server, time\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "time.sleep(1.5)\n"  # slow to listen, like uvicorn importing the app
        f"s = http.server.HTTPServer(('127.0.0.1', {port}), H)\n"
        "s.timeout = 0.2\n"
        "end = time.time() + 3\n"
        "while time.time() < end: s.handle_request()\n"
    )
    announced: list[float] = []
    started = time.monotonic()
    _supervise(
        {"web": [sys.executable, "-c", server]},
        dict(os.environ),
        ready=(f"http://127.0.0.1:{port}/readyz", lambda: announced.append(time.monotonic())),
    )
    assert len(announced) == 1 and announced[0] - started >= 1.5

    silent: list[float] = []
    _supervise(
        {"web": [sys.executable, "-c", "import time; time.sleep(1.5)"]},
        dict(os.environ),
        ready=(f"http://127.0.0.1:{port}/readyz", lambda: silent.append(1.0)),
    )
    assert silent == []
    # The handlers it installed for Ctrl-C and SIGTERM are the caller's again.
    assert signal.getsignal(signal.SIGINT) is before

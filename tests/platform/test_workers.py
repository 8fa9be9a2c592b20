"""Lifecycle jobs on real `celery worker` processes, real PostgreSQL and real Redis.

One worker (prefork, two children) serves the tests of this module, against a platform
database of its own. Its Redis keys carry a prefix unique to this fixture
(`DENTALPIN_CELERY_KEY_PREFIX`, kombu's `global_keyprefix`): queues, unacked messages and
bindings of parallel test workers, or of another test run on the same Redis, never
meet, whatever Redis database number they use.

The module under test is `fx_stall` (tests/fixtures/dentalpin-worker-fixtures, installed
like any third-party module so the worker discovers it too): with its per-tenant setting
`hold_until`, its uninstall hook waits for a file, which lets a test catch the worker in
the middle of an uninstall job, with the dependent module already archived.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text, update

import tests.conftest as fixtures
from dentalpin.platform._celery import celery_app
from dentalpin.platform._jobs import (
    JobRecord,
    executor_of,
    get_job,
    job_log_lines,
    reap_jobs,
    run_job,
    submit,
)
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import tenant_modules
from dentalpin.platform._workers import REAP_TASK, CeleryExecutor, worker_platform
from dentalpin.tenants import (
    TenantRecord,
    create_tenant,
    module_states,
    upgrade_fleet,
    upgrade_fleet_on_workers,
)
from dentalpin.tenants._archive import archive_key, read_archive
from tests.conftest import unique_slug
from tests.platform.processes import Process, terminate_backends
from tests.tenants.factory import build_module, platform_with

HEARTBEAT_S = 0.2
STALE_S = 2.0


class Worker(Process):
    """A `celery worker` subprocess for one platform, with its log in a file."""

    def __init__(self, platform: Platform, prefix: str, workdir: Path, concurrency: int = 2):
        env = {
            **os.environ,
            "DATABASE_URL": platform.settings.database_url or "",
            "REDIS_URL": platform.settings.redis_url or "",
            "DENTALPIN_ROLE_PREFIX": platform.settings.role_prefix,
            "DENTALPIN_DATA_DIR": str(platform.settings.data_dir),
            "DENTALPIN_ENVIRONMENT": "test",
            "DENTALPIN_JOB_EXECUTOR": "celery",
            "DENTALPIN_CELERY_KEY_PREFIX": prefix,
            "DENTALPIN_JOB_HEARTBEAT_EVERY_S": str(HEARTBEAT_S),
            "DENTALPIN_JOB_HEARTBEAT_STALE_S": str(STALE_S),
            "DENTALPIN_LIFECYCLE_LOCK_WAIT_S": "5",
        }
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dentalpin.platform._celery:app",
            "worker",
            "-Q",
            "lifecycle,periodic",
            "-c",
            str(concurrency),
            "--pool",
            "prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"test-{prefix.strip(':')}@%h",
            "--loglevel=INFO",
        ]
        super().__init__("worker", command, env, workdir)


class Rig:
    """The platform the tests drive and the worker that runs its jobs."""

    def __init__(self, platform: Platform, worker: Worker, tmp: Path) -> None:
        self.platform = platform
        self.worker = worker
        self.tmp = tmp

    async def tenant_with_stall(self, notes: int = 3) -> TenantRecord:
        tenant = await create_tenant(
            self.platform, unique_slug("stall"), modules=["fx_stall", "fx_stall_notes"]
        )
        async with self.platform.db.tenant(tenant.scope) as s:
            await s.execute(text("insert into stall_items (label) values ('chair'), ('lamp')"))
            for n in range(notes):
                await s.execute(
                    text("insert into stall_notes (item_id, body) values (1, :b)"), {"b": f"n{n}"}
                )
        return tenant

    async def hold(self, tenant: TenantRecord) -> tuple[Path, Path]:
        """Make fx_stall's uninstall hook wait for `gate`; it writes `entered` on arrival."""
        gate, entered = self.tmp / f"gate-{tenant.slug}", self.tmp / f"entered-{tenant.slug}"
        async with self.platform.db.engine.begin() as conn:
            await conn.execute(
                update(tenant_modules)
                .where(
                    tenant_modules.c.tenant_id == tenant.id, tenant_modules.c.module == "fx_stall"
                )
                .values(settings={"hold_until": str(gate), "entered": str(entered)})
            )
        return gate, entered

    async def wait(self, job_id: uuid.UUID, within: float = 60) -> JobRecord:
        try:
            return await asyncio.wait_for(
                executor_of(self.platform).wait(self.platform, job_id), within
            )
        except TimeoutError:
            pytest.fail(f"job {job_id} did not finish:\n{self.worker.output()[-4000:]}")

    async def until(self, check: Any, what: str, within: float = 60) -> None:
        """Poll `check()` (plain or async) until it is true."""
        deadline = time.monotonic() + within
        while not await _value(check()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.worker.output()[-4000:]}")
            await asyncio.sleep(0.05)

    async def states(self, tenant: TenantRecord) -> dict[str, str]:
        """The fixture modules' states (the built-in auto-install modules every tenant gets
        are not what these tests move)."""
        async with self.platform.db.engine.connect() as conn:
            states = await module_states(conn, tenant.id)
        return {n: s["state"] for n, s in states.items() if n.startswith("fx_")}

    async def rows(self, tenant: TenantRecord, table: str) -> list[Any]:
        async with self.platform.db.tenant(tenant.scope) as s:
            return list(await s.execute(text(f"select * from {table} order by id")))

    async def archives(self, tenant: TenantRecord) -> dict[str, Any]:
        async with self.platform.db.engine.connect() as conn:
            rows = await conn.execute(
                text("select * from platform.archives where tenant_id = :t"), {"t": tenant.id}
            )
            return {r.module: r for r in rows}

    async def open_worker_transactions(self) -> int:
        async with self.platform.db.engine.connect() as conn:
            return (
                await conn.execute(
                    text(
                        "select count(*) from pg_stat_activity where datname = current_database()"
                        " and application_name = 'dentalpin-worker' and backend_xid is not null"
                    )
                )
            ).scalar_one()


def _pid(job: JobRecord) -> int:
    assert job.worker, job
    return int(job.worker.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
async def rig(
    databases: fixtures.TestDatabases, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("workers")
    platform = await fixtures.make_platform(databases, tmp / "data")
    prefix = f"dptest-{secrets.token_hex(4)}:"
    platform.settings = platform.settings.model_copy(
        update={
            "job_executor": "celery",
            "celery_key_prefix": prefix,
            "job_heartbeat_every_s": HEARTBEAT_S,
            "job_heartbeat_stale_s": STALE_S,
            "job_resend_after_s": 3600.0,
        }
    )
    worker = Worker(platform, prefix, tmp)
    worker.start("ready.")
    try:
        yield Rig(platform, worker, tmp)
    finally:
        worker.stop()
        if os.environ.get("DENTALPIN_TEST_SHOW_WORKER_LOG"):
            print(worker.output())
        await platform.close()
        _purge(platform)


def _purge(platform: Platform) -> None:
    """Leave nothing of this run in the shared Redis: only keys under our prefix."""
    client = redis.Redis.from_url(platform.settings.redis_url or "")
    try:
        for key in client.scan_iter(match=f"{platform.settings.celery_key_prefix}*"):
            client.delete(key)
    finally:
        client.close()


# -------------------------------------------------------------------------------------------


async def test_install_uninstall_restore_run_on_the_worker_with_visible_progress(rig: Rig):
    p = rig.platform
    assert isinstance(executor_of(p), CeleryExecutor)
    tenant = await create_tenant(p, unique_slug("work"))
    job = await submit(p, "lifecycle.install", tenant.id, {"modules": ["fx_stall_notes"]})
    done = await rig.wait(job.id)
    assert done.state == "succeeded", done.error
    assert done.result == {"installed": ["fx_stall", "fx_stall_notes"]}
    assert _pid(done) != os.getpid() and done.attempts == 1
    async with p.db.tenant(tenant.scope) as s:
        await s.execute(text("insert into stall_items (label) values ('chair')"))
        await s.execute(text("insert into stall_notes (item_id, body) values (1, 'wobbly')"))

    gate, entered = await rig.hold(tenant)
    job = await submit(p, "lifecycle.uninstall", tenant.id, {"module": "fx_stall", "cascade": True})
    await rig.until(entered.exists, "the uninstall to reach fx_stall's hook")
    # While the job's transaction is open: progress, message and log are readable.
    running = await get_job(p, job.id)
    assert running.state == "running" and running.progress == 0.5
    assert running.message == "uninstalled fx_stall_notes"
    lines = [line["message"] for line in await job_log_lines(p, job.id)]
    assert any(m.startswith("uninstalled fx_stall_notes; archive") for m in lines), lines
    assert any("holding the uninstall" in m for m in lines), lines
    assert await rig.states(tenant) == {
        "fx_people": "installed",
        "fx_stall": "uninstalling",
        "fx_stall_notes": "uninstalling",
    }
    gate.touch()
    done = await rig.wait(job.id)
    assert done.state == "succeeded", done.error
    assert await rig.states(tenant) == {
        "fx_people": "installed",
        "fx_stall": "uninstalled",
        "fx_stall_notes": "uninstalled",
    }

    job = await submit(p, "lifecycle.restore", tenant.id, {"module": "fx_stall_notes"})
    done = await rig.wait(job.id)
    assert done.state == "succeeded", done.error
    assert [r.body for r in await rig.rows(tenant, "stall_notes")] == ["wobbly"]
    assert [r.label for r in await rig.rows(tenant, "stall_items")] == ["chair"]


async def test_a_worker_killed_mid_uninstall_is_reaped_and_the_job_finishes_on_another(rig: Rig):
    p = rig.platform
    tenant = await rig.tenant_with_stall(notes=3)
    items, notes = await rig.rows(tenant, "stall_items"), await rig.rows(tenant, "stall_notes")
    gate, entered = await rig.hold(tenant)
    job = await submit(p, "lifecycle.uninstall", tenant.id, {"module": "fx_stall", "cascade": True})
    await rig.until(entered.exists, "the uninstall to reach fx_stall's hook")
    running = await get_job(p, job.id)
    # fx_stall_notes is already archived: its file is on disk, recorded on the job row.
    orphan = Path(running.result["files_written"][0])
    assert orphan.exists() and orphan.name.startswith("fx_stall_notes-")
    victim = _pid(running)

    os.kill(victim, signal.SIGKILL)
    await rig.until(
        lambda: _zero(rig.open_worker_transactions()), "the killed worker's transaction to end"
    )
    # Untouched: the transaction died with the process; only the 'uninstalling' marks show,
    # and the next operation heals them. No archive was recorded.
    assert await rig.rows(tenant, "stall_items") == items
    assert await rig.rows(tenant, "stall_notes") == notes
    assert await rig.archives(tenant) == {}
    assert (await get_job(p, job.id)).state == "running"  # nothing has noticed yet

    gate.touch()  # the next attempt goes through
    await asyncio.sleep(STALE_S + 0.5)
    # The reaper as beat runs it: a task on the periodic queue, executed by the worker.
    await asyncio.to_thread(celery_app(p.settings).send_task, REAP_TASK)
    done = await rig.wait(job.id)
    assert done.state == "succeeded", done.error
    assert done.attempts == 2 and _pid(done) != victim
    assert "files_written" not in (done.result or {})

    # Fully uninstalled, archives intact and holding exactly the rows that were there.
    assert await rig.states(tenant) == {
        "fx_people": "installed",
        "fx_stall": "uninstalled",
        "fx_stall_notes": "uninstalled",
    }
    recorded = await rig.archives(tenant)
    assert set(recorded) == {"fx_stall", "fx_stall_notes"}
    key = archive_key(p.settings)
    _, tables, _ = read_archive(
        Path(recorded["fx_stall_notes"].path), recorded["fx_stall_notes"].sha256, key
    )
    assert [t.rows for t in tables] == [3]
    _, tables, _ = read_archive(Path(recorded["fx_stall"].path), recorded["fx_stall"].sha256, key)
    assert [t.rows for t in tables] == [2]
    # The dead attempt's file is gone; only the committed archives remain.
    assert not orphan.exists()
    on_disk = sorted(f.name for f in orphan.parent.iterdir())
    assert on_disk == sorted(Path(r.path).name for r in recorded.values())
    lines = [line["message"] for line in await job_log_lines(p, job.id)]
    assert any("re-queued for attempt 2 of 3" in m for m in lines), lines
    assert any(f"removed {orphan}" in m for m in lines), lines


async def _value(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _zero(count: Any) -> bool:
    return await count == 0


async def test_database_connections_dropped_under_a_worker(rig: Rig):
    p = rig.platform
    tenant = await rig.tenant_with_stall(notes=1)
    gate, entered = await rig.hold(tenant)
    job = await submit(p, "lifecycle.uninstall", tenant.id, {"module": "fx_stall", "cascade": True})
    await rig.until(entered.exists, "the uninstall to reach fx_stall's hook")
    killed = await terminate_backends(p, "dentalpin-worker")
    assert killed >= 2  # the operation's connection and the job recorder's at least
    gate.touch()
    done = await rig.wait(job.id)
    # Same attempt: the recorder reconnected, the operation ran again in a new transaction.
    assert done.state == "succeeded", done.error
    assert done.attempts == 1
    lines = [line["message"] for line in await job_log_lines(p, job.id)]
    assert any("lost the database connection; retrying" in m for m in lines), lines
    assert set(await rig.archives(tenant)) == {"fx_stall", "fx_stall_notes"}

    # The worker's pool serves the next job with fresh connections.
    job = await submit(p, "lifecycle.install", tenant.id, {"modules": ["fx_stall"]})
    assert (await rig.wait(job.id)).state == "succeeded"


async def test_a_job_sent_twice_runs_once(rig: Rig):
    p = rig.platform
    tenant = await create_tenant(p, unique_slug("twice"))
    job = await submit(p, "lifecycle.install", tenant.id, {"modules": ["fx_stall"]})
    for _ in range(3):  # duplicates, as a broker redelivery or a reaper re-send would make
        await CeleryExecutor().submit(p, job)
    done = await rig.wait(job.id)
    assert done.state == "succeeded", done.error
    assert done.attempts == 1
    lines = [line["message"] for line in await job_log_lines(p, job.id)]
    assert sum(m.startswith("installing fx_stall") for m in lines) == 1, lines
    await rig.until(
        lambda: rig.worker.output().count(f"job {job.id} is not queued") >= 3,
        "the duplicates to be delivered and refused",
    )


async def test_beats_mail_retry_task_sends_the_queue_on_a_worker(rig: Rig):
    """The task beat schedules (`dentalpin.mail.retry`), run by a real worker: a queued
    message goes (no SMTP host here: into the worker's mail folder) and its body is erased."""
    from dentalpin.platform._celery import MAIL_RETRY_TASK
    from dentalpin.platform._mail_queue import enqueue
    from tests.platform.test_mail import sample

    p = rig.platform
    to = f"queued-{secrets.token_hex(3)}@example.es"
    async with p.db.engine.begin() as conn:
        queued = await enqueue(conn, p.settings, sample(to))
    celery_app(p.settings).send_task(MAIL_RETRY_TASK, queue="periodic")

    async def sent() -> bool:
        async with p.db.engine.connect() as conn:
            state = await conn.scalar(
                text("select state from platform.mail_queue where id = :id"), {"id": queued}
            )
        return state == "sent"

    await rig.until(sent, "the worker to send the queued message")
    folder = p.settings.data_dir / "mail"
    assert any(to in path.read_text() for path in folder.glob("*.eml"))
    async with p.db.engine.connect() as conn:
        sealed = await conn.scalar(
            text("select sealed from platform.mail_queue where id = :id"), {"id": queued}
        )
    assert sealed is None


# Without a worker: the claim and the reaper's rules, in this process ------------------------


async def test_two_concurrent_claims_run_a_job_once(platform: Platform):
    tenant = await create_tenant(platform, unique_slug("claim"))
    job = await submit(
        platform, "lifecycle.install", tenant.id, {"modules": ["fx_stall"]}, executor=_Nowhere()
    )
    first, second = await asyncio.gather(run_job(platform, job.id), run_job(platform, job.id))
    # The loser of the claim returns at once with the job as it found it: taken.
    assert sorted([first.state, second.state]) == ["running", "succeeded"]
    assert (await get_job(platform, job.id)).attempts == 1
    lines = [line["message"] for line in await job_log_lines(platform, job.id)]
    assert sum(m.startswith("installing fx_stall") for m in lines) == 1, lines


class _Nowhere:
    """An executor that accepts jobs and runs none (the test runs them)."""

    async def submit(self, platform: Platform, job: JobRecord) -> None:
        return None

    async def wait(self, platform: Platform, job_id: uuid.UUID) -> JobRecord:
        return await get_job(platform, job_id)


async def test_the_reaper_requeues_dead_jobs_then_gives_up(fresh_platform: Platform):
    platform = fresh_platform  # the reaper looks at every job of the database
    tenant = await create_tenant(platform, unique_slug("reap"))
    nowhere = _Nowhere()
    job = await submit(
        platform, "lifecycle.install", tenant.id, {"modules": ["fx_stall"]}, executor=nowhere
    )
    stale = platform.settings.job_heartbeat_stale_s + 5
    attempts = platform.settings.job_max_attempts

    async def die_running(n: int) -> None:
        async with platform.db.engine.begin() as conn:
            await conn.execute(
                text(
                    "update platform.jobs set state = 'running', attempts = :n, worker = 'gone:1',"
                    " heartbeat_at = now() - make_interval(secs => :s) where id = :id"
                ),
                {"n": n, "s": stale, "id": job.id},
            )

    for n in range(1, attempts):
        await die_running(n)
        report = await reap_jobs(platform, nowhere)
        assert [j.id for j in report.requeued] == [job.id]
        assert (await get_job(platform, job.id)).state == "queued"
        assert (await reap_jobs(platform, nowhere)).requeued == []  # acted on once
    await die_running(attempts)
    report = await reap_jobs(platform, nowhere)
    assert [j.id for j in report.failed] == [job.id]
    final = await get_job(platform, job.id)
    assert final.state == "failed" and f"gave up after {attempts} attempt(s)" in final.error
    # A queued job nobody took for too long is sent again.
    other = await submit(
        platform, "lifecycle.install", tenant.id, {"modules": ["fx_stall"]}, executor=nowhere
    )
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            text("update platform.jobs set heartbeat_at = now() - interval '1 day' where id = :id"),
            {"id": other.id},
        )
    assert [j.id for j in (await reap_jobs(platform, nowhere)).resent] == [other.id]
    await run_job(platform, other.id)


# Fleet upgrade through the workers, and the CLI -----------------------------------------


async def _make_behind(rig: Rig, tenants: list[TenantRecord]) -> None:
    """Record an older fx_stall version for these tenants: the fleet upgrade picks them up."""
    async with rig.platform.db.engine.begin() as conn:
        await conn.execute(
            update(tenant_modules)
            .where(
                tenant_modules.c.tenant_id.in_([t.id for t in tenants]),
                tenant_modules.c.module == "fx_stall",
            )
            .values(version="0.9.0")
        )


async def test_fleet_upgrade_fans_out_to_the_workers_like_the_in_process_path(rig: Rig):
    p = rig.platform
    tenants = [await create_tenant(p, unique_slug("fleet"), modules=["fx_stall"]) for _ in range(4)]
    broken = tenants[1]
    async with p.db.engine.begin() as conn:
        await conn.execute(text(f'drop schema "{broken.schema_name}" cascade'))
    try:
        reports = {}
        for path, fleet in (("workers", upgrade_fleet_on_workers), ("here", upgrade_fleet)):
            await _make_behind(rig, tenants)
            seen: list[tuple[str, str | None]] = []
            reports[path] = await fleet(p, 2, lambda s, e, seen=seen: seen.append((s, e)))
            assert len(seen) == 4
        on_workers, here = reports["workers"], reports["here"]
        assert sorted(on_workers.upgraded) == sorted(here.upgraded)
        assert sorted(here.upgraded) == sorted(t.slug for t in tenants if t is not broken)
        assert on_workers.failed == here.failed and list(here.failed) == [broken.slug]
        assert "does not exist" in here.failed[broken.slug]
        async with p.db.engine.connect() as conn:
            errors = await conn.execute(
                text(
                    "select error from platform.tenant_modules"
                    " where tenant_id = :t and module = 'fx_stall'"
                ),
                {"t": broken.id},
            )
            assert "does not exist" in errors.scalars().first()
            kinds = await conn.execute(
                text(
                    "select count(*) from platform.jobs where kind = 'fleet.upgrade'"
                    " and tenant_id = any(:ids)"
                ),
                {"ids": [t.id for t in tenants]},
            )
            assert kinds.scalar_one() == 4  # one job per tenant, on the workers only

        # A worker on other code refuses instead of upgrading to its own heads.
        job = await submit(
            p,
            "fleet.upgrade",
            tenants[0].id,
            {"modules": ["fx_stall"], "code": {"fx_stall": ["fxs_0009", "2.0.0"]}},
        )
        done = await rig.wait(job.id)
        assert done.state == "failed" and "runs other module code" in done.error
    finally:
        async with p.db.engine.begin() as conn:  # out of the other tests' fleet
            await conn.execute(
                text("update platform.tenants set status = 'archived' where id = :t"),
                {"t": broken.id},
            )


async def test_cli_no_wait_migrate_on_workers_and_reap(rig: Rig, tmp_path: Path):
    p = rig.platform

    async def cli(*args: str) -> str:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "dentalpin", *args],
            env=rig.worker.env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout

    tenant = await create_tenant(p, unique_slug("cli"))
    # --no-wait: the job id alone on stdout, at once; the worker runs the job.
    job_id = uuid.UUID(
        (await cli("modules", "install", tenant.slug, "fx_stall", "--no-wait")).strip()
    )
    assert (await rig.wait(job_id)).state == "succeeded"

    await _make_behind(rig, [tenant])
    report = json.loads(await cli("migrate", "--concurrency", "2", "--json"))
    assert report["upgraded"] >= 1 and report["failed"] == {}
    async with p.db.engine.connect() as conn:
        fleet_job = await conn.execute(
            text("select state from platform.jobs where kind = 'fleet.upgrade' and tenant_id = :t"),
            {"t": tenant.id},
        )
        assert fleet_job.scalars().all() == ["succeeded"]

    reaped = json.loads(await cli("jobs", "reap", "--json"))
    assert reaped == {"requeued": [], "failed": [], "resent": [], "unsent": {}, "ran": {}}


async def test_fleet_on_workers_without_a_worker_fails_fast_instead_of_hanging(
    fresh_platform: Platform,
):
    p = fresh_platform
    tenants = [await create_tenant(p, unique_slug("idle"), modules=["fx_stall"]) for _ in range(3)]
    async with p.db.engine.begin() as conn:
        await conn.execute(
            update(tenant_modules)
            .where(tenant_modules.c.module == "fx_stall")
            .values(version="0.9.0")
        )
    report = await upgrade_fleet_on_workers(p, 1, executor=_Nowhere(), claim_within_s=0.3)
    assert report.upgraded == [] and sorted(report.failed) == sorted(t.slug for t in tenants)
    assert all("no worker took the job within 0.3s" in e for e in report.failed.values())
    assert report.seconds < 5
    async with p.db.engine.connect() as conn:
        states = await conn.execute(text("select state from platform.jobs"))
        assert states.scalars().all() == ["failed"]  # the others were never submitted


async def test_worker_sessions_carry_their_timeouts(platform: Platform):
    settings = platform.settings.model_copy(
        update={
            "worker_statement_timeout_ms": 4321,
            "worker_idle_in_transaction_timeout_ms": 8765,
        }
    )
    worker = worker_platform(settings)
    try:
        async with worker.db.autocommit() as conn:
            shown = await conn.execute(
                text(
                    "select current_setting('statement_timeout'),"
                    " current_setting('idle_in_transaction_session_timeout'),"
                    " current_setting('application_name')"
                )
            )
            assert tuple(shown.one()) == ("4321ms", "8765ms", "dentalpin-worker")
    finally:
        await worker.close()


FORK_SCRIPT = """
import os, sys
from sqlalchemy import text
from dentalpin.platform import _celery, _workers

async def backend(platform):
    async with platform.db.autocommit() as conn:
        return (await conn.execute(text("select pg_backend_pid()"))).scalar_one()

parent = _workers.run_in_worker(backend)
child = os.fork()
if child == 0:
    _celery._after_fork()  # what Celery's worker_process_init runs in a prefork child
    mine = _workers.run_in_worker(backend)
    _workers.shutdown()
    os._exit(0 if mine != parent else 3)
_, status = os.waitpid(child, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
# The child neither used nor closed the parent's pooled connection.
assert _workers.run_in_worker(backend) == parent
_workers.shutdown()
print("ok")
"""


async def test_a_forked_worker_process_gets_its_own_connections(platform: Platform):
    env = {
        **os.environ,
        "DATABASE_URL": platform.settings.database_url or "",
        "DENTALPIN_ENVIRONMENT": "test",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", FORK_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


async def test_an_attempt_taken_for_dead_stops_before_committing(platform: Platform, tmp_path):
    slow = build_module(
        tmp_path,
        "sleeper",
        [
            {
                "id": "sl1",
                "upgrade": "op.create_table('sleeper_items', sa.Column('id', sa.Integer, "
                "primary_key=True))",
                "downgrade": "op.drop_table('sleeper_items')",
            }
        ],
        hooks="""
        async def on_install(self, ctx):
            type(self).entered.set()
            await type(self).gate.wait()
    """,
    )
    slow.entered, slow.gate = asyncio.Event(), asyncio.Event()
    p = platform_with(platform, slow)
    p.settings = p.settings.model_copy(update={"job_heartbeat_every_s": 0.05})
    try:
        tenant = await create_tenant(p, unique_slug("fence"))
        job = await submit(p, "lifecycle.install", tenant.id, {"modules": ["sleeper"]})
        await asyncio.wait_for(slow.entered.wait(), 30)
        # What the reaper does to a job it takes for dead: queued again, for another attempt.
        async with p.db.engine.begin() as conn:
            await conn.execute(
                text("update platform.jobs set state = 'queued' where id = :id"), {"id": job.id}
            )
        first = await asyncio.wait_for(executor_of(p).wait(p, job.id), 30)
        assert first.state == "queued" and first.attempts == 1  # it wrote nothing more
        async with p.db.engine.connect() as conn:
            installed = await module_states(conn, tenant.id)
        assert "sleeper" not in installed  # cancelled before its commit
        slow.gate.set()
        second = await run_job(p, job.id)
        assert second.state == "succeeded" and second.attempts == 2, second.error
        lines = [line["message"] for line in await job_log_lines(p, job.id)]
        assert "attempt 1 stopped: the job was given to another attempt" in lines, lines
    finally:
        await p.close()

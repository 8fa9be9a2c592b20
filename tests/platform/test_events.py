"""Events: the outbox, delivery, the inbox, retries, dead letters — in-process, real PostgreSQL.

The publisher and subscriber are `fx_ledger` and `fx_ledger_watch`
(tests/fixtures/dentalpin-worker-fixtures). Test platforms resolve the relay to
`inprocess`: a commit that published starts a delivery pass on the test's own loop, and
`platform.nudge.drain()` waits for it. The same passes on real workers, with the nudge
through Redis, are in test_events_workers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest
from dentalpin_worker_fixtures.fx_ledger import add_entry
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dentalpin.platform import Event, Manifest, Module
from dentalpin.platform._db import Database
from dentalpin.platform._nudge import CeleryNudge, CircuitBreaker, InProcessNudge
from dentalpin.platform._registry import Registry
from dentalpin.platform._relay import (
    backoff_s,
    dead_letters,
    deliver,
    deliver_many,
    pipeline_stats,
    prune,
    retry_dead,
    sweep,
)
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import TenantRecord, create_tenant
from tests.conftest import unique_slug
from tests.tenants.test_lifecycle import run_job


def with_settings(base: Platform, **changes: Any) -> Platform:
    settings = base.settings.model_copy(update=changes)
    return Platform(settings=settings, db=Database(base.db.url, settings), registry=base.registry)


@pytest.fixture
async def events(platform: Platform) -> AsyncIterator[Platform]:
    """The shared platform, with quick retries and few attempts."""
    quick = with_settings(
        platform, events_max_attempts=3, events_backoff_s=0.01, events_backoff_max_s=0.05
    )
    yield quick
    await quick.close()


async def ledger_tenant(platform: Platform, *, watch: bool = True) -> TenantRecord:
    modules = ["fx_ledger", "fx_ledger_watch"] if watch else ["fx_ledger"]
    return await create_tenant(platform, unique_slug("ledger"), modules=modules)


async def add(platform: Platform, tenant: TenantRecord, label: str) -> uuid.UUID:
    async with platform.db.tenant(tenant.scope) as session:
        return await add_entry(session, label)


@contextlib.contextmanager
def nudge_lost(platform: Platform) -> Iterator[None]:
    """Commits inside publish without a nudge, as when the broker lost it."""
    platform.db.on_published = None
    try:
        yield
    finally:
        platform.db.on_published = platform.nudge


async def drain(platform: Platform) -> None:
    assert isinstance(platform.nudge, InProcessNudge)
    await platform.nudge.drain()


async def rows(platform: Platform, tenant: TenantRecord, sql: str, **params: Any) -> list[Any]:
    async with platform.db.tenant(tenant.scope) as session:
        return list(await session.execute(text(sql), params))


async def effects_of(platform: Platform, tenant: TenantRecord, entry: uuid.UUID) -> int:
    found = await rows(
        platform, tenant, "select count(*) from ledger_effects where entry_id = :e", e=entry
    )
    return int(found[0][0])


async def indexed(platform: Platform, tenant: TenantRecord) -> bool:
    async with platform.db.engine.connect() as conn:
        found = await conn.scalar(
            text("select count(*) from platform.event_tenants where tenant_id = :t"),
            {"t": tenant.id},
        )
    return bool(found)


async def test_an_event_exists_only_if_the_publishing_transaction_commits(events):
    tenant = await ledger_tenant(events)
    session = events.db.tenant_session(tenant.scope)
    async with session:
        await add_entry(session, "never")
        await session.rollback()
    assert await rows(events, tenant, "select * from _outbox") == []
    assert not await indexed(events, tenant)

    entry = await add(events, tenant, "kept")
    await drain(events)
    outbox = await rows(events, tenant, "select name, version, payload from _outbox")
    assert [(r.name, r.version, r.payload["entry_id"]) for r in outbox] == [
        ("fx_ledger.entry_added", 1, str(entry))
    ]
    assert await effects_of(events, tenant, entry) == 1
    delivery = await rows(events, tenant, "select subscriber, state, attempts from _deliveries")
    assert [tuple(d) for d in delivery] == [("fx_ledger_watch", "done", 1)]
    # Nothing left to do: the tenant left the sweep's index.
    assert not await indexed(events, tenant)


async def test_a_redelivered_event_changes_nothing_twice(events):
    tenant = await ledger_tenant(events)
    entry = await add(events, tenant, "once")
    await drain(events)
    # As if the worker died after committing but before the broker heard of it.
    await rows(events, tenant, "update _deliveries set state = 'pending' returning id")
    report = await deliver(events, tenant.id)
    assert report.delivered == 1
    assert await effects_of(events, tenant, entry) == 1
    inbox = await rows(events, tenant, "select subscriber from _inbox")
    assert [r.subscriber for r in inbox] == ["fx_ledger_watch"]


async def test_a_lost_worker_costs_an_attempt_and_its_lease_is_taken_over(events):
    tenant = await ledger_tenant(events)
    with nudge_lost(events):  # we play the worker that dies
        entry = await add(events, tenant, "orphan")
    # A first worker fans out and claims, then "dies" (its lease simply runs out).
    await deliver(events, tenant.id, budget_s=0)
    await rows(
        events,
        tenant,
        "update _deliveries set state = 'running', attempts = 1, "
        "lease_until = now() - interval '1 second' returning id",
    )
    await rows(events, tenant, "delete from _inbox returning 1")
    await rows(events, tenant, "delete from ledger_effects returning 1")
    report = await deliver(events, tenant.id)
    assert report.delivered == 1
    state = await rows(events, tenant, "select state, attempts from _deliveries")
    assert [tuple(s) for s in state] == [("done", 2)]
    assert await effects_of(events, tenant, entry) == 1

    # Lost on its last attempt too: dead-lettered as such, never run a fourth time.
    await rows(
        events,
        tenant,
        "update _deliveries set state = 'running', attempts = 3, "
        "lease_until = now() - interval '1 second' returning id",
    )
    await deliver(events, tenant.id)
    state = await rows(events, tenant, "select state, last_error from _deliveries")
    assert state[0].state == "dead" and "worker was lost" in state[0].last_error


async def test_a_failing_subscriber_is_retried_then_dead_lettered_and_replayed_after_a_fix(
    events,
):
    tenant = await ledger_tenant(events)
    entry = await add(events, tenant, "poison pill")
    for _ in range(50):  # retries are due after a few milliseconds of backoff
        await drain(events)
        await deliver(events, tenant.id)
        if (await rows(events, tenant, "select state from _deliveries"))[0].state == "dead":
            break
        await asyncio.sleep(0.02)
    delivery = (await rows(events, tenant, "select * from _deliveries"))[0]
    assert delivery.state == "dead" and delivery.attempts == 3
    assert "cannot process poison pill" in delivery.last_error
    assert await effects_of(events, tenant, entry) == 0

    letters = [d for d in await dead_letters(events) if d["tenant"] == tenant.slug]
    assert [(d["event"], d["subscriber"], d["attempts"]) for d in letters] == [
        ("fx_ledger.entry_added", "fx_ledger_watch", 3)
    ]
    assert (await pipeline_stats(events))["deliveries"]["dead"] >= 1

    # Replaying before the fix fails again; after it, the effect happens exactly once.
    await rows(events, tenant, "insert into ledger_fixes values (:e) returning 1", e=entry)
    assert await retry_dead(events, [letters[0]["id"]]) == [tenant.id]
    assert await indexed(events, tenant)
    await deliver(events, tenant.id)
    await drain(events)  # the replay nudged a pass of its own: either may deliver
    assert await effects_of(events, tenant, entry) == 1
    assert [d for d in await dead_letters(events) if d["tenant"] == tenant.slug] == []
    with pytest.raises(Exception, match="no dead letter with id"):
        await retry_dead(events, [letters[0]["id"]])


async def test_uninstalling_a_subscriber_drops_its_pending_deliveries(events):
    tenant = await ledger_tenant(events)
    with nudge_lost(events):
        await add(events, tenant, "pending")
    await deliver(events, tenant.id, budget_s=0)  # fanned out (and delivered, budget aside)
    await rows(events, tenant, "update _deliveries set state = 'pending' returning 1")
    job = await run_job(events, "lifecycle.uninstall", tenant, module="fx_ledger_watch")
    assert job.state == "succeeded", job.error
    assert await rows(events, tenant, "select * from _deliveries") == []

    # Published while it is not installed: nobody to deliver to, nothing fanned out to it.
    await add(events, tenant, "after")
    await drain(events)
    assert await rows(events, tenant, "select * from _deliveries") == []
    assert [tuple(r) for r in await rows(events, tenant, "select count(*) from _outbox")] == [(2,)]


async def test_events_stay_in_their_tenant(events):
    a, b = await ledger_tenant(events), await ledger_tenant(events)
    entry = await add(events, a, "only a")
    await drain(events)
    assert await effects_of(events, a, entry) == 1
    assert await rows(events, b, "select * from _outbox") == []
    assert await rows(events, b, "select * from ledger_effects") == []
    # B's role cannot even name A's outbox.
    with pytest.raises(DBAPIError, match="permission denied"):
        await rows(events, b, f'select * from "{a.schema_name}"._outbox')
    # Nor touch A's entry in the sweep's index through B's kernel function.
    with pytest.raises(DBAPIError, match="not this tenant"):
        await rows(events, b, "select _reindex_events(:t, null, null) as r", t=a.id)
    # Replaying dead letters of B touches nothing of A.
    assert await retry_dead(events, None, tenant_id=b.id) == []


async def test_the_sweep_reads_only_tenants_that_are_due(events):
    quiet, busy = await ledger_tenant(events), await ledger_tenant(events)
    with nudge_lost(events):
        await add(events, busy, "swept")
    sent: list[uuid.UUID] = []
    # Within the grace period the nudge is trusted; after it, the sweep sends.
    await sweep(events, sent.append)
    assert busy.id not in sent
    async with events.db.engine.begin() as conn:
        await conn.execute(
            text("update platform.event_tenants set due_at = now() where tenant_id = :t"),
            {"t": busy.id},
        )
    await sweep(events, sent.append)
    assert busy.id in sent and quiet.id not in sent
    # Sent once per lease, not once per tick.
    again: list[uuid.UUID] = []
    await sweep(events, again.append)
    assert busy.id not in again
    await deliver(events, busy.id)
    assert not await indexed(events, busy)


def test_a_module_cannot_publish_under_another_modules_name():
    class Stolen(Event):
        event_name: ClassVar[str] = "fx_ledger.entry_removed"

    class Thief(Module):
        manifest = Manifest(
            name="fx_thief",
            version="1.0.0",
            summary="publishes under fx_ledger's name",
            author="t",
            license="MIT",
            category="other",
            core=">=0.1,<1",
        )
        events = (Stolen,)

    registry = Registry.from_classes([Thief])
    assert "fx_thief" not in registry
    reason = registry.quarantined["fx_thief"].reason
    assert "belongs to module 'fx_ledger'" in reason and "fx_thief.entry_removed" in reason


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    delays = [backoff_s(n, 1.0, 30.0) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        capped = min(30.0, 2.0 ** (n - 1))
        assert capped / 2 <= delay <= capped
    assert len({backoff_s(3, 1.0, 30.0) for _ in range(20)}) > 1  # jittered


def test_the_breaker_opens_on_failure_and_closes_after_its_cooldown():
    now = [100.0]
    breaker = CircuitBreaker(10.0, clock=lambda: now[0])
    assert not breaker.open
    breaker.failed()
    assert breaker.open
    now[0] += 9.9
    assert breaker.open
    now[0] += 0.2
    assert not breaker.open


async def test_a_dead_broker_neither_fails_nor_holds_a_commit(platform):
    # A broker address nothing answers (connects hang until the timeout, or fail at once).
    dead = with_settings(
        platform,
        redis_url="redis://10.255.255.1:6379/0",
        events_relay="celery",
        events_nudge_timeout_s=1,
    )
    try:
        assert isinstance(dead.nudge, CeleryNudge)
        tenant = await ledger_tenant(platform)
        started = time.monotonic()
        async with dead.db.tenant(tenant.scope) as session:
            await add_entry(session, "broker down")
        committed_in = time.monotonic() - started
        deadline = time.monotonic() + 10
        while not dead.nudge.breaker.open:
            assert time.monotonic() < deadline, "the nudge never failed"
            await asyncio.sleep(0.02)
        # The commit returned without waiting for the broker's failure...
        assert committed_in < dead.settings.events_nudge_timeout_s
        # ...and while the breaker is open, commits do not even try.
        async with dead.db.tenant(tenant.scope) as session:
            await add_entry(session, "still down")
        assert dead.nudge.in_flight == 0
        # The events are safe in the outbox; a pass delivers them.
        await deliver(platform, tenant.id)
        assert len(await rows(platform, tenant, "select * from ledger_effects")) == 2
    finally:
        await dead.close()


async def test_one_relay_task_delivers_to_several_tenants_side_by_side(events):
    a, b = await ledger_tenant(events), await ledger_tenant(events)
    with nudge_lost(events):
        first, second = await add(events, a, "for a"), await add(events, b, "for b")
        await add(events, b, "for b again")
    reports = await deliver_many(events, [a.schema_name, b.id, "t_nosuchtenant00"])
    assert [r.delivered for r in reports if not isinstance(r, BaseException)] == [1, 2, 0]
    assert await effects_of(events, a, first) == 1 and await effects_of(events, b, second) == 1
    # Each tenant's work stayed in its own schema.
    assert len(await rows(events, a, "select * from ledger_effects")) == 1
    assert len(await rows(events, b, "select * from ledger_effects")) == 2
    assert not await indexed(events, a) and not await indexed(events, b)


async def test_a_relay_task_naming_no_tenant_delivers_nothing_and_touches_nothing(events):
    """The relay splices a task's schema name into its statements (ADR 0020): a name that
    is not a platform-generated schema, or names none, is a pass with nothing to do."""
    tenant = await ledger_tenant(events)
    with nudge_lost(events):
        entry = await add(events, tenant, "waits")
    hostile = [
        f'{tenant.schema_name}"._outbox; delete from "{tenant.schema_name}"._outbox; --',
        tenant.schema_name.upper(),
        tenant.schema_name + "\n",
        "t_nosuchtenant00",
        "platform",
        uuid.uuid4(),
    ]
    for name in hostile:
        report = await deliver(events, name)
        assert (report.fanned_out, report.delivered) == (0, 0), name
    assert len(await rows(events, tenant, "select * from _outbox")) == 1
    assert await effects_of(events, tenant, entry) == 0
    # The tenant's own pass still finds its event.
    assert (await deliver(events, tenant.schema_name)).delivered == 1


@pytest.mark.delivery_failures_expected
async def test_a_failed_in_process_delivery_reaches_the_test_guard(events, monkeypatch):
    """The in-process relay only logs a failed delivery (the publish has committed); the
    test suite's guard (`tests/conftest.py`) collects those lines and fails any test that
    did not expect them. This one does, and checks that the guard would have seen it."""
    import logging

    from tests.conftest import _DeliveryFailures

    tenant = await ledger_tenant(events)

    async def relay_down(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("relay down")

    monkeypatch.setattr("dentalpin.platform._relay.deliver", relay_down)
    guard = _DeliveryFailures()
    logging.getLogger("dentalpin.platform._nudge").addHandler(guard)
    try:
        await add(events, tenant, "published anyway")
        await drain(events)
    finally:
        logging.getLogger("dentalpin.platform._nudge").removeHandler(guard)
    assert guard.failures and "relay down" in guard.failures[0]
    assert len(await rows(events, tenant, "select * from _outbox")) == 1


class Broker:
    """A Celery nudge on a key prefix of its own in the real Redis, which no worker
    consumes: the `events` list shows exactly what was sent."""

    def __init__(self, platform: Platform, **settings: Any) -> None:
        import redis as redis_lib

        self.prefix = f"dpnudge-{uuid.uuid4().hex[:8]}:"
        self.platform = with_settings(
            platform, events_relay="celery", celery_key_prefix=self.prefix, **settings
        )
        assert isinstance(self.platform.nudge, CeleryNudge)
        self.nudge = self.platform.nudge
        self.client = redis_lib.Redis.from_url(platform.settings.redis_url or "")

    async def queued(self, expected: int, settle_s: float = 0.2) -> int:
        """The queue's length once it reached `expected` (or 5 s passed), and a bit more."""
        for _ in range(500):
            if int(self.client.llen(f"{self.prefix}events")) >= expected:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(settle_s)  # time for any extra message to show up
        return int(self.client.llen(f"{self.prefix}events"))

    def sent(self) -> list[list[str]]:
        """The tenants each queued task carries (Celery protocol 2, as kombu stores it)."""
        import base64
        import json

        messages = self.client.lrange(f"{self.prefix}events", 0, -1)
        return [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in messages]

    async def close(self) -> None:
        await self.platform.close()
        for key in self.client.scan_iter(match=f"{self.prefix}*"):
            self.client.delete(key)
        self.client.close()


@contextlib.asynccontextmanager
async def broker(platform: Platform, **settings: Any) -> AsyncIterator[Broker]:
    b = Broker(platform, **settings)
    try:
        yield b
    finally:
        await b.close()


def scopes(name: str, n: int) -> list[Any]:
    from dentalpin.platform._db import TenantScope

    return [TenantScope(f"t_{name}0{i}", "dp_nudge_role") for i in range(n)]


async def test_nudges_for_several_tenants_share_a_task(platform):
    async with broker(platform, events_pass_concurrency=2) as b:
        tenants = scopes("nudgeshare", 3)
        b.nudge(set(tenants))
        await b.queued(2)
        # Three tenants, at most two per task: two tasks carrying all three, none twice.
        assert sorted(len(t) for t in b.sent()) == [1, 2]
        assert sorted(t for task in b.sent() for t in task) == [s.schema for s in tenants]


async def test_a_busy_processs_nudges_wait_a_moment_and_share_a_task(platform):
    """Sends follow each other at most every events_nudge_interval_s: the first nudge
    leaves at once, the ones right behind it wait and go together."""
    async with broker(platform, events_nudge_interval_s=0.5) as b:
        first, *behind = scopes("nudgewait", 3)
        b.nudge({first})
        await b.queued(1, settle_s=0)
        for scope in behind:
            b.nudge({scope})
        await asyncio.sleep(0.1)
        assert await b.queued(1, settle_s=0) == 1  # the others wait for the interval
        await b.queued(2, settle_s=0.1)
        assert sorted(map(sorted, b.sent())) == [[first.schema], [s.schema for s in behind]]


async def test_nudges_for_a_tenant_coalesce_while_its_pass_is_queued(platform):
    from dentalpin.platform._nudge import pending_key

    async with broker(platform) as b:
        (scope,) = scopes("nudgetest", 1)
        for _ in range(5):
            b.nudge({scope})
        assert await b.queued(1) == 1
        for _ in range(5):
            b.nudge({scope})
        assert await b.queued(1) == 1
        # The pass starts and clears the flag: the next commit must be seen again.
        b.client.delete(pending_key(b.platform.settings, scope.schema))
        b.nudge({scope})
        assert await b.queued(2) == 2


async def test_a_failing_handler_in_a_batch_rolls_back_only_its_own_work(events):
    tenant = await ledger_tenant(events)
    with nudge_lost(events):
        async with events.db.tenant(tenant.scope) as session:
            fine = await add_entry(session, "fine")
            await add_entry(session, "poison in the middle")
            also = await add_entry(session, "also fine")
    report = await deliver(events, tenant.id)
    assert (report.fanned_out, report.delivered, report.retried) == (3, 2, 1)
    assert await effects_of(events, tenant, fine) == 1
    assert await effects_of(events, tenant, also) == 1
    states = await rows(events, tenant, "select state, count(*) as n from _deliveries group by 1")
    assert {r.state: r.n for r in states} == {"done": 2, "pending": 1}
    # The retry is due after its backoff: the tenant stays in the sweep's index.
    assert await indexed(events, tenant)


def test_housekeeping_and_relay_tasks_do_not_flood_the_worker_log():
    import logging

    from dentalpin.platform._celery import _QuietHousekeeping

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("celery.app.trace", level, __file__, 1, message, None, None)

    quiet = _QuietHousekeeping()
    assert not quiet.filter(record(logging.INFO, "Task dentalpin.events.sweep[1] succeeded"))
    assert not quiet.filter(record(logging.INFO, "Scheduler: Sending due task events-sweep"))
    assert not quiet.filter(record(logging.INFO, "Task dentalpin.events.deliver[2] succeeded"))
    assert quiet.filter(record(logging.INFO, "Task dentalpin.lifecycle.run_job[4] succeeded"))
    assert quiet.filter(record(logging.ERROR, "Task dentalpin.events.sweep[3] raised"))
    assert quiet.filter(record(logging.ERROR, "Task dentalpin.events.deliver[5] raised"))


async def labels(platform: Platform, tenant: TenantRecord) -> list[str]:
    found = await rows(platform, tenant, "select payload->>'label' as label from _outbox")
    return sorted(r.label for r in found)


async def test_pruning_removes_settled_events_past_retention_and_keeps_the_rest(events):
    a, b = await ledger_tenant(events), await ledger_tenant(events)
    await add(events, a, "settled")
    await add(events, b, "settled in b")
    await drain(events)
    with nudge_lost(events):
        await add(events, a, "poison, dead")
        await deliver(events, a.id)  # fails: a retry is pending
        await rows(
            events, a, "update _deliveries set state = 'dead' where state = 'pending' returning 1"
        )
    old = "update _outbox set occurred_at = now() - interval '40 days' returning 1"
    for tenant in (a, b):
        await rows(events, tenant, old)
    await add(events, a, "young")
    await drain(events)
    with nudge_lost(events):
        await add(events, a, "not fanned out yet")
    await rows(events, a, old.replace("returning", "where fanned_out_at is null returning"))
    month = 30 * 86400.0

    report = await prune(events, older_than_s=month, tenant_id=a.id)
    assert (report.tenants, report.events, report.inbox) == (1, 1, 1)
    assert await labels(events, a) == ["not fanned out yet", "poison, dead", "young"]
    states = await rows(events, a, "select state from _deliveries order by id")
    assert [s.state for s in states] == ["dead", "done"]  # the settled one went with its event
    inbox = await rows(events, a, "select count(*) as n from _inbox")
    assert inbox[0].n == 1  # the young event's
    # Pruning one clinic leaves the others alone.
    assert await labels(events, b) == ["settled in b"]

    # Every clinic, the default way: b's old settled event goes too; nothing else does.
    again = await prune(events, older_than_s=month)
    assert again.events >= 1 and await labels(events, b) == []
    assert await labels(events, a) == ["not fanned out yet", "poison, dead", "young"]


async def test_pruning_reads_no_further_than_the_first_young_event(events):
    """The last batch of a run used to read every newer event (a month of them, hourly):
    the walk in `seq` order now stops at the first event young enough to keep."""
    from dentalpin.platform._relay import _prune_sql

    tenant = await ledger_tenant(events)
    for label in ("old one", "old two"):
        await add(events, tenant, label)
    await drain(events)
    old = "update _outbox set occurred_at = now() - interval '40 days' returning 1"
    await rows(events, tenant, old)
    young = 20_000
    await rows(
        events,
        tenant,
        "insert into _outbox (id, name, version, payload, fanned_out_at) "
        "select gen_random_uuid(), 'fx_ledger.nobody', 1, '{}', now() "
        "from generate_series(1, :n) returning 1",
        n=young,
    )
    await rows(
        events,
        tenant,
        "insert into _deliveries (event_id, subscriber, state, attempts, done_at) "
        "select id, 'fx_ledger_watch', 'done', 1, now() from _outbox "
        "where name = 'fx_ledger.nobody' returning 1",
    )
    async with events.db.engine.begin() as conn:
        for table in ("_outbox", "_deliveries", "_inbox"):
            await conn.execute(text(f'analyze "{tenant.schema_name}".{table}'))
    reads = text(
        "select relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) as n "
        "from pg_stat_xact_user_tables where schemaname = :s"
    )
    async with events.db.engine.begin() as conn:
        # Counted as a difference: the view also holds earlier, not yet flushed counts.
        before = dict(list(await conn.execute(reads, {"s": tenant.schema_name})))
        pruned = (
            await conn.execute(
                text(_prune_sql(tenant.schema_name)), {"age": 30 * 86400.0, "limit": 5000}
            )
        ).one()
        after = dict(list(await conn.execute(reads, {"s": tenant.schema_name})))
    read = {
        table: n - before.get(table, 0) for table, n in after.items() if n != before.get(table, 0)
    }

    assert (pruned.events, pruned.inbox) == (2, 2)
    # Before: the whole outbox twice, and the whole deliveries table (60,000 rows here).
    assert sum(read.values()) < 50, f"pruning read {read} rows to remove 2 of {young + 2} events"
    left = await rows(events, tenant, "select count(*) as n from _outbox")
    assert left[0].n == young


async def test_stats_count_every_tenant_with_work_and_say_how_many_they_read(events):
    """Deliveries are counted in the most overdue tenants only (one statement reads each
    tenant's tables); the number of tenants with work must not stop at that sample."""
    before = (await pipeline_stats(events, max_tenants=1))["tenants_with_work"]
    a, b = await ledger_tenant(events), await ledger_tenant(events)
    with nudge_lost(events):
        await add(events, a, "waits in a")
        await add(events, b, "waits in b")

    sampled = await pipeline_stats(events, max_tenants=1)
    assert sampled["tenants_with_work"] == before + 2
    assert sampled["tenants_counted"] == 1
    whole = await pipeline_stats(events)
    assert whole["tenants_counted"] == whole["tenants_with_work"] == before + 2


async def test_a_tenant_without_subscribers_fans_its_events_out_to_nobody(events):
    tenant = await ledger_tenant(events, watch=False)
    with nudge_lost(events):
        await add(events, tenant, "nobody listens")
    report = await deliver(events, tenant.id)
    assert (report.fanned_out, report.delivered, report.more) == (1, 0, False)
    fanned = await rows(events, tenant, "select fanned_out_at from _outbox")
    assert [r.fanned_out_at is not None for r in fanned] == [True]
    assert await rows(events, tenant, "select * from _deliveries") == []
    assert not await indexed(events, tenant)

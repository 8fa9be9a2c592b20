"""Delivering events: fan-out, leases, the inbox, retries, dead letters, the sweep.

One relay pass (`deliver`) works on one tenant over one pooled connection, in rounds
until nothing is due or its time budget is spent. A round is two transactions:

1. claim (committed before any handler runs, so a worker lost from here on costs an
   attempt): one statement, which commits by itself, finds the tenant and its installed
   modules, gives every new event a delivery per subscriber installed *now*, created
   leased, and leases the due deliveries (pending and due, or running with an expired
   lease: a lost worker) with `FOR UPDATE SKIP LOCKED`, their attempt counted;
2. run: the claimed deliveries in one tenant transaction. Each first inserts (event,
   subscriber) into the inbox — a row already there means the effect happened, so the
   handler is skipped — then runs its handler; one closing statement marks the batch
   done. The batch runs without savepoints first; if a handler fails, it runs again
   with a savepoint each, so the failure rolls back only its own work and is retried
   with exponential backoff and jitter, or dead-lettered after its last attempt.

The pass's last transaction also points the tenant's index entry in `platform.event_tenants`
at its next due time, or removes it when nothing is left (fenced by `seq`, so a
concurrent publish is never lost), through the kernel's `_reindex_events`. The sweep
reads only that index.

The relay's own statements name the tenant's schema in their text (one text per tenant,
cached), so PostgreSQL keeps their plans instead of planning them again at every change
of tenant; the hot ones go straight to asyncpg (ADR 0020). Handlers get an ordinary
tenant `AsyncSession`.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ._beat import STATUS_SQL as BEAT_STATUS_SQL
from ._db import SCHEMA_NAME, TenantScope
from ._errors import NotFound
from ._events import DELIVERIES, INBOX, OUTBOX, EventContext, Handler
from ._module import TenantRef
from ._registry import Registry
from ._runtime import Platform
from ._tables import event_dead_letters, event_tenants, tenants

ERROR_LIMIT = 4000
STATS_MAX_TENANTS = 500
"""`pipeline_stats` counts deliveries in at most this many tenants, the most overdue."""


@dataclass
class DeliveryReport:
    fanned_out: int = 0
    delivered: int = 0
    skipped: int = 0
    retried: int = 0
    dead: int = 0
    more: bool = False
    """The time budget ran out with work left: the caller should run another pass."""

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass(frozen=True)
class _Claimed:
    id: int
    event_id: uuid.UUID
    subscriber: str
    attempts: int
    name: str
    version: int
    payload: dict[str, Any]
    occurred_at: datetime


@dataclass
class _Pass:
    platform: Platform
    conn: AsyncConnection
    """The pass's one pooled connection: both transactions of every round run on it."""
    tenant: TenantRef
    scope: TenantScope
    installed: frozenset[str]
    seq: int | None
    """The tenant's index entry as the round's lookup saw it (fences `_reindex_events`)."""
    report: DeliveryReport = field(default_factory=DeliveryReport)

    @property
    def sql(self) -> _Statements:
        return _statements(self.tenant.schema)


@dataclass(frozen=True)
class _Round:
    fanned: int
    claimed: list[_Claimed]
    due: int
    """How many of `claimed` were due deliveries rather than fresh fan-out."""


async def deliver(
    platform: Platform, tenant: uuid.UUID | str, *, budget_s: float = 5.0
) -> DeliveryReport:
    """One relay pass over one tenant, named by id or schema (see the module docstring).

    A pass holds one connection; a round is two transactions on it (fan out and claim,
    then run), so a delivery costs a handful of round trips when a clinic is quiet and
    a fraction of one in a busy clinic's batch."""
    batch = platform.settings.events_batch
    deadline = time.monotonic() + budget_s
    report = DeliveryReport()
    async with platform.db.engine.connect() as conn:
        while True:
            work, found = await _fan_out_and_claim(platform, conn, tenant, report)
            if work is None:  # archived or gone: nothing to deliver to
                if isinstance(tenant, uuid.UUID):
                    await _forget_tenant(platform, tenant)
                return report
            if not found.claimed:
                if found.fanned < batch:
                    return report  # reindexed with the (empty) claim
                continue  # a full round of events without subscribers: fan out more
            drained = found.fanned < batch and found.due < batch  # a short round
            last = drained or time.monotonic() > deadline
            await _run_batch(work, found.claimed, reindex=last)
            if last:
                report.more = not drained
                return report


async def deliver_many(
    platform: Platform, tenants: list[uuid.UUID | str]
) -> list[DeliveryReport | BaseException]:
    """A pass over each of `tenants`, up to `events_pass_concurrency` at a time: while one
    waits for PostgreSQL, another runs. One tenant's failure does not stop the others;
    it is returned in that tenant's place."""
    gate = asyncio.Semaphore(platform.settings.events_pass_concurrency)

    async def one(tenant: uuid.UUID | str) -> DeliveryReport:
        async with gate:
            return await deliver(platform, tenant)

    return list(await asyncio.gather(*(one(t) for t in tenants), return_exceptions=True))


def _schema(name: str) -> str:
    """`name`, double-quoted, once it is known to be a platform-generated tenant schema name
    (the relay's statements name the tenant's tables directly; see `_claim_sql`)."""
    if not SCHEMA_NAME.fullmatch(name):
        raise ValueError(f"'{name}' is not a platform-generated tenant schema name")
    return f'"{name}"'


@functools.lru_cache(maxsize=4096)
def _claim_sql(schema: str, routes: tuple[tuple[str, str], ...], limit: int, lease_s: float) -> str:
    """The round's first transaction, as one statement run on its own (autocommit): find
    the tenant (active or spare) with its installed modules and its index entry's seq;
    give every new event one delivery per route whose subscriber is installed *now*,
    created already leased (attempt 1); lease the due deliveries (pending and due, or
    running with an expired lease: a lost worker) with `FOR UPDATE SKIP LOCKED`, their
    attempt counted; and turn off the commit's fsync (a lease lost in a crash is simply
    due again). One row per claimed delivery, the tenant's columns and how many events
    were fanned out on each; one row with null delivery columns when nothing was
    claimed; no row when the tenant is not active.

    The tenant's tables are named with their schema and the statement runs under the
    connection's fixed (empty) search path, as the platform: a statement's cached plan is
    kept only while the search path it was planned under stays, so one text per tenant
    is planned once per connection, where one text for all would be planned again on
    every change of tenant (ADR 0020). It has no parameters (the schema, the routes, the
    batch and the lease are literals; names are checked, values are the registry's and
    the settings'), so PostgreSQL keeps its first plan instead of planning each of the
    first five executions for their values."""
    s = _schema(schema)
    events = _text_array(event for event, _ in routes)
    modules = _text_array(module for _, module in routes)
    lease = float(lease_s)
    return f"""
        with t as (
          select t.id as tenant_id, t.slug as tenant_slug, t.name as tenant_name,
                 t.schema_name as tenant_schema, t.db_role as tenant_role,
                 array(select module from platform.tenant_modules m
                        where m.tenant_id = t.id and m.state = 'installed') as installed,
                 (select seq from platform.event_tenants e where e.tenant_id = t.id) as seq
            from platform.tenants t
           where t.schema_name = '{schema}' and t.status in ('active', 'spare')),
        routes as (
          select r.name, r.subscriber, r.ord
            from unnest({events}, {modules})
                 with ordinality as r(name, subscriber, ord)
           where r.subscriber = any(cast((select installed from t) as text[]))),
        ev as (
          update {s}.{OUTBOX} o set fanned_out_at = now()
           where o.id in (select id from {s}.{OUTBOX}
                           where fanned_out_at is null and exists (select from t)
                           order by seq limit {int(limit)} for update skip locked)
          returning o.id, o.seq, o.name, o.version, o.payload, o.occurred_at),
        fresh as (
          insert into {s}.{DELIVERIES} (event_id, subscriber, state, attempts, lease_until)
          select ev.id, r.subscriber, 'running', 1, now() + make_interval(secs => {lease})
            from ev join routes r on r.name = ev.name
           order by ev.seq, r.ord
          on conflict (event_id, subscriber) do nothing
          returning id, event_id, subscriber, attempts),
        due as (
          update {s}.{DELIVERIES} d
             set state = 'running', attempts = d.attempts + 1,
                 lease_until = now() + make_interval(secs => {lease})
            from {s}.{OUTBOX} o
           where o.id = d.event_id
             and d.id in (select id from {s}.{DELIVERIES}
                           where ((state = 'pending' and next_attempt_at <= now())
                                  or (state = 'running' and lease_until < now()))
                             and exists (select from t)
                           order by id limit {int(limit)} for update skip locked)
          returning d.id, d.event_id, d.subscriber, d.attempts,
                    o.name, o.version, o.payload, o.occurred_at),
        claimed as (
          select true as was_due, * from due
          union all
          select false, f.id, f.event_id, f.subscriber, f.attempts,
                 ev.name, ev.version, ev.payload, ev.occurred_at
            from fresh f join ev on ev.id = f.event_id)
        select t.*, set_config('synchronous_commit', 'off', true) as no_fsync,
               (select count(*) from ev) as fanned, c.*
          from t left join claimed c on true
         order by c.id
        """


def _text_array(values: Iterable[str]) -> str:
    """An SQL text[] literal of `values` (each quoted, quotes doubled)."""
    quoted = ", ".join("'" + value.replace("'", "''") + "'" for value in values)
    return f"array[{quoted}]::text[]"


async def _fan_out_and_claim(
    platform: Platform, conn: AsyncConnection, key: uuid.UUID | str, report: DeliveryReport
) -> tuple[_Pass | None, _Round]:
    """The round's first transaction (`_claim_sql`), committed before any handler runs, so
    a worker lost from here on costs an attempt. With nothing to claim, a short tenant
    transaction reindexes: it is the pass's last."""
    schema = key if isinstance(key, str) else await _schema_of(conn, key)
    if schema is None or not SCHEMA_NAME.fullmatch(schema):
        return None, _Round(0, [], 0)  # not a tenant's schema (a forged or stale name)
    settings = platform.settings
    statement = _claim_sql(
        schema, _routes(platform.registry), settings.events_batch, settings.events_lease_s
    )
    try:
        rows = await (await _driver(conn)).fetch(statement)
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        rows = []  # no such schema (a forged or stale name, a dropped tenant): no tenant
    except BaseException:
        if (await _driver(conn)).is_closed():
            await conn.invalidate()  # the pool must not lend it again
        raise
    if not rows:
        return None, _Round(0, [], 0)
    row = rows[0]
    work = _Pass(
        platform,
        conn,
        TenantRef(
            row["tenant_id"], row["tenant_slug"], row["tenant_name"], schema, row["tenant_role"]
        ),
        TenantScope(schema, row["tenant_role"]),  # checks the role's name before any use
        frozenset(row["installed"]),
        row["seq"],
        report,
    )
    fanned = int(row["fanned"])
    claimed = [_claimed(r) for r in rows if r["id"] is not None]
    if not claimed and fanned < settings.events_batch:
        await _reindex(work)
    report.fanned_out += fanned
    return work, _Round(fanned, claimed, sum(1 for r in rows if r["was_due"]))


async def _driver(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `conn`. The relay sends its own statements on it
    directly (each takes a fraction of SQLAlchemy's client-side cost per statement):
    outside a transaction one commits by itself, inside one it is part of it."""
    raw = await conn.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    return driver


@functools.lru_cache(maxsize=16)
def _routes(registry: Registry) -> tuple[tuple[str, str], ...]:
    """Every (event, subscriber) the registry knows, subscribers in dependency order; the
    claim keeps those whose subscriber the tenant has installed. Computed once per
    registry (its modules do not change in a process), not on every round."""
    return tuple(
        (event, module)
        for event, modules in registry.subscribers(registry.names).items()
        for module in modules
    )


async def _schema_of(conn: AsyncConnection, tenant_id: uuid.UUID) -> str | None:
    """A tenant named by id (the sweep's passes): its schema, if it is active or spare."""
    schema = await (await _driver(conn)).fetchval(
        "select schema_name from platform.tenants where id = $1 and status in ('active', 'spare')",
        tenant_id,
    )
    return None if schema is None else str(schema)


def _claimed(row: asyncpg.Record) -> _Claimed:
    return _Claimed(
        row["id"],
        row["event_id"],
        row["subscriber"],
        row["attempts"],
        row["name"],
        row["version"],
        row["payload"],
        row["occurred_at"],
    )


@dataclass
class _Outcome:
    """What a batch's committed transaction did."""

    done: int = 0
    skipped: int = 0
    retried: int = 0
    dead: list[tuple[_Claimed, str]] = field(default_factory=list)


async def _run_batch(work: _Pass, batch: list[_Claimed], *, reindex: bool) -> None:
    """The round's second transaction. The batch first runs all together, without
    savepoints: a quiet clinic's one delivery pays only its inbox row, its handler and
    one closing statement. If a handler fails, that transaction rolls back as a whole
    and the batch runs again with a savepoint each (`_run_isolated`), so only the
    failing delivery is retried; its own effects were rolled back either way."""
    try:
        outcome = await _run_together(work, batch, reindex=reindex)
    except Exception:
        if work.conn.invalidated or work.conn.closed:
            raise  # the connection itself failed: the leases bring the batch back
        outcome = await _run_isolated(work, batch, reindex=reindex)
    report = work.report
    report.delivered += outcome.done
    report.skipped += outcome.skipped
    report.retried += outcome.retried
    report.dead += len(outcome.dead)
    if outcome.dead:
        async with work.platform.db.platform() as session:
            for d, error in outcome.dead:
                await session.execute(_dead_letter_upsert(work.tenant.id, d, error))


async def _run_together(work: _Pass, batch: list[_Claimed], *, reindex: bool) -> _Outcome:
    outcome = _Outcome()
    done: list[_Claimed] = []
    async with _session(work) as session, session.begin():
        for d in batch:
            handler = await _settle_unrunnable(work, session, d, outcome)
            if handler is not None:
                await _run_once(work, session, d, handler)
                done.append(d)
        await _finish(work, session, done, reindex=reindex)
    outcome.done = len(done)
    return outcome


async def _run_isolated(work: _Pass, batch: list[_Claimed], *, reindex: bool) -> _Outcome:
    """Each delivery under its own savepoint: a failing handler rolls back only its own
    work and is retried with backoff, or dead-lettered after its last attempt."""
    settings = work.platform.settings
    outcome = _Outcome()
    done: list[_Claimed] = []
    async with _session(work) as session, session.begin():
        for d in batch:
            handler = await _settle_unrunnable(work, session, d, outcome)
            if handler is None:
                continue
            try:
                async with session.begin_nested():
                    await _run_once(work, session, d, handler)
                done.append(d)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]
                if d.attempts >= settings.events_max_attempts:
                    await session.execute(work.sql.dead, _fenced(d, error=error))
                    outcome.dead.append((d, error))
                else:
                    delay = backoff_s(
                        d.attempts, settings.events_backoff_s, settings.events_backoff_max_s
                    )
                    await session.execute(work.sql.retry, _fenced(d, error=error, delay=delay))
                    outcome.retried += 1
        await _finish(work, session, done, reindex=reindex)
    outcome.done = len(done)
    return outcome


def _session(work: _Pass) -> Any:
    """A tenant session on the pass's connection; it begins (and scopes) a transaction."""
    return work.platform.db.session_on(work.conn, work.scope)


async def _settle_unrunnable(
    work: _Pass, session: Any, d: _Claimed, outcome: _Outcome
) -> Handler | None:
    """The delivery's handler; or None, after dead-lettering a delivery claimed again
    after its last attempt (that worker was lost) or skipping one whose subscriber was
    uninstalled since the fan-out."""
    if d.attempts > work.platform.settings.events_max_attempts:
        error = f"gave up after {d.attempts - 1} attempts (the last worker was lost)"
        await session.execute(work.sql.dead, _fenced(d, error=error))
        outcome.dead.append((d, error))
        return None
    handler = _handler(work, d)
    if handler is None:
        await session.execute(work.sql.skipped, _fenced(d))
        outcome.skipped += 1
    return handler


async def _run_once(work: _Pass, session: Any, d: _Claimed, handler: Handler) -> None:
    """The inbox row first: a row already there means the effect happened (a worker lost
    after its commit), so the handler is skipped."""
    driver = await _driver(await session.connection())  # begins and scopes the transaction
    if await driver.fetchval(work.sql.inbox, d.event_id, d.subscriber) is not None:
        await handler(_context(work, session, d))


async def _finish(work: _Pass, session: Any, done: list[_Claimed], *, reindex: bool) -> None:
    """Mark `done` done — one statement, committed with the handlers' work, so a delivery
    is done exactly when its effect is — and, in the pass's last transaction, point the
    tenant's index entry at its next due time or drop it (`_reindex_events`)."""
    if not done and not reindex:
        return
    ids, attempts = [d.id for d in done], [d.attempts for d in done]
    driver = await _driver(await session.connection())  # begins and scopes the transaction
    if reindex:
        await driver.execute(work.sql.done_and_reindex, ids, attempts, work.tenant.id, work.seq)
    else:
        await driver.execute(work.sql.done, ids, attempts)


async def _reindex(work: _Pass) -> None:
    """A round that claimed nothing: the pass's last transaction only reindexes."""
    async with _session(work) as session, session.begin():
        await _finish(work, session, [], reindex=True)


def _handler(work: _Pass, d: _Claimed) -> Handler | None:
    if d.subscriber not in work.installed or d.subscriber not in work.platform.registry:
        return None  # uninstalled since the fan-out
    return work.platform.registry.get(d.subscriber).module.subscriptions().get(d.name)


def _context(work: _Pass, session: Any, d: _Claimed) -> EventContext:
    return EventContext(
        session=session,
        tenant=work.tenant,
        event_id=d.event_id,
        name=d.name,
        version=d.version,
        payload=d.payload,
        occurred_at=d.occurred_at,
        attempt=d.attempts,
    )


def _fenced(d: _Claimed, **values: Any) -> dict[str, Any]:
    return {"id": d.id, "attempts": d.attempts, **values}


@dataclass(frozen=True)
class _Statements:
    """The second transaction's own statements for one tenant. They name the tenant's
    tables with its schema, so each text is planned once per connection and kept (the
    search path it runs under, the tenant's, is the same every time); one text for every
    tenant would be planned again at every change of tenant (see `_claim_sql`). The hot
    three (`inbox`, `done`, `done_and_reindex`) go straight to asyncpg (`_driver`)."""

    inbox: str
    done: str
    done_and_reindex: str
    skipped: Any
    retry: Any
    dead: Any


@functools.lru_cache(maxsize=4096)
def _statements(schema: str) -> _Statements:
    s = _schema(schema)
    mark_done = (
        f"update {s}.{DELIVERIES} d set state = 'done', done_at = now(), lease_until = null, "
        "last_error = null from unnest($1::bigint[], $2::integer[]) as x(id, attempts) "
        "where d.id = x.id and d.attempts = x.attempts"
    )
    # Every write to a claimed delivery is fenced by its attempt: a slow worker whose lease
    # was taken over changes nothing.
    return _Statements(
        inbox=(
            f"insert into {s}.{INBOX} (event_id, subscriber) values ($1, $2) "
            "on conflict do nothing returning 1"
        ),
        done=mark_done,
        # The index entry's next due time, in the same statement: the reads do not see the
        # rows this statement marks done, so those are left out of the running ones by hand.
        done_and_reindex=f"""
            with done as ({mark_done} returning d.id)
            select {s}._reindex_events($3, $4, least(
              (select min(next_attempt_at) from {s}.{DELIVERIES} where state = 'pending'),
              (select min(lease_until) from {s}.{DELIVERIES}
                where state = 'running' and id not in (select id from done)),
              (select now() from {s}.{OUTBOX} where fanned_out_at is null limit 1)))""",
        skipped=text(
            f"update {s}.{DELIVERIES} set state = 'skipped', done_at = now(), "
            "lease_until = null where id = :id and attempts = :attempts"
        ),
        retry=text(
            f"update {s}.{DELIVERIES} set state = 'pending', lease_until = null, "
            "next_attempt_at = now() + make_interval(secs => :delay), last_error = :error "
            "where id = :id and attempts = :attempts"
        ),
        dead=text(
            f"update {s}.{DELIVERIES} set state = 'dead', lease_until = null, "
            "last_error = :error where id = :id and attempts = :attempts"
        ),
    )


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with "equal jitter": between half and all of the capped delay."""
    capped: float = min(max_s, base_s * 2.0 ** max(0, attempt - 1))
    return capped / 2 + random.uniform(0, capped / 2)  # noqa: S311 - jitter, not secrecy


def _dead_letter_upsert(tenant_id: uuid.UUID, d: _Claimed, error: str) -> Any:
    values = {
        "tenant_id": tenant_id,
        "delivery_id": d.id,
        "event_id": d.event_id,
        "event_name": d.name,
        "subscriber": d.subscriber,
        "attempts": d.attempts,
        "error": error[:ERROR_LIMIT],
    }
    statement = pg_insert(event_dead_letters).values(**values)
    return statement.on_conflict_do_update(
        index_elements=["tenant_id", "delivery_id"],
        set_={"attempts": d.attempts, "error": values["error"], "dead_at": func.now()},
    )


async def mark_due(session: Any, tenant_id: uuid.UUID) -> None:
    """Make the tenant's index entry due now (replayed dead letters)."""
    await session.execute(
        text(
            """
            insert into platform.event_tenants (tenant_id, due_at, seq)
            values (:t, now(), nextval('platform.event_tenants_seq'))
            on conflict (tenant_id) do update set due_at = least(excluded.due_at,
                                                                 platform.event_tenants.due_at)
            """
        ),
        {"t": tenant_id},
    )


async def _forget_tenant(platform: Platform, tenant_id: uuid.UUID) -> None:
    async with platform.db.platform() as session:
        await session.execute(delete(event_tenants).where(event_tenants.c.tenant_id == tenant_id))


# The sweep ---------------------------------------------------------------------------


async def sweep(
    platform: Platform, send: Callable[[uuid.UUID], None], *, limit: int = 1000
) -> list[uuid.UUID]:
    """Send a relay pass for every tenant whose index entry is due; each entry is pushed a
    lease ahead, so a tenant is not sent again every tick while its pass waits in a queue."""
    async with platform.db.platform() as session:
        rows = await session.execute(
            text(
                """
                update platform.event_tenants
                   set due_at = now() + make_interval(secs => :lease)
                 where tenant_id in (select tenant_id from platform.event_tenants
                                      where due_at <= now() order by due_at
                                      limit :limit for update skip locked)
                returning tenant_id
                """
            ),
            {"lease": platform.settings.events_lease_s, "limit": limit},
        )
        due = [row.tenant_id for row in rows]
    for tenant_id in due:
        send(tenant_id)
    return due


# Dead letters ------------------------------------------------------------------------


async def dead_letters(
    platform: Platform, *, tenant_id: uuid.UUID | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    query = (
        select(event_dead_letters, tenants.c.slug)
        .join(tenants, tenants.c.id == event_dead_letters.c.tenant_id)
        .order_by(event_dead_letters.c.id)
        .limit(max(1, min(limit, 10_000)))
    )
    if tenant_id is not None:
        query = query.where(event_dead_letters.c.tenant_id == tenant_id)
    async with platform.db.autocommit() as conn:
        rows = await conn.execute(query)
        return [
            {
                "id": r.id,
                "tenant": r.slug,
                "event_id": str(r.event_id),
                "event": r.event_name,
                "subscriber": r.subscriber,
                "attempts": r.attempts,
                "error": r.error,
                "dead_at": r.dead_at.isoformat(),
            }
            for r in rows
        ]


async def retry_dead(
    platform: Platform, ids: Iterable[int] | None, *, tenant_id: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """Put dead letters back in the queue with fresh attempts; returns the tenants touched.

    `ids=None` replays every dead letter (of `tenant_id` when given)."""
    query = select(
        event_dead_letters.c.id, event_dead_letters.c.tenant_id, event_dead_letters.c.delivery_id
    )
    if ids is not None:
        wanted = sorted(set(ids))
        query = query.where(event_dead_letters.c.id.in_(wanted))
    if tenant_id is not None:
        query = query.where(event_dead_letters.c.tenant_id == tenant_id)
    async with platform.db.autocommit() as conn:
        rows = list(await conn.execute(query))
        if ids is not None:
            missing = sorted(set(wanted) - {r.id for r in rows})
            if missing:
                raise NotFound(
                    f"no dead letter with id {', '.join(map(str, missing))}; "
                    "`dentalpin events failed` lists them"
                )
        scopes = {
            r.id: TenantScope(r.schema_name, r.db_role)
            for r in await conn.execute(
                select(tenants.c.id, tenants.c.schema_name, tenants.c.db_role).where(
                    tenants.c.id.in_({r.tenant_id for r in rows})
                )
            )
        }
    touched: set[uuid.UUID] = set()
    for row in rows:
        async with platform.db.tenant(scopes[row.tenant_id]) as session:
            await session.execute(
                text(
                    f"update {DELIVERIES} set state = 'pending', attempts = 0, "
                    "next_attempt_at = now(), lease_until = null "
                    "where id = :id and state = 'dead'"
                ),
                {"id": row.delivery_id},
            )
        async with platform.db.platform() as session:
            await session.execute(
                delete(event_dead_letters).where(event_dead_letters.c.id == row.id)
            )
            await mark_due(session, row.tenant_id)
        touched.add(row.tenant_id)
    if platform.db.on_published is not None and touched:
        platform.db.on_published({scopes[t] for t in touched})
    return sorted(touched)


async def forget_subscriber(conn: AsyncConnection, tenant: TenantRef, module: str) -> int:
    """Remove a module's undelivered and dead deliveries in a tenant (it was uninstalled);
    runs in the caller's transaction. Returns how many were removed."""
    table = f'"{tenant.schema}".{DELIVERIES}'
    if await conn.scalar(text("select to_regclass(:t)"), {"t": table}) is None:
        return 0  # the schema is already gone (a tenant archived after losing it)
    removed = await conn.execute(
        text(
            f'delete from "{tenant.schema}".{DELIVERIES} '
            "where subscriber = :m and state in ('pending', 'running', 'dead')"
        ),
        {"m": module},
    )
    await conn.execute(
        delete(event_dead_letters).where(
            event_dead_letters.c.tenant_id == tenant.id, event_dead_letters.c.subscriber == module
        )
    )
    return int(removed.rowcount)


# Retention ---------------------------------------------------------------------------


@dataclass
class PruneReport:
    tenants: int = 0
    events: int = 0
    inbox: int = 0

    def as_dict(self) -> dict[str, int]:
        return self.__dict__.copy()


async def prune(
    platform: Platform,
    *,
    older_than_s: float,
    tenant_id: uuid.UUID | None = None,
    batch: int = 5000,
) -> PruneReport:
    """Remove events older than `older_than_s` whose every delivery is settled (done or
    skipped), with their deliveries and inbox rows, in every active tenant (or one).
    Events not yet fanned out, or with a pending, running or dead delivery, are kept: the
    relay or an operator still needs them. Once its deliveries are gone an event cannot be
    redelivered, so its inbox rows have nothing left to guard. Each batch is its own short
    transaction; the relay's `SKIP LOCKED` claims never wait on it, nor it on them."""
    query = select(tenants.c.schema_name).where(tenants.c.status == "active")
    if tenant_id is not None:
        query = query.where(tenants.c.id == tenant_id)
    report = PruneReport()
    async with platform.db.autocommit() as conn:
        for (schema,) in list(await conn.execute(query.order_by(tenants.c.schema_name))):
            report.tenants += 1
            while True:
                row = (
                    await conn.execute(
                        text(_prune_sql(schema)), {"age": older_than_s, "limit": batch}
                    )
                ).one()
                report.events += int(row.events)
                report.inbox += int(row.inbox)
                if row.events < batch:
                    break
    return report


def _prune_sql(schema: str) -> str:
    """One batch of `prune`. The outbox is walked in `seq` order only up to its first event
    young enough to keep (`young`): events are numbered as they are written, so what lies
    beyond it is young too, and the last batch of a run no longer reads every newer event
    (a month of them, hourly, in every clinic). An event whose transaction began before
    the cutoff but wrote after a younger one is left for a later run. The batch is
    removed by key (`= any(array)`) and an old event's deliveries are looked up per event
    (a subquery, not an anti-join): the planner cannot size the batch, and a join would
    read the whole outbox, inbox or deliveries."""
    s = _schema(schema)
    return f"""
        with cutoff as materialized (select now() - make_interval(secs => :age) as at),
        young as materialized (
          select o.seq from {s}.{OUTBOX} o
           where o.occurred_at >= (select at from cutoff)
           order by o.seq limit 1),
        old as (
          select o.id from {s}.{OUTBOX} o
           where o.seq < coalesce((select seq from young), 9223372036854775807)
             and o.fanned_out_at is not null
             and o.occurred_at < (select at from cutoff)
             and (select 1 from {s}.{DELIVERIES} d
                   where d.event_id = o.id and d.state not in ('done', 'skipped')
                   limit 1) is null
           order by o.seq limit :limit
           for update skip locked),
        batch as materialized (select array(select id from old) as ids),
        inbox as (delete from {s}.{INBOX} i
                   where i.event_id = any(cast((select ids from batch) as uuid[])) returning 1),
        gone as (delete from {s}.{OUTBOX} o
                  where o.id = any(cast((select ids from batch) as uuid[])) returning 1)
        select (select count(*) from gone) as events, (select count(*) from inbox) as inbox
        """


# Observability -----------------------------------------------------------------------


async def pipeline_stats(
    platform: Platform, *, max_tenants: int = STATS_MAX_TENANTS
) -> dict[str, Any]:
    """Deliveries by state and the outbox lag, over the tenants the index names (those are
    the only ones with work), plus the dead letters, the jobs by state, and which beat
    leads (`_beat`; none means nothing schedules the sweep, the reaper or periodic jobs).

    Deliveries and lag are counted in at most `max_tenants` tenants, the most overdue
    first (one statement reads each tenant's tables); `tenants_counted` says how many,
    `tenants_with_work` how many the index holds in all."""
    async with platform.db.autocommit() as conn:
        with_work = await conn.scalar(select(func.count()).select_from(event_tenants))
        pending_tenants = list(
            await conn.execute(
                select(tenants.c.schema_name)
                .join(event_tenants, event_tenants.c.tenant_id == tenants.c.id)
                .order_by(event_tenants.c.due_at)
                .limit(max_tenants)
            )
        )
        states: dict[str, int] = {"pending": 0, "running": 0}
        lag_s = 0.0
        if pending_tenants:
            union = " union all ".join(
                f"""select d.state, count(*) as n,
                           extract(epoch from now() - min(o.occurred_at)) as lag
                      from "{r.schema_name}".{DELIVERIES} d
                      join "{r.schema_name}".{OUTBOX} o on o.id = d.event_id
                     where d.state in ('pending', 'running') group by d.state
                    union all
                    select 'unfanned', count(*), extract(epoch from now() - min(occurred_at))
                      from "{r.schema_name}".{OUTBOX} where fanned_out_at is null"""
                for r in pending_tenants
            )
            for row in await conn.execute(text(union)):
                if row.state in states:
                    states[row.state] += int(row.n)
                if row.n and row.lag is not None:
                    lag_s = max(lag_s, float(row.lag))
        dead = await conn.scalar(select(func.count()).select_from(event_dead_letters))
        jobs = dict(
            (r.state, r.n)
            for r in await conn.execute(
                text("select state, count(*) as n from platform.jobs group by state")
            )
        )
        beat = (await conn.execute(text(BEAT_STATUS_SQL))).one()
    return {
        "deliveries": {**states, "dead": int(dead or 0)},
        "outbox_lag_s": round(lag_s, 3),
        "tenants_with_work": int(with_work or 0),
        "tenants_counted": len(pending_tenants),
        "jobs": jobs,
        "beat": {"leader": beat.leader, "standbys": max(0, beat.connected - 1)},
    }

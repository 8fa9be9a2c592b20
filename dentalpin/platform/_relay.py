"""Delivering events: fan-out, leases, the inbox, retries, dead letters, the sweep.

One relay pass (`deliver`) works on one tenant, in rounds until nothing is due or its
time budget is spent:

1. fan out (same transaction as 2): events not yet fanned out get one delivery row per
   subscriber whose module is installed in the tenant *now*;
2. claim: due deliveries (pending and due, or running with an expired lease: a lost
   worker) are leased with `FOR UPDATE SKIP LOCKED`, their attempt counted;
3. run: the claimed deliveries in one tenant transaction, each under a savepoint that
   first inserts (event, subscriber) into the inbox — a row already there means the
   effect happened, so the handler is skipped — then runs the handler; the batch's
   deliveries are marked done in the same transaction. A failure rolls back to its
   savepoint and schedules a retry with exponential backoff and jitter, or dead-letters
   the delivery after its last attempt.

The pass's last transaction also points the tenant's entry in `platform.event_tenants`
at its next due time, or removes it when nothing is left (fenced by `seq`, so a
concurrent publish is never lost), through the kernel's `_reindex_events`. The sweep
reads only that index.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ._db import TenantScope
from ._errors import NotFound
from ._events import DELIVERIES, INBOX, OUTBOX, EventContext, Handler
from ._module import TenantRef
from ._runtime import Platform
from ._tables import event_dead_letters, event_tenants, tenants

ERROR_LIMIT = 4000


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
    tenant: TenantRef
    scope: TenantScope
    installed: frozenset[str]
    report: DeliveryReport = field(default_factory=DeliveryReport)


async def deliver(
    platform: Platform, tenant: uuid.UUID | str, *, budget_s: float = 5.0
) -> DeliveryReport:
    """One relay pass over one tenant, named by id or schema (see the module docstring)."""
    async with platform.db.autocommit() as conn:
        found = await _tenant_and_modules(conn, tenant)
    if found is None:  # archived or gone: nothing to deliver to
        if isinstance(tenant, uuid.UUID):
            await _forget_tenant(platform, tenant)
        return DeliveryReport()
    ref, installed, seq = found
    work = _Pass(platform, ref, TenantScope(ref.schema, ref.role), installed)
    batch = platform.settings.events_batch
    deadline = time.monotonic() + budget_s
    while True:
        # The pass's last transaction also updates the tenant's index entry (`_reindex`).
        fanned, claimed = await _fan_out_and_claim(work, seq)
        if not claimed:
            if fanned < batch:
                return work.report  # reindexed with the (empty) claim
            continue  # a full round of events without subscribers: fan out more
        drained = fanned < batch and len(claimed) < batch  # a short round: nothing left
        last = drained or time.monotonic() > deadline
        await _run_batch(work, claimed, reindex=last, seq=seq)
        if last:
            work.report.more = not drained
            return work.report


async def _tenant_and_modules(
    conn: AsyncConnection, key: uuid.UUID | str
) -> tuple[TenantRef, frozenset[str], int | None] | None:
    """The tenant, its installed modules and its index entry's seq, in one query."""
    by = "t.id = :key" if isinstance(key, uuid.UUID) else "t.schema_name = :key"
    row = (
        await conn.execute(
            text(
                f"""
                select t.id, t.slug, t.name, t.schema_name, t.db_role,
                       array(select module from platform.tenant_modules m
                              where m.tenant_id = t.id and m.state = 'installed') as installed,
                       (select seq from platform.event_tenants e where e.tenant_id = t.id) as seq
                  from platform.tenants t
                 where {by} and t.status in ('active', 'spare')
                """
            ),
            {"key": key},
        )
    ).first()
    if row is None:
        return None
    ref = TenantRef(row.id, row.slug, row.name, row.schema_name, row.db_role)
    return ref, frozenset(row.installed), row.seq


def _fan_out_statement(work: _Pass) -> tuple[Any, dict[str, Any]]:
    """New events get one delivery per subscriber installed now; returns how many events."""
    routes = [
        (event, module)
        for event, modules in work.platform.registry.subscribers(work.installed).items()
        for module in modules
    ]
    params: dict[str, Any] = {"limit": work.platform.settings.events_batch}
    insert_deliveries = ""
    if routes:
        values = ", ".join(f"(:e{i}, :m{i})" for i in range(len(routes)))
        for i, (event, module) in enumerate(routes):
            params |= {f"e{i}": event, f"m{i}": module}
        insert_deliveries = f"""
            , ins as (
              insert into {DELIVERIES} (event_id, subscriber)
              select ev.id, r.subscriber
                from ev join (values {values}) as r(name, subscriber) on r.name = ev.name
              on conflict (event_id, subscriber) do nothing
              returning 1)"""
    statement = text(
        f"""
        with ev as (
          update {OUTBOX} o set fanned_out_at = now()
           where o.id in (select id from {OUTBOX} where fanned_out_at is null
                           order by seq limit :limit for update skip locked)
          returning o.id, o.name){insert_deliveries}
        select count(*) from ev
        """
    ).bindparams(*(bindparam(k) for k in params))
    return statement, params


CLAIM = text(
    f"""
    update {DELIVERIES} d
       set state = 'running', attempts = d.attempts + 1,
           lease_until = now() + make_interval(secs => :lease)
      from {OUTBOX} o
     where o.id = d.event_id
       and d.id in (select id from {DELIVERIES}
                     where (state = 'pending' and next_attempt_at <= now())
                        or (state = 'running' and lease_until < now())
                     order by id limit :limit for update skip locked)
    returning d.id, d.event_id, d.subscriber, d.attempts,
              o.name, o.version, o.payload, o.occurred_at
    """
)


async def _fan_out_and_claim(work: _Pass, seq: int | None) -> tuple[int, list[_Claimed]]:
    """One transaction: fan out new events, then lease the due deliveries. The lease is
    committed before any handler runs, so a worker lost from here on costs an attempt.
    With nothing to claim, this is the pass's last transaction: it reindexes."""
    settings = work.platform.settings
    fan_out, params = _fan_out_statement(work)
    async with work.platform.db.tenant(work.scope) as session:
        # The lease needs no fsync: lost in a crash, the delivery is simply due again.
        await session.execute(_NO_FSYNC)
        fanned = int(await session.scalar(fan_out, params) or 0)
        rows = await session.execute(
            CLAIM, {"lease": settings.events_lease_s, "limit": settings.events_batch}
        )
        claimed = [_Claimed(**r._mapping) for r in rows]
        if not claimed and fanned < settings.events_batch:
            await _reindex(work, session, seq)
    work.report.fanned_out += fanned
    return fanned, claimed


async def _run_batch(work: _Pass, batch: list[_Claimed], *, reindex: bool, seq: int | None) -> None:
    """Every claimed delivery in one transaction, each under its own savepoint: a failing
    handler rolls back only its own work, and the batch pays for one commit. With
    `reindex` (the pass's last transaction) it ends by reindexing the tenant."""
    settings = work.platform.settings
    dead: list[tuple[_Claimed, str]] = []
    done: list[_Claimed] = []
    async with work.platform.db.tenant(work.scope) as session:
        for d in batch:
            if d.attempts > settings.events_max_attempts:
                # Claimed again after its last attempt's lease ran out: that worker was lost.
                error = f"gave up after {d.attempts - 1} attempts (the last worker was lost)"
                await session.execute(_DEAD, _fenced(d, error=error))
                dead.append((d, error))
                continue
            handler = _handler(work, d)
            if handler is None:
                await session.execute(_SKIPPED, _fenced(d))
                work.report.skipped += 1
                continue
            try:
                async with session.begin_nested():
                    first = await session.execute(_INBOX, {"e": d.event_id, "s": d.subscriber})
                    if first.first() is not None:
                        await handler(_context(work, session, d))
                done.append(d)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]
                if d.attempts >= settings.events_max_attempts:
                    await session.execute(_DEAD, _fenced(d, error=error))
                    dead.append((d, error))
                else:
                    delay = backoff_s(
                        d.attempts, settings.events_backoff_s, settings.events_backoff_max_s
                    )
                    await session.execute(_RETRY, _fenced(d, error=error, delay=delay))
                    work.report.retried += 1
        if done:
            # One statement for the batch; committed with the handlers' work, so a delivery
            # is done exactly when its effect is.
            await session.execute(
                _DONE, {"ids": [d.id for d in done], "attempts": [d.attempts for d in done]}
            )
            work.report.delivered += len(done)
        if reindex:
            await _reindex(work, session, seq)
    if dead:
        async with work.platform.db.platform() as session:
            for d, error in dead:
                await session.execute(_dead_letter_upsert(work.tenant.id, d, error))
        work.report.dead += len(dead)


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


# Every write to a claimed delivery is fenced by its attempt: a slow worker whose lease was
# taken over changes nothing.
_NO_FSYNC = text("set local synchronous_commit = off")
_INBOX = text(
    f"insert into {INBOX} (event_id, subscriber) values (:e, :s) on conflict do nothing returning 1"
)
_DONE = text(
    f"update {DELIVERIES} d set state = 'done', done_at = now(), lease_until = null, "
    "last_error = null from unnest(cast(:ids as bigint[]), cast(:attempts as integer[])) "
    "as x(id, attempts) where d.id = x.id and d.attempts = x.attempts"
)
_SKIPPED = text(
    f"update {DELIVERIES} set state = 'skipped', done_at = now(), lease_until = null "
    "where id = :id and attempts = :attempts"
)
_RETRY = text(
    f"update {DELIVERIES} set state = 'pending', lease_until = null, "
    "next_attempt_at = now() + make_interval(secs => :delay), last_error = :error "
    "where id = :id and attempts = :attempts"
)
_DEAD = text(
    f"update {DELIVERIES} set state = 'dead', lease_until = null, last_error = :error "
    "where id = :id and attempts = :attempts"
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


_REINDEX = text(
    f"""select _reindex_events(:tenant, :seq, least(
          (select min(next_attempt_at) from {DELIVERIES} where state = 'pending'),
          (select min(lease_until) from {DELIVERIES} where state = 'running'),
          (select now() from {OUTBOX} where fanned_out_at is null limit 1)))"""
)


async def _reindex(work: _Pass, session: Any, seq: int | None) -> None:
    """Point the tenant's index entry at its next due time, or drop it when none is left;
    in the pass's last tenant transaction, through the kernel's `_reindex_events`."""
    await session.execute(_REINDEX, {"tenant": work.tenant.id, "seq": seq})


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


# Observability -----------------------------------------------------------------------


async def pipeline_stats(platform: Platform, *, max_tenants: int = 500) -> dict[str, Any]:
    """Deliveries by state and the outbox lag, over the tenants the index names (those are
    the only ones with work), plus the dead letters and the jobs by state."""
    async with platform.db.autocommit() as conn:
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
    return {
        "deliveries": {**states, "dead": int(dead or 0)},
        "outbox_lag_s": round(lag_s, 3),
        "tenants_with_work": len(pending_tenants),
        "jobs": jobs,
    }

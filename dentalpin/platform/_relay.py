"""Delivering events: fan-out, leases, the inbox, retries, dead letters, the sweep.

One relay pass (`deliver`) works on one tenant, in rounds until nothing is due or its
time budget is spent:

1. fan out: events not yet fanned out get one delivery row per subscriber whose module
   is installed in the tenant *now*;
2. claim: due deliveries (pending and due, or running with an expired lease: a lost
   worker) are leased with `FOR UPDATE SKIP LOCKED`, their attempt counted;
3. run: each in its own tenant transaction that first inserts (event, subscriber) into
   the inbox — a row already there means the effect happened, so the handler is skipped —
   then runs the handler and marks the delivery done. A failure schedules a retry with
   exponential backoff and jitter, or dead-letters it after the last attempt.

Finally the tenant's entry in `platform.event_tenants` is set to its next due time, or
removed when nothing is left (fenced by `seq`, so a concurrent publish is never lost).
The sweep reads only that index.
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
from ._events import DELIVERIES, INBOX, OUTBOX, EventContext
from ._module import TenantRef
from ._runtime import Platform
from ._tables import event_dead_letters, event_tenants, tenant_modules, tenants

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
        ref, installed = found
        seq = await conn.scalar(
            select(event_tenants.c.seq).where(event_tenants.c.tenant_id == ref.id)
        )
    return await _deliver(
        _Pass(platform, ref, TenantScope(ref.schema, ref.role), installed), seq, budget_s
    )


async def _deliver(work: _Pass, seq: int | None, budget_s: float) -> DeliveryReport:
    deadline = time.monotonic() + budget_s
    while True:
        fanned = await _fan_out(work)
        claimed = await _claim(work)
        for delivery in claimed:
            await _run(work, delivery)
        if not fanned and not claimed:
            break
        if time.monotonic() > deadline:
            work.report.more = True
            break
    await _reindex(work, seq)
    return work.report


async def _tenant_and_modules(
    conn: AsyncConnection, key: uuid.UUID | str
) -> tuple[TenantRef, frozenset[str]] | None:
    by = tenants.c.id == key if isinstance(key, uuid.UUID) else tenants.c.schema_name == key
    row = (
        await conn.execute(
            select(
                tenants.c.id,
                tenants.c.slug,
                tenants.c.name,
                tenants.c.schema_name,
                tenants.c.db_role,
            ).where(by, tenants.c.status.in_(("active", "spare")))
        )
    ).first()
    if row is None:
        return None
    tenant_id = row.id
    installed = await conn.execute(
        select(tenant_modules.c.module).where(
            tenant_modules.c.tenant_id == tenant_id, tenant_modules.c.state == "installed"
        )
    )
    ref = TenantRef(tenant_id, row.slug, row.name, row.schema_name, row.db_role)
    return ref, frozenset(installed.scalars())


async def _fan_out(work: _Pass) -> int:
    routes = [
        (event, module)
        for event, modules in work.platform.registry.subscribers(work.installed).items()
        for module in modules
    ]
    if routes:
        values = ", ".join(f"(:e{i}, :m{i})" for i in range(len(routes)))
        params: dict[str, Any] = {}
        for i, (event, module) in enumerate(routes):
            params |= {f"e{i}": event, f"m{i}": module}
        insert_deliveries = f"""
            , ins as (
              insert into {DELIVERIES} (event_id, subscriber)
              select ev.id, r.subscriber
                from ev join (values {values}) as r(name, subscriber) on r.name = ev.name
              on conflict (event_id, subscriber) do nothing
              returning 1)
            select (select count(*) from ev)"""
    else:
        params, insert_deliveries = {}, " select (select count(*) from ev)"
    statement = text(
        f"""
        with ev as (
          update {OUTBOX} o set fanned_out_at = now()
           where o.id in (select id from {OUTBOX} where fanned_out_at is null
                           order by seq limit :limit for update skip locked)
          returning o.id, o.name)
        {insert_deliveries}
        """
    ).bindparams(*(bindparam(k) for k in params))
    async with work.platform.db.tenant(work.scope) as session:
        count = await session.scalar(
            statement, {**params, "limit": work.platform.settings.events_batch}
        )
    work.report.fanned_out += int(count or 0)
    return int(count or 0)


async def _claim(work: _Pass) -> list[_Claimed]:
    settings = work.platform.settings
    statement = text(
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
    async with work.platform.db.tenant(work.scope) as session:
        rows = await session.execute(
            statement, {"lease": settings.events_lease_s, "limit": settings.events_batch}
        )
        return [_Claimed(**r._mapping) for r in rows]


async def _run(work: _Pass, d: _Claimed) -> None:
    settings = work.platform.settings
    if d.attempts > settings.events_max_attempts:
        # Claimed again after its last attempt's lease ran out: that worker was lost.
        await _dead(work, d, f"gave up after {d.attempts - 1} attempts (the last worker was lost)")
        return
    handler = None
    if d.subscriber in work.installed and d.subscriber in work.platform.registry:
        handler = work.platform.registry.get(d.subscriber).module.subscriptions().get(d.name)
    if handler is None:
        await _finish(work, d, "skipped")
        work.report.skipped += 1
        return
    try:
        async with work.platform.db.tenant(work.scope) as session:
            first = await session.execute(
                text(
                    f"insert into {INBOX} (event_id, subscriber) values (:e, :s) "
                    "on conflict do nothing returning 1"
                ),
                {"e": d.event_id, "s": d.subscriber},
            )
            if first.first() is not None:
                await handler(
                    EventContext(
                        session=session,
                        tenant=work.tenant,
                        event_id=d.event_id,
                        name=d.name,
                        version=d.version,
                        payload=d.payload,
                        occurred_at=d.occurred_at,
                        attempt=d.attempts,
                    )
                )
            await session.execute(_done(), {"id": d.id, "attempts": d.attempts})
    except Exception as exc:
        await _failed(work, d, f"{type(exc).__name__}: {exc}")
        return
    work.report.delivered += 1


def _done() -> Any:
    # Fenced by the attempt: a slow worker whose lease was taken over changes nothing.
    return text(
        f"update {DELIVERIES} set state = 'done', done_at = now(), lease_until = null, "
        "last_error = null where id = :id and attempts = :attempts"
    )


async def _finish(work: _Pass, d: _Claimed, state: str) -> None:
    async with work.platform.db.tenant(work.scope) as session:
        await session.execute(
            text(
                f"update {DELIVERIES} set state = :state, done_at = now(), lease_until = null "
                "where id = :id and attempts = :attempts"
            ),
            {"state": state, "id": d.id, "attempts": d.attempts},
        )


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with "equal jitter": between half and all of the capped delay."""
    capped: float = min(max_s, base_s * 2.0 ** max(0, attempt - 1))
    return capped / 2 + random.uniform(0, capped / 2)  # noqa: S311 - jitter, not secrecy


async def _failed(work: _Pass, d: _Claimed, error: str) -> None:
    settings = work.platform.settings
    if d.attempts >= settings.events_max_attempts:
        await _dead(work, d, error)
        return
    delay = backoff_s(d.attempts, settings.events_backoff_s, settings.events_backoff_max_s)
    async with work.platform.db.tenant(work.scope) as session:
        await session.execute(
            text(
                f"update {DELIVERIES} set state = 'pending', lease_until = null, "
                "next_attempt_at = now() + make_interval(secs => :delay), last_error = :error "
                "where id = :id and attempts = :attempts"
            ),
            {"delay": delay, "error": error[:ERROR_LIMIT], "id": d.id, "attempts": d.attempts},
        )
    work.report.retried += 1


async def _dead(work: _Pass, d: _Claimed, error: str) -> None:
    async with work.platform.db.tenant(work.scope) as session:
        changed = await session.execute(
            text(
                f"update {DELIVERIES} set state = 'dead', lease_until = null, last_error = :error "
                "where id = :id and attempts = :attempts"
            ),
            {"error": error[:ERROR_LIMIT], "id": d.id, "attempts": d.attempts},
        )
    if not changed.rowcount:  # type: ignore[attr-defined]
        return
    async with work.platform.db.platform() as session:
        await session.execute(_dead_letter_upsert(work.tenant.id, d, error))
    work.report.dead += 1


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


async def _reindex(work: _Pass, seq: int | None) -> None:
    """Point the tenant's index entry at its next due time, or drop it when none is left."""
    async with work.platform.db.tenant(work.scope) as session:
        due = await session.scalar(
            text(
                f"""select least(
                      (select min(next_attempt_at) from {DELIVERIES} where state = 'pending'),
                      (select min(lease_until) from {DELIVERIES} where state = 'running'),
                      (select now() from {OUTBOX} where fanned_out_at is null limit 1))"""
            )
        )
    tenant_id = work.tenant.id
    async with work.platform.db.platform() as session:
        if due is None:
            # Fenced by seq: an entry re-marked by a publish since we read it stays.
            if seq is not None:
                await session.execute(
                    delete(event_tenants).where(
                        event_tenants.c.tenant_id == tenant_id, event_tenants.c.seq == seq
                    )
                )
            return
        await mark_due(session, tenant_id, due, keep_earlier_unless_seq=seq)


async def mark_due(
    session: Any,
    tenant_id: uuid.UUID,
    due: datetime | None,
    *,
    keep_earlier_unless_seq: int | None = None,
) -> None:
    """Upsert the tenant's index entry, due at `due` (None: now). An entry whose seq moved
    on (a publish since the pass began) keeps its own due time when that is earlier."""
    await session.execute(
        text(
            """
            insert into platform.event_tenants (tenant_id, due_at, seq)
            values (:t, coalesce(cast(:due as timestamptz), now()),
                    nextval('platform.event_tenants_seq'))
            on conflict (tenant_id) do update
               set due_at = case when platform.event_tenants.seq = :seq
                                 then excluded.due_at
                                 else least(platform.event_tenants.due_at, excluded.due_at) end
            """
        ),
        {"t": tenant_id, "due": due, "seq": keep_earlier_unless_seq},
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
            await mark_due(session, row.tenant_id, None)
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

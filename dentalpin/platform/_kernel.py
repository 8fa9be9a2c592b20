"""The tenant kernel: what the platform itself keeps in every tenant schema.

The event tables (`_outbox`, `_deliveries`, `_inbox`), the trigger that puts a tenant in
the sweep's index, and two `SECURITY DEFINER` functions through which a tenant's own
transaction touches the platform schema — its index entry (`_reindex_events`) and its
audit entries (`_audit`) — each refusing any tenant but the one whose role calls it.
Created with the schema (`create_schema_and_role`); a change ships as a platform revision
that walks the tenants (see 0004_events). The leading `_` cannot start a module name.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ._events import DELIVERIES, DELIVERY_STATES, INBOX, OUTBOX

KERNEL_TABLES = (OUTBOX, DELIVERIES, INBOX)
KERNEL_FUNCTIONS = (
    "_mark_events_pending()",
    "_reindex_events(uuid, bigint, timestamptz)",
    "_audit(uuid, text, text, text, text, uuid, text, jsonb)",
)


def _own_tenant(what: str) -> str:
    """The guard of the kernel's SECURITY DEFINER functions: `tenant` must be the tenant
    whose role is calling (SET LOCAL ROLE), else insufficient_privilege."""
    return (
        "if not exists (select 1 from platform.tenants t where t.id = tenant"
        " and t.db_role = current_setting('role')) then"
        f" raise exception 'not this tenant''s {what}' using errcode = 'insufficient_privilege';"
        " end if;"
    )


def kernel_ddl(schema: str, grace_s: float) -> list[str]:
    """The platform's tables in one tenant schema: outbox, deliveries, inbox, and the trigger
    that puts the tenant in the sweep's index. The trigger function runs as its owner (the
    platform) and finds the tenant by the schema of the table it fired on, so a tenant can
    mark only itself; every tenant's kernel is the same DDL (DDL images compare equal)."""
    s = f'"{schema}"'
    return [
        f"""create table {s}.{OUTBOX} (
              id uuid primary key,
              seq bigint generated always as identity unique,
              name text not null,
              version integer not null,
              payload jsonb not null,
              occurred_at timestamptz not null default now(),
              fanned_out_at timestamptz)""",
        f"create index ix_outbox_unfanned on {s}.{OUTBOX} (seq) where fanned_out_at is null",
        f"""create table {s}.{DELIVERIES} (
              id bigint generated always as identity primary key,
              event_id uuid not null references {s}.{OUTBOX} (id) on delete cascade,
              subscriber text not null,
              state text not null default 'pending'
                check (state in ({", ".join(f"'{x}'" for x in DELIVERY_STATES)})),
              attempts integer not null default 0,
              next_attempt_at timestamptz not null default now(),
              lease_until timestamptz,
              last_error text,
              created_at timestamptz not null default now(),
              done_at timestamptz,
              unique (event_id, subscriber))""",
        f"create index ix_deliveries_due on {s}.{DELIVERIES} (next_attempt_at) "
        "where state = 'pending'",
        f"create index ix_deliveries_leased on {s}.{DELIVERIES} (lease_until) "
        "where state = 'running'",
        f"create index ix_deliveries_dead on {s}.{DELIVERIES} (id) where state = 'dead'",
        f"""create table {s}.{INBOX} (
              event_id uuid not null,
              subscriber text not null,
              processed_at timestamptz not null default now(),
              primary key (event_id, subscriber))""",
        f"""create function {s}._mark_events_pending() returns trigger
              language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
            begin
              insert into platform.event_tenants (tenant_id, due_at, seq)
              select t.id, now() + interval '{float(grace_s)} seconds',
                     nextval('platform.event_tenants_seq')
                from platform.tenants t where t.schema_name = tg_table_schema
              on conflict (tenant_id) do update
                 set seq = excluded.seq,
                     due_at = least(platform.event_tenants.due_at, excluded.due_at);
              return null;
            end $fn$""",
        f"create trigger outbox_marks_tenant after insert on {s}.{OUTBOX} "
        f"for each statement execute function {s}._mark_events_pending()",
        # The relay's last step, in the tenant's own transaction: point the tenant's index
        # entry at `next_due`, or drop it (null) unless a publish re-marked it since the
        # pass read `pass_seq`. Only the tenant whose role is calling can be touched.
        f"""create function {s}._reindex_events(
                tenant uuid, pass_seq bigint, next_due timestamptz) returns void
              language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
            begin
              {_own_tenant("index entry")}
              if next_due is null then
                delete from platform.event_tenants e
                 where e.tenant_id = tenant and e.seq = pass_seq;
              else
                insert into platform.event_tenants (tenant_id, due_at, seq)
                values (tenant, next_due, nextval('platform.event_tenants_seq'))
                on conflict (tenant_id) do update
                   set due_at = case when platform.event_tenants.seq = pass_seq
                                     then excluded.due_at
                                     else least(platform.event_tenants.due_at, excluded.due_at)
                                end;
              end if;
            end $fn$""",
        # Tenant-data access, audited in the request's own transaction (`_http`): an entry
        # exists exactly when the read or write it records committed.
        f"""create function {s}._audit(
                tenant uuid, action text, target text, request_id text, ip text,
                actor_id uuid, actor text, details jsonb) returns void
              language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
            begin
              {_own_tenant("audit log")}
              insert into platform.audit_log
                     (tenant_id, actor_id, actor, action, target, request_id, ip, details)
              values (tenant, actor_id, actor, action, target, request_id, ip, details);
            end $fn$""",
    ]


async def create_kernel(conn: AsyncConnection, schema: str, grace_s: float) -> None:
    for statement in kernel_ddl(schema, grace_s):
        await conn.execute(text(statement))

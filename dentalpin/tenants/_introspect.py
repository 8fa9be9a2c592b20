"""What a tenant schema holds, read from PostgreSQL's catalogue.

`owned_objects` is what the lifecycle diffs to learn which objects a module's
migrations created (so uninstall can archive its tables and drop the types and
functions a downgrade forgot); `describe_schema` is the full picture the
uninstall round-trip test compares object for object.
"""

from __future__ import annotations

import graphlib
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Starts from pg_depend (indexed on the namespace) instead of filtering pg_class, pg_type
# and pg_proc by schema, which scans the whole catalogue: with 1,000 tenants that was
# 26-40 ms a call, and every lifecycle operation makes two (docs/benchmarks.md).
_OBJECTS = text(
    """
    with member as (
        select d.classid, d.objid from pg_depend d
         where d.refclassid = 'pg_namespace'::regclass
           and d.refobjid = cast(:schema as regnamespace) and d.deptype = 'n'),
    rel as (
        select c.oid, c.relname, c.relkind from member m join pg_class c on c.oid = m.objid
         where m.classid = 'pg_class'::regclass),
    typ as (
        select t.typname, t.typtype, t.typrelid from member m join pg_type t on t.oid = m.objid
         where m.classid = 'pg_type'::regclass)
    select 'table:' || relname from rel where relkind in ('r', 'p')
    union all
    select 'view:' || relname from rel where relkind in ('v', 'm')
    union all
    select 'sequence:' || c.relname from rel c
     where c.relkind = 'S'
       and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass
                          and d.objid = c.oid and d.deptype in ('a', 'i'))
    union all
    select 'type:' || typname from typ where typtype in ('e', 'd', 'r', 'm')
    union all
    select 'type:' || t.typname from typ t join pg_class c on c.oid = t.typrelid
     where t.typtype = 'c' and c.relkind = 'c'
    union all
    select 'function:' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
      from member m join pg_proc p on p.oid = m.objid where m.classid = 'pg_proc'::regclass
    """
)


async def owned_objects(conn: AsyncConnection, schema: str) -> set[str]:
    """Top-level objects of a schema as `kind:name` (indexes and constraints go with tables)."""
    return set((await conn.execute(_OBJECTS, {"schema": schema})).scalars())


async def schema_exists(conn: AsyncConnection, schema: str) -> bool:
    found = await conn.execute(
        text("select 1 from pg_namespace where nspname = :schema"), {"schema": schema}
    )
    return found.first() is not None


async def tables_in_load_order(conn: AsyncConnection, schema: str, tables: list[str]) -> list[str]:
    """`tables` ordered so that every table comes after the tables its foreign keys point to."""
    rows = await conn.execute(
        text(
            """
            select c.relname as child, p.relname as parent
              from pg_constraint k
              join pg_class c on c.oid = k.conrelid
              join pg_class p on p.oid = k.confrelid
             where k.contype = 'f' and c.relnamespace = cast(:schema as regnamespace)
               and c.relname <> p.relname
            """
        ),
        {"schema": schema},
    )
    wanted = set(tables)
    graph: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in rows:
        if child in wanted and parent in wanted:
            graph[child].add(parent)
    return list(graphlib.TopologicalSorter(graph).static_order())


_DESCRIBE: dict[str, str] = {
    "columns": """
        select c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || case when a.attnotnull then ' not null' else '' end
               || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
          from pg_attribute a join pg_class c on c.oid = a.attrelid
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where c.relnamespace = cast(:schema as regnamespace) and a.attnum > 0
           and not a.attisdropped and c.relkind in ('r', 'p', 'v', 'm')""",
    "indexes": """
        select indexdef from pg_indexes where schemaname = :schema""",
    "constraints": """
        select c.relname || '.' || k.conname || ' ' || pg_get_constraintdef(k.oid)
          from pg_constraint k join pg_class c on c.oid = k.conrelid
         where c.relnamespace = cast(:schema as regnamespace)""",
    "sequences": """
        select sequencename || ' ' || data_type::text || ' ' || increment_by
          from pg_sequences where schemaname = :schema""",
    "types": """
        select t.typname || ' ' || t.typtype::text || coalesce(' ' || (
                 select string_agg(e.enumlabel, ',' order by e.enumsortorder)
                   from pg_enum e where e.enumtypid = t.oid), '')
          from pg_type t
         where t.typnamespace = cast(:schema as regnamespace)
           and (t.typtype <> 'c' or exists (select 1 from pg_class c
                                             where c.oid = t.typrelid and c.relkind = 'c'))
           and t.typname not like '\\_%'""",
    "functions": """
        select pg_get_functiondef(p.oid) from pg_proc p
         where p.pronamespace = cast(:schema as regnamespace) and p.prokind in ('f', 'p')""",
    "triggers": """
        select pg_get_triggerdef(t.oid) from pg_trigger t join pg_class c on c.oid = t.tgrelid
         where c.relnamespace = cast(:schema as regnamespace) and not t.tgisinternal""",
    "views": """
        select c.relname || ' ' || pg_get_viewdef(c.oid) from pg_class c
         where c.relnamespace = cast(:schema as regnamespace) and c.relkind in ('v', 'm')""",
    "grants": """
        select c.relname || ' ' || coalesce(
                 (select string_agg(case when a.grantee = 0 then 'public'
                                         when r.rolname like 't\\_%' or r.rolname ~ '_t_[a-z0-9]+$'
                                         then 'tenant' else r.rolname end
                                    || ':' || a.privilege_type, ',' order by 1)
                    from aclexplode(c.relacl) a left join pg_roles r on r.oid = a.grantee), '')
          from pg_class c
         where c.relnamespace = cast(:schema as regnamespace)
           and c.relkind in ('r', 'p', 'v', 'S')""",
}


async def describe_schema(conn: AsyncConnection, schema: str) -> dict[str, Any]:
    """Every object of a schema, as sorted text, for object-for-object comparisons.

    The schema is put on the search path while reading, so definitions print without
    their schema name and two tenants' schemas compare equal when their objects do.
    """
    previous = (await conn.execute(text("select current_setting('search_path')"))).scalar()
    await conn.execute(
        text("select set_config('search_path', :path, true)"), {"path": f'"{schema}", extensions'}
    )
    described: dict[str, Any] = {}
    try:
        for kind, query in _DESCRIBE.items():
            rows = (await conn.execute(text(query), {"schema": schema})).scalars()
            # Index and function definitions always name their schema; drop it.
            described[kind] = sorted(
                row.replace(f'"{schema}".', "").replace(f"{schema}.", "") for row in rows
            )
    finally:
        await conn.execute(
            text("select set_config('search_path', :path, true)"), {"path": previous}
        )
    return described

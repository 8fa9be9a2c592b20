"""The module contract, enforced (DESIGN §3 and §4): every rule is checked for every module
the registry discovers, built in or third-party alike, parametrized by module name.

- its manifest validates (it is in the registry, not quarantined);
- it imports only the standard library, third-party libraries, the platform's public API
  (`dentalpin.platform`), its own package and the modules in its `depends`;
- its foreign keys point only to its own tables or to tables of modules in its `depends`,
  in its metadata and in the schema its migrations really build;
- no column its migrations build has an enum, domain or composite type of the tenant's
  schema (another OID in every clinic; the registry refuses such types in metadata);
- every HTTP route declares a permission the registry knows, or is explicitly public;
- its migration lineage lints clean (no CREATE EXTENSION, declared requirements, one head);
- uninstall leaves the tenant schema exactly as it was before the install, and restore
  brings the data back, sequence values included, without touching any other tenant.

Each checker also has a negative test, so a checker that silently accepts everything fails.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import re
import secrets
import sys
import textwrap
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.dependencies.models import Dependant
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    Time,
    Uuid,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from dentalpin.app import create_app
from dentalpin.platform import Module, Registry, public, require_permission
from dentalpin.platform._http import PermissionCheck, route_guards
from dentalpin.platform._jobs import JobRecord, executor_of, submit
from dentalpin.platform._registry import ENTRY_POINT_GROUP
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import archives
from dentalpin.tenants import (
    TenantRecord,
    create_tenant,
    dry_run_uninstall,
    lineages,
    lint_lineage,
    load_lineage,
    module_states,
)
from dentalpin.tenants._introspect import describe_schema, owned_objects, tables_in_load_order
from tests.conftest import unique_slug

BROKEN_DISTRIBUTION = "dentalpin-broken-modules"
"""The fixture distribution of deliberately broken modules (see test_registry.py)."""

PUBLIC_API = "dentalpin.platform"


def _normalized(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


REGISTRY = Registry.discover()
MODULES = REGISTRY.names
REMOVABLE = [name for name in MODULES if REGISTRY.get(name).manifest.removable]
ENTRY_POINTS = sorted(
    {
        ep.name: ep.dist.name if ep.dist else "?"
        for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP)
        if not (ep.dist and _normalized(ep.dist.name) == BROKEN_DISTRIBUTION)
    }.items()
)


# 1. Manifests -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "distribution"), ENTRY_POINTS)
def test_manifest_validates(name: str, distribution: str) -> None:
    quarantine = REGISTRY.quarantined.get(name)
    assert quarantine is None, (
        f"module '{name}' (distribution {distribution}) is quarantined: {quarantine.reason}"
    )
    assert name in REGISTRY
    assert REGISTRY.get(name).manifest.name == name


def test_there_are_modules_to_check() -> None:
    assert {"fx_people", "fx_visits", "recall"} <= set(MODULES)


# 2. Import isolation ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImportRules:
    """What one module may import, by dotted package name."""

    module: str
    own: str
    allowed: dict[str, str]
    """Packages of the modules in `depends` -> module name."""
    forbidden: dict[str, str]
    """Packages of every other module (quarantined ones included) -> module name."""


def _within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def check_import(target: str, rules: ImportRules) -> str | None:
    """Why importing `target` breaks the rules, or None when it is fine."""
    if _within(target, rules.own) or any(_within(target, p) for p in rules.allowed):
        return None
    for package, other in rules.forbidden.items():
        if _within(target, package):
            return (
                f"imports {target}, which belongs to module '{other}'; add '{other}' to depends "
                "or react to its events instead"
            )
    if target.split(".")[0] == "dentalpin" and target != PUBLIC_API:
        if _within(target, PUBLIC_API):
            return f"imports {target}, a private part of the platform; use {PUBLIC_API}"
        return f"imports {target}, which is not the platform's public API ({PUBLIC_API})"
    return None  # the standard library or a third-party library


def import_violations(
    source: str, filename: str, dotted: str, is_package: bool, rules: ImportRules
) -> list[str]:
    """Every import of one file that breaks `rules` (static imports and constant
    `importlib.import_module(...)` / `__import__(...)` calls)."""
    problems: list[str] = []
    here = dotted if is_package else dotted.rpartition(".")[0]

    def report(node: ast.AST, why: str | None) -> None:
        if why:
            problems.append(f"{filename}:{getattr(node, 'lineno', '?')}: {why}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                report(node, check_import(alias.name, rules))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".") if here else []
                if node.level - 1 >= len(parts):
                    report(
                        node, f"relative import (level {node.level}) climbs out of every package"
                    )
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = [a.name for a in node.names if a.name != "*"]
            if target == "dentalpin":
                for name in names:
                    report(node, check_import(f"dentalpin.{name}", rules))
            elif target == PUBLIC_API:
                for name in names:
                    if name.startswith("_"):
                        report(node, f"imports {PUBLIC_API}.{name}, a private part of the platform")
            else:
                # `from pkg import a_module`: a name that is a module's package is what is
                # imported; otherwise it is `pkg` itself.
                packages = [rules.own, *rules.allowed, *rules.forbidden]
                checked = set()
                for name in names or [""]:
                    sub = f"{target}.{name}"
                    if any(_within(target, p) for p in packages) or not any(
                        _within(sub, p) for p in packages
                    ):
                        sub = target
                    if sub not in checked:
                        checked.add(sub)
                        report(node, check_import(sub, rules))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (
                called in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and not first.value.startswith(".")
            ):
                report(node, check_import(first.value, rules))
    return problems


def package_of(cls: type[Module]) -> str:
    """The dotted package a module class lives in ('' for a single-file module)."""
    return sys.modules[cls.__module__].__package__ or ""


def import_rules(registry: Registry, name: str) -> ImportRules:
    spec = registry.get(name)
    packages = {s.name: package_of(type(s.module)) or type(s.module).__module__ for s in registry}
    allowed = {packages[dep]: dep for dep in spec.manifest.depends}
    forbidden = {p: n for n, p in packages.items() if n != name and n not in spec.manifest.depends}
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in packages and ep.name != name:
            forbidden.setdefault(ep.module, ep.name)  # quarantined: its module path
    return ImportRules(name, packages[name], allowed, forbidden)


def module_sources(registry: Registry, name: str) -> Iterator[tuple[Path, str, bool]]:
    """(file, dotted module name, is a package) for every .py file of a module's package,
    leaving out the packages of other modules nested inside it."""
    cls = type(registry.get(name).module)
    package = package_of(cls)
    if not package:  # a single-file module
        yield Path(sys.modules[cls.__module__].__file__ or ""), cls.__module__, False
        return
    root = cls.package_dir()
    nested = [
        type(s.module).package_dir()
        for s in registry
        if s.name != name and type(s.module).package_dir() != root
    ]
    for path in sorted(root.rglob("*.py")):
        if any(path.is_relative_to(d) for d in nested if d.is_relative_to(root)):
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        yield path, ".".join([package, *parts]), is_package


@pytest.mark.parametrize("name", MODULES)
def test_imports_only_the_public_api_and_its_dependencies(name: str) -> None:
    rules = import_rules(REGISTRY, name)
    problems: list[str] = []
    files = list(module_sources(REGISTRY, name))
    assert files, f"no source files found for module '{name}'"
    for path, dotted, is_package in files:
        problems += import_violations(path.read_text("utf-8"), str(path), dotted, is_package, rules)
    assert problems == [], f"module '{name}' breaks import isolation:\n" + "\n".join(problems)


SYNTHETIC_RULES = ImportRules(
    module="charts",
    own="acme_charts",
    allowed={"dentalpin.modules.patients": "patients"},
    forbidden={"dentalpin.modules.billing": "billing", "acme_suite.xrays": "xrays"},
)


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("from dentalpin.tenants import create_tenant", "dentalpin.tenants, which is not"),
        ("import dentalpin.app", "dentalpin.app, which is not"),
        ("import dentalpin.cli as cli", "dentalpin.cli, which is not"),
        ("from dentalpin import tenants", "dentalpin.tenants, which is not"),
        ("import dentalpin", "imports dentalpin, which is not"),
        ("from dentalpin.platform._db import TenantScope", "private part of the platform"),
        ("from dentalpin.platform import _jobs", "dentalpin.platform._jobs, a private part"),
        ("import dentalpin.platform._http", "private part of the platform"),
        ("from dentalpin.modules.billing import models", "belongs to module 'billing'"),
        ("from dentalpin.modules import billing", "belongs to module 'billing'"),
        ("import acme_suite.xrays.models", "belongs to module 'xrays'"),
        ("from acme_suite import xrays", "belongs to module 'xrays'"),
        ("from ..acme_suite.xrays import models", "climbs out of every package"),
        ("def f():\n    from dentalpin.tenants import x", "dentalpin.tenants"),
        ("import importlib\nimportlib.import_module('dentalpin.tenants')", "dentalpin.tenants"),
        ("__import__('acme_suite.xrays')", "belongs to module 'xrays'"),
    ],
)
def test_the_import_checker_catches_violations(source: str, needle: str) -> None:
    problems = import_violations(
        source, "charts/views.py", "acme_charts.views", False, SYNTHETIC_RULES
    )
    assert len(problems) == 1, problems
    assert needle in problems[0]
    assert problems[0].startswith("charts/views.py:")


def test_relative_imports_that_climb_out_count_as_imports_of_their_target() -> None:
    # A module living at acme.charts, next to acme.xrays (another module).
    rules = ImportRules(
        "charts", "acme.charts", {"acme.patients": "patients"}, {"acme.xrays": "xrays"}
    )
    bad = import_violations("from ..xrays.models import Xray", "f.py", "acme.charts", True, rules)
    assert bad == [
        "f.py:1: imports acme.xrays.models, which belongs to module 'xrays'; "
        "add 'xrays' to depends or react to its events instead"
    ]
    bad = import_violations("from .. import xrays", "f.py", "acme.charts.views", False, rules)
    assert len(bad) == 1
    assert "module 'xrays'" in bad[0]
    ok = "from ..patients.models import patients\nfrom . import models\nfrom .models import x"
    assert import_violations(ok, "f.py", "acme.charts", True, rules) == []
    assert import_violations("from .sub import y", "f.py", "acme.charts.views", False, rules) == []


def test_the_import_checker_allows_what_the_contract_allows() -> None:
    source = textwrap.dedent(
        """
        from __future__ import annotations
        import os, json
        import sqlalchemy as sa
        from fastapi import APIRouter
        from dentalpin.platform import Module, Manifest, require_permission
        from dentalpin import platform
        import dentalpin.platform
        from dentalpin.modules.patients.models import patients
        from acme_charts.models import charts
        from .models import charts as again
        from . import views
        from acme_suite import helpers
        importlib.import_module(name)
        """
    )
    assert import_violations(source, "x.py", "acme_charts", True, SYNTHETIC_RULES) == []


# 3. Foreign-key isolation ------------------------------------------------------------------


def table_owners(registry: Registry) -> dict[str, str]:
    owners: dict[str, str] = {}
    for spec in registry:
        if spec.module.metadata is not None:
            for table in spec.module.metadata.tables.values():
                owners.setdefault(table.name, spec.name)
    return owners


def metadata_fk_violations(
    module: str, metadata: MetaData, owners: dict[str, str], depends: Iterable[str]
) -> list[str]:
    allowed = {module, *depends}
    problems = []
    for table in sorted(metadata.tables.values(), key=lambda t: t.name):
        for fk in sorted(table.foreign_keys, key=lambda f: f.target_fullname):
            target = fk.target_fullname
            parts = target.split(".")
            where = f"{module}: {table.name}.{fk.parent.name} -> {target}"
            if len(parts) > 2:
                problems.append(
                    f"{where}: names schema '{parts[0]}'; tenant tables are schema-less"
                )
                continue
            owner = owners.get(parts[0])
            if owner is None:
                problems.append(f"{where}: no module owns table '{parts[0]}'")
            elif owner not in allowed:
                problems.append(f"{where}: table of module '{owner}', which is not in depends")
    return problems


@pytest.mark.parametrize("name", MODULES)
def test_metadata_foreign_keys_stay_within_depends(name: str) -> None:
    spec = REGISTRY.get(name)
    if spec.module.metadata is None:
        return
    problems = metadata_fk_violations(
        name, spec.module.metadata, table_owners(REGISTRY), spec.manifest.depends
    )
    assert problems == [], "\n".join(problems)


def test_no_two_modules_declare_the_same_table() -> None:
    seen: dict[str, list[str]] = {}
    for spec in REGISTRY:
        for table in spec.module.metadata.tables.values() if spec.module.metadata else ():
            seen.setdefault(table.name, []).append(spec.name)
    assert {t: m for t, m in seen.items() if len(m) > 1} == {}


def test_the_metadata_fk_checker_catches_violations() -> None:
    others = MetaData()
    Table("invoices", others, Column("id", Integer, primary_key=True))
    mine = MetaData()
    Table("patients", mine, Column("id", Integer, primary_key=True))
    Table(
        "charts",
        mine,
        Column("id", Integer, primary_key=True),
        Column("patient_id", ForeignKey("patients.id")),  # own table: fine
        Column("person_id", ForeignKey("people.id")),  # a dependency's table: fine
        Column("invoice_id", ForeignKey("invoices.id")),  # billing is not in depends
        Column("user_id", ForeignKey("platform.users.id")),  # into the platform schema
        Column("ghost_id", ForeignKey("ghosts.id")),  # nobody's table
    )
    owners = {"patients": "charts", "people": "fx_people", "invoices": "billing"}
    problems = metadata_fk_violations("charts", mine, owners, ["fx_people"])
    assert problems == [
        "charts: charts.ghost_id -> ghosts.id: no module owns table 'ghosts'",
        "charts: charts.invoice_id -> invoices.id: table of module 'billing', which is not in "
        "depends",
        "charts: charts.user_id -> platform.users.id: names schema 'platform'; tenant tables "
        "are schema-less",
    ]


_FOREIGN_KEYS = text(
    """
    select k.conname as name, c.relname as child, p.relname as parent,
           pn.nspname as parent_schema
      from pg_constraint k
      join pg_class c on c.oid = k.conrelid
      join pg_class p on p.oid = k.confrelid
      join pg_namespace pn on pn.oid = p.relnamespace
     where k.contype = 'f' and c.relnamespace = cast(:schema as regnamespace)
     order by 1
    """
)


def schema_fk_violations(
    module: str,
    schema: str,
    foreign_keys: Iterable[tuple[str, str, str, str]],
    owners: dict[str, str],
    depends: Iterable[str],
) -> list[str]:
    """FKs of `module`'s tables in a real tenant schema that leave its own and its depends' tables."""
    allowed = {module, *depends}
    problems = []
    for name, child, parent, parent_schema in foreign_keys:
        if owners.get(child) != module:
            continue
        where = f"{module}: {child}.{name} -> {parent_schema}.{parent}"
        if parent_schema != schema:
            problems.append(f"{where}: leaves the tenant's schema")
        elif owners.get(parent) not in allowed:
            problems.append(
                f"{where}: table of {owners.get(parent) or 'no module'}, which is not in depends"
            )
    return problems


def owners_in_tenant(states: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {
        obj.split(":", 1)[1]: module
        for module, state in states.items()
        for obj in state["owned_objects"]
        if obj.startswith("table:")
    }


@pytest.mark.parametrize("name", MODULES)
async def test_migrated_foreign_keys_stay_within_depends(platform: Platform, name: str) -> None:
    tenant = await create_tenant(platform, unique_slug("fk"), modules=[name])
    async with platform.db.engine.connect() as conn:
        states = await module_states(conn, tenant.id)
        fks = [tuple(r) for r in await conn.execute(_FOREIGN_KEYS, {"schema": tenant.schema_name})]
    owners = owners_in_tenant(states)
    assert states[name]["state"] == "installed"
    problems = schema_fk_violations(
        name, tenant.schema_name, fks, owners, REGISTRY.get(name).manifest.depends
    )
    assert problems == [], "\n".join(problems)


_PER_SCHEMA_COLUMNS = text(
    """
    select c.relname as table_name, a.attname as column_name,
           format_type(a.atttypid, a.atttypmod) as type_name
      from pg_attribute a
      join pg_class c on c.oid = a.attrelid
      join pg_type t on t.oid = a.atttypid
      left join pg_type e on e.oid = t.typelem and t.typcategory = 'A'
     where c.relnamespace = cast(:schema as regnamespace) and c.relkind in ('r', 'p', 'v', 'm')
       and a.attnum > 0 and not a.attisdropped
       and coalesce(e.typtype, t.typtype) in ('e', 'd', 'c')
       and coalesce(e.typnamespace, t.typnamespace) = cast(:schema as regnamespace)
     order by 1, 2
    """
)
"""Columns whose type (or array element type) is an enum, domain or composite type of the
tenant's own schema: such a type has another OID in every clinic (see `check_metadata`)."""


@pytest.mark.parametrize("name", MODULES)
async def test_migrated_columns_have_no_type_created_per_schema(
    platform: Platform, name: str
) -> None:
    tenant = await create_tenant(platform, unique_slug("ty"), modules=[name])
    async with platform.db.engine.connect() as conn:
        owners = owners_in_tenant(await module_states(conn, tenant.id))
        found = await conn.execute(_PER_SCHEMA_COLUMNS, {"schema": tenant.schema_name})
    problems = [
        f"{name}: column {r.table_name}.{r.column_name} has the type {r.type_name}, created "
        "in the tenant's schema"
        for r in found
        if owners.get(r.table_name) == name
    ]
    assert problems == [], "\n".join(problems)


async def test_the_per_schema_type_checker_catches_violations(platform: Platform) -> None:
    tenant = await create_tenant(platform, unique_slug("ty"))
    s = f'"{tenant.schema_name}"'
    async with platform.db.engine.connect() as conn, conn.begin() as tx:
        await conn.execute(text(f"create type {s}.kind as enum ('a')"))
        await conn.execute(text(f"create domain {s}.code as text"))
        await conn.execute(
            text(f"create table {s}.things (k {s}.kind, ks {s}.kind[], c {s}.code, t text)")
        )
        found = list(await conn.execute(_PER_SCHEMA_COLUMNS, {"schema": tenant.schema_name}))
        await tx.rollback()
    assert [(r.table_name, r.column_name) for r in found] == [
        ("things", "c"),
        ("things", "k"),
        ("things", "ks"),
    ]


def test_the_schema_fk_checker_catches_violations() -> None:
    owners = {"charts": "charts", "people": "fx_people", "invoices": "billing", "visits": "visits"}
    fks = [
        ("charts_person_fkey", "charts", "people", "t_a"),
        ("charts_invoice_fkey", "charts", "invoices", "t_a"),
        ("charts_user_fkey", "charts", "users", "platform"),
        ("charts_stray_fkey", "charts", "stray", "t_a"),
        ("visits_invoice_fkey", "visits", "invoices", "t_a"),  # another module's problem
    ]
    assert schema_fk_violations("charts", "t_a", fks, owners, ["fx_people"]) == [
        "charts: charts.charts_invoice_fkey -> t_a.invoices: table of billing, which is not in "
        "depends",
        "charts: charts.charts_user_fkey -> platform.users: leaves the tenant's schema",
        "charts: charts.charts_stray_fkey -> t_a.stray: table of no module, which is not in depends",
    ]


# 4. Every route declares a permission or is explicitly public ------------------------------


def effective_routes(routes: list[Any]) -> list[Any]:
    """Routes as served, with included routers flattened (FastAPI >= 0.16x includes lazily)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI copies included routes into app.routes
        return list(routes)
    return list(iter_route_contexts(routes))


def module_routes(app: FastAPI, module: str) -> list[Any]:
    prefix = f"/api/v1/{module}"
    return [
        route
        for route in effective_routes(app.routes)
        if (path := getattr(route, "path", None) or "") == prefix or path.startswith(prefix + "/")
    ]


def route_violations(
    app: FastAPI, module: str, known: dict[str, str], depends: Iterable[str]
) -> list[str]:
    """Routes under /api/v1/<module>/ without a guard, or needing permissions nobody declares."""
    allowed_prefixes = tuple(f"{m}." for m in (module, *depends))
    problems = []
    for route in module_routes(app, module):
        kind = type(getattr(route, "original_route", route)).__name__
        dependant = getattr(route, "dependant", None)
        methods = ",".join(sorted(getattr(route, "methods", None) or ())) or kind
        where = f"{methods} {route.path}"
        if not isinstance(dependant, Dependant):
            problems.append(f"{where}: not a route the contract can check ({kind})")
            continue
        guards = route_guards(dependant)
        if not guards:
            problems.append(
                f"{where}: declares no permission; add require_permission(...) or public()"
            )
        for guard in guards:
            if isinstance(guard, PermissionCheck):
                if guard.permission not in known:
                    problems.append(
                        f"{where}: needs '{guard.permission}', which no manifest declares"
                    )
                elif not guard.permission.startswith(allowed_prefixes):
                    problems.append(
                        f"{where}: needs '{guard.permission}' of a module not in depends"
                    )
    return problems


@pytest.fixture(scope="module")
def app(platform: Platform) -> FastAPI:
    return create_app(platform)


@pytest.mark.parametrize("name", MODULES)
def test_every_route_declares_a_permission_or_is_public(
    platform: Platform, app: FastAPI, name: str
) -> None:
    registry = platform.registry
    router = registry.get(name).module.router()
    declared = effective_routes(router.routes) if router is not None else []
    assert len(module_routes(app, name)) == len(declared), "some routes were not found to check"
    problems = route_violations(
        app, name, registry.permissions(), registry.get(name).manifest.depends
    )
    assert problems == [], "\n".join(problems)


def test_modules_with_routers_are_mounted(app: FastAPI) -> None:
    paths = {getattr(r, "path", "") for r in effective_routes(app.routes)}
    assert "/api/v1/fx_people/people" in paths
    assert "/api/v1/recall/status" in paths
    assert "/api/v1/recall/reminders" in paths


def test_the_route_checker_catches_violations() -> None:
    router = APIRouter()

    @router.get("/open")
    async def open_route() -> dict[str, str]:
        return {}

    @router.get("/guarded", dependencies=[require_permission("fake.thing.read")])
    async def guarded() -> dict[str, str]:
        return {}

    @router.get("/welcome", dependencies=[public()])
    async def welcome() -> dict[str, str]:
        return {}

    @router.post("/typo", dependencies=[require_permission("fake.thing.raed")])
    async def typo() -> dict[str, str]:
        return {}

    @router.get("/foreign", dependencies=[require_permission("billing.invoice.read")])
    async def foreign() -> dict[str, str]:
        return {}

    async def nested(guard: Any = require_permission("fake.thing.read")) -> None:
        return None

    @router.get("/nested", dependencies=[Depends(nested)])
    async def nested_route() -> dict[str, str]:
        return {}

    app = FastAPI()
    app.include_router(router, prefix="/api/v1/fake", dependencies=[Depends(lambda: None)])
    known = {"fake.thing.read": "Read", "billing.invoice.read": "Read invoices"}
    assert route_violations(app, "fake", known, depends=[]) == [
        "GET /api/v1/fake/open: declares no permission; add require_permission(...) or public()",
        "POST /api/v1/fake/typo: needs 'fake.thing.raed', which no manifest declares",
        "GET /api/v1/fake/foreign: needs 'billing.invoice.read' of a module not in depends",
    ]
    assert route_violations(app, "fake", known, depends=["billing"]) == [
        "GET /api/v1/fake/open: declares no permission; add require_permission(...) or public()",
        "POST /api/v1/fake/typo: needs 'fake.thing.raed', which no manifest declares",
    ]
    guarded_route = next(r for r in module_routes(app, "fake") if r.path.endswith("/nested"))
    guards = route_guards(guarded_route.dependant)
    assert [getattr(g, "permission", "public") for g in guards] == ["fake.thing.read"]


# 5. Migration lint and the CREATE EXTENSION guard ------------------------------------------


@pytest.mark.parametrize("name", MODULES)
def test_lineage_lints_clean(name: str) -> None:
    lineage = lineages(REGISTRY, {})[name]
    assert lint_lineage(lineage, REGISTRY) == []


MODULE_SOURCE = """
from dentalpin.platform import Manifest, Module


class TmpModule(Module):
    manifest = Manifest(
        name="{name}",
        version="1.0.0",
        summary="Temporary module built by a test",
        author="Tests",
        license="MIT",
        category="other",
        core=">=0.1,<1",
    )
"""

REVISION_SOURCE = '''
"""things, and what else the test asks for

Revision ID: tmp_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "tmp_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("tmp_things", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("{upgrade}")


def downgrade() -> None:
    op.execute("{downgrade}")
    op.drop_table("tmp_things")
'''


def build_module(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    upgrade: str = "select 1",
    downgrade: str = "select 1",
) -> type[Module]:
    """A module package written in tmp_path (its class in a file there), loaded with importlib;
    its one revision creates a table and runs `upgrade` (and `downgrade` on the way back)."""
    package = f"dp_tmp_{name}_{secrets.token_hex(4)}"
    root = tmp_path / package
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "__init__.py").write_text(MODULE_SOURCE.format(name=name))
    (versions / "tmp_0001_things.py").write_text(
        REVISION_SOURCE.format(upgrade=upgrade, downgrade=downgrade)
    )
    spec = importlib.util.spec_from_file_location(
        package, root / "__init__.py", submodule_search_locations=[str(root)]
    )
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, package, loaded)
    spec.loader.exec_module(loaded)
    cls: type[Module] = loaded.TmpModule
    assert cls.package_dir() == root.resolve()
    return cls


def test_lint_reports_create_extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = build_module(
        tmp_path, monkeypatch, "tmp_ext", upgrade="CREATE EXTENSION IF NOT EXISTS pgcrypto"
    )
    registry = Registry.from_classes([cls])
    problems = lint_lineage(load_lineage(cls, "tmp_ext"), registry)
    assert problems == [
        "tmp_ext revision tmp_0001 (tmp_0001_things.py): runs CREATE EXTENSION; declare it in "
        "requires_extensions instead"
    ]
    clean = build_module(tmp_path, monkeypatch, "tmp_clean")
    assert lint_lineage(load_lineage(clean, "tmp_clean"), Registry.from_classes([clean])) == []


def test_lint_reports_dropping_a_shared_extension(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = build_module(tmp_path, monkeypatch, "tmp_drop", downgrade="DROP EXTENSION pg_trgm")
    problems = lint_lineage(load_lineage(cls, "tmp_drop"), Registry.from_classes([cls]))
    assert problems == [
        "tmp_drop revision tmp_0001 (tmp_0001_things.py): runs DROP EXTENSION; extensions are "
        "shared by every tenant and only an operator may change them"
    ]


async def test_installing_a_revision_that_creates_an_extension_is_refused(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = build_module(
        tmp_path, monkeypatch, "tmp_ext", upgrade="create   extension if not exists pgcrypto"
    )
    people = type(platform.registry.get("fx_people").module)
    custom = Platform(
        settings=platform.settings, db=platform.db, registry=Registry.from_classes([people, cls])
    )
    tenant = await create_tenant(custom, unique_slug("ext"))
    before = await picture(custom, tenant)
    states_before = await states_of(custom, tenant)

    job = await run_job(custom, tenant, "lifecycle.install", {"modules": ["tmp_ext"]})

    assert job.state == "failed"
    assert "module 'tmp_ext' ran CREATE EXTENSION in a revision" in (job.error or "")
    assert "requires_extensions" in (job.error or "")
    assert await picture(custom, tenant) == before  # not even the table created before it
    assert await states_of(custom, tenant) == states_before
    async with platform.db.engine.connect() as conn:
        in_schema = await conn.execute(
            text("select count(*) from pg_extension where extnamespace = cast(:s as regnamespace)"),
            {"s": tenant.schema_name},
        )
        assert in_schema.scalar_one() == 0


async def test_a_downgrade_that_drops_a_shared_extension_is_refused(
    fresh_platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uninstall runs downgrades as the schema owner; `DROP EXTENSION` there would take the
    extension away from every tenant. (A platform database of its own, in case it ever did.)"""
    platform = fresh_platform
    cls = build_module(
        tmp_path, monkeypatch, "tmp_drop", downgrade="drop extension if exists pg_trgm cascade"
    )
    custom = Platform(
        settings=platform.settings, db=platform.db, registry=Registry.from_classes([cls])
    )
    tenant = await create_tenant(custom, unique_slug("drop"), modules=["tmp_drop"])
    before = await picture(custom, tenant)

    job = await run_job(custom, tenant, "lifecycle.uninstall", {"module": "tmp_drop"})

    assert job.state == "failed"
    assert "module 'tmp_drop' ran DROP EXTENSION in a revision" in (job.error or "")
    assert (await states_of(custom, tenant))["tmp_drop"]["state"] == "installed"
    assert await picture(custom, tenant) == before
    async with platform.db.engine.connect() as conn:
        shared = await conn.execute(
            text("select extname from pg_extension where extnamespace = 'extensions'::regnamespace")
        )
        assert "pg_trgm" in set(shared.scalars())


# 6. Uninstall round trip -------------------------------------------------------------------


async def run_job(
    platform: Platform, tenant: TenantRecord, kind: str, params: dict[str, Any]
) -> JobRecord:
    job = await submit(platform, kind, tenant.id, params)
    return await executor_of(platform).wait(platform, job.id)


async def succeed(
    platform: Platform, tenant: TenantRecord, kind: str, params: dict[str, Any]
) -> JobRecord:
    job = await run_job(platform, tenant, kind, params)
    assert job.state == "succeeded", f"{kind} {params} failed: {job.error}"
    return job


async def picture(platform: Platform, tenant: TenantRecord) -> dict[str, Any]:
    async with platform.db.engine.connect() as conn:
        return await describe_schema(conn, tenant.schema_name)


def anonymized(described: dict[str, Any], tenant: TenantRecord) -> dict[str, Any]:
    """A schema picture with the tenant's own schema and role names replaced by placeholders,
    so pictures of two tenants can be compared."""

    def scrub(value: str) -> str:
        return value.replace(tenant.db_role, "<role>").replace(tenant.schema_name, "<schema>")

    return {kind: sorted(scrub(v) for v in values) for kind, values in described.items()}


async def states_of(platform: Platform, tenant: TenantRecord) -> dict[str, dict[str, Any]]:
    async with platform.db.engine.connect() as conn:
        return await module_states(conn, tenant.id)


def tables_of(state: dict[str, Any], module: str) -> list[str]:
    return sorted(
        obj.split(":", 1)[1]
        for obj in state["owned_objects"]
        if obj.startswith("table:") and obj != f"table:alembic_version_{module}"
    )


def allowed_values(table: Table, column: Column[Any]) -> list[str]:
    """The values a `CHECK (column in (...))` constraint allows (PostgreSQL shows it as
    `column = ANY (ARRAY['a'::text, ...])`); empty when no such constraint exists."""
    pattern = re.compile(rf"^\(*{re.escape(column.name)} = ANY \(\(?ARRAY\[(.*)\]")
    for constraint in table.constraints:
        if isinstance(constraint, CheckConstraint):
            found = pattern.match(str(constraint.sqltext))
            if found:
                return re.findall(r"'((?:[^']|'')*)'", found.group(1))
    return []


def integer_bounds(table: Table, column: Column[Any]) -> tuple[int, int] | None:
    """The range a `CHECK (column between a and b)` constraint allows (reflected as
    `column >= a AND column <= b`); None when no such constraint exists."""
    name = re.escape(column.name)
    pattern = re.compile(rf"^\(*{name} >= (-?\d+)\)? AND \(?{name} <= (-?\d+)\)*$")
    for constraint in table.constraints:
        if isinstance(constraint, CheckConstraint):
            found = pattern.match(str(constraint.sqltext))
            if found:
                return int(found.group(1)), int(found.group(2))
    return None


def generated_value(table: Table, column: Column[Any], index: int) -> Any:
    """A deterministic value for a column, from its reflected type and CHECK constraints."""
    allowed = allowed_values(table, column)
    if allowed:
        return allowed[index % len(allowed)]
    kind = column.type
    if isinstance(kind, Enum):
        return kind.enums[index % len(kind.enums)]
    if isinstance(kind, Boolean):
        return False  # the neutral value: flags such as a legal hold stay off
    if isinstance(kind, Integer):
        bounds = integer_bounds(table, column)
        if bounds:
            return bounds[0] + index % (bounds[1] - bounds[0] + 1)
        return index + 1
    if isinstance(kind, Numeric):
        return Decimal(index) + Decimal("0.5") if kind.asdecimal else index + 0.5
    if isinstance(kind, Float):
        return index + 0.5
    if isinstance(kind, String | Text):
        return f"{table.name}.{column.name} #{index}"
    # Later columns get later moments, so a start column comes before its end column
    # (tables may check `ends_at > starts_at`).
    later = list(table.columns).index(column)
    if isinstance(kind, DateTime):
        moment = datetime(2024, 3, 1, 9, 0) + timedelta(hours=index, minutes=later)
        return moment.replace(tzinfo=UTC) if kind.timezone else moment
    if isinstance(kind, Date):
        return date(2024, 3, 1) + timedelta(days=index)
    if isinstance(kind, Time):
        return time(9 + later % 12, index % 60)
    if isinstance(kind, Interval):
        return timedelta(minutes=15 * (index + 1))
    if isinstance(kind, Uuid):
        return uuid.UUID(int=index + 1)
    if isinstance(kind, JSON):
        return {"n": index}
    if isinstance(kind, LargeBinary):
        return bytes([index % 256]) * 4
    raise TypeError(
        f"no value generator for {table.name}.{column.name} of type {kind!r}; "
        "teach generated_value() in tests/platform/test_contract.py about it"
    )


def _targets(conn: Connection, column: Column[Any]) -> list[Any]:
    """The values a foreign-key column may take (its target table gets rows if it has none)."""
    target = next(iter(column.foreign_keys)).column
    existing = conn.execute(select(target).order_by(target)).scalars().all()
    if not existing:
        _fill(conn, target.table, 3)
        existing = conn.execute(select(target).order_by(target)).scalars().all()
    return list(existing)


def _unused_link(conn: Connection, table: Table) -> dict[str, Any]:
    """For an association table (a primary key made of foreign keys, such as a price per
    list and item): the first combination of targets it does not hold yet."""
    keys = list(table.primary_key.columns)
    taken = {tuple(r) for r in conn.execute(select(*keys))}
    for combination in itertools.product(*(_targets(conn, c) for c in keys)):
        if combination not in taken:
            return {c.name: v for c, v in zip(keys, combination, strict=True)}
    raise AssertionError(f"{table.name}: every combination of its foreign keys is taken")


def _fill(conn: Connection, table: Table, rows: int, start: int = 0) -> list[dict[str, Any]]:
    """Insert `rows` generated rows; columns with a default keep it (sequences advance)."""
    keys = list(table.primary_key.columns)
    links = len(keys) > 1 and all(c.foreign_keys for c in keys)
    inserted = []
    for index in range(start, start + rows):
        values: dict[str, Any] = _unused_link(conn, table) if links else {}
        for column in table.columns:
            if column.name in values:
                continue
            if column.server_default is not None or column.identity is not None:
                continue
            if column.foreign_keys:
                if column.nullable:
                    # Optional references stay empty: a guardian (a self-reference), a price
                    # list's location (one list per location)...
                    continue
                existing = _targets(conn, column)
                values[column.name] = existing[index % len(existing)]
                continue
            values[column.name] = generated_value(table, column, index)
        row = conn.execute(table.insert().values(values).returning(*table.columns)).one()
        inserted.append(dict(row._mapping))
    return inserted


def _reflect(conn: Connection, schema: str, names: list[str]) -> list[Table]:
    metadata = MetaData()
    return [Table(name, metadata, schema=schema, autoload_with=conn) for name in names]


async def write_rows(
    platform: Platform, tenant: TenantRecord, tables: list[str], rows: int = 3, start: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Generic data: `rows` rows in each table (FK targets get rows first when they have none)."""
    async with platform.db.engine.begin() as conn:
        ordered = await tables_in_load_order(conn, tenant.schema_name, tables)

        def fill(sync: Connection) -> dict[str, list[dict[str, Any]]]:
            return {
                t.name: _fill(sync, t, rows, start)
                for t in _reflect(sync, tenant.schema_name, ordered)
            }

        return await conn.run_sync(fill)


async def read_rows(
    platform: Platform, tenant: TenantRecord, tables: list[str]
) -> dict[str, list[tuple[Any, ...]]]:
    data = {}
    async with platform.db.engine.connect() as conn:
        for table in tables:
            result = await conn.execute(text(f'select * from "{tenant.schema_name}"."{table}"'))
            data[table] = sorted((tuple(r) for r in result), key=repr)
    return data


async def sequence_values(conn: AsyncConnection, schema: str) -> dict[str, tuple[int, bool]]:
    names = (
        await conn.execute(
            text(
                "select relname from pg_class where relkind = 'S' "
                "and relnamespace = cast(:s as regnamespace) order by 1"
            ),
            {"s": schema},
        )
    ).scalars()
    values = {}
    for name in list(names):
        row = (
            await conn.execute(text(f'select last_value, is_called from "{schema}"."{name}"'))
        ).one()
        values[name] = (row.last_value, row.is_called)
    return values


async def sequences_of(platform: Platform, tenant: TenantRecord) -> dict[str, tuple[int, bool]]:
    async with platform.db.engine.connect() as conn:
        return await sequence_values(conn, tenant.schema_name)


async def serial_columns(
    platform: Platform, tenant: TenantRecord, tables: list[str]
) -> list[tuple[str, str]]:
    """(table, column) of every column filled by a sequence."""
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "select table_name, column_name from information_schema.columns "
                "where table_schema = :s and table_name = any(:t) "
                "and (column_default like 'nextval(%' or is_identity = 'YES') order by 1, 2"
            ),
            {"s": tenant.schema_name, "t": tables},
        )
        return [(r.table_name, r.column_name) for r in rows]


async def picture_without(platform: Platform, module: str, installed: list[str]) -> dict[str, Any]:
    """The schema of a tenant that never had `module`: built by a platform whose registry
    lacks the module and its dependents, with the other `installed` modules (its
    dependencies, and what auto-install modules pulled in) installed."""
    excluded = {module, *platform.registry.dependents(module, platform.registry.names)}
    twin = Platform(
        settings=platform.settings,
        db=platform.db,
        registry=Registry.from_classes(
            type(s.module) for s in platform.registry if s.name not in excluded
        ),
    )
    kept = [m for m in installed if m not in excluded]
    tenant = await create_tenant(twin, unique_slug("twin"), modules=kept)
    return anonymized(await picture(twin, tenant), tenant)


@pytest.mark.parametrize("name", REMOVABLE)
async def test_uninstall_round_trip(platform: Platform, name: str) -> None:
    """Install -> data -> uninstall leaves the schema exactly as before the install;
    restore brings every row and sequence value back.

    The "before" picture: a tenant created with only the module's dependencies (plus the
    auto-install modules every tenant gets), pictured before the install, compared exactly.
    A module that every new tenant gets anyway (auto_install, like fx_people, or needed by
    an auto-install module) cannot be pictured "before" in the same tenant; then "before"
    is a twin tenant created by a platform whose registry lacks the module (and its
    dependents), compared with the schema and role names anonymized. In both cases a
    second uninstall after the restore must give the same picture again, and none of the
    objects the module owned may survive.
    """
    registry = platform.registry
    deps = [d for d in registry.closure([name]) if d != name]
    tenant = await create_tenant(platform, unique_slug("rt"), modules=deps)
    preinstalled = (await states_of(platform, tenant)).get(name, {}).get("state") == "installed"
    if preinstalled:
        installed_before = [
            n for n, s in (await states_of(platform, tenant)).items() if s["state"] == "installed"
        ]
        before = await picture_without(platform, name, installed_before)
    else:
        before = await picture(platform, tenant)
        await succeed(platform, tenant, "lifecycle.install", {"modules": [name]})

    states = await states_of(platform, tenant)
    owned = set(states[name]["owned_objects"])
    tables = tables_of(states[name], name)
    if registry.get(name).module.migrations_path() is not None:
        assert f"table:alembic_version_{name}" in owned
    await write_rows(platform, tenant, tables)
    rows = await read_rows(platform, tenant, tables)
    assert all(rows[t] for t in tables)
    serials = await serial_columns(platform, tenant, tables)
    highest = {(t, c): max(r[c] for r in await _dicts(platform, tenant, t)) for t, c in serials}

    installed = [n for n, s in states.items() if s["state"] == "installed"]
    dependents = registry.dependents(name, installed)
    await release_retained_records(platform, tenant, name, bool(dependents))
    rows = await read_rows(platform, tenant, tables)
    sequences = await sequences_of(platform, tenant)
    job = await succeed(
        platform, tenant, "lifecycle.uninstall", {"module": name, "cascade": bool(dependents)}
    )
    assert job.result is not None
    assert job.result["modules"] == [*dependents, name]
    assert job.result["tables"][name] == {t: len(rows[t]) for t in tables}

    after = await picture(platform, tenant)
    if preinstalled:
        assert anonymized(after, tenant) == before
    else:
        assert after == before
    async with platform.db.engine.connect() as conn:
        assert owned & await owned_objects(conn, tenant.schema_name) == set()
    assert (await states_of(platform, tenant))[name]["state"] == "uninstalled"

    for module in [name, *reversed(dependents)]:  # dependencies first
        if (await states_of(platform, tenant))[module]["state"] != "installed":
            await succeed(platform, tenant, "lifecycle.restore", {"module": module})
    assert (await states_of(platform, tenant))[name]["state"] == "installed"
    assert await read_rows(platform, tenant, tables) == rows
    assert await sequences_of(platform, tenant) == sequences

    added = await write_rows(platform, tenant, tables, rows=1, start=100)
    for table, column in serials:
        assert added[table][0][column] > highest[(table, column)], (table, column)

    await release_retained_records(platform, tenant, name, bool(dependents))
    await succeed(
        platform, tenant, "lifecycle.uninstall", {"module": name, "cascade": bool(dependents)}
    )
    assert await picture(platform, tenant) == after


async def release_retained_records(
    platform: Platform, tenant: TenantRecord, name: str, cascade: bool
) -> None:
    """A module may veto its uninstall while it holds records the law makes it keep
    (patients: clinical records, kept five years). Check that the generic rows do trip its
    veto, then empty its tables, as the end of the retention period would, so the round
    trip can go on. Modules without such a veto are left alone."""
    plan = await dry_run_uninstall(platform, tenant.slug, name, cascade)
    if name not in plan.vetoes:
        return
    tables = tables_of((await states_of(platform, tenant))[name], name)
    async with platform.db.engine.begin() as conn:
        for table in reversed(await tables_in_load_order(conn, tenant.schema_name, tables)):
            await conn.execute(text(f'delete from "{tenant.schema_name}"."{table}"'))


async def _dicts(platform: Platform, tenant: TenantRecord, table: str) -> list[dict[str, Any]]:
    async with platform.db.engine.connect() as conn:
        result = await conn.execute(text(f'select * from "{tenant.schema_name}"."{table}"'))
        return [dict(r._mapping) for r in result]


# 7. Tenant isolation of the lifecycle ------------------------------------------------------


async def everything_of(platform: Platform, tenant: TenantRecord) -> dict[str, Any]:
    """Schema picture, every row of every table, sequence values and module states."""
    states = await states_of(platform, tenant)
    tables = sorted(
        obj.split(":", 1)[1]
        for s in states.values()
        for obj in s["owned_objects"]
        if obj.startswith("table:")
    )
    return {
        "schema": await picture(platform, tenant),
        "rows": await read_rows(platform, tenant, tables),
        "sequences": await sequences_of(platform, tenant),
        "states": states,
    }


@pytest.mark.parametrize("name", REMOVABLE)
async def test_uninstall_and_restore_leave_other_tenants_untouched(
    platform: Platform, name: str
) -> None:
    a = await create_tenant(platform, unique_slug("iso-a"), modules=[name])
    b = await create_tenant(platform, unique_slug("iso-b"), modules=[name])
    for tenant in (a, b):
        tables = tables_of((await states_of(platform, tenant))[name], name)
        await write_rows(platform, tenant, tables)
    b_before = await everything_of(platform, b)
    assert b_before["rows"]

    await release_retained_records(platform, a, name, True)
    await succeed(platform, a, "lifecycle.uninstall", {"module": name, "cascade": True})
    assert await everything_of(platform, b) == b_before
    await succeed(platform, a, "lifecycle.restore", {"module": name})
    assert await everything_of(platform, b) == b_before


@pytest.mark.parametrize("name", REMOVABLE)
async def test_restore_refuses_another_tenants_archive(platform: Platform, name: str) -> None:
    a = await create_tenant(platform, unique_slug("arc-a"), modules=[name])
    b = await create_tenant(platform, unique_slug("arc-b"), modules=[name])
    b_tables = tables_of((await states_of(platform, b))[name], name)
    await write_rows(platform, b, b_tables)
    await release_retained_records(platform, b, name, True)
    b_rows = await read_rows(platform, b, b_tables)
    archive = {}
    for tenant in (a, b):
        job = await succeed(
            platform, tenant, "lifecycle.uninstall", {"module": name, "cascade": True}
        )
        assert job.result is not None
        archive[tenant.slug] = job.result["archives"][name]

    stolen = archive[b.slug]
    job = await run_job(platform, a, "lifecycle.restore", {"module": name, "archive_id": stolen})
    assert job.state == "failed"
    assert f"tenant '{a.slug}' has no archive {stolen} of module '{name}'" in (job.error or "")
    assert (await states_of(platform, a))[name]["state"] == "uninstalled"
    async with platform.db.engine.connect() as conn:
        restored_at = await conn.scalar(
            select(archives.c.restored_at).where(archives.c.id == uuid.UUID(stolen))
        )
    assert restored_at is None

    # Its own archive restores; B's archive still restores B's data into B.
    await succeed(platform, a, "lifecycle.restore", {"module": name, "archive_id": archive[a.slug]})
    await succeed(platform, b, "lifecycle.restore", {"module": name, "archive_id": stolen})
    assert await read_rows(platform, b, b_tables) == b_rows

"""DDL images: a tenant provisioned or upgraded by replaying images is the tenant the
migrations make, and a module whose revisions an image cannot stand for keeps Alembic."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from dentalpin.platform import Manifest, Module
from dentalpin.platform._db import Database
from dentalpin.platform._registry import Registry
from dentalpin.platform._runtime import Platform
from dentalpin.tenants import TenantRecord, create_tenant, module_states, run_locked
from dentalpin.tenants._images import DdlImage, Unusable, cached, image_for
from dentalpin.tenants._introspect import describe_schema
from dentalpin.tenants._lifecycle import Operation, install, restore, uninstall, upgrade
from dentalpin.tenants._lineage import Lineage, MigrationError, lineages
from tests.conftest import unique_slug

MODULES = ["fx_visits", "recall"]


def _without_images(platform: Platform) -> Platform:
    settings = platform.settings.model_copy(update={"provision_with_ddl_images": False})
    return Platform(settings, Database.from_settings(settings), platform.registry)


@pytest.fixture
async def plain(platform: Platform) -> AsyncIterator[Platform]:
    """The same database, provisioning through Alembic only."""
    other = _without_images(platform)
    yield other
    await other.close()


async def _picture(platform: Platform, tenant: TenantRecord) -> dict[str, Any]:
    """The tenant's schema and module states, with its own names taken out."""
    async with platform.db.engine.connect() as conn:
        described = await describe_schema(conn, tenant.schema_name)
        states = await module_states(conn, tenant.id)
        versions = {}
        for name, state in states.items():
            if state["revision"] is not None:
                versions[name] = (
                    await conn.execute(
                        text(
                            f'select array_agg(version_num) from "{tenant.schema_name}".'
                            f"alembic_version_{name}"
                        )
                    )
                ).scalar_one()

    def neutral(value: str) -> str:
        return value.replace(tenant.schema_name, "<schema>").replace(tenant.db_role, "<role>")

    return {
        "schema": {k: sorted(neutral(v) for v in rows) for k, rows in described.items()},
        "modules": {
            name: {k: s[k] for k in ("state", "version", "revision", "owned_objects", "settings")}
            for name, s in states.items()
        },
        "version_tables": versions,
    }


def _images(platform: Platform, start: str = "") -> dict[str, DdlImage]:
    """Images in use, by module: fresh installs by default, else upgrades from `start`."""
    return {
        key[0]: image
        for key, image in cached(platform).items()
        if key[1] == start and isinstance(image, DdlImage)
    }


def _refusals(platform: Platform) -> dict[str, str]:
    return {key[0]: v.reason for key, v in cached(platform).items() if isinstance(v, Unusable)}


async def test_image_and_migrations_provision_identical_tenants(
    platform: Platform, plain: Platform
) -> None:
    imaged = await create_tenant(platform, unique_slug("img"), modules=MODULES)
    migrated = await create_tenant(plain, unique_slug("alembic"), modules=MODULES)

    wanted = set(platform.registry.closure([*platform.registry.auto_install(), *MODULES]))
    assert wanted <= set(_images(platform)), "the image path was not taken"
    assert not _images(plain)
    a, b = await _picture(platform, imaged), await _picture(plain, migrated)
    assert set(a["modules"]) == wanted
    assert a["schema"] == b["schema"]
    assert a["modules"] == b["modules"]
    assert a["version_tables"] == b["version_tables"]
    assert all(s["owned_objects"] for s in a["modules"].values())


async def test_once_captured_no_alembic_runs_for_a_sign_up(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_tenant(platform, unique_slug("warm"), modules=MODULES)  # captures if needed

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("Alembic ran although an image applies")

    monkeypatch.setattr(Lineage, "upgrade", refuse)
    tenant = await create_tenant(platform, unique_slug("replay"), modules=MODULES)
    async with platform.db.engine.connect() as conn:
        states = await module_states(conn, tenant.id)
    heads = {n: lineages(platform.registry, platform.state)[n].head for n in states}
    assert {n: s["revision"] for n, s in states.items()} == heads


async def test_captured_images_never_name_the_scratch_schema(platform: Platform) -> None:
    # A platform of its own: nothing cached yet, so every image is captured here.
    fresh = Platform(
        platform.settings, Database.from_settings(platform.settings), platform.registry
    )
    try:
        async with fresh.db.engine.connect() as conn, conn.begin():
            before = (await conn.execute(text("show search_path"))).scalar_one()
            for name in [*fresh.registry.auto_install(), *MODULES]:
                image = await image_for(fresh, conn, name)
                assert isinstance(image, DdlImage)
                assert image.statements
                for statement in image.statements:
                    assert "dp_scratch_" not in statement.sql.lower()
                    assert "alembic_version" not in statement.sql or name in statement.sql
                assert image.script is not None
                assert image.revision == lineages(fresh.registry, fresh.state)[name].head
            # Captured in savepoints that were rolled back: no scratch schema is left, and
            # the transaction's search path is what it was.
            left = await conn.execute(
                text("select nspname from pg_namespace where nspname like 'dp\\_scratch\\_%'")
            )
            assert left.first() is None
            assert (await conn.execute(text("show search_path"))).scalar_one() == before
    finally:
        await fresh.close()


# Modules of the tests' own, with lineages in a temporary directory ----------------------

NOTES_1 = '''
    """notes

    Revision ID: nt_0001
    Revises:
    """
    import sqlalchemy as sa
    from alembic import op

    revision = "nt_0001"
    down_revision = None
    branch_labels = None
    depends_on = None
    dentalpin_requires = {"fx_people": "fxp_0002"}


    def upgrade() -> None:
        op.create_table(
            "nt_notes",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("person_id", sa.Integer, sa.ForeignKey("people.id"), nullable=False),
            sa.Column("body", sa.Text, nullable=False),
        )


    def downgrade() -> None:
        op.drop_table("nt_notes")
'''

NOTES_2 = '''
    """notes.pinned, an index, a tags table and a backfill in SQL

    Revision ID: nt_0002
    Revises: nt_0001
    """
    import sqlalchemy as sa
    from alembic import op

    revision = "nt_0002"
    down_revision = "nt_0001"
    branch_labels = None
    depends_on = None


    def upgrade() -> None:
        op.add_column("nt_notes", sa.Column("pinned", sa.Boolean, server_default=sa.false()))
        op.create_index("ix_nt_notes_pinned", "nt_notes", ["pinned"])
        op.create_table("nt_tags", sa.Column("tag", sa.Text, primary_key=True))
        op.execute("update nt_notes set pinned = true where body like 'pin%'")


    def downgrade() -> None:
        op.drop_table("nt_tags")
        op.drop_index("ix_nt_notes_pinned", table_name="nt_notes")
        op.drop_column("nt_notes", "pinned")
'''

NOTES_3 = '''
    """a data migration that decides in Python from what it reads

    Revision ID: nt_0003
    Revises: nt_0002
    """
    import sqlalchemy as sa
    from alembic import op

    revision = "nt_0003"
    down_revision = "nt_0002"
    branch_labels = None
    depends_on = None


    def upgrade() -> None:
        op.add_column("nt_notes", sa.Column("words", sa.Integer))
        rows = op.get_bind().execute(sa.text("select id, body from nt_notes")).all()
        for row in rows:
            op.execute(f"update nt_notes set words = {len(row.body.split())} where id = {row.id}")


    def downgrade() -> None:
        op.drop_column("nt_notes", "words")
'''


def _module(name: str, migrations: Path, **manifest: Any) -> type[Module]:
    (migrations / "versions").mkdir(parents=True, exist_ok=True)

    def migrations_path(cls: type[Module]) -> Path:
        return migrations

    return type(
        f"Module_{name}",
        (Module,),
        {
            "manifest": Manifest(
                name=name,
                version="1.0.0",
                summary=f"{name}, a test module",
                author="DentalPin",
                license="BUSL-1.1",
                category="other",
                core=">=0.1,<1",
                **manifest,
            ),
            "migrations_path": classmethod(migrations_path),
        },
    )


def _write(migrations: Path, name: str, source: str) -> None:
    (migrations / "versions" / name).write_text(textwrap.dedent(source), encoding="utf-8")


def _platform_with(platform: Platform, *classes: type[Module], images: bool = True) -> Platform:
    """The same database, with the discovered modules plus `classes`, lineages loaded
    afresh (as a new process would)."""
    registry = Registry.from_classes([*(type(s.module) for s in platform.registry), *classes])
    settings = platform.settings.model_copy(update={"provision_with_ddl_images": images})
    return Platform(settings, Database.from_settings(settings), registry)


async def _run(platform: Platform, tenant: TenantRecord, work: Any) -> Any:
    return await run_locked(platform, tenant.id, work)


async def _install(platform: Platform, tenant: TenantRecord, name: str) -> list[str]:
    async def work(op: Operation) -> list[str]:
        return await install(op, [name])

    return list(await _run(platform, tenant, work))


async def _upgrade(platform: Platform, tenant: TenantRecord) -> list[dict[str, Any]]:
    async def work(op: Operation) -> list[dict[str, Any]]:
        return await upgrade(op)

    return list(await _run(platform, tenant, work))


async def _notes(platform: Platform, tenant: TenantRecord, columns: str) -> list[tuple[Any, ...]]:
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            text(f'select {columns} from "{tenant.schema_name}".nt_notes order by id')
        )
        return [tuple(r) for r in rows]


async def _add_notes(platform: Platform, tenant: TenantRecord, *bodies: str) -> None:
    async with platform.db.engine.begin() as conn:
        for body in bodies:
            await conn.execute(
                text(
                    f'insert into "{tenant.schema_name}".nt_notes (person_id, body) '
                    f'select min(id), :body from "{tenant.schema_name}".people'
                ),
                {"body": body},
            )


async def test_upgrade_images_match_alembic_and_lifecycle_continues(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    migrations = tmp_path / "nt_migrations"
    notes = _module("nt_notes", migrations, depends={"fx_people": ">=1.0"})
    _write(migrations, "nt_0001_notes.py", NOTES_1)
    release_1 = _platform_with(fresh_platform, notes)
    opened = [release_1]
    try:
        imaged = await create_tenant(release_1, unique_slug("img"))
        migrated = await create_tenant(release_1, unique_slug("alembic"))
        for tenant in (imaged, migrated):
            assert await _install(release_1, tenant, "nt_notes") == ["nt_notes"]
            await _add_notes(release_1, tenant, "pin this one", "plain note here")
        assert "nt_notes" in _images(release_1)

        # A new release: one more revision; new processes load the lineage again.
        _write(migrations, "nt_0002_pinned.py", NOTES_2)
        release_2 = _platform_with(fresh_platform, notes)
        release_2_plain = _platform_with(fresh_platform, notes, images=False)
        opened += [release_2, release_2_plain]
        done = await _upgrade(release_2, imaged)
        assert [(d["module"], d["from"], d["to"]) for d in done] == [
            ("nt_notes", "nt_0001", "nt_0002")
        ]
        assert "nt_notes" in _images(release_2, start="nt_0001"), "no upgrade image was used"
        await _upgrade(release_2_plain, migrated)
        assert not cached(release_2_plain)

        a, b = await _picture(release_2, imaged), await _picture(release_2, migrated)
        assert a == b
        assert a["modules"]["nt_notes"]["revision"] == "nt_0002"
        assert {"table:nt_notes", "table:nt_tags"} <= set(a["modules"]["nt_notes"]["owned_objects"])
        # The SQL backfill ran against each tenant's own rows.
        for tenant in (imaged, migrated):
            assert await _notes(release_2, tenant, "body, pinned") == [
                ("pin this one", True),
                ("plain note here", False),
            ]

        # Provisioned afresh at the new head through the image: the same schema again.
        fresh = await create_tenant(release_2, unique_slug("fresh"), modules=["nt_notes"])
        assert (await _picture(release_2, fresh))["schema"] == a["schema"]

        # Uninstall (archived) and restore, on the tenant the images made.
        async def drop(op: Operation) -> dict[str, Any]:
            return await uninstall(op, "nt_notes", cascade=False)

        result = await _run(release_2, imaged, drop)
        assert result["tables"]["nt_notes"] == {"nt_notes": 2, "nt_tags": 0}
        async with release_2.db.engine.connect() as conn:
            left = await describe_schema(conn, imaged.schema_name)
        assert not any(
            name in row
            for rows in left.values()
            for row in rows
            for name in ("nt_notes", "nt_tags")
        )

        async def back(op: Operation) -> dict[str, Any]:
            return await restore(op, "nt_notes")

        restored = await _run(release_2, imaged, back)
        assert restored["rows"] == {"nt_notes": 2, "nt_tags": 0}
        after = await _picture(release_2, imaged)
        assert after["schema"] == a["schema"]
        assert after["modules"]["nt_notes"]["revision"] == "nt_0002"
        assert sorted(after["modules"]["nt_notes"]["owned_objects"]) == sorted(
            a["modules"]["nt_notes"]["owned_objects"]
        )
    finally:
        for platform in opened:
            await platform.close()


async def test_a_revision_that_reads_keeps_the_alembic_path(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    migrations = tmp_path / "nt_migrations"
    notes = _module("nt_notes", migrations, depends={"fx_people": ">=1.0"})
    _write(migrations, "nt_0001_notes.py", NOTES_1)
    _write(migrations, "nt_0002_pinned.py", NOTES_2)
    release_1 = _platform_with(fresh_platform, notes)
    opened = [release_1]
    try:
        tenants = []
        for body in ("one", "two words", "and three words"):
            tenant = await create_tenant(release_1, unique_slug("reads"), modules=["nt_notes"])
            await _add_notes(release_1, tenant, body)
            tenants.append(tenant)

        _write(migrations, "nt_0003_words.py", NOTES_3)
        release_2 = _platform_with(fresh_platform, notes)
        opened.append(release_2)
        for tenant in tenants:
            await _upgrade(release_2, tenant)
        # Captured once, refused (it decides in Python from what it reads), not retried.
        assert "reads the database" in _refusals(release_2)["nt_notes"]
        assert "nt_notes" not in _images(release_2, start="nt_0002")
        counts = [await _notes(release_2, t, "words") for t in tenants]
        assert counts == [[(1,)], [(2,)], [(3,)]]
        # A fresh install of the same release (which reads an empty table) is refused too.
        fresh = await create_tenant(release_2, unique_slug("reads"), modules=["nt_notes"])
        async with release_2.db.engine.connect() as conn:
            states = await module_states(conn, fresh.id)
        assert states["nt_notes"]["revision"] == "nt_0003"
    finally:
        for platform in opened:
            await platform.close()


SNEAKY = '''
    """a revision that reads behind SQLAlchemy's back and writes its schema into its SQL

    Revision ID: lk_0001
    Revises:
    """
    import sqlalchemy as sa
    from alembic import op
    from sqlalchemy.util import await_only

    revision = "lk_0001"
    down_revision = None
    branch_labels = None
    depends_on = None


    def upgrade() -> None:
        raw = op.get_bind().connection.driver_connection
        schema = await_only(raw.fetchval("select current_schema()"))
        op.create_table("lk_items", sa.Column("id", sa.Integer, primary_key=True))
        op.execute(f"comment on table lk_items is 'made in {schema}'")


    def downgrade() -> None:
        op.drop_table("lk_items")
'''

EXTENSION = '''
    """a revision that creates an extension

    Revision ID: ex_0001
    Revises:
    """
    from alembic import op

    revision = "ex_0001"
    down_revision = None
    branch_labels = None
    depends_on = None


    def upgrade() -> None:
        op.execute("create extension if not exists pg_trgm")


    def downgrade() -> None:
        pass
'''


async def test_a_revision_naming_the_scratch_schema_keeps_the_alembic_path(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    migrations = tmp_path / "lk_migrations"
    leaky = _module("lk_leaky", migrations)
    _write(migrations, "lk_0001.py", SNEAKY)
    platform = _platform_with(fresh_platform, leaky)
    try:
        tenant = await create_tenant(platform, unique_slug("leak"), modules=["lk_leaky"])
        assert "scratch schema" in _refusals(platform)["lk_leaky"]
        async with platform.db.engine.connect() as conn:
            comment = (
                await conn.execute(
                    text(f"select obj_description('\"{tenant.schema_name}\".lk_items'::regclass)")
                )
            ).scalar_one()
            states = await module_states(conn, tenant.id)
        # Alembic ran in the tenant itself, so the comment names the tenant's schema.
        assert comment == f"made in {tenant.schema_name}"
        assert states["lk_leaky"]["revision"] == "lk_0001"
    finally:
        await platform.close()


async def test_create_extension_is_refused_with_images_on(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    migrations = tmp_path / "ex_migrations"
    ext = _module("ex_ext", migrations)
    _write(migrations, "ex_0001.py", EXTENSION)
    platform = _platform_with(fresh_platform, ext)
    try:
        with pytest.raises(MigrationError, match="CREATE EXTENSION"):
            await create_tenant(platform, unique_slug("ext"), modules=["ex_ext"])
        assert "CREATE EXTENSION" in _refusals(platform)["ex_ext"]
    finally:
        await platform.close()


SEEDED = '''
    """reference rows inserted with bound parameters

    Revision ID: sd_0001
    Revises:
    """
    import sqlalchemy as sa
    from alembic import op

    revision = "sd_0001"
    down_revision = None
    branch_labels = None
    depends_on = None


    def upgrade() -> None:
        kinds = op.create_table(
            "sd_kinds",
            sa.Column("code", sa.Text, primary_key=True),
            sa.Column("rank", sa.Integer, nullable=False),
        )
        op.bulk_insert(kinds, [{"code": "a", "rank": 1}, {"code": "b", "rank": 2}])
        op.execute(
            sa.text("insert into sd_kinds (code, rank) values (:code, :rank)").bindparams(
                code="c';--", rank=3
            )
        )


    def downgrade() -> None:
        op.drop_table("sd_kinds")
'''


async def test_statements_with_bound_parameters_replay(
    fresh_platform: Platform, tmp_path: Path
) -> None:
    migrations = tmp_path / "sd_migrations"
    seeded = _module("sd_seeded", migrations)
    _write(migrations, "sd_0001.py", SEEDED)
    platform = _platform_with(fresh_platform, seeded)
    plain = _platform_with(fresh_platform, seeded, images=False)
    try:
        imaged = await create_tenant(platform, unique_slug("seed"), modules=["sd_seeded"])
        migrated = await create_tenant(plain, unique_slug("seed"), modules=["sd_seeded"])
        image = _images(platform)["sd_seeded"]
        assert image.script is None  # bound parameters: not one script
        assert any(s.many for s in image.statements)
        assert any(s.parameters for s in image.statements)
        a, b = await _picture(platform, imaged), await _picture(plain, migrated)
        assert a == b
        rows = []
        async with platform.db.engine.connect() as conn:
            for tenant in (imaged, migrated):
                result = await conn.execute(
                    text(f'select code, rank from "{tenant.schema_name}".sd_kinds order by code')
                )
                rows.append([tuple(r) for r in result])
        assert rows[0] == rows[1] == [("a", 1), ("b", 2), ("c';--", 3)]
    finally:
        await platform.close()
        await plain.close()

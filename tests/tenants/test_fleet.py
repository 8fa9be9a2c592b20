"""Fleet upgrades: one query finds who is behind; failures are isolated per tenant."""

from __future__ import annotations

from sqlalchemy import text

from dentalpin.tenants import create_tenant, module_states, tenants_behind, upgrade_fleet
from tests.conftest import unique_slug
from tests.tenants.factory import build_module, platform_with

REV1 = {
    "id": "f1",
    "upgrade": "op.create_table('fleet_items', sa.Column('id', sa.Integer, primary_key=True))",
    "downgrade": "op.drop_table('fleet_items')",
}
REV2 = {
    "id": "f2",
    "upgrade": """
        op.add_column('fleet_items', sa.Column('label', sa.Text))
        op.create_index('ix_fleet_items_label', 'fleet_items', ['label'])
        op.create_table('fleet_tags', sa.Column('id', sa.Integer, primary_key=True))
    """,
    "downgrade": """
        op.drop_table('fleet_tags')
        op.drop_index('ix_fleet_items_label', table_name='fleet_items')
        op.drop_column('fleet_items', 'label')
    """,
}


async def test_fleet_upgrade_upgrades_who_is_behind_and_isolates_failures(fresh_platform, tmp_path):
    v1 = build_module(tmp_path / "v1", "fleetmod", [REV1], auto_install=True)
    p1 = platform_with(fresh_platform, v1)
    tenants = [await create_tenant(p1, unique_slug("fleet")) for _ in range(4)]
    await p1.close()
    assert await tenants_behind(fresh_platform) == {}

    broken = tenants[2]
    async with fresh_platform.db.engine.begin() as conn:
        # Someone created a table the new revision wants, behind the platform's back.
        await conn.execute(text(f'create table "{broken.schema_name}".fleet_tags (x int)'))

    v2 = build_module(tmp_path / "v2", "fleetmod", [REV1, REV2], auto_install=True, version="1.1.0")
    p2 = platform_with(fresh_platform, v2)
    try:
        behind = await tenants_behind(p2)
        assert set(behind) == {t.id for t in tenants}
        assert all(mods == ["fleetmod"] for mods in behind.values())

        seen: list[tuple[str, str | None]] = []
        report = await upgrade_fleet(p2, concurrency=2, on_tenant=lambda s, e: seen.append((s, e)))
        assert sorted(report.upgraded) == sorted(t.slug for t in tenants if t is not broken)
        assert list(report.failed) == [broken.slug]
        assert "fleet_tags" in report.failed[broken.slug]
        assert len(seen) == 4

        async with p2.db.engine.connect() as conn:
            for tenant in tenants:
                state = (await module_states(conn, tenant.id))["fleetmod"]
                if tenant is broken:
                    assert state["revision"] == "f1" and "fleet_tags" in state["error"]
                else:
                    assert state["revision"] == "f2" and state["version"] == "1.1.0"
                    assert state["error"] is None
                    assert "table:fleet_tags" in state["owned_objects"]
            # The failed tenant is exactly as it was: no half-applied column.
            columns = (
                (
                    await conn.execute(
                        text(
                            "select column_name from information_schema.columns "
                            "where table_schema = :s and table_name = 'fleet_items'"
                        ),
                        {"s": broken.schema_name},
                    )
                )
                .scalars()
                .all()
            )
            assert columns == ["id"]

        # Only the failed tenant is still behind; fixing it and re-running finishes the fleet.
        assert set(await tenants_behind(p2)) == {broken.id}
        async with p2.db.engine.begin() as conn:
            await conn.execute(text(f'drop table "{broken.schema_name}".fleet_tags'))
        report = await upgrade_fleet(p2)
        assert report.upgraded == [broken.slug] and not report.failed
        assert await tenants_behind(p2) == {}
    finally:
        await p2.close()


async def test_no_op_fleet_run_touches_nothing(fresh_platform):
    await create_tenant(fresh_platform, unique_slug("noop"))
    report = await upgrade_fleet(fresh_platform)
    assert report.behind == 0 and report.upgraded == [] and report.failed == {}

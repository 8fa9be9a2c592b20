"""Every read and write of tenant data through a module route is in the clinic's audit log:
who, what, which record, the request id; written in the access's own transaction (so a
refused or failed access leaves no entry), and never into another clinic's log."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from dentalpin.platform._tables import audit_log
from tests.modules.members import open_clinic

API = "/api/v1/patients"


async def entries(platform: Any, tenant_id: Any) -> list[Any]:
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            select(audit_log)
            .where(audit_log.c.tenant_id == tenant_id, audit_log.c.action.like("patients.%"))
            .order_by(audit_log.c.id)
        )
        return list(rows)


async def test_module_reads_and_writes_are_audited_with_actor_target_and_request_id(platform):
    clinic = await open_clinic(platform, ["patients"], "audit-data")
    other = await open_clinic(platform, ["patients"], "audit-other")
    async with clinic.http() as http:
        created = await http.post(
            f"{API}/patients",
            json={"given_name": "Lucía", "family_name": "Gómez"},
            headers=clinic.as_("receptionist"),
        )
        assert created.status_code == 201, created.text
        patient = created.json()["id"]
        read = await http.get(f"{API}/patients/{patient}", headers=clinic.as_("dentist"))
        assert read.status_code == 200
        refused = await http.get(
            f"{API}/patients/{patient}/alerts", headers=clinic.as_("receptionist")
        )
        assert refused.status_code == 403

    logged = await entries(platform, clinic.tenant.id)
    assert [(e.action, e.actor_id) for e in logged] == [
        ("patients.write", clinic.users["receptionist"]),
        ("patients.read", clinic.users["dentist"]),
    ]
    assert logged[1].target == f"{API}/patients/{patient}"
    assert logged[1].details["ids"] == {"patient_id": patient}
    assert logged[1].details["route"].endswith("/patients/{patient_id}")
    assert logged[1].request_id == read.headers["x-request-id"]
    assert await entries(platform, other.tenant.id) == []


async def test_a_tenant_cannot_write_another_tenants_audit_log(platform):
    a = await open_clinic(platform, ["patients"], "audit-a")
    b = await open_clinic(platform, ["patients"], "audit-b")
    with pytest.raises(DBAPIError, match="not this tenant"):
        async with platform.db.tenant(b.tenant.scope) as session:
            await session.execute(
                text("select _audit(:t, 'x.read', 'forged', null, null, null, null, '{}')"),
                {"t": a.tenant.id},
            )

"""patients: the clinic's patients (demographics, identity documents, guardians of
minors), their medical alerts and their consents, with a fast accent-free search."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dentalpin.platform import LifecycleContext, Manifest, Module

from .events import PatientArchived, PatientCreated, PatientUpdated
from .models import metadata

if TYPE_CHECKING:
    from fastapi import APIRouter


class PatientsModule(Module):
    manifest = Manifest(
        name="patients",
        version="1.0.0",
        summary="Patient records: demographics, documents, guardians, medical alerts, consents",
        author="DentalPin",
        license="BUSL-1.1",
        category="clinical",
        core=">=0.1,<1",
        auto_install=True,
        requires_extensions=("pg_trgm", "unaccent"),
        removable=True,
        permissions={
            "patient.read": "See patients' administrative data and whether they have alerts",
            "patient.write": "Register patients, edit their contact data, record consents",
            "patient.archive": "Archive and unarchive patients",
            "patient.export": "Export a patient's whole record (GDPR access and portability)",
            "alert.read": "Read medical alerts in detail",
            "alert.write": "Record and resolve medical alerts",
        },
        role_grants={
            "admin": "*",
            "dentist": "*",
            "hygienist": ("patient.read", "patient.write", "alert.read", "alert.write"),
            "assistant": ("patient.read", "patient.write", "alert.read"),
            "receptionist": ("patient.read", "patient.write"),
        },
        navigation=({"label": "Patients", "path": "/patients", "permission": "patient.read"},),
    )
    metadata = metadata
    events = (PatientCreated, PatientUpdated, PatientArchived)

    def router(self) -> APIRouter:
        from .routes import router

        return router

    async def before_uninstall(self, ctx: LifecycleContext) -> None:
        from .service import refuse_uninstall_with_records

        await refuse_uninstall_with_records(ctx.session)

    async def demo(self, ctx: LifecycleContext) -> None:
        from .demo import demo

        await demo(ctx)

"""locations: the sites of a clinic (one for most clinics, several for group practices)
and the treatment rooms (cabinets) in each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dentalpin.platform import LifecycleContext, Manifest, Module

from .models import metadata

if TYPE_CHECKING:
    from fastapi import APIRouter


class LocationsModule(Module):
    manifest = Manifest(
        name="locations",
        version="1.0.0",
        summary="Clinic sites with their time zone, fiscal identity and treatment rooms",
        author="DentalPin",
        license="BUSL-1.1",
        category="administrative",
        core=">=0.1,<1",
        auto_install=True,
        permissions={
            "location.read": "See the clinic's locations and cabinets",
            "location.write": "Create, edit and archive locations and cabinets",
        },
        role_grants={
            "admin": "*",
            "dentist": ("location.read",),
            "hygienist": ("location.read",),
            "assistant": ("location.read",),
            "receptionist": ("location.read",),
            "accountant": ("location.read",),
        },
        navigation=({"label": "Locations", "path": "/locations", "permission": "location.read"},),
    )
    metadata = metadata

    def router(self) -> APIRouter:
        from .routes import router

        return router

    async def seed(self, ctx: LifecycleContext) -> None:
        from .service import create_default_location

        await create_default_location(ctx.session, clinic_name=ctx.tenant.name)

    async def demo(self, ctx: LifecycleContext) -> None:
        from .demo import demo

        await demo(ctx)

"""catalog: the clinic's billable treatments (codes, durations, VAT type) and their
prices, with one optional price list per location."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dentalpin.platform import LifecycleContext, Manifest, Module

from .models import metadata

if TYPE_CHECKING:
    from fastapi import APIRouter


class CatalogModule(Module):
    manifest = Manifest(
        name="catalog",
        version="1.0.0",
        summary="Treatments and services with durations, VAT types and per-location prices",
        author="DentalPin",
        license="BUSL-1.1",
        category="financial",
        core=">=0.1,<1",
        auto_install=True,
        depends={"locations": ">=1.0,<2"},
        permissions={
            "item.read": "See treatments, categories and prices",
            "item.write": "Create and edit treatments",
            "price.write": "Manage price lists and their prices",
        },
        role_grants={
            "admin": "*",
            "dentist": ("item.read",),
            "hygienist": ("item.read",),
            "assistant": ("item.read",),
            "receptionist": ("item.read",),
            "accountant": ("item.read",),
        },
        navigation=({"label": "Catalog", "path": "/catalog", "permission": "item.read"},),
    )
    metadata = metadata

    def router(self) -> APIRouter:
        from .routes import router

        return router

    async def demo(self, ctx: LifecycleContext) -> None:
        from .demo import demo

        await demo(ctx)

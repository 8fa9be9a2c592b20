"""odontogram: the dental chart in FDI notation, kept as an append-only log of entries
(conditions found, treatments performed) from which the current chart is derived."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dentalpin.platform import Handler, LifecycleContext, Manifest, Module

from .models import metadata

if TYPE_CHECKING:
    from fastapi import APIRouter


class OdontogramModule(Module):
    manifest = Manifest(
        name="odontogram",
        version="1.0.0",
        summary="Dental chart in FDI notation: conditions and treatments per tooth and surface",
        author="DentalPin",
        license="BUSL-1.1",
        category="clinical",
        core=">=0.1,<1",
        depends={"patients": ">=1.0,<2", "catalog": ">=1.0,<2"},
        permissions={
            "chart.read": "See patients' dental charts and their history",
            "chart.write": "Record conditions and treatments on dental charts",
        },
        role_grants={
            "admin": "*",
            "dentist": "*",
            "hygienist": ("chart.read", "chart.write"),
            "assistant": ("chart.read",),
        },
        navigation=({"label": "Odontogram", "path": "/odontogram", "permission": "chart.read"},),
    )
    metadata = metadata

    def subscriptions(self) -> dict[str, Handler]:
        from .service import on_item_completed

        return {"treatment_plans.item_completed": on_item_completed}

    def router(self) -> APIRouter:
        from .routes import router

        return router

    async def demo(self, ctx: LifecycleContext) -> None:
        from .demo import demo

        await demo(ctx)

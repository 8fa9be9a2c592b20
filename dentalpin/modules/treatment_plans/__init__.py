"""treatment_plans: what a patient is offered (plans of catalog treatments per tooth and
surface, with prices and discounts), the quote issued at each proposal, the patient's
acceptance, and the work done (each completed item is charted on the odontogram)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dentalpin.platform import LifecycleContext, Manifest, Module

from .events import EVENTS
from .models import metadata

if TYPE_CHECKING:
    from fastapi import APIRouter


class TreatmentPlansModule(Module):
    manifest = Manifest(
        name="treatment_plans",
        version="1.0.0",
        summary="Treatment plans and quotes: items per tooth, versioned quotes, acceptance",
        author="DentalPin",
        license="BUSL-1.1",
        category="clinical",
        core=">=0.1,<1",
        depends={"patients": ">=1.0,<2", "catalog": ">=1.0,<2", "odontogram": ">=1.0,<2"},
        permissions={
            "plan.summary": "See treatment plans' status and totals (no clinical detail)",
            "plan.read": "See treatment plans in full: items, teeth, surfaces, notes",
            "plan.write": "Create, edit, propose and close plans; record the patient's answer",
            "item.complete": "Mark plan items as performed (charted on the odontogram)",
            "quote.read": "See the quotes issued and their prices",
        },
        role_grants={
            "admin": "*",
            "dentist": "*",
            "hygienist": ("plan.summary", "plan.read", "item.complete", "quote.read"),
            "assistant": ("plan.summary", "plan.read", "quote.read"),
            "receptionist": ("plan.summary",),
            "accountant": ("plan.summary", "quote.read"),
        },
        navigation=(
            {"label": "Treatment plans", "path": "/treatment_plans", "permission": "plan.summary"},
        ),
    )
    metadata = metadata
    events = EVENTS

    def router(self) -> APIRouter:
        from .routes import router

        return router

    async def demo(self, ctx: LifecycleContext) -> None:
        from .demo import demo

        await demo(ctx)

"""agenda: professionals and their working hours, appointments with their status flow,
and free-slot search. Double booking of a professional or a cabinet is refused by the
database itself (exclusion constraints), so no race between two front desks can cause it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dentalpin.platform import Handler, LifecycleContext, Manifest, Module

from .events import EVENTS
from .models import metadata

if TYPE_CHECKING:
    from fastapi import APIRouter

_CLINICAL = (
    "appointment.read",
    "appointment.write",
    "appointment.notes",
    "professional.read",
)


class AgendaModule(Module):
    manifest = Manifest(
        name="agenda",
        version="1.0.0",
        summary="Appointments, professionals' working hours and free-slot search",
        author="DentalPin",
        license="BUSL-1.1",
        category="clinical",
        core=">=0.1,<1",
        auto_install=True,
        depends={"locations": ">=1.0,<2", "patients": ">=1.0,<2", "catalog": ">=1.0,<2"},
        requires_extensions=("btree_gist",),
        permissions={
            "appointment.read": "See appointments (without clinical notes) and free slots",
            "appointment.write": "Book, move, confirm, check in, cancel appointments",
            "appointment.notes": "Read and write the clinical notes of appointments",
            "professional.read": "See professionals and their working hours",
            "professional.write": "Add professionals and set their working hours",
        },
        role_grants={
            "admin": "*",
            "dentist": _CLINICAL,
            "hygienist": _CLINICAL,
            "assistant": _CLINICAL,
            "receptionist": ("appointment.read", "appointment.write", "professional.read"),
        },
        navigation=(
            {"label": "Agenda", "path": "/agenda", "permission": "appointment.read", "order": 20},
        ),
    )
    metadata = metadata
    events = EVENTS

    def router(self) -> APIRouter:
        from .routes import router

        return router

    def subscriptions(self) -> dict[str, Handler]:
        from .service import on_member_removed

        return {"platform.member_removed": on_member_removed}

    async def demo(self, ctx: LifecycleContext) -> None:
        from .demo import demo

        await demo(ctx)

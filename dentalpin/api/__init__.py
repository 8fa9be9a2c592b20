"""The platform's own HTTP API (composition layer): sign-in and sessions, the caller's
profile, and a clinic's members, roles and audit log. Module routes live in the modules."""

from __future__ import annotations

from fastapi import FastAPI

from .admin import router as admin_router
from .auth import router as auth_router
from .auth import wellknown_router
from .events import metrics_router
from .events import router as events_router


def include_routers(app: FastAPI) -> None:
    app.include_router(wellknown_router)
    app.include_router(auth_router)
    app.include_router(admin_router)
    app.include_router(events_router)
    app.include_router(metrics_router)


__all__ = ["include_routers"]

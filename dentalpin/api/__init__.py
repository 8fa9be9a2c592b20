"""The platform's own HTTP API (composition layer): sign-in and sessions, the caller's
profile, a clinic's members, roles, audit log, approval requests and modules, and the platform API
of operators, resellers and integration clients (tenants, modules, jobs, resellers,
users, clients). Module routes live in the modules."""

from __future__ import annotations

from fastapi import FastAPI

from .access import public_router as access_public_router
from .access import router as access_router
from .admin import router as admin_router
from .approvals import router as approvals_router
from .auth import router as auth_router
from .auth import wellknown_router
from .clinic_modules import router as clinic_modules_router
from .domains import router as domains_router
from .events import metrics_router
from .events import router as events_router
from .jobs import router as jobs_router
from .resellers import router as resellers_router
from .sso import router as sso_router
from .tenants import router as tenants_router
from .users import router as users_router


def include_routers(app: FastAPI) -> None:
    app.include_router(wellknown_router)
    app.include_router(auth_router)
    app.include_router(admin_router)
    app.include_router(events_router)
    app.include_router(metrics_router)
    app.include_router(approvals_router)
    app.include_router(clinic_modules_router)
    for router in (tenants_router, jobs_router, resellers_router, users_router):
        app.include_router(router)
    app.include_router(sso_router)
    app.include_router(domains_router)
    app.include_router(access_router)
    app.include_router(access_public_router)


__all__ = ["include_routers"]

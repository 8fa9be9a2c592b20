"""The rules of the patients module."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dentalpin.platform import UninstallVeto

from .models import patients


async def refuse_uninstall_with_records(session: AsyncSession) -> None:
    """Spanish law (Ley 41/2002, art. 17) keeps clinical records at least five years after
    the last visit, so any patient row, archived or not, vetoes the uninstall."""
    held = await session.scalar(select(func.count()).select_from(patients))
    if held:
        raise UninstallVeto(
            f"{held} patient record(s) exist; Spanish law keeps clinical records for at least "
            "five years after the last visit, so the patients module cannot be uninstalled "
            "while it holds any (archived patients included). Export them first "
            "(GET /api/v1/patients/patients/{id}/export) and contact support to close the clinic."
        )

"""The rules of the patients module: valid identity documents, a guardian for every minor,
archive instead of delete, medical alerts flagged wherever the patient appears, consents
recorded with who and when, and a quick search that ignores accents and case."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, insert, literal, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from dentalpin.platform import (
    Conflict,
    InvalidInput,
    NotFound,
    Page,
    UninstallVeto,
    conflicts_as,
    fetch_page,
    publish,
    sort_order,
    update_versioned,
)

from . import documents
from .events import PatientArchived, PatientCreated, PatientUpdated
from .models import alerts, consents, patients

ADULT_AGE = 18
SEVERITY_RANK = {"low": 1, "medium": 2, "high": 3}
PATIENT_SORTS: Mapping[str, ColumnElement[Any]] = {
    "family_name": patients.c.family_name,
    "given_name": patients.c.given_name,
    "number": patients.c.number,
    "birth_date": patients.c.birth_date,
    "created_at": patients.c.created_at,
    "updated_at": patients.c.updated_at,
}
DEFAULT_SORT = "family_name,given_name"
_PHONE_LIKE = re.compile(r"^[\d\s+().-]+$")
_LIKE_SPECIALS = re.compile(r"([\\%_])")


def age_on(birth_date: date, today: date) -> int:
    before_birthday = (today.month, today.day) < (birth_date.month, birth_date.day)
    return today.year - birth_date.year - before_birthday


def today() -> date:
    return datetime.now(UTC).date()


# Reading ---------------------------------------------------------------------------------


async def get_patient(session: AsyncSession, patient_id: uuid.UUID) -> RowMapping:
    row = (
        (await session.execute(select(patients).where(patients.c.id == patient_id)))
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"No patient with id {patient_id}.")
    return row


def search_terms(query: str) -> list[str]:
    """What a quick-search box means: a phone number (digits only, whatever the spacing)
    or words that must all appear in the name, number or document."""
    query = query.strip()
    digits = re.sub(r"\D", "", query)
    if _PHONE_LIKE.match(query) and len(digits) >= 3:
        return [digits]
    return [t for t in query.split() if t]


def _contains(term: str) -> ColumnElement[bool]:
    escaped = _LIKE_SPECIALS.sub(r"\\\1", term)
    folded = func.f_unaccent(func.lower(literal(escaped)))
    return patients.c.search.like(func.concat("%", folded, "%"), escape="\\")


async def search_patients(
    session: AsyncSession,
    *,
    query: str | None,
    archived: bool,
    sort: str | None,
    limit: int,
    offset: int,
) -> Page:
    """Patients matching the quick search, best match first unless `sort` says otherwise.

    Every term is a substring match on the `search` column (accent- and case-free name,
    number, document and phone digits), which the trigram GIN index serves."""
    statement = select(patients).where(
        patients.c.archived_at.is_not(None) if archived else patients.c.archived_at.is_(None)
    )
    order: list[ColumnElement[Any]]
    terms = search_terms(query or "")
    if terms:
        statement = statement.where(*(_contains(t) for t in terms))
    if sort is None and terms:
        folded = func.f_unaccent(func.lower(literal(" ".join(terms))))
        # Whole-word matches first ("jose" before "josefa"), then overall closeness.
        order = [
            func.word_similarity(folded, patients.c.search).desc(),
            func.similarity(patients.c.search, folded).desc(),
            patients.c.id,
        ]
    else:
        order = sort_order(sort or DEFAULT_SORT, PATIENT_SORTS, patients.c.id)
    return await fetch_page(session, statement.order_by(*order), limit=limit, offset=offset)


async def alert_summaries(
    session: AsyncSession, patient_ids: Iterable[uuid.UUID], *, with_items: bool
) -> dict[uuid.UUID, dict[str, Any]]:
    """Active alerts per patient: count and highest severity, and the alerts themselves
    when the reader may see them. One query for a whole page of patients."""
    ids = list(patient_ids)
    summaries: dict[uuid.UUID, dict[str, Any]] = {
        i: {"count": 0, "highest_severity": None, "items": [] if with_items else None} for i in ids
    }
    if not ids:
        return summaries
    rank = case(SEVERITY_RANK, value=alerts.c.severity)
    rows = await session.execute(
        select(alerts)
        .where(alerts.c.patient_id.in_(ids), alerts.c.resolved_at.is_(None))
        .order_by(alerts.c.patient_id, rank.desc(), alerts.c.created_at)
    )
    for alert in rows.mappings():
        summary = summaries[alert["patient_id"]]
        summary["count"] += 1
        if summary["highest_severity"] is None:
            summary["highest_severity"] = alert["severity"]
        if with_items:
            summary["items"].append(
                {k: alert[k] for k in ("id", "kind", "description", "severity")}
            )
    return summaries


def patient_view(row: RowMapping, alert_summary: dict[str, Any], on: date) -> dict[str, Any]:
    """A patient as the API shows it: the row without its search column, with age and alerts."""
    view = {k: v for k, v in row.items() if k != "search"}
    age = age_on(row["birth_date"], on) if row["birth_date"] else None
    view.update(age=age, is_minor=age is not None and age < ADULT_AGE, alerts=alert_summary)
    return view


# Writing ---------------------------------------------------------------------------------


def _document(values: dict[str, Any]) -> None:
    kind, number = values.get("document_type"), values.get("document_number")
    if (kind is None) != (number is None):
        raise InvalidInput(
            "document_type and document_number go together: send both (dni, nie or "
            "passport, and the number) or neither."
        )
    if kind is None or number is None:
        return
    values["document_number"] = documents.normalize(kind, number)
    why = documents.problem(kind, values["document_number"])
    if why is not None:
        raise InvalidInput(f"document_number {number!r} is not a valid {kind.upper()}: {why}.")


async def _guardian(session: AsyncSession, values: Mapping[str, Any], on: date) -> None:
    birth, guardian_id = values.get("birth_date"), values.get("guardian_patient_id")
    if birth is not None and birth > on:
        raise InvalidInput(f"birth_date {birth} is in the future.")
    minor = birth is not None and age_on(birth, on) < ADULT_AGE
    if minor and guardian_id is None:
        raise InvalidInput(
            f"The patient is under {ADULT_AGE}: set guardian_patient_id to the patient record "
            "of a parent or legal guardian (register the guardian as a patient first)."
        )
    if guardian_id is None:
        return
    if guardian_id == values.get("id"):
        raise InvalidInput("A patient cannot be their own guardian.")
    guardian = (
        (await session.execute(select(patients).where(patients.c.id == guardian_id)))
        .mappings()
        .first()
    )
    if guardian is None or guardian["archived_at"] is not None:
        raise InvalidInput(f"guardian_patient_id {guardian_id} is not an active patient.")
    if guardian["birth_date"] is not None and age_on(guardian["birth_date"], on) < ADULT_AGE:
        raise InvalidInput("The guardian must be an adult; choose a parent or legal guardian.")


def _duplicate_document(values: Mapping[str, Any]) -> str:
    return (
        f"Another patient already has {str(values.get('document_type')).upper()} "
        f"{values.get('document_number')}; search for them instead of registering twice."
    )


async def create_patient(session: AsyncSession, values: Mapping[str, Any]) -> RowMapping:
    checked = dict(values)
    _document(checked)
    await _guardian(session, checked, today())
    async with conflicts_as(session, _duplicate_document(checked)):
        row = (
            (await session.execute(insert(patients).values(**checked).returning(*patients.c)))
            .mappings()
            .one()
        )
    await publish(session, PatientCreated(patient_id=row["id"], number=row["number"]))
    return row


async def update_patient(
    session: AsyncSession, patient_id: uuid.UUID, expected_version: int, changes: Mapping[str, Any]
) -> RowMapping:
    current = await get_patient(session, patient_id)
    merged = {**current, **changes}
    _document(merged)
    await _guardian(session, merged, today())
    checked = {k: merged[k] for k in changes}
    async with conflicts_as(session, _duplicate_document(merged)):
        row = await update_versioned(
            session, patients, patient_id, expected_version, checked, what="patient"
        )
    changed = sorted(k for k in checked if checked[k] != current[k])
    if changed:
        await publish(session, PatientUpdated(patient_id=patient_id, fields=changed))
    return row


async def set_archived(
    session: AsyncSession, patient_id: uuid.UUID, expected_version: int, archived: bool
) -> RowMapping:
    current = await get_patient(session, patient_id)
    if (current["archived_at"] is not None) == archived:
        state = "archived" if archived else "active"
        raise Conflict(f"Patient {current['number']} is already {state}.")
    row = await update_versioned(
        session,
        patients,
        patient_id,
        expected_version,
        {"archived_at": func.now() if archived else None},
        what="patient",
    )
    event = (
        PatientArchived(patient_id=patient_id)
        if archived
        else PatientUpdated(patient_id=patient_id, fields=["archived_at"])
    )
    await publish(session, event)
    return row


# Alerts ----------------------------------------------------------------------------------


async def list_alerts(
    session: AsyncSession, patient_id: uuid.UUID, *, include_resolved: bool
) -> list[RowMapping]:
    await get_patient(session, patient_id)
    statement = select(alerts).where(alerts.c.patient_id == patient_id)
    if not include_resolved:
        statement = statement.where(alerts.c.resolved_at.is_(None))
    rank = case(SEVERITY_RANK, value=alerts.c.severity)
    rows = await session.execute(statement.order_by(rank.desc(), alerts.c.created_at))
    return list(rows.mappings())


async def create_alert(
    session: AsyncSession,
    patient_id: uuid.UUID,
    values: Mapping[str, Any],
    recorded_by: uuid.UUID | None,
) -> RowMapping:
    await get_patient(session, patient_id)
    statement = (
        insert(alerts)
        .values(patient_id=patient_id, recorded_by=recorded_by, **values)
        .returning(*alerts.c)
    )
    return (await session.execute(statement)).mappings().one()


async def update_alert(
    session: AsyncSession, alert_id: uuid.UUID, expected_version: int, changes: Mapping[str, Any]
) -> RowMapping:
    values = {k: v for k, v in changes.items() if k != "resolved"}
    if "resolved" in changes:
        values["resolved_at"] = func.now() if changes["resolved"] else None
    return await update_versioned(
        session, alerts, alert_id, expected_version, values, what="medical alert"
    )


# Consents --------------------------------------------------------------------------------


async def consent_history(session: AsyncSession, patient_id: uuid.UUID) -> list[RowMapping]:
    await get_patient(session, patient_id)
    rows = await session.execute(
        select(consents)
        .where(consents.c.patient_id == patient_id)
        .order_by(consents.c.recorded_at.desc(), consents.c.id)
    )
    return list(rows.mappings())


def current_consents(history: Iterable[RowMapping]) -> dict[str, RowMapping]:
    """The latest answer per kind (`history` is newest first)."""
    current: dict[str, RowMapping] = {}
    for record in history:
        current.setdefault(record["kind"], record)
    return current


async def record_consent(
    session: AsyncSession,
    patient_id: uuid.UUID,
    values: Mapping[str, Any],
    recorded_by: uuid.UUID,
) -> RowMapping:
    """Consents are never edited: each answer is a new record saying who took it and when."""
    await get_patient(session, patient_id)
    statement = (
        insert(consents)
        .values(patient_id=patient_id, recorded_by=recorded_by, **values)
        .returning(*consents.c)
    )
    return (await session.execute(statement)).mappings().one()


# GDPR and retention ----------------------------------------------------------------------


async def export_patient(session: AsyncSession, patient_id: uuid.UUID) -> dict[str, Any]:
    """Everything this module holds about one patient, for a GDPR access or portability
    request (arts. 15 and 20): the record, every alert (resolved too) and every consent."""
    row = await get_patient(session, patient_id)
    wards = await session.scalars(
        select(patients.c.id)
        .where(patients.c.guardian_patient_id == patient_id)
        .order_by(patients.c.number)
    )
    return {
        "exported_at": datetime.now(UTC),
        "patient": {k: v for k, v in row.items() if k != "search"},
        "alerts": [dict(a) for a in await list_alerts(session, patient_id, include_resolved=True)],
        "consents": [dict(c) for c in await consent_history(session, patient_id)],
        "wards": list(wards),
    }


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

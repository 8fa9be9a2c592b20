"""Demo data: about 300 patients with Spanish names (accents included, to try the search),
valid DNIs, mobile phones, children with a parent as guardian, medical alerts and
consents; in a few bulk inserts. Deterministic, so every demo clinic looks the same."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from dentalpin.platform import LifecycleContext

from .documents import CHECK_LETTERS
from .models import alerts, consents, patients

ADULTS = 260
CHILDREN = 40
SEED = 20260105
RECEPTION = uuid.UUID("5f0c3c1a-9c1e-4d38-a0a8-3e7c9d2b6e41")
"""Who recorded the demo consents (the demo front desk; not a login)."""

GIVEN = {
    "female": (
        "María",
        "Lucía",
        "Carmen",
        "Ana",
        "Isabel",
        "Laura",
        "Marta",
        "Elena",
        "Sofía",
        "Paula",
        "Inés",
        "Begoña",
        "Pilar",
        "Nuria",
        "Raquel",
        "Rocío",
        "Montserrat",
        "Ainhoa",
        "Noelia",
        "Sara",
        "Julia",
        "Alba",
        "Irene",
        "Cristina",
        "Ángela",
    ),
    "male": (
        "José",
        "Antonio",
        "Manuel",
        "Francisco",
        "David",
        "Javier",
        "Daniel",
        "Carlos",
        "Jesús",
        "Alejandro",
        "Miguel",
        "Rafael",
        "Pablo",
        "Sergio",
        "Jorge",
        "Álvaro",
        "Andrés",
        "Iñaki",
        "Rubén",
        "Óscar",
        "Raúl",
        "Adrián",
        "Hugo",
        "Martín",
        "Íñigo",
    ),
}
FAMILY = (
    "García",
    "Fernández",
    "González",
    "Rodríguez",
    "López",
    "Martínez",
    "Sánchez",
    "Pérez",
    "Gómez",
    "Martín",
    "Jiménez",
    "Ruiz",
    "Hernández",
    "Díaz",
    "Moreno",
    "Muñoz",
    "Álvarez",
    "Romero",
    "Alonso",
    "Gutiérrez",
    "Navarro",
    "Torres",
    "Domínguez",
    "Vázquez",
    "Ramos",
    "Gil",
    "Ramírez",
    "Serrano",
    "Blanco",
    "Molina",
    "Morales",
    "Suárez",
    "Ortega",
    "Delgado",
    "Castro",
    "Ortiz",
    "Rubio",
    "Marín",
    "Sanz",
    "Núñez",
    "Iglesias",
    "Medina",
    "Garrido",
    "Cortés",
    "Castillo",
    "Santos",
    "Lozano",
    "Guerrero",
    "Cano",
    "Prieto",
    "Méndez",
    "Ibáñez",
)
STREETS = (
    "Calle Mayor",
    "Calle de Alcalá",
    "Avenida de América",
    "Calle de Bravo Murillo",
    "Paseo de la Castellana",
    "Calle de Serrano",
    "Avenida de España",
    "Calle Marquesa Viuda de Aldama",
)
TOWNS = (
    ("28009", "Madrid"),
    ("28028", "Madrid"),
    ("28100", "Alcobendas"),
    ("28700", "San Sebastián de los Reyes"),
)
ALERTS = (
    ("allergy", "Alergia a la penicilina", "high"),
    ("allergy", "Alergia al látex", "high"),
    ("allergy", "Alergia a AINEs (ibuprofeno)", "medium"),
    ("medication", "Anticoagulado con Sintrom (acenocumarol)", "high"),
    ("medication", "Bifosfonatos orales (alendronato)", "high"),
    ("medication", "Antiagregante (AAS 100 mg)", "medium"),
    ("condition", "Diabetes mellitus tipo 2", "medium"),
    ("condition", "Hipertensión arterial controlada", "low"),
    ("condition", "Embarazo (segundo trimestre)", "medium"),
    ("condition", "Portador de marcapasos", "high"),
)


def _strip(name: str) -> str:
    table = str.maketrans("áéíóúÁÉÍÓÚñÑüÜ", "aeiouAEIOUnNuU")
    return name.translate(table).lower()


def _dni(rng: random.Random, used: set[int]) -> str:
    number = rng.randrange(1_000_000, 99_999_999)
    while number in used:
        number = rng.randrange(1_000_000, 99_999_999)
    used.add(number)
    return f"{number:08d}{CHECK_LETTERS[number % 23]}"


def _birth_date(rng: random.Random, today: date, youngest: int, oldest: int) -> date:
    return today - timedelta(days=rng.randint(youngest * 365 + 10, oldest * 365 - 10))


def _person(rng: random.Random, today: date, used: set[int], index: int) -> dict[str, Any]:
    sex = rng.choice(("female", "male"))
    given = rng.choice(GIVEN[sex])
    family = f"{rng.choice(FAMILY)} {rng.choice(FAMILY)}"
    postal, town = rng.choice(TOWNS)
    return {
        "id": uuid.uuid4(),
        "given_name": given,
        "family_name": family,
        "birth_date": _birth_date(rng, today, 18, 88),
        "sex": sex,
        "phone": "+34 6{:02d} {:03d} {:03d}".format(*(rng.randint(0, n) for n in (99, 999, 999))),
        "email": f"{_strip(given)}.{_strip(family.split()[0])}{index}@correo.example",
        "document_type": "dni",
        "document_number": _dni(rng, used),
        "address_line": f"{rng.choice(STREETS)} {rng.randint(1, 150)}, {rng.randint(1, 8)}º",
        "postal_code": postal,
        "city": town,
        "province": "Madrid",
    }


def _child(rng: random.Random, today: date, parent: dict[str, Any]) -> dict[str, Any]:
    sex = rng.choice(("female", "male"))
    return {
        "id": uuid.uuid4(),
        "given_name": rng.choice(GIVEN[sex]),
        "family_name": f"{parent['family_name'].split()[0]} {rng.choice(FAMILY)}",
        "birth_date": _birth_date(rng, today, 3, 17),
        "sex": sex,
        "phone": parent["phone"],
        "guardian_patient_id": parent["id"],
        "guardian_relationship": "madre" if parent["sex"] == "female" else "padre",
        "address_line": parent["address_line"],
        "postal_code": parent["postal_code"],
        "city": parent["city"],
        "province": parent["province"],
    }


async def demo(ctx: LifecycleContext) -> None:
    rng = random.Random(SEED)  # noqa: S311 - demo data, not secrets
    today = datetime.now(UTC).date()
    used: set[int] = set()
    adults = [_person(rng, today, used, i) for i in range(ADULTS)]
    parents = [a for a in adults if 25 <= (today - a["birth_date"]).days // 365 <= 55]
    children = [_child(rng, today, rng.choice(parents)) for _ in range(CHILDREN)]
    session = ctx.session
    await session.execute(insert(patients), adults)
    await session.execute(insert(patients), children)

    flagged = rng.sample(adults, 45)
    await session.execute(
        insert(alerts),
        [
            {
                "patient_id": p["id"],
                "kind": kind,
                "description": text,
                "severity": severity,
                "recorded_by": RECEPTION,
            }
            for p in flagged
            for kind, text, severity in [rng.choice(ALERTS)]
        ],
    )
    recorded = datetime.now(UTC) - timedelta(days=30)
    await session.execute(
        insert(consents),
        [
            {
                "patient_id": p["id"],
                "kind": kind,
                "granted": granted,
                "recorded_by": RECEPTION,
                "recorded_at": recorded,
            }
            for p in adults + children
            for kind, granted in (
                ("data_processing", True),
                ("communications", rng.random() < 0.7),
            )
        ],
    )
    await ctx.log(f"patients demo: {ADULTS + CHILDREN} patients, {len(flagged)} with alerts")

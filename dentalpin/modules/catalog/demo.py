"""Demo data: a Spanish clinic's usual treatments, and the branch's own price list."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import insert, select

from dentalpin.modules.locations.models import locations
from dentalpin.platform import LifecycleContext

from .models import items, price_lists, prices

# code, name, category, price (EUR), minutes, VAT type
TREATMENTS = (
    ("1VIS", "Primera visita y diagnóstico", "Diagnóstico", "0", 30, "exempt"),
    ("RXPAN", "Radiografía panorámica", "Diagnóstico", "30", 15, "exempt"),
    ("RXPER", "Radiografía periapical", "Diagnóstico", "12", 10, "exempt"),
    ("TAC", "TAC dental (CBCT)", "Diagnóstico", "90", 20, "exempt"),
    ("LIMP", "Limpieza bucal (tartrectomía)", "Periodoncia", "50", 30, "exempt"),
    ("RAR", "Raspado y alisado radicular (por cuadrante)", "Periodoncia", "80", 45, "exempt"),
    ("MANPER", "Mantenimiento periodontal", "Periodoncia", "65", 45, "exempt"),
    ("OBT1", "Obturación composite (1 superficie)", "Conservadora", "45", 30, "exempt"),
    ("OBT2", "Obturación composite (2 o más superficies)", "Conservadora", "60", 45, "exempt"),
    ("SELL", "Sellador de fisuras", "Odontopediatría", "20", 15, "exempt"),
    ("PULP", "Pulpotomía (diente temporal)", "Odontopediatría", "70", 30, "exempt"),
    ("FLUOR", "Aplicación de flúor", "Odontopediatría", "15", 15, "exempt"),
    ("ENDO1", "Endodoncia unirradicular", "Endodoncia", "150", 60, "exempt"),
    ("ENDO3", "Endodoncia multirradicular", "Endodoncia", "250", 90, "exempt"),
    ("EXO", "Exodoncia simple", "Cirugía", "50", 30, "exempt"),
    ("EXOCIR", "Exodoncia quirúrgica (cordal incluido)", "Cirugía", "150", 60, "exempt"),
    ("IMPL", "Implante dental (titanio)", "Implantología", "850", 90, "exempt"),
    ("CORIMP", "Corona sobre implante (metal-cerámica)", "Prótesis", "550", 45, "exempt"),
    ("CORZR", "Corona de zirconio", "Prótesis", "450", 45, "exempt"),
    ("PRREM", "Prótesis removible acrílica", "Prótesis", "400", 45, "exempt"),
    ("FERULA", "Férula de descarga", "Oclusión", "220", 30, "exempt"),
    ("ORTOB", "Ortodoncia con brackets (mensualidad)", "Ortodoncia", "80", 30, "exempt"),
    ("ORTOA", "Ortodoncia invisible (tratamiento completo)", "Ortodoncia", "3500", 45, "exempt"),
    ("BLANQ", "Blanqueamiento dental en clínica", "Estética", "300", 60, "general"),
    ("CARILLA", "Carilla de composite estética", "Estética", "180", 60, "general"),
)
BRANCH_DISCOUNT = Decimal("0.95")
"""The branch charges 5% less for its most common treatments."""


async def demo(ctx: LifecycleContext) -> None:
    session = ctx.session
    rows = [
        {
            "code": code,
            "name": name,
            "category": category,
            "default_price": Decimal(price),
            "duration_minutes": minutes,
            "vat_type": vat,
        }
        for code, name, category, price, minutes, vat in TREATMENTS
    ]
    created = (await session.execute(insert(items).returning(items.c.id, items.c.code), rows)).all()
    branch = await session.scalar(
        select(locations.c.id).where(~locations.c.is_default).order_by(locations.c.name).limit(1)
    )
    if branch is not None:
        price_list = await session.scalar(
            insert(price_lists)
            .values(name="Tarifa Alcobendas", location_id=branch)
            .returning(price_lists.c.id)
        )
        defaults = {code: Decimal(price) for code, _, _, price, _, _ in TREATMENTS}
        common = {"LIMP", "OBT1", "OBT2", "EXO", "RXPAN", "ENDO1"}
        await session.execute(
            insert(prices),
            [
                {
                    "price_list_id": price_list,
                    "item_id": item_id,
                    "price": (defaults[code] * BRANCH_DISCOUNT).quantize(Decimal("0.01")),
                }
                for item_id, code in created
                if code in common
            ],
        )
    await ctx.log(f"catalog demo: {len(rows)} treatments")

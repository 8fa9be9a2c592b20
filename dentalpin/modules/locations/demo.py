"""Demo data: the demo clinic's two sites in the Madrid area and their cabinets."""

from __future__ import annotations

from sqlalchemy import insert, select, update

from dentalpin.platform import LifecycleContext

from .models import cabinets, locations

MAIN = {
    "name": "Centro",
    "address_line": "Calle de Alcalá 120, 1º B",
    "postal_code": "28009",
    "city": "Madrid",
    "province": "Madrid",
    "phone": "+34 914 000 120",
    "email": "centro@demo.dentalpin.test",
    "tax_id": "B12345674",
    "tax_name": "Clínica Dental Demo S.L.",
}
BRANCH = {
    "name": "Alcobendas",
    "address_line": "Avenida de España 17",
    "postal_code": "28100",
    "city": "Alcobendas",
    "province": "Madrid",
    "phone": "+34 916 000 017",
    "email": "alcobendas@demo.dentalpin.test",
    "tax_id": "B12345674",
    "tax_name": "Clínica Dental Demo S.L.",
}


async def demo(ctx: LifecycleContext) -> None:
    session = ctx.session
    main = await session.scalar(select(locations.c.id).where(locations.c.is_default))
    if main is None:
        main = await session.scalar(
            insert(locations).values(is_default=True, **MAIN).returning(locations.c.id)
        )
    else:
        await session.execute(update(locations).where(locations.c.id == main).values(**MAIN))
    branch = await session.scalar(insert(locations).values(**BRANCH).returning(locations.c.id))
    await session.execute(
        insert(cabinets),
        [
            *({"location_id": main, "name": f"Gabinete {n}"} for n in (1, 2, 3)),
            *({"location_id": branch, "name": f"Gabinete {n}"} for n in (1, 2)),
        ],
    )
    await ctx.log("locations demo: 2 locations, 5 cabinets")

"""Archive retention: list archives and delete those past their retention date.

Every archive records `expires_at` (DENTALPIN_ARCHIVE_RETENTION_DAYS after it was
written; Spanish law keeps clinical records at least five years, the default is six).
Pruning removes the encrypted file and its record together; until then an archive
can be restored.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select

from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import archives, tenants


async def list_archives(
    platform: Platform, tenant_id: uuid.UUID | None = None
) -> list[dict[str, Any]]:
    query = (
        select(archives, tenants.c.slug)
        .join(tenants, tenants.c.id == archives.c.tenant_id, isouter=True)
        .order_by(archives.c.created_at.desc())
    )
    if tenant_id is not None:
        query = query.where(archives.c.tenant_id == tenant_id)
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(query)
        return [
            {
                "id": str(r.id),
                "tenant": r.slug,
                "kind": r.kind,
                "module": r.module,
                "version": r.version,
                "revision": r.revision,
                "size_bytes": r.size_bytes,
                "created_at": r.created_at.isoformat(),
                "expires_at": r.expires_at.isoformat(),
                "restored_at": r.restored_at.isoformat() if r.restored_at else None,
                "key": (r.contents or {}).get("key"),
            }
            for r in rows
        ]


async def prune_archives(platform: Platform, *, dry_run: bool = False) -> list[dict[str, Any]]:
    """Delete archives past `expires_at` (file first, then the record)."""
    now = datetime.now(UTC)
    async with platform.db.engine.connect() as conn, conn.begin():
        expired = (
            await conn.execute(
                select(archives.c.id, archives.c.path, archives.c.expires_at)
                .where(archives.c.expires_at < now)
                .with_for_update(skip_locked=True)
            )
        ).all()
        pruned = [
            {"id": str(r.id), "path": r.path, "expired": r.expires_at.isoformat()} for r in expired
        ]
        if dry_run or not expired:
            return pruned
        for row in expired:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(row.path)
        await conn.execute(delete(archives).where(archives.c.id.in_([r.id for r in expired])))
    return pruned

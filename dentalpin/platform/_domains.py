"""Custom domains: a clinic claims a host name, proves it controls its DNS with a TXT
record `_dentalpin.<domain>` holding the claim's token, and only then is the host routed
to it (`app.resolve_tenant` reads verified claims only).

Several clinics may claim the same name (a claim alone must not let a squatter block the
owner); each claim has its own token, so only the one whose token the DNS publishes can
be verified, and a unique index allows one verified claim per name.

A verified name is looked up again every `domain_recheck_every_s` (beat's
`dentalpin.domains.recheck`): a domain that lapsed or moved must not keep routing to the
clinic, yet one missed answer must not cut a clinic off. So a missing record is counted,
the clinic's admins are told at the first miss, and the name stops routing after
`domain_recheck_failures` misses in a row; a DNS server that does not answer counts as
nothing (the question is asked again at the next tick).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
from sqlalchemy import and_, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ._audit import SYSTEM, AuditContext, record
from ._errors import Conflict, InvalidInput, NotFound, Unavailable
from ._identity import list_members
from ._links import clinic_url
from ._mail import Mail, compose
from ._mail_queue import deliver, enqueue
from ._roles import ADMIN_ROLE
from ._runtime import Platform
from ._settings import Settings
from ._tables import domains, tenants

TXT_PREFIX = "_dentalpin."
TOKEN_PREFIX = "dentalpin-verification="  # noqa: S105 - a record's prefix, not a secret
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class NotVerified(Conflict):
    problem = "domain-not-verified"


def validate_hostname(settings: Settings, hostname: str) -> str:
    """A DNS name of two labels or more, not an address, not under the platform's domain."""
    name = hostname.strip().lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        is_address = True
    except ValueError:
        is_address = False
    labels = name.split(".")
    if (
        is_address
        or len(name) > 253
        or len(labels) < 2
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise InvalidInput(f"'{hostname[:80]}' is not a host name such as clinica.example.es")
    base = settings.base_domain.lower().rstrip(".")
    if name == base or name.endswith("." + base) or name == "localhost":
        raise InvalidInput(
            f"host names under {base} are the platform's own; claim a domain of your clinic"
        )
    return name


def txt_name(hostname: str) -> str:
    return TXT_PREFIX + hostname


def _public(row: Any) -> dict[str, Any]:
    return {
        "hostname": row.hostname,
        "verified": row.verified,
        "verified_at": row.verified_at.isoformat() if row.verified_at else None,
        "checked_at": row.checked_at.isoformat() if row.checked_at else None,
        "failed_checks": row.failed_checks,
        "last_check_error": row.last_check_error,
        "txt_record": {
            "name": txt_name(row.hostname),
            "type": "TXT",
            "value": row.verification_token,
        },
    }


async def add_domain(
    conn: AsyncConnection,
    settings: Settings,
    tenant_id: uuid.UUID,
    hostname: str,
    ctx: AuditContext,
) -> dict[str, Any]:
    """Claim a host name; the answer says which TXT record proves it."""
    name = validate_hostname(settings, hostname)
    taken = await conn.scalar(
        select(domains.c.tenant_id).where(domains.c.hostname == name, domains.c.verified)
    )
    if taken is not None and taken != tenant_id:
        raise Conflict(f"{name} is verified for another clinic; it must be removed there first")
    try:
        async with conn.begin_nested():
            row = (
                await conn.execute(
                    insert(domains)
                    .values(
                        hostname=name,
                        tenant_id=tenant_id,
                        verification_token=TOKEN_PREFIX + secrets.token_urlsafe(24),
                    )
                    .returning(domains)
                )
            ).one()
    except IntegrityError:
        raise Conflict(f"this clinic already claimed {name}; verify it") from None
    await record(conn, ctx, "domain.added", tenant_id=tenant_id, target=name)
    return _public(row)


async def list_domains(conn: AsyncConnection, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(domains).where(domains.c.tenant_id == tenant_id).order_by(domains.c.hostname)
    )
    return [_public(r) for r in rows]


def _claim(tenant_id: uuid.UUID, name: str) -> Any:
    return and_(domains.c.tenant_id == tenant_id, domains.c.hostname == name)


async def remove_domain(
    conn: AsyncConnection, tenant_id: uuid.UUID, hostname: str, ctx: AuditContext
) -> None:
    name = hostname.strip().lower().rstrip(".")
    removed = await conn.scalar(
        delete(domains).where(_claim(tenant_id, name)).returning(domains.c.hostname)
    )
    if removed is None:
        raise NotFound(f"this clinic has no claim on {name[:80]}")
    await record(conn, ctx, "domain.removed", tenant_id=tenant_id, target=name)


async def verify_domain(
    platform: Platform, tenant_id: uuid.UUID, hostname: str, ctx: AuditContext
) -> dict[str, Any]:
    """Look the TXT record up now; if it holds the claim's token, route the host here."""
    name = hostname.strip().lower().rstrip(".")
    async with platform.db.engine.connect() as conn:
        row = (await conn.execute(select(domains).where(_claim(tenant_id, name)))).first()
    if row is None:
        raise NotFound(f"this clinic has no claim on {name[:80]}; add it first")
    if row.verified:
        return _public(row)
    found = await txt_values(platform.settings, txt_name(name))
    if row.verification_token not in found:
        raise NotVerified(
            f"no TXT record {txt_name(name)} with value {row.verification_token} was found "
            f"(found {len(found)} other value(s)); publish it, wait for DNS, and verify again"
        )
    try:
        async with platform.db.engine.begin() as conn:
            updated = (
                await conn.execute(
                    update(domains)
                    .where(_claim(tenant_id, name))
                    .values(
                        verified=True,
                        verified_at=func.now(),
                        checked_at=func.now(),
                        failed_checks=0,
                        last_check_error=None,
                    )
                    .returning(domains)
                )
            ).one()
            await record(conn, ctx, "domain.verified", tenant_id=tenant_id, target=name)
    except IntegrityError:
        raise Conflict(
            f"{name} is verified for another clinic; it must be removed there first"
        ) from None
    return _public(updated)


def _resolver(settings: Settings) -> dns.asyncresolver.Resolver:
    """The system's resolver, or the configured nameservers (`host` or `host:port`)."""
    if not settings.dns_nameservers:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers: list[str | dns.nameserver.Nameserver] = []
        for entry in settings.dns_nameservers:
            host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
            servers.append(dns.nameserver.Do53Nameserver(host or entry, int(port or 53)))
        resolver.nameservers = servers
    resolver.lifetime = settings.dns_timeout_s
    # Never a cached answer: an admin verifies right after publishing the record.
    resolver.cache = None
    return resolver


async def txt_values(settings: Settings, name: str) -> list[str]:
    try:
        answer = await _resolver(settings).resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise Unavailable(f"DNS could not be asked about {name}; retry shortly") from exc
    return [b"".join(record.strings).decode(errors="replace") for record in answer]


# Re-checks -------------------------------------------------------------------------------

RECHECK_BATCH = 200
"""Names claimed at a time; a pass claims batches until none is due."""
RECHECK_CONCURRENCY = 8
"""Lookups in flight at once (each may wait `dns_timeout_s` for a silent nameserver)."""

_DUE = text(
    """
    with due as (
        select d.hostname, d.tenant_id, d.checked_at
          from platform.domains d
         where d.verified
           and (d.checked_at is null
                or d.checked_at < now() - make_interval(secs => :every_s))
         order by d.checked_at nulls first
         limit :batch
           for update skip locked)
    update platform.domains d
       set checked_at = now()
      from due
     where d.hostname = due.hostname and d.tenant_id = due.tenant_id
    returning d.hostname, d.tenant_id, d.verification_token, d.failed_checks,
              due.checked_at as previous_check
    """
)


@dataclass
class RecheckReport:
    confirmed: list[str] = field(default_factory=list)
    failing: list[str] = field(default_factory=list)
    """Names whose record was missing, still routed (fewer misses than the limit)."""
    unverified: list[str] = field(default_factory=list)
    """Names that stopped routing in this pass."""
    unanswered: list[str] = field(default_factory=list)
    """Names DNS could not be asked about: checked again at the next tick."""

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "confirmed": self.confirmed,
            "failing": self.failing,
            "unverified": self.unverified,
            "unanswered": self.unanswered,
        }


async def recheck_domains(platform: Platform, *, every_s: float | None = None) -> RecheckReport:
    """Look up the verified names not checked for `every_s` (default
    `domain_recheck_every_s`; 0: all of them) and act on what DNS says."""
    every = platform.settings.domain_recheck_every_s if every_s is None else every_s
    report = RecheckReport()
    limiter = asyncio.Semaphore(RECHECK_CONCURRENCY)
    while True:
        # Claiming stamps `checked_at`: a name is not due again within this pass.
        async with platform.db.engine.begin() as conn:
            due = list(await conn.execute(_DUE, {"every_s": every, "batch": RECHECK_BATCH}))
        await asyncio.gather(*(_recheck(platform, claim, report, limiter) for claim in due))
        # Unanswered names are due again at once: with DNS in trouble, leave the rest (and
        # them) to the next tick rather than claim them over and over.
        if len(due) < RECHECK_BATCH or report.unanswered:
            return report


async def _recheck(
    platform: Platform, claim: Any, report: RecheckReport, limiter: asyncio.Semaphore
) -> None:
    async with limiter:
        try:
            found = await txt_values(platform.settings, txt_name(claim.hostname))
        except Unavailable as exc:
            await _unanswered(platform, claim, exc.detail)
            report.unanswered.append(claim.hostname)
            return
        if claim.verification_token in found:
            await _confirmed(platform, claim)
            report.confirmed.append(claim.hostname)
        elif claim.failed_checks + 1 >= platform.settings.domain_recheck_failures:
            await _missing(platform, claim, stop=True)
            report.unverified.append(claim.hostname)
        else:
            await _missing(platform, claim, stop=False)
            report.failing.append(claim.hostname)


async def _unanswered(platform: Platform, claim: Any, error: str) -> None:
    # Not the clinic's doing: the name stays due, as if this pass had not looked.
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            update(domains)
            .where(_claim(claim.tenant_id, claim.hostname))
            .values(checked_at=claim.previous_check, last_check_error=error)
        )


async def _confirmed(platform: Platform, claim: Any) -> None:
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            update(domains)
            .where(_claim(claim.tenant_id, claim.hostname))
            .values(failed_checks=0, last_check_error=None)
        )


async def _missing(platform: Platform, claim: Any, *, stop: bool) -> None:
    """Count a miss (or stop routing the name), audit it, and tell the clinic's admins at
    the first miss and when the name stops."""
    settings = platform.settings
    failures = claim.failed_checks + 1
    error = f"no TXT record {txt_name(claim.hostname)} holds the clinic's token"
    values: dict[str, Any] = {"failed_checks": failures, "last_check_error": error}
    if stop:
        values.update(verified=False, verified_at=None)
    queued = []
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            update(domains).where(_claim(claim.tenant_id, claim.hostname)).values(values)
        )
        await record(
            conn,
            SYSTEM,
            "domain.unverified" if stop else "domain.check_failed",
            tenant_id=claim.tenant_id,
            target=claim.hostname,
            failed_checks=failures,
        )
        if stop or failures == 1:
            for mail in await _notices(conn, settings, claim, failures, stop):
                queued.append(await enqueue(conn, settings, mail))
    for mail_id in queued:
        await deliver(platform, mail_id)


async def _notices(
    conn: AsyncConnection, settings: Settings, claim: Any, failures: int, stop: bool
) -> list[Mail]:
    clinic = (await conn.execute(select(tenants).where(tenants.c.id == claim.tenant_id))).one()
    admins = [m for m in await list_members(conn, claim.tenant_id) if ADMIN_ROLE in m["roles"]]
    subject = (
        f"{claim.hostname} no longer serves {clinic.name}"
        if stop
        else f"Check the DNS record of {claim.hostname}"
    )
    return [
        compose(
            admin["email"],
            subject,
            "domain_check",
            name=admin["name"] or admin["email"],
            clinic=clinic.name,
            hostname=claim.hostname,
            record=txt_name(claim.hostname),
            token=claim.verification_token,
            stopped=stop,
            failures=failures,
            limit=settings.domain_recheck_failures,
            clinic_url=clinic_url(settings, clinic.slug),
        )
        for admin in admins
    ]


async def domain_counts(conn: AsyncConnection) -> dict[str, int]:
    """Custom domains by state, for /metrics: `failing` are verified names whose last
    re-check missed their record (alert: they stop routing after a few more)."""
    row = (
        await conn.execute(
            select(
                func.count().filter(domains.c.verified).label("verified"),
                func.count().filter(~domains.c.verified).label("unverified"),
                func.count()
                .filter(domains.c.verified, domains.c.failed_checks > 0)
                .label("failing"),
            )
        )
    ).one()
    return {"verified": row.verified, "unverified": row.unverified, "failing": row.failing}

"""The mail queue: every message the platform sends is written to `platform.mail_queue` in
the transaction that made it (an invitation and its e-mail exist together, or neither),
delivered right after the commit, and, while the mail server is down, again by beat's
`dentalpin.mail.retry` with exponential backoff, until it goes, its link expires, or
`MAX_ATTEMPTS` were made (then an operator can send it again: `dentalpin mail retry`).

The links in these messages are credentials, so a queued message is sealed (Fernet, under
a key derived from DENTALPIN_SECRET_KEY: a database dump alone holds no usable link) and
its body is erased once sent, or once it can never be sent. See ADR 0023.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cryptography.fernet import InvalidToken
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ._mail import Mail, MailNotSent, send
from ._passwords import fernet
from ._runtime import Platform
from ._settings import Settings
from ._tables import mail_queue

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
"""With the backoff below, the last attempt is about two hours after the first."""
FIRST_RETRY_S = 30.0
MAX_RETRY_S = 3600.0
KEPT_DAYS = 30
"""How long sent and failed messages stay listed (without their bodies)."""
BATCH = 50
"""Messages claimed at a time; a pass claims batches while the server takes them all."""
SEAL_PURPOSE = "mail-queue"
State = Literal["pending", "sent", "failed"]

_CLAIM = text(
    """
    update platform.mail_queue q
       set attempts = q.attempts + 1, next_attempt_at = now() + make_interval(secs => :lease_s)
     where q.id in (
           select id from platform.mail_queue
            where state = 'pending' and next_attempt_at <= now()
              and (cast(:only as uuid) is null or id = cast(:only as uuid))
            order by next_attempt_at
            limit :batch
              for update skip locked)
    returning q.id, q.kind, q.to_address, q.sealed, q.attempts, q.give_up_at
    """
)


@dataclass(frozen=True)
class Delivery:
    """How an attempt at one message went."""

    where: str | None = None
    """Where it went (the SMTP server, or the .eml file), if it went."""
    error: str | None = None
    """Why it did not, if it did not."""
    queued: bool = False
    """It did not go and stays queued: it will be tried again."""


@dataclass
class RetryReport:
    sent: int = 0
    retrying: int = 0
    failed: list[str] = field(default_factory=list)
    """Ids of messages given up on in this pass."""
    forgotten: int = 0
    """Settled messages past `KEPT_DAYS`, removed."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "retrying": self.retrying,
            "failed": len(self.failed),
            "forgotten": self.forgotten,
        }


def _seal(settings: Settings, mail: Mail) -> bytes:
    content = {"subject": mail.subject, "text": mail.text, "html": mail.html}
    return fernet(settings, SEAL_PURPOSE).encrypt(json.dumps(content).encode())


def _unseal(settings: Settings, row: Any) -> Mail:
    content = json.loads(fernet(settings, SEAL_PURPOSE).decrypt(row.sealed))
    return Mail(
        to=row.to_address,
        subject=content["subject"],
        text=content["text"],
        html=content["html"],
        kind=row.kind,
    )


async def enqueue(conn: AsyncConnection, settings: Settings, mail: Mail) -> uuid.UUID:
    """Queue `mail` in the caller's transaction; deliver it with `deliver` after the commit."""
    mail_id = uuid.uuid4()
    await conn.execute(
        mail_queue.insert().values(
            id=mail_id,
            kind=mail.kind,
            to_address=mail.to,
            sealed=_seal(settings, mail),
            give_up_at=mail.link_expires_at,
        )
    )
    return mail_id


def backoff_s(attempts: int) -> float:
    """The wait after failed attempt number `attempts` (1, 2...), with +-20% jitter so the
    messages of one outage do not all come back in the same second."""
    base = min(MAX_RETRY_S, FIRST_RETRY_S * 2.0 ** max(0, attempts - 1))
    return base * random.uniform(0.8, 1.2)  # noqa: S311 - spreading load, not a secret


async def deliver(platform: Platform, mail_id: uuid.UUID) -> Delivery:
    """Try one queued message now (after the commit that queued it). A message another
    process is sending, or that is not due, is left alone (`error` says so)."""
    done = await _pass(platform, RetryReport(), only=mail_id)
    if done:
        return done[0]
    return Delivery(error="another attempt is under way", queued=True)


async def retry_due(platform: Platform) -> RetryReport:
    """A pass over the due messages (beat runs it every `mail_retry_every_s`), and the
    removal of messages settled more than `KEPT_DAYS` ago."""
    report = RetryReport()
    while True:
        done = await _pass(platform, report, only=None)
        # A short batch is the last; one the server did not all take says it is still in
        # trouble: the rest wait for their own next attempt rather than a timeout each.
        if len(done) < BATCH or any(d.where is None for d in done):
            break
    async with platform.db.engine.begin() as conn:
        gone = await conn.execute(
            delete(mail_queue).where(
                mail_queue.c.state != "pending",
                mail_queue.c.created_at < func.now() - timedelta(days=KEPT_DAYS),
            )
        )
    report.forgotten = gone.rowcount
    return report


async def _pass(platform: Platform, report: RetryReport, only: uuid.UUID | None) -> list[Delivery]:
    """Claim the due messages (or only `only`), try each, record how it went."""
    settings = platform.settings
    # Claimed rows are leased past the longest a send can take: a process that dies while
    # sending leaves them to a later pass, which counts the lost attempt.
    lease_s = settings.smtp_timeout_s * 2 + 30
    async with platform.db.engine.begin() as conn:
        claimed = list(
            await conn.execute(
                _CLAIM, {"lease_s": lease_s, "only": only, "batch": 1 if only else BATCH}
            )
        )
    done = []
    for row in claimed:
        values, delivery = await _attempt(settings, row)
        async with platform.db.engine.begin() as conn:
            await conn.execute(update(mail_queue).where(mail_queue.c.id == row.id).values(values))
        if values["state"] == "sent":
            report.sent += 1
        elif values["state"] == "failed":
            report.failed.append(str(row.id))
        else:
            report.retrying += 1
        done.append(delivery)
    return done


async def _attempt(settings: Settings, row: Any) -> tuple[dict[str, Any], Delivery]:
    """Send one claimed message: the values its row gets, and how it went."""
    now = datetime.now(UTC)
    if row.give_up_at is not None and row.give_up_at <= now:
        return _failed("its link expired before it could be sent")
    try:
        mail = _unseal(settings, row)
    except InvalidToken:
        return _failed("sealed under another DENTALPIN_SECRET_KEY: it cannot be read")
    try:
        where = await send(settings, mail, message_key=f"{row.id}.dentalpin")
    except ValueError as exc:  # a header no message may carry (a line break in an address)
        return _failed(f"it cannot be written as an e-mail: {exc}")
    except MailNotSent as exc:
        if row.attempts >= MAX_ATTEMPTS:
            log.warning(
                "mail %s to %s given up after %s attempts", row.id, row.to_address, row.attempts
            )
            return {"state": "failed", "last_error": exc.detail}, Delivery(error=exc.detail)
        wait = timedelta(seconds=backoff_s(row.attempts))
        values = {"state": "pending", "last_error": exc.detail, "next_attempt_at": now + wait}
        return values, Delivery(error=exc.detail, queued=True)
    values = {"state": "sent", "sent_at": now, "sealed": None, "last_error": None}
    return values, Delivery(where=where)


def _failed(reason: str) -> tuple[dict[str, Any], Delivery]:
    # Nothing can send it any more: its body has no use left.
    return {"state": "failed", "last_error": reason, "sealed": None}, Delivery(error=reason)


async def list_mail(
    conn: AsyncConnection, state: State | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Queued messages, newest first, without their bodies."""
    query = (
        select(
            mail_queue.c.id,
            mail_queue.c.kind,
            mail_queue.c.to_address,
            mail_queue.c.state,
            mail_queue.c.attempts,
            mail_queue.c.next_attempt_at,
            mail_queue.c.give_up_at,
            mail_queue.c.last_error,
            mail_queue.c.created_at,
            mail_queue.c.sent_at,
        )
        .order_by(mail_queue.c.created_at.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(mail_queue.c.state == state)
    return [
        {
            "id": str(r.id),
            "kind": r.kind,
            "to": r.to_address,
            "state": r.state,
            "attempts": r.attempts,
            "next_attempt_at": r.next_attempt_at.isoformat() if r.state == "pending" else None,
            "give_up_at": r.give_up_at.isoformat() if r.give_up_at else None,
            "last_error": r.last_error,
            "created_at": r.created_at.isoformat(),
            "sent_at": r.sent_at.isoformat() if r.sent_at else None,
        }
        for r in await conn.execute(query)
    ]


async def requeue(conn: AsyncConnection, ids: Sequence[uuid.UUID] | None) -> int:
    """Make failed messages (these, or all that can still be read) due again, with a fresh
    count of attempts; how many. Erased ones (expired links) cannot come back."""
    query = (
        update(mail_queue)
        .where(mail_queue.c.state == "failed", mail_queue.c.sealed.is_not(None))
        .values(state="pending", attempts=0, next_attempt_at=func.now(), last_error=None)
    )
    if ids is not None:
        query = query.where(mail_queue.c.id.in_(list(ids)))
    return (await conn.execute(query)).rowcount


async def queue_counts(conn: AsyncConnection) -> dict[str, int]:
    """Messages by state (for /metrics and the operations guide's checks)."""
    rows = await conn.execute(select(mail_queue.c.state, func.count()).group_by(mail_queue.c.state))
    counts = {"pending": 0, "sent": 0, "failed": 0}
    counts.update({state: int(n) for state, n in rows.all()})
    return counts

"""The mail queue (ADR 0023): a message is queued in the transaction that makes it, sealed
(its link never in clear in the database), sent after the commit, retried with backoff
while the mail server is down, given up on after its attempts or when its link expires,
sent again on an operator's word, and sent once when several passes race for it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from dentalpin.platform._celery import MAIL_RETRY_TASK, make_celery
from dentalpin.platform._mail_queue import (
    MAX_ATTEMPTS,
    _unseal,
    deliver,
    enqueue,
    queue_counts,
    requeue,
    retry_due,
)
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import client, clinic_with_admin, host_of, make_user
from tests.platform.mailbox import TOKEN, free_port, smtp_server, token_of
from tests.platform.test_mail import sample
from tests.test_cli import Cli

INVITATIONS = "/api/v1/invitations"


def server_down(platform, monkeypatch) -> None:
    """Point the platform at a mail server nobody runs."""
    monkeypatch.setattr(platform.settings, "smtp_host", "127.0.0.1")
    monkeypatch.setattr(platform.settings, "smtp_port", free_port())
    monkeypatch.setattr(platform.settings, "smtp_security", "none")
    monkeypatch.setattr(platform.settings, "smtp_timeout_s", 2.0)


async def rows(platform) -> list:
    async with platform.db.engine.connect() as conn:
        return list(
            await conn.execute(text("select * from platform.mail_queue order by created_at"))
        )


async def make_due(platform) -> None:
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            text("update platform.mail_queue set next_attempt_at = now() where state = 'pending'")
        )


async def test_an_invitation_made_while_the_mail_server_is_down_arrives_when_it_is_back(
    fresh_platform, monkeypatch
):
    platform = fresh_platform
    tenant, admin = await clinic_with_admin(platform, "mq", modules=())
    server_down(platform, monkeypatch)
    email = f"eva-{uuid.uuid4().hex[:6]}@example.es"
    async with client(platform, host_of(tenant)) as http:
        created = await http.post(
            INVITATIONS, json={"email": email, "roles": ["receptionist"]}, headers=admin
        )
    assert created.status_code == 201, created.text
    assert created.json()["mail_sent"] is False  # the invitation exists all the same

    (row,) = await rows(platform)
    assert (row.kind, row.to_address, row.state, row.attempts) == (
        "invitation",
        email,
        "pending",
        1,
    )
    assert "reachable" in row.last_error
    assert row.give_up_at.isoformat().startswith(created.json()["expires_at"][:16])
    waited = (row.next_attempt_at - datetime.now(UTC)).total_seconds()
    assert 15 < waited < 40  # the first retry: 30 s, with jitter
    token = TOKEN.search(_unseal(platform.settings, row).text).group(1)
    assert token.encode() not in row.sealed and b"#token=" not in row.sealed

    assert (await retry_due(platform)).as_dict()["sent"] == 0  # not due yet: nothing tried
    with smtp_server(platform, monkeypatch) as box:
        await make_due(platform)
        report = await retry_due(platform)
        assert report.sent == 1 and report.retrying == 0
        message = await box.wait_for(email)
    assert token_of(message) == token
    assert message["Message-ID"].startswith(f"<{row.id}.dentalpin@")
    (sent,) = await rows(platform)
    assert sent.state == "sent" and sent.sealed is None and sent.sent_at is not None
    assert sent.attempts == 2 and sent.last_error is None

    async with client(platform, host_of(tenant)) as http:
        accepted = await http.post(
            "/api/v1/auth/invitations/accept",
            json={"token": token, "password": "a long enough password 1"},
        )
    assert accepted.status_code == 200, accepted.text


async def test_a_password_reset_asked_while_the_mail_server_is_down_is_sent_later(
    fresh_platform, monkeypatch
):
    platform = fresh_platform
    user = await make_user(platform)
    server_down(platform, monkeypatch)
    async with client(platform) as http:
        asked = await http.post("/api/v1/auth/password-reset", json={"email": user.email})
        nobody = await http.post("/api/v1/auth/password-reset", json={"email": "no@example.es"})
    assert asked.status_code == nobody.status_code == 202
    assert asked.json() == nobody.json()  # the answer does not tell who has an account
    (row,) = await rows(platform)  # none for the address without an account
    assert row.kind == "password_reset" and row.state == "pending" and row.attempts == 1

    with smtp_server(platform, monkeypatch) as box:
        await make_due(platform)
        assert (await retry_due(platform)).sent == 1
        token = await box.token_for(user.email)
    async with client(platform) as http:
        reset = await http.post(
            "/api/v1/auth/password-reset/confirm",
            json={"token": token, "password": "another long password 2"},
        )
    assert reset.status_code == 204, reset.text


async def test_given_up_after_its_attempts_then_sent_again_by_an_operator(
    fresh_platform, monkeypatch, tmp_path: Path
):
    platform = fresh_platform
    server_down(platform, monkeypatch)
    async with platform.db.engine.begin() as conn:
        queued = await enqueue(conn, platform.settings, sample("ines@example.es"))
    for attempt in range(1, MAX_ATTEMPTS + 1):
        await make_due(platform)
        report = await retry_due(platform)
        assert (report.retrying, len(report.failed)) == (
            (1, 0) if attempt < MAX_ATTEMPTS else (0, 1)
        ), attempt
    (row,) = await rows(platform)
    assert (row.state, row.attempts) == ("failed", MAX_ATTEMPTS)
    assert row.sealed is not None  # its link has not expired: it can still go
    async with platform.db.engine.connect() as conn:
        assert (await queue_counts(conn))["failed"] == 1

    cli = Cli(platform, tmp_path)
    listed = cli("mail", "list", "--state", "failed", "--json").json()
    assert [(m["id"], m["to"], m["attempts"]) for m in listed] == [
        (str(queued), "ines@example.es", MAX_ATTEMPTS)
    ]
    assert "sealed" not in listed[0] and "text" not in listed[0]
    assert "pending, sent or failed" in cli("mail", "list", "--state", "lost", code=2).output
    with smtp_server(platform, monkeypatch) as box:
        cli.env.update(
            DENTALPIN_SMTP_HOST="127.0.0.1",
            DENTALPIN_SMTP_PORT=str(box.port),
            DENTALPIN_SMTP_SECURITY="none",
        )
        again = cli("mail", "retry", str(queued), "--json").json()
        assert again == {"requeued": 1, "sent": 1, "retrying": 0, "failed": 0, "forgotten": 0}
        await box.wait_for("ines@example.es")
    (row,) = await rows(platform)
    assert row.state == "sent" and row.sealed is None
    async with platform.db.engine.begin() as conn:
        assert await requeue(conn, [queued]) == 0  # sent: nothing to send again


async def test_an_expired_link_is_not_sent_and_its_body_is_erased(fresh_platform, monkeypatch):
    platform = fresh_platform
    server_down(platform, monkeypatch)
    async with platform.db.engine.begin() as conn:
        await enqueue(conn, platform.settings, sample("luis@example.es"))
        await conn.execute(
            text("update platform.mail_queue set give_up_at = now() - interval '1 second'")
        )
    report = await retry_due(platform)
    assert len(report.failed) == 1
    (row,) = await rows(platform)
    assert row.state == "failed" and row.sealed is None and "expired" in row.last_error
    async with platform.db.engine.begin() as conn:
        assert await requeue(conn, None) == 0  # nothing left to send


async def test_a_message_is_queued_only_if_its_transaction_commits(fresh_platform):
    platform = fresh_platform

    async def queue_then_fail() -> None:
        async with platform.db.engine.begin() as conn:
            await enqueue(conn, platform.settings, sample("gone@example.es"))
            raise RuntimeError("the invitation failed after its mail was made")

    with pytest.raises(RuntimeError):
        await queue_then_fail()
    assert await rows(platform) == []


async def test_passes_racing_for_a_message_send_it_once(fresh_platform, monkeypatch):
    platform = fresh_platform
    with smtp_server(platform, monkeypatch) as box:
        box.delay_s = 0.5  # a slow server: the passes overlap
        async with platform.db.engine.begin() as conn:
            queued = await enqueue(conn, platform.settings, sample("ana@example.es"))
        outcomes = await asyncio.gather(
            deliver(platform, queued), retry_due(platform), retry_due(platform)
        )
        await asyncio.sleep(0.7)
    sent = [o for o in outcomes if getattr(o, "where", None)]
    reports = [o for o in outcomes if hasattr(o, "sent")]
    assert len(sent) + sum(r.sent for r in reports) == 1
    assert len(box.to("ana@example.es")) == 1


async def test_a_message_sealed_under_another_key_fails_clearly(fresh_platform, monkeypatch):
    platform = fresh_platform
    server_down(platform, monkeypatch)
    async with platform.db.engine.begin() as conn:
        await enqueue(conn, platform.settings, sample("kim@example.es"))
    monkeypatch.setattr(platform.settings, "secret_key", SecretStr("another secret key, rotated"))
    assert len((await retry_due(platform)).failed) == 1
    (row,) = await rows(platform)
    assert "another DENTALPIN_SECRET_KEY" in row.last_error and row.sealed is None


async def test_a_pass_drains_batch_after_batch_while_the_server_takes_them(
    fresh_platform, monkeypatch
):
    from dentalpin.platform import _mail_queue

    platform = fresh_platform
    monkeypatch.setattr(_mail_queue, "BATCH", 2)
    async with platform.db.engine.begin() as conn:
        for n in range(5):
            await enqueue(conn, platform.settings, sample(f"p{n}@example.es"))
    assert (await retry_due(platform)).sent == 5  # no SMTP host: the mail folder takes all
    server_down(platform, monkeypatch)
    async with platform.db.engine.begin() as conn:
        for n in range(5):
            await enqueue(conn, platform.settings, sample(f"q{n}@example.es"))
    stopped = await retry_due(platform)
    assert stopped.retrying == 2 and stopped.sent == 0  # one batch, then it waits


async def test_a_message_no_server_could_take_fails_at_once(fresh_platform):
    platform = fresh_platform
    async with platform.db.engine.begin() as conn:
        queued = await enqueue(conn, platform.settings, sample("eve@example.es\nBcc: x@y.es"))
    delivery = await deliver(platform, queued)  # the request that queued it does not fail
    assert delivery.where is None and "cannot be written" in delivery.error
    assert delivery.queued is False
    (row,) = await rows(platform)
    assert row.state == "failed" and row.sealed is None and row.attempts == 1


async def test_settled_messages_are_forgotten_after_thirty_days(fresh_platform):
    platform = fresh_platform
    async with platform.db.engine.begin() as conn:
        old = await enqueue(conn, platform.settings, sample("old@example.es"))
        await enqueue(conn, platform.settings, sample("new@example.es"))
    assert (await retry_due(platform)).sent == 2  # no SMTP host: into the mail folder
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            text(
                "update platform.mail_queue set created_at = now() - interval '31 days' "
                "where id = :id"
            ),
            {"id": old},
        )
    assert (await retry_due(platform)).forgotten == 1
    assert [r.to_address for r in await rows(platform)] == ["new@example.es"]


def test_beat_retries_the_queue_on_the_periodic_queue():
    app = make_celery(current=False)
    entry = app.conf.beat_schedule["mail-retry"]
    assert entry["task"] == MAIL_RETRY_TASK and entry["options"]["queue"] == "periodic"
    assert MAIL_RETRY_TASK in app.conf.task_routes


async def test_the_cli_says_an_invitation_is_queued_when_the_server_is_down(
    fresh_platform, tmp_path: Path
):
    platform = fresh_platform
    tenant = await create_tenant(platform, unique_slug("mqcli"), modules=[])
    cli = Cli(platform, tmp_path)
    cli.env.update(
        DENTALPIN_SMTP_HOST="127.0.0.1",
        DENTALPIN_SMTP_PORT=str(free_port()),
        DENTALPIN_SMTP_SECURITY="none",
        DENTALPIN_SMTP_TIMEOUT_S="2",
    )
    invited = cli("members", "invite", tenant.slug, "zoe@example.es", "--role", "dentist")
    assert "invited zoe@example.es" in invited.output
    assert "queued and retried" in invited.output  # exit 0: the invitation exists
    (row,) = await rows(platform)
    assert row.kind == "invitation" and row.state == "pending"

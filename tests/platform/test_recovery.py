"""Password reset and e-mail verification over a real SMTP server: the same answer for
unknown addresses, throttling, single-use short-lived links stored hashed, every session
ended by a reset; and verification links that only verify the address they went to."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from dentalpin.platform._passwords import token_hash
from dentalpin.platform._tables import audit_log, email_tokens, users
from tests.platform.identity import bearer, client, make_user, random_ip, session
from tests.platform.mailbox import smtp_server
from tests.test_cli import Cli

RESET = "/api/v1/auth/password-reset"
CONFIRM = "/api/v1/auth/password-reset/confirm"
VERIFY = "/api/v1/auth/verify-email"
NEW_PASSWORD = "a brand new password"


@pytest.fixture
def mailbox(platform, monkeypatch):
    with smtp_server(platform, monkeypatch) as box:
        yield box


async def ask_reset(platform, email, ip=None):
    async with client(platform, ip=ip) as http:
        return await http.post(RESET, json={"email": email})


async def confirm(platform, token, password=NEW_PASSWORD):
    async with client(platform) as http:
        return await http.post(CONFIRM, json={"token": token, "password": password})


async def test_a_reset_ends_every_session_and_sets_the_password(platform, mailbox):
    user = await make_user(platform)
    pair = await session(platform, user, None)
    asked = await ask_reset(platform, user.email.upper())
    assert asked.status_code == 202, asked.text
    token = await mailbox.token_for(user.email)
    text = (await mailbox.wait_for(user.email)).get_body(("plain",)).get_content()
    assert "http://localhost:8000/reset-password#token=" in text
    async with platform.db.engine.connect() as conn:
        stored = (
            await conn.execute(select(email_tokens).where(email_tokens.c.user_id == user.id))
        ).one()
    assert stored.token_hash == token_hash(token) and token not in str(stored)  # hashed
    assert stored.expires_at - datetime.now(UTC) <= timedelta(
        seconds=platform.settings.password_reset_ttl_s
    )
    assert (await confirm(platform, token)).status_code == 204
    async with client(platform) as http:
        assert (await http.get("/api/v1/me", headers=bearer(pair))).status_code == 401
        refreshed = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": pair.refresh_token}
        )
        assert refreshed.status_code == 401
        old = await http.post(
            "/api/v1/auth/login",
            json={"email": user.email, "password": "correct horse battery staple"},
        )
        assert old.status_code == 401
        new = await http.post(
            "/api/v1/auth/login", json={"email": user.email, "password": NEW_PASSWORD}
        )
        # The password is right (a wrong one is 401); the account has no clinic yet.
        assert new.status_code == 403 and new.json()["type"].endswith("not-a-member"), new.text
    again = await confirm(platform, token, "and yet another one")
    assert again.status_code == 400 and "already used" in again.json()["detail"]
    async with platform.db.engine.connect() as conn:
        done = set(
            (
                await conn.execute(
                    select(audit_log.c.action).where(audit_log.c.actor_id == user.id)
                )
            ).scalars()
        )
        verified = await conn.scalar(select(users.c.email_verified_at).where(users.c.id == user.id))
    assert {"password_reset.requested", "password_reset.completed", "user.password_changed"} <= done
    assert verified is not None


async def test_unknown_addresses_get_the_same_answer_and_no_mail(platform, mailbox):
    user = await make_user(platform)
    known = await ask_reset(platform, user.email)
    unknown = await ask_reset(platform, f"nobody-{uuid.uuid4().hex[:6]}@example.es")
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    await mailbox.wait_for(user.email)
    assert len(mailbox.messages) == 1


async def test_requests_are_throttled_whether_or_not_the_account_exists(platform, mailbox):
    user = await make_user(platform)
    ghost = f"ghost-{uuid.uuid4().hex[:6]}@example.es"
    for email in (user.email, ghost):
        answers = [await ask_reset(platform, email, ip=random_ip()) for _ in range(4)]
        assert [a.status_code for a in answers] == [202, 202, 202, 429], email
        assert int(answers[3].headers["retry-after"]) >= 1
        assert answers[3].json()["type"].endswith("too-many-attempts")
    assert len(mailbox.to(user.email)) == 3
    # Per client address too: one address cannot spray many accounts.
    ip = random_ip()
    codes = [
        (
            await ask_reset(platform, f"spray-{i}-{uuid.uuid4().hex[:4]}@example.es", ip=ip)
        ).status_code
        for i in range(11)
    ]
    assert codes[:10] == [202] * 10 and codes[10] == 429


async def test_a_newer_link_voids_the_older_and_expired_links_fail(platform, mailbox):
    user = await make_user(platform)
    await ask_reset(platform, user.email)
    first = await mailbox.token_for(user.email)
    await ask_reset(platform, user.email)
    second = await mailbox.token_for(user.email, 2)
    assert (await confirm(platform, first)).status_code == 400
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            update(email_tokens)
            .where(email_tokens.c.token_hash == token_hash(second))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    expired = await confirm(platform, second)
    assert expired.status_code == 400 and "expired" in expired.json()["detail"]


async def test_bad_tokens_and_weak_passwords(platform, mailbox):
    user = await make_user(platform)
    await ask_reset(platform, user.email)
    token = await mailbox.token_for(user.email)
    weak = await confirm(platform, token, "short")
    assert weak.status_code == 422
    row_id, expiry, nonce, signature = token.split(".")
    tampered = f"{row_id}.{int(expiry) + 86400}.{nonce}.{signature}"
    assert (await confirm(platform, tampered)).status_code == 400
    async with client(platform) as http:  # a reset link is no verification link
        crossed = await http.post(VERIFY, json={"token": token})
    assert crossed.status_code == 400
    assert (await confirm(platform, token)).status_code == 204  # none of that spent it


async def test_a_link_is_void_once_the_address_changes(platform, mailbox):
    user = await make_user(platform)
    await ask_reset(platform, user.email)
    token = await mailbox.token_for(user.email)
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            update(users).where(users.c.id == user.id).values(email=f"moved-{user.email}")
        )
    refused = await confirm(platform, token)
    assert refused.status_code == 400 and "no longer has" in refused.json()["detail"]


async def test_verification_by_link(platform, mailbox):
    user = await make_user(platform)
    pair = await session(platform, user, None)
    async with client(platform) as http:
        sent = await http.post(f"{VERIFY}/send", headers=bearer(pair))
        assert sent.status_code == 202, sent.text
        token = await mailbox.token_for(user.email)
        verified = await http.post(VERIFY, json={"token": token})
        assert verified.status_code == 200 and verified.json()["email"] == user.email
        again = await http.post(VERIFY, json={"token": token})
        assert again.status_code == 400
        done = await http.post(f"{VERIFY}/send", headers=bearer(pair))
        assert done.status_code == 409 and "already verified" in done.json()["detail"]
        anonymous = await http.post(f"{VERIFY}/send")
        assert anonymous.status_code == 401
    async with platform.db.engine.connect() as conn:
        assert (
            await conn.scalar(select(users.c.email_verified_at).where(users.c.id == user.id))
            is not None
        )


async def test_users_create_sends_a_verification_link(platform, mailbox, tmp_path):
    cli = Cli(platform, tmp_path)
    cli.env.update(
        DENTALPIN_SMTP_HOST="127.0.0.1",
        DENTALPIN_SMTP_PORT=str(mailbox.port),
        DENTALPIN_SMTP_SECURITY="none",
    )
    email = f"new-{uuid.uuid4().hex[:6]}@example.es"
    result = cli("users", "create", email, "--json")
    assert result.json()["verification_sent"] is True
    message = await mailbox.wait_for(email)
    assert "verify-email#token=" in message.get_body(("plain",)).get_content()

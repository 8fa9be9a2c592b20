"""The mail sender against a real SMTP server (aiosmtpd): plain and STARTTLS with a login,
refusals that teach, the development mail folder, and an event loop that keeps running."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from email import message_from_bytes, policy

import pytest

from dentalpin.platform._mail import MailNotSent, compose, send
from tests.platform.mailbox import free_port, smtp_server


def sample(to: str = "ana@example.es", name: str = "Ana <b>Pérez</b>"):
    return compose(
        to,
        "Confirm your e-mail address for DentalPin",
        "email_verification",
        name=name,
        email=to,
        expires="2026-12-24 10:00 UTC",
        url="https://demo.localhost/verify-email#token=abc.def",
    )


async def test_a_message_has_text_and_escaped_html_bodies(platform, monkeypatch):
    with smtp_server(platform, monkeypatch) as box:
        where = await send(platform.settings, sample())
    assert where == f"smtp://127.0.0.1:{box.port}"
    (message,) = box.messages
    assert message["To"] == "ana@example.es"
    assert message["From"] == platform.settings.mail_from
    assert message["Subject"] == "Confirm your e-mail address for DentalPin"
    assert message["Message-ID"] and message["Date"]
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "Ana <b>Pérez</b>" in text  # plain text is not HTML: nothing to escape
    assert "Ana &lt;b&gt;Pérez&lt;/b&gt;" in html and "<b>Pérez" not in html
    assert "https://demo.localhost/verify-email#token=abc.def" in text
    assert box.envelopes[0].rcpt_tos == ["ana@example.es"]


async def test_login_over_starttls_with_the_configured_ca(platform, monkeypatch, tmp_path):
    with smtp_server(platform, monkeypatch, login=("mailer", "s3cret"), tls_dir=tmp_path) as box:
        await send(platform.settings, sample())
        assert box.logins == [("mailer", "s3cret")]
        assert len(box.messages) == 1
        # Without the CA that signed the server's certificate, nothing is sent.
        monkeypatch.setattr(platform.settings, "smtp_ca_file", None)
        with pytest.raises(MailNotSent, match="SMTP"):
            await send(platform.settings, sample())
    assert len(box.messages) == 1


async def test_implicit_tls(platform, monkeypatch, tmp_path):
    with smtp_server(
        platform, monkeypatch, login=("mailer", "s3cret"), tls_dir=tmp_path, implicit_tls=True
    ) as box:
        assert platform.settings.smtp_security == "tls"
        await send(platform.settings, sample())
        monkeypatch.setattr(platform.settings, "smtp_security", "starttls")  # wrong mode:
        monkeypatch.setattr(platform.settings, "smtp_timeout_s", 1.0)  # no plain greeting comes
        with pytest.raises(MailNotSent):
            await send(platform.settings, sample())
    assert box.logins == [("mailer", "s3cret")] and len(box.messages) == 1


def test_up_says_where_mail_goes(platform, monkeypatch):
    from dentalpin.cli import _mail_note

    monkeypatch.setattr(platform.settings, "smtp_host", None)
    assert str(platform.settings.mail_dir.resolve()) in _mail_note(platform.settings)
    monkeypatch.setattr(platform.settings, "smtp_host", "smtp.example.com")
    assert "smtp.example.com:" in _mail_note(platform.settings)


async def test_a_wrong_password_or_no_server_is_a_503_that_names_the_settings(
    platform, monkeypatch
):
    with smtp_server(platform, monkeypatch, login=("mailer", "s3cret")) as box:
        monkeypatch.setattr(platform.settings.smtp_password, "_secret_value", "wrong")
        with pytest.raises(MailNotSent) as refused:
            await send(platform.settings, sample())
        assert refused.value.status == 503
        assert "SMTPAuthenticationError" in refused.value.detail
        assert "DENTALPIN_SMTP_" in refused.value.detail
        assert box.messages == []
    monkeypatch.setattr(platform.settings, "smtp_port", free_port())  # nobody listens
    with pytest.raises(MailNotSent, match="reachable"):
        await send(platform.settings, sample())


async def test_without_an_smtp_host_messages_land_in_the_mail_folder(platform, monkeypatch):
    monkeypatch.setattr(platform.settings, "smtp_host", None)
    where = await send(platform.settings, sample("luis@example.es"))
    path = platform.settings.mail_dir / os.path.basename(where)
    assert path.exists() and path.parent == platform.settings.mail_dir
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # links are credentials
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["To"] == "luis@example.es"
    assert "#token=abc.def" in message.get_body(("plain",)).get_content()


async def test_sending_does_not_block_the_event_loop(platform, monkeypatch):
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    with smtp_server(platform, monkeypatch) as box:
        box.delay_s = 0.5
        task = asyncio.create_task(ticker())
        started = time.monotonic()
        await send(platform.settings, sample())
        elapsed = time.monotonic() - started
        task.cancel()
    assert elapsed >= 0.5
    assert ticks >= 20  # the loop went on while the server took its time

"""Outgoing e-mail: messages rendered from templates (plain text and HTML), sent over SMTP,
or written as .eml files to `<data dir>/mail` when no SMTP host is configured (development).

smtplib blocks, so delivery runs in a worker thread: the event loop keeps serving while a
slow mail server answers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import smtplib
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ._errors import Unavailable
from ._settings import Settings

log = logging.getLogger(__name__)


class MailNotSent(Unavailable):
    problem = "mail-not-sent"


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str
    kind: str = "mail"
    """The template it was made from (`invitation`, `password_reset`...)."""
    link_expires_at: datetime | None = None
    """When the link in it stops working: there is no point in sending it after that."""


@functools.cache
def _templates() -> Environment:
    # Autoescaping in the HTML bodies: names and clinic names are user data.
    return Environment(
        loader=PackageLoader("dentalpin.platform", "templates/mail"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def compose(
    to: str,
    subject: str,
    template: str,
    *,
    link_expires_at: datetime | None = None,
    **context: Any,
) -> Mail:
    """A message from `templates/mail/<template>.txt` and `.html`."""
    env = _templates()
    context = {"subject": subject, "lang": "en", **context}
    return Mail(
        to=to,
        subject=subject,
        text=env.get_template(f"{template}.txt").render(context),
        html=env.get_template(f"{template}.html").render(context),
        kind=template,
        link_expires_at=link_expires_at,
    )


def build(settings: Settings, mail: Mail, message_key: str | None = None) -> EmailMessage:
    """The message; `message_key` makes its Message-ID stable, so a message sent twice
    (a retry after a lost answer) is recognisably the same one."""
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = (
        f"<{message_key}@{domain}>" if message_key else make_msgid(domain=domain)
    )
    message.set_content(mail.text)
    message.add_alternative(mail.html, subtype="html")
    return message


def _tls_context(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(
        cafile=str(settings.smtp_ca_file) if settings.smtp_ca_file else None
    )


def _send_smtp(settings: Settings, message: EmailMessage) -> None:
    assert settings.smtp_host is not None
    host, port, timeout = settings.smtp_host, settings.smtp_port, settings.smtp_timeout_s
    smtp: smtplib.SMTP
    if settings.smtp_security == "tls":
        smtp = smtplib.SMTP_SSL(host, port, timeout=timeout, context=_tls_context(settings))
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    with smtp:
        smtp.ehlo()
        if settings.smtp_security == "starttls":
            smtp.starttls(context=_tls_context(settings))
            smtp.ehlo()
        if settings.smtp_user:
            password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
            smtp.login(settings.smtp_user, password)
        smtp.send_message(message)


def _write_eml(settings: Settings, message: EmailMessage) -> Path:
    folder = settings.mail_dir
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
    # The links in these messages are credentials: readable by the owner only.
    path.touch(mode=0o600)
    path.write_bytes(bytes(message))
    return path


def _deliver(settings: Settings, message: EmailMessage) -> str:
    if settings.smtp_host:
        _send_smtp(settings, message)
        return f"smtp://{settings.smtp_host}:{settings.smtp_port}"
    return str(_write_eml(settings, message))


async def send(settings: Settings, mail: Mail, message_key: str | None = None) -> str:
    """Deliver one message; where it went (the SMTP server, or the .eml file). Raises
    MailNotSent (503) when the server refuses it or cannot be reached."""
    message = build(settings, mail, message_key)
    try:
        return await asyncio.to_thread(_deliver, settings, message)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("mail to %s not sent: %s", mail.to, exc)
        raise MailNotSent(
            f"the e-mail could not be sent ({type(exc).__name__}: {exc}); check the "
            "DENTALPIN_SMTP_* settings and that the mail server is reachable"
        ) from exc

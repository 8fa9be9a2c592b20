"""A real SMTP server for the tests (aiosmtpd, in a thread of its own) and a way to read
what it received: the links of the messages are how the tests get their tokens."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

TOKEN = re.compile(r"#token=([A-Za-z0-9._-]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Mailbox:
    """What the server accepted, in order; `delay_s` slows every delivery down."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[Any] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    delay_s: float = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.envelopes.append(envelope)
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]

    async def wait_for(self, address: str, count: int = 1, within_s: float = 10) -> EmailMessage:
        deadline = time.monotonic() + within_s
        while len(self.to(address)) < count:
            assert time.monotonic() < deadline, f"no message #{count} to {address}"
            await asyncio.sleep(0.05)
        return self.to(address)[count - 1]

    async def token_for(self, address: str, count: int = 1) -> str:
        return token_of(await self.wait_for(address, count))


def token_of(message: EmailMessage) -> str:
    text = message.get_body(("plain",)).get_content()
    found = TOKEN.search(text)
    assert found, text
    return found.group(1)


class Users:
    """Accepts one login (AUTH PLAIN / LOGIN)."""

    def __init__(self, box: Mailbox, user: str, password: str) -> None:
        self.box, self.user, self.password = box, user, password

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        assert isinstance(data, LoginPassword)
        login, password = data.login.decode(), data.password.decode()
        self.box.logins.append((login, password))
        return AuthResult(success=login == self.user and password == self.password, handled=False)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp.crt", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextlib.contextmanager
def smtp_server(
    platform: Any,
    monkeypatch: pytest.MonkeyPatch,
    *,
    login: tuple[str, str] | None = None,
    tls_dir: Path | None = None,
    implicit_tls: bool = False,
) -> Iterator[Mailbox]:
    """Start a real SMTP server and point the platform's settings at it (restored after).
    With `tls_dir`: STARTTLS required, or TLS from the first byte (`implicit_tls`)."""
    box = Mailbox(free_port())
    kwargs: dict[str, Any] = {}
    if login is not None:
        # aiosmtpd does not count implicit TLS as TLS for AUTH; the connection is TLS anyway.
        require_tls = tls_dir is not None and not implicit_tls
        kwargs.update(authenticator=Users(box, *login), auth_require_tls=require_tls)
    security = "none"
    if tls_dir is not None:
        cert, key = self_signed(tls_dir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if implicit_tls:
            kwargs.update(ssl_context=context)
        else:
            kwargs.update(tls_context=context, require_starttls=True)
        monkeypatch.setattr(platform.settings, "smtp_ca_file", cert)
        security = "tls" if implicit_tls else "starttls"
    controller = Controller(box, hostname="127.0.0.1", port=box.port, **kwargs)
    controller.start()
    monkeypatch.setattr(platform.settings, "smtp_host", "127.0.0.1")
    monkeypatch.setattr(platform.settings, "smtp_port", box.port)
    monkeypatch.setattr(platform.settings, "smtp_security", security)
    monkeypatch.setattr(platform.settings, "smtp_user", login[0] if login else None)
    monkeypatch.setattr(platform.settings, "smtp_password", None)
    if login is not None:
        from pydantic import SecretStr

        monkeypatch.setattr(platform.settings, "smtp_password", SecretStr(login[1]))
    try:
        yield box
    finally:
        controller.stop()

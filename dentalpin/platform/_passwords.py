"""Secrets at rest: Argon2id password hashes, opaque token hashes, and the Fernet keys
derived from DENTALPIN_SECRET_KEY that encrypt signing keys and TOTP secrets."""

from __future__ import annotations

import base64
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._errors import InvalidInput, PlatformError
from ._settings import Settings

DEV_SECRET = "dev-insecure-secret-change-me"  # noqa: S105 - the known development default
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024

# Argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane).
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class SecretKeyMissing(PlatformError):
    status = 500
    problem = "secret-key-missing"


def hash_password(password: str) -> str:
    check_password_strength(password)
    return _hasher.hash(password)


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"a password has at most {MAX_PASSWORD_LENGTH} characters")


def verify_password(stored: str | None, password: str) -> bool:
    """Constant work whether or not the user (or their hash) exists."""
    if len(password) > MAX_PASSWORD_LENGTH:
        password = password[:MAX_PASSWORD_LENGTH]
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def token_hash(token: str) -> str:
    """How opaque tokens (refresh, MFA challenge) are stored: SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_opaque_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def derived_key(settings: Settings, purpose: str) -> bytes:
    """32 bytes for one purpose, derived (HKDF-SHA256) from DENTALPIN_SECRET_KEY."""
    secret = settings.secret_key.get_secret_value()
    if settings.environment == "production" and (secret == DEV_SECRET or len(secret) < 32):
        raise SecretKeyMissing(
            "DENTALPIN_SECRET_KEY is unset or too short (32+ characters) in production; "
            "set it to a long random value"
        )
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"dentalpin:{purpose}".encode()
    ).derive(secret.encode())


def fernet(settings: Settings, purpose: str) -> Fernet:
    """A Fernet key for one purpose, derived from DENTALPIN_SECRET_KEY."""
    return Fernet(base64.urlsafe_b64encode(derived_key(settings, purpose)))

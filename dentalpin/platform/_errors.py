"""Errors that teach: each says what went wrong and what to do about it.

Every platform error maps to an HTTP status and a problem-details type, so the
API, the CLI and the job log all say the same thing.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PlatformError(Exception):
    """Base of every error the platform raises on purpose."""

    status: int = 400
    problem: str = "platform-error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(PlatformError):
    status = 404
    problem = "not-found"


class Unauthenticated(PlatformError):
    status = 401
    problem = "unauthenticated"


class Forbidden(PlatformError):
    status = 403
    problem = "forbidden"


class Conflict(PlatformError):
    status = 409
    problem = "conflict"


class InvalidInput(PlatformError):
    status = 422
    problem = "invalid-input"


class PreconditionFailed(PlatformError):
    """The row changed since the client read it (its `If-Match` version is stale)."""

    status = 412
    problem = "precondition-failed"


class PreconditionRequired(PlatformError):
    """A change to a versioned row came without `If-Match`."""

    status = 428
    problem = "precondition-required"


class Unavailable(PlatformError):
    status = 503
    problem = "unavailable"


class ManifestError(PlatformError):
    problem = "invalid-manifest"


class UnknownModule(NotFound):
    problem = "unknown-module"

    def __init__(self, name: str, known: Iterable[str], quarantined: dict[str, str]) -> None:
        if name in quarantined:
            detail = f"Module '{name}' is quarantined: {quarantined[name]}"
        else:
            detail = f"No module named '{name}' is available.{did_you_mean(name, known)}"
        super().__init__(detail)
        self.name = name


class UninstallVeto(PlatformError):
    """Raised by a module's `before_uninstall` hook to refuse an uninstall."""

    status = 409
    problem = "uninstall-vetoed"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, list(candidates), n=1)
    return f" Did you mean '{matches[0]}'?" if matches else ""

"""Spanish identity documents: DNI and NIE check letters (Ministerio del Interior's
modulo-23 algorithm). Passports are free-form."""

from __future__ import annotations

import re

CHECK_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
_DNI = re.compile(r"^(\d{8})([A-Z])$")
_NIE = re.compile(r"^([XYZ])(\d{7})([A-Z])$")
_SEPARATORS = re.compile(r"[\s.\-]")


def normalize(document_type: str, number: str) -> str:
    """The canonical form: DNI/NIE upper-case without spaces, dots or dashes; passports
    trimmed and upper-cased."""
    if document_type in ("dni", "nie"):
        return _SEPARATORS.sub("", number).upper()
    return " ".join(number.split()).upper()


def problem(document_type: str, number: str) -> str | None:
    """Why `number` (already normalized) is not a valid document of that type, or None."""
    if document_type == "dni":
        found = _DNI.match(number)
        if found is None:
            return "a DNI is 8 digits and a letter, e.g. 12345678Z"
        expected = CHECK_LETTERS[int(found.group(1)) % 23]
        if found.group(2) != expected:
            return f"the DNI's check letter does not match its digits (expected {expected})"
        return None
    if document_type == "nie":
        found = _NIE.match(number)
        if found is None:
            return "a NIE is X, Y or Z, 7 digits and a letter, e.g. X1234567L"
        digits = str("XYZ".index(found.group(1))) + found.group(2)
        expected = CHECK_LETTERS[int(digits) % 23]
        if found.group(3) != expected:
            return f"the NIE's check letter does not match its digits (expected {expected})"
        return None
    if not 3 <= len(number) <= 20:
        return "a passport number has 3 to 20 characters"
    return None

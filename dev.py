#!/usr/bin/env python3
"""Bootstrap for a fresh checkout, needing nothing but Python 3.11+.

    python3 dev.py up [args...]      run the platform   (.venv/bin/dentalpin up ...)
    python3 dev.py test [args...]    run the tests      (pytest -n auto ...)

The first run creates `.venv` and installs DentalPin with its dev extras plus the
pip-installable fixture packages under tests/fixtures/, all editable. Later runs
reinstall only when one of those pyproject.toml files changed. Where DATABASE_URL
or REDIS_URL is unset, `dentalpin up` and the test session start embedded servers
themselves, so this script never touches the environment.

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".dentalpin-install.sha256"

USAGE = """usage: python3 dev.py up [args...]     start DentalPin (embedded servers if no URLs set)
       python3 dev.py test [args...]   run the test suite (pytest -n auto [args...])"""


def say(message: str) -> None:
    # Flushed, because os.execv() drops whatever is still buffered.
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def fixture_packages() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "tests" / "fixtures").glob("*/pyproject.toml"))


def install_args(fixtures: list[Path]) -> list[str]:
    args = ["install", "--disable-pip-version-check", "--quiet", "-e", ".[dev]"]
    for path in fixtures:
        args += ["-e", path.relative_to(ROOT).as_posix()]
    return args


def install_fingerprint(args: list[str], fixtures: list[Path]) -> str:
    # The pip arguments are part of it, so adding a fixture package reinstalls too.
    digest = hashlib.sha256("\0".join(args).encode())
    for pyproject in [ROOT / "pyproject.toml", *(path / "pyproject.toml" for path in fixtures)]:
        digest.update(b"\0" + pyproject.relative_to(ROOT).as_posix().encode() + b"\0")
        digest.update(pyproject.read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    if PYTHON.exists():
        return
    # --clear: a .venv without a working interpreter (moved checkout, removed
    # Python) cannot be repaired in place.
    say(f"creating {VENV.relative_to(ROOT)} with Python {sys.version.split()[0]}")
    result = subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=False)
    if result.returncode != 0:
        say("could not create the virtualenv; on Debian/Ubuntu install python3-venv first")
        sys.exit(result.returncode)


def ensure_installed() -> None:
    fixtures = fixture_packages()
    args = install_args(fixtures)
    fingerprint = install_fingerprint(args, fixtures)
    if STAMP.exists() and STAMP.read_text().strip() == fingerprint:
        return
    names = ", ".join(path.name for path in fixtures) or "none"
    say(f"installing dentalpin[dev] and fixture packages ({names}); the first time takes a while")
    # Root in CI containers is expected; pip's warning about it is noise there.
    env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore"}
    result = subprocess.run([str(PYTHON), "-m", "pip", *args], cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        say("pip install failed")
        sys.exit(result.returncode)
    STAMP.write_text(fingerprint + "\n")


def run(argv: list[str]) -> None:
    """Replace this process, so signals and the exit status are the child's own."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(ROOT)
    if os.name == "nt":
        sys.exit(subprocess.run(argv, check=False).returncode)
    os.execv(argv[0], argv)  # noqa: S606


def main(args: list[str]) -> None:
    # The target version says 3.11, but this must still explain itself on an older one.
    if sys.version_info < (3, 11):  # noqa: UP036
        sys.exit(f"DentalPin needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not args or args[0] not in ("up", "test"):
        print(USAGE, file=sys.stderr)
        sys.exit(0 if args and args[0] in ("-h", "--help") else 2)
    command, rest = args[0], args[1:]
    ensure_venv()
    ensure_installed()
    if command == "up":
        run([str(BIN / "dentalpin"), "up", *rest])
    # `-p no:xdist` (e.g. to debug with pdb) makes pytest reject `-n`.
    parallel = [] if "no:xdist" in rest else ["-n", "auto"]
    run([str(PYTHON), "-m", "pytest", *parallel, *rest])


if __name__ == "__main__":
    main(sys.argv[1:])

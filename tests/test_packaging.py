"""The distribution carries what a plain (non-editable) install needs to migrate."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_platform_migrations_and_the_console_script(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("dentalpin-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "dentalpin/platform/migrations/env.py" in names
    assert "dentalpin/platform/migrations/script.py.mako" in names
    assert "dentalpin/platform/migrations/versions/0001_platform.py" in names
    for template in ("invitation", "password_reset", "email_verification", "support_granted"):
        assert f"dentalpin/platform/templates/mail/{template}.txt" in names
        assert f"dentalpin/platform/templates/mail/{template}.html" in names
    assert "dentalpin/platform/templates/mail/_layout.html" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "dentalpin = dentalpin.cli:main" in text
    # Built-in modules ship their revisions and are registered like third-party ones.
    for module in ("locations", "catalog", "patients"):
        assert f"dentalpin/modules/{module}/migrations/versions/{module}_0001_initial.py" in names
        assert f"{module} = dentalpin.modules.{module}:" in text

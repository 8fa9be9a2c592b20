"""Build throwaway modules (a package with Alembic revisions) inside a test's tmp dir."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

from dentalpin.platform import Manifest, Module, Registry
from dentalpin.platform._db import Database
from dentalpin.platform._runtime import Platform

REVISION = """
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None
{extra}

def upgrade():
{upgrade}

def downgrade():
{downgrade}
"""


def build_module(
    root: Path, name: str, revisions: list[dict[str, str]], hooks: str = "", **manifest: Any
) -> type[Module]:
    """A module package `root/<pkg>` with the given revisions, imported and returned."""
    package = f"tmpmod_{name}_{uuid.uuid4().hex[:6]}"
    pkg = root / package
    versions = pkg / "migrations" / "versions"
    versions.mkdir(parents=True)
    down = None
    for index, rev in enumerate(revisions):
        body = REVISION.format(
            revision=rev["id"],
            down=down,
            extra=rev.get("extra", ""),
            upgrade=textwrap.indent(textwrap.dedent(rev["upgrade"]).strip() or "pass", "    "),
            downgrade=textwrap.indent(
                textwrap.dedent(rev.get("downgrade", "pass")).strip(), "    "
            ),
        )
        (versions / f"{index:04d}_{rev['id']}.py").write_text(body)
        down = rev["id"]
    (pkg / "__init__.py").write_text(
        "from dentalpin.platform import Module, UninstallVeto\n"
        f"class TheModule(Module):\n    pass\n{textwrap.indent(textwrap.dedent(hooks), '    ')}\n"
    )
    spec = importlib.util.spec_from_file_location(package, pkg / "__init__.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[package] = mod
    spec.loader.exec_module(mod)
    cls: type[Module] = mod.TheModule
    cls.manifest = Manifest(
        name=name,
        version=manifest.pop("version", "1.0.0"),
        summary=f"test module {name}",
        author="tests",
        license="MIT",
        category=manifest.pop("category", "other"),
        core=">=0.1",
        **manifest,
    )
    return cls


def platform_with(base: Platform, *extra: type[Module]) -> Platform:
    """A platform on the same database whose registry also knows `extra` modules."""
    classes = [type(spec.module) for spec in base.registry] + list(extra)
    return Platform(
        settings=base.settings,
        db=Database(base.db.url, base.settings),
        registry=Registry.from_classes(classes),
    )

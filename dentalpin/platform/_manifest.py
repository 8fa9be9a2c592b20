"""The module manifest: a module's identity, needs and grants in one validated object."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
RELATIVE_PERMISSION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
ROLE = re.compile(r"^[a-z][a-z0-9_]{1,39}$")

RESERVED_NAMES = frozenset(
    {
        "platform",
        "tenants",
        "tenant",
        "modules",
        "api",
        "auth",
        "me",
        "admin",
        "jobs",
        "static",
        "healthz",
        "readyz",
        "extensions",
        "public",
        "pg_catalog",
        "events",
        "core",
        "members",
        "roles",
        "audit",
        "users",
        "clients",
        "resellers",
        "operators",
        "approvals",
        "plans",
        "sso",
        "domains",
        "invitations",
        "support",
    }
)
"""Names that would collide with platform routes, schemas or tables."""

ModuleName = Annotated[str, Field(pattern=IDENTIFIER.pattern)]


class Category(StrEnum):
    CLINICAL = "clinical"
    FINANCIAL = "financial"
    COMPLIANCE = "compliance"
    INTEGRATION = "integration"
    ADMINISTRATIVE = "administrative"
    COMMUNICATION = "communication"
    OTHER = "other"


class NavEntry(BaseModel):
    """One entry of the UI navigation contributed by a module."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1, max_length=60)
    path: str = Field(pattern=r"^/[A-Za-z0-9_\-/{}]*$")
    permission: str | None = None
    icon: str | None = None
    order: int = 100


class Manifest(BaseModel):
    """What a module is, what it needs and what it grants.

    Permissions and role grants are module-relative (`patient.read`); the registry
    prefixes them with the module name (`patients.patient.read`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str
    version: str
    summary: str = Field(min_length=1, max_length=200)
    author: str = Field(min_length=1)
    license: str = Field(min_length=1)
    category: Category
    core: str
    """The DentalPin core versions this module supports, as a PEP 440 specifier set."""

    countries: tuple[str, ...] = ()
    depends: dict[str, str] = Field(default_factory=dict)
    installable: bool = True
    auto_install: bool = False
    removable: bool = True
    requires_extensions: tuple[str, ...] = ()
    permissions: dict[str, str] = Field(default_factory=dict)
    role_grants: dict[str, tuple[str, ...] | Literal["*"]] = Field(default_factory=dict)
    navigation: tuple[NavEntry, ...] = ()
    settings_model: type[BaseModel] | None = None
    """Per-tenant settings: a pydantic model whose defaults are the initial settings."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError(
                f"'{value}' is not a module name: use 2-40 lower-case letters, digits or '_', "
                "starting with a letter"
            )
        if value in RESERVED_NAMES:
            raise ValueError(f"'{value}' is reserved by the platform; choose another name")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not SEMVER.match(value):
            raise ValueError(f"version '{value}' is not semantic (MAJOR.MINOR.PATCH)")
        try:
            Version(value)  # dependents' specifiers are checked against it
        except InvalidVersion:
            raise ValueError(
                f"version '{value}' cannot be compared with version specifiers; use a "
                "pre-release such as '1.0.0-alpha', '1.0.0-beta.2' or '1.0.0-rc.1'"
            ) from None
        return value

    @field_validator("core")
    @classmethod
    def _core(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "core must name the DentalPin core versions the module supports, like '>=0.1,<1'"
            )
        _specifier(value, "core")
        return value

    @field_validator("countries")
    @classmethod
    def _countries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in value if not COUNTRY.match(c)]
        if bad:
            raise ValueError(f"countries must be ISO 3166-1 alpha-2 codes like 'ES', got {bad}")
        return value

    @field_validator("depends")
    @classmethod
    def _depends(cls, value: dict[str, str]) -> dict[str, str]:
        for name, spec in value.items():
            if not IDENTIFIER.match(name):
                raise ValueError(f"dependency '{name}' is not a module name")
            _specifier(spec, f"depends['{name}']")
        return value

    @field_validator("requires_extensions")
    @classmethod
    def _extensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [e for e in value if not IDENTIFIER.match(e)]
        if bad:
            raise ValueError(f"extension names must be identifiers, got {bad}")
        return value

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: dict[str, str]) -> dict[str, str]:
        for name, description in value.items():
            if not RELATIVE_PERMISSION.match(name):
                raise ValueError(
                    f"permission '{name}' must be module-relative 'resource.action' "
                    "(the registry adds the module prefix)"
                )
            if not description.strip():
                raise ValueError(f"permission '{name}' needs a description")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Manifest:
        if self.name in self.depends:
            raise ValueError(f"module '{self.name}' cannot depend on itself")
        for role, grants in self.role_grants.items():
            if not ROLE.match(role):
                raise ValueError(f"role '{role}' is not a role name")
            if grants == "*":
                continue
            unknown = sorted(set(grants) - set(self.permissions))
            if unknown:
                raise ValueError(
                    f"role_grants['{role}'] grants {unknown}, which the module does not declare "
                    "in permissions"
                )
        for entry in self.navigation:
            if entry.permission and entry.permission not in self.permissions:
                raise ValueError(
                    f"navigation entry '{entry.label}' needs undeclared permission "
                    f"'{entry.permission}'"
                )
        if self.auto_install and not self.installable:
            raise ValueError("a module cannot be auto_install without being installable")
        return self

    # Derived views -------------------------------------------------------------

    @property
    def parsed_version(self) -> Version:
        return Version(self.version)

    def qualified_permissions(self) -> dict[str, str]:
        return {f"{self.name}.{name}": text for name, text in self.permissions.items()}

    def qualified_grants(self) -> dict[str, frozenset[str]]:
        every = frozenset(self.qualified_permissions())
        return {
            role: every if grants == "*" else frozenset(f"{self.name}.{g}" for g in grants)
            for role, grants in self.role_grants.items()
        }

    def default_settings(self) -> dict[str, Any]:
        return self.settings_model().model_dump(mode="json") if self.settings_model else {}


def _specifier(value: str, field: str) -> SpecifierSet:
    try:
        return SpecifierSet(value)
    except InvalidSpecifier as exc:
        raise ValueError(f"{field}: '{value}' is not a version specifier like '>=1.0,<2'") from exc


def satisfies(version: str, specifier: str) -> bool:
    try:
        return Version(version) in SpecifierSet(specifier, prereleases=True)
    except (InvalidVersion, InvalidSpecifier):
        return False

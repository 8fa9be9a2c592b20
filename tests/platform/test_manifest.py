"""The module manifest: what it refuses, and the errors it teaches with."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from dentalpin.platform import Category, Manifest, NavEntry


def manifest(**overrides: Any) -> dict[str, Any]:
    """A valid manifest's fields, with `overrides` applied (None removes a field)."""
    values: dict[str, Any] = {
        "name": "charts",
        "version": "1.2.3",
        "summary": "Periodontal charts",
        "author": "DentalPin",
        "license": "BUSL-1.1",
        "category": "clinical",
        "core": ">=0.1,<1",
        "permissions": {"chart.read": "Read charts", "chart.write": "Edit charts"},
        "role_grants": {"admin": "*", "dentist": ("chart.read", "chart.write")},
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def refused(**overrides: Any) -> str:
    """Validate a manifest that must be refused; return pydantic's whole message."""
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(manifest(**overrides))
    return str(info.value)


def test_a_valid_manifest() -> None:
    m = Manifest.model_validate(manifest(countries=("ES", "PT"), depends={"patients": ">=1,<2"}))
    assert m.name == "charts"
    assert m.category is Category.CLINICAL
    assert str(m.parsed_version) == "1.2.3"
    assert m.depends == {"patients": ">=1,<2"}
    assert m.countries == ("ES", "PT")
    assert m.installable and m.removable and not m.auto_install


# Names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("Charts", "is not a module name"),
        ("x", "is not a module name"),
        ("x; drop", "is not a module name"),
        ("charts; drop table tenants", "is not a module name"),
        ("1charts", "is not a module name"),
        ("charts-pro", "is not a module name"),
        ("a" * 41, "is not a module name"),
        ("", "is not a module name"),
    ],
)
def test_invalid_names_are_refused(name: str, needle: str) -> None:
    message = refused(name=name)
    assert needle in message
    assert "2-40 lower-case letters" in message


@pytest.mark.parametrize("name", ["platform", "tenants", "api", "extensions", "public", "core"])
def test_reserved_names_are_refused(name: str) -> None:
    assert f"'{name}' is reserved by the platform" in refused(name=name)


def test_longest_and_shortest_names_are_fine() -> None:
    assert Manifest.model_validate(manifest(name="ab", permissions={}, role_grants={})).name == "ab"
    long_name = "a" + "b" * 39
    assert Manifest.model_validate(manifest(name=long_name)).name == long_name


# Versions and specifiers ------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1", "v1.0.0", "one", "1.0.0.0", "latest", ""])
def test_non_semver_versions_are_refused(version: str) -> None:
    assert f"version '{version}' is not semantic (MAJOR.MINOR.PATCH)" in refused(version=version)


@pytest.mark.parametrize("version", ["1.0.0", "0.0.1", "1.0.0-alpha", "1.0.0-rc.1", "2.1.0+b7"])
def test_semver_versions_are_accepted(version: str) -> None:
    assert Manifest.model_validate(manifest(version=version)).version == version


def test_a_semver_prerelease_the_registry_cannot_compare_is_refused() -> None:
    # Semver allows it, but dependents' specifiers could never be checked against it.
    message = refused(version="1.0.0-x.7.z.92")
    assert "cannot be compared with version specifiers" in message


@pytest.mark.parametrize("core", [">=abc", "1.0", "x; drop", "~> 1.0", "=>0.1"])
def test_bad_core_specifiers_are_refused(core: str) -> None:
    message = refused(core=core)
    assert f"core: '{core}' is not a version specifier" in message


def test_an_empty_core_range_is_refused() -> None:
    # An empty specifier matches every version: the core range would not be enforced at all.
    assert "core must name the DentalPin core versions" in refused(core="")
    assert "core must name the DentalPin core versions" in refused(core="  ")


def test_core_is_required() -> None:
    message = refused(core=None)
    assert "core" in message
    assert "Field required" in message


@pytest.mark.parametrize("spec", [">=abc", "1.0", "newest", "x; drop"])
def test_bad_dependency_specifiers_are_refused(spec: str) -> None:
    message = refused(depends={"patients": spec})
    assert f"depends['patients']: '{spec}' is not a version specifier" in message


@pytest.mark.parametrize("dep", ["Patients", "x", "x; drop", "patients-pro"])
def test_bad_dependency_names_are_refused(dep: str) -> None:
    assert f"dependency '{dep}' is not a module name" in refused(depends={dep: ">=1"})


def test_an_empty_dependency_specifier_means_any_version() -> None:
    assert Manifest.model_validate(manifest(depends={"patients": ""})).depends == {"patients": ""}


def test_a_module_cannot_depend_on_itself() -> None:
    assert "module 'charts' cannot depend on itself" in refused(depends={"charts": ">=1"})


# Permissions, grants, navigation ----------------------------------------------------


@pytest.mark.parametrize(
    "permission",
    ["read", "Chart.read", "chart.", ".read", "chart read", "chart.read!", "chart-x.y"],
)
def test_permissions_must_be_resource_action(permission: str) -> None:
    message = refused(permissions={permission: "Something"}, role_grants={})
    assert f"permission '{permission}' must be module-relative 'resource.action'" in message


def test_permissions_need_a_description() -> None:
    assert "permission 'chart.read' needs a description" in refused(
        permissions={"chart.read": "  "}, role_grants={}
    )


def test_role_grants_may_only_name_declared_permissions() -> None:
    message = refused(role_grants={"dentist": ("chart.read", "chart.delete", "xray.read")})
    assert "role_grants['dentist'] grants ['chart.delete', 'xray.read']" in message
    assert "does not declare in permissions" in message


def test_role_grants_take_a_tuple_or_star_only() -> None:
    message = refused(role_grants={"dentist": "everything"})
    assert "role_grants.dentist" in message


def test_role_names_are_checked() -> None:
    assert "role 'Dentist' is not a role name" in refused(role_grants={"Dentist": "*"})


def test_navigation_needs_a_declared_permission() -> None:
    nav = ({"label": "X-rays", "path": "/xrays", "permission": "xray.read"},)
    message = refused(navigation=nav)
    assert "navigation entry 'X-rays' needs undeclared permission 'xray.read'" in message


def test_navigation_entries_are_validated() -> None:
    assert "navigation.0.path" in refused(navigation=({"label": "Charts", "path": "charts"},))
    entry = Manifest.model_validate(
        manifest(navigation=({"label": "Charts", "path": "/charts", "permission": "chart.read"},))
    ).navigation[0]
    assert entry == NavEntry(label="Charts", path="/charts", permission="chart.read")


def test_auto_install_needs_installable() -> None:
    message = refused(auto_install=True, installable=False)
    assert "cannot be auto_install without being installable" in message


@pytest.mark.parametrize("countries", [("es",), ("ESP",), ("E",), ("ES", "Spain")])
def test_bad_country_codes_are_refused(countries: tuple[str, ...]) -> None:
    assert "countries must be ISO 3166-1 alpha-2 codes like 'ES'" in refused(countries=countries)


def test_extension_names_are_identifiers() -> None:
    message = refused(requires_extensions=("pg_trgm", "x; drop"))
    assert "extension names must be identifiers" in message


@pytest.mark.parametrize("field", ["permisions", "dependencies", "homepage"])
def test_unknown_fields_are_refused(field: str) -> None:
    message = refused(**{field: {}})
    assert field in message
    assert "Extra inputs are not permitted" in message


def test_category_must_be_known() -> None:
    message = refused(category="astrology")
    assert "category" in message
    assert "clinical" in message


def test_the_manifest_is_frozen() -> None:
    m = Manifest.model_validate(manifest())
    with pytest.raises(ValidationError):
        m.name = "other"  # type: ignore[misc]


# Derived views ----------------------------------------------------------------------


def test_qualified_permissions_prefix_the_module_name() -> None:
    m = Manifest.model_validate(manifest())
    assert m.qualified_permissions() == {
        "charts.chart.read": "Read charts",
        "charts.chart.write": "Edit charts",
    }


def test_qualified_grants_prefix_and_expand_star() -> None:
    m = Manifest.model_validate(
        manifest(role_grants={"admin": "*", "dentist": ("chart.read",), "nobody": ()})
    )
    assert m.qualified_grants() == {
        "admin": frozenset({"charts.chart.read", "charts.chart.write"}),
        "dentist": frozenset({"charts.chart.read"}),
        "nobody": frozenset(),
    }


def test_star_of_a_module_without_permissions_grants_nothing() -> None:
    m = Manifest.model_validate(manifest(permissions={}, role_grants={"admin": "*"}))
    assert m.qualified_grants() == {"admin": frozenset()}


def test_default_settings_come_from_the_settings_model() -> None:
    class ChartSettings(BaseModel):
        probing_sites: int = 6
        units: str = "mm"

    assert Manifest.model_validate(manifest()).default_settings() == {}
    m = Manifest.model_validate(manifest(settings_model=ChartSettings))
    assert m.default_settings() == {"probing_sites": 6, "units": "mm"}


def test_errors_report_every_problem_at_once() -> None:
    message = refused(name="X", version="1", countries=("es",))
    assert "is not a module name" in message
    assert "is not semantic" in message
    assert "ISO 3166-1" in message

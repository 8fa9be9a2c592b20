"""The module registry: dependency graph, lookups, and quarantine of whatever cannot be used.

The second half runs against real entry points: the `dentalpin-broken-modules` fixture
distribution installs deliberately broken modules next to the working ones.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ARRAY, Column, Enum, Integer, Table, Text, select
from sqlalchemy.dialects.postgresql import DOMAIN, ENUM
from sqlalchemy.types import TypeDecorator

from dentalpin.platform import Manifest, Module, Registry, UnknownModule, module_metadata
from dentalpin.platform._registry import ENTRY_POINT_GROUP, Candidate, _load_entry_point
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tables import modules as catalogue

CORE = "0.1.0"
BROKEN_DISTRIBUTION = "dentalpin-broken-modules"
WORKING = ("fx_people", "fx_visits", "recall")


def fields(name: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": name,
        "version": "1.0.0",
        "summary": f"Module {name}",
        "author": "Tests",
        "license": "MIT",
        "category": "other",
        "core": ">=0.1,<1",
    }
    values.update(overrides)
    return values


def module_class(name: str, **overrides: Any) -> type[Module]:
    """An in-memory Module subclass with a valid manifest."""
    return type(f"Module_{name}", (Module,), {"manifest": Manifest(**fields(name, **overrides))})


def raw_module_class(manifest: Any) -> type[Module]:
    """A Module subclass whose `manifest` is raw data (validated by the registry)."""
    return type("RawModule", (Module,), {"manifest": manifest})


def candidate(
    cls: type[Module], dist: str | None = "dist-test", entry: str | None = None
) -> Candidate:
    return Candidate(entry or cls.manifest.name, cls, dist)


def graph() -> Registry:
    """aa <- bb <- cc, and dd depends on both aa and cc; ee stands alone."""
    return Registry.from_classes(
        [
            module_class("dd", depends={"aa": ">=1", "cc": ">=1"}),
            module_class("cc", depends={"bb": ">=1"}),
            module_class("bb", depends={"aa": ">=1"}),
            module_class("aa", permissions={"thing.read": "Read"}, role_grants={"admin": "*"}),
            module_class("ee", auto_install=True),
        ],
        CORE,
    )


# Graph ------------------------------------------------------------------------------


def test_iteration_is_in_dependency_order() -> None:
    registry = graph()
    order = registry.names
    assert sorted(order) == ["aa", "bb", "cc", "dd", "ee"]
    for spec in registry:
        for dep in spec.manifest.depends:
            assert order.index(dep) < order.index(spec.name), (dep, spec.name, order)
    assert [s.name for s in registry] == order
    assert len(registry) == 5
    assert "aa" in registry
    assert "zz" not in registry


def test_order_does_not_depend_on_discovery_order() -> None:
    classes = [
        module_class("dd", depends={"aa": ">=1", "cc": ">=1"}),
        module_class("cc", depends={"bb": ">=1"}),
        module_class("bb", depends={"aa": ">=1"}),
        module_class("aa"),
        module_class("ee"),
    ]
    first = Registry.from_classes(classes, CORE).names
    assert Registry.from_classes(list(reversed(classes)), CORE).names == first
    assert Registry.from_classes(classes[2:] + classes[:2], CORE).names == first


def test_closure_is_dependencies_first() -> None:
    registry = graph()
    assert registry.closure(["cc"]) == ["aa", "bb", "cc"]
    assert registry.closure(["aa"]) == ["aa"]
    closure = registry.closure(["dd", "ee"])
    assert set(closure) == {"aa", "bb", "cc", "dd", "ee"}
    assert closure.index("aa") < closure.index("bb") < closure.index("cc") < closure.index("dd")
    assert registry.closure([]) == []


def test_closure_of_an_unknown_module_is_refused() -> None:
    with pytest.raises(UnknownModule, match="No module named 'cx' is available"):
        graph().closure(["cx"])


def test_dependents_are_transitive_and_dependents_first() -> None:
    registry = graph()
    everything = registry.names
    assert registry.dependents("aa", everything) == ["dd", "cc", "bb"]
    assert registry.dependents("bb", everything) == ["dd", "cc"]
    assert registry.dependents("cc", everything) == ["dd"]
    assert registry.dependents("dd", everything) == []
    assert registry.dependents("ee", everything) == []


def test_dependents_are_limited_to_the_candidates_given() -> None:
    registry = graph()
    assert registry.dependents("aa", ["aa", "bb"]) == ["bb"]
    # cc depends on aa through bb, even when bb is not among the candidates.
    assert registry.dependents("aa", ["aa", "cc"]) == ["cc"]
    assert registry.dependents("aa", []) == []


def test_ordered_keeps_dependency_order_and_checks_names() -> None:
    registry = graph()
    assert registry.ordered(["dd", "aa", "cc"]) == ["aa", "cc", "dd"]
    with pytest.raises(UnknownModule):
        registry.ordered(["aa", "nope"])


def test_auto_install_and_permissions() -> None:
    registry = graph()
    assert registry.auto_install() == ["ee"]
    assert registry.permissions() == {"aa.thing.read": "Read"}


def test_unknown_module_suggests_a_close_name() -> None:
    registry = graph()
    with pytest.raises(UnknownModule) as info:
        registry.get("bbx")
    assert "No module named 'bbx' is available. Did you mean 'bb'?" in str(info.value)
    assert info.value.status == 404
    assert info.value.name == "bbx"

    with pytest.raises(UnknownModule) as far:
        registry.get("zzzzzz")
    assert "Did you mean" not in far.value.detail


def test_unknown_module_says_when_it_is_quarantined() -> None:
    registry = Registry.build(
        [
            candidate(module_class("aa")),
            Candidate("patients", None, "dist-p", "import failed: boom"),
        ],
        CORE,
    )
    with pytest.raises(UnknownModule) as info:
        registry.get("patients")
    assert info.value.detail == "Module 'patients' is quarantined: import failed: boom"


def test_suggestions_use_real_fixture_names(platform: Platform) -> None:
    with pytest.raises(UnknownModule, match="Did you mean 'fx_people'"):
        platform.registry.get("fx_peple")


# Quarantine ----------------------------------------------------------------------------


def reasons(registry: Registry) -> dict[str, str]:
    return {name: q.reason for name, q in registry.quarantined.items()}


def test_an_import_error_is_quarantined() -> None:
    ep = importlib_metadata.EntryPoint(
        name="ghost", value="dentalpin_no_such_package_xyz:GhostModule", group=ENTRY_POINT_GROUP
    )
    loaded = _load_entry_point(ep)
    assert loaded.cls is None
    registry = Registry.build([loaded, candidate(module_class("aa"))], CORE)
    assert reasons(registry) == {
        "ghost": "import failed: ModuleNotFoundError: "
        "No module named 'dentalpin_no_such_package_xyz'"
    }
    assert registry.names == ["aa"]


def test_an_entry_point_that_is_not_a_module_subclass_is_quarantined() -> None:
    for value in ("collections:OrderedDict", "os.path:join", "json:dumps"):
        ep = importlib_metadata.EntryPoint(name="odd", value=value, group=ENTRY_POINT_GROUP)
        registry = Registry.build([_load_entry_point(ep)], CORE)
        assert registry.quarantined["odd"].reason == (
            f"entry point '{value}' is not a dentalpin Module subclass"
        )
        assert len(registry) == 0


def test_a_manifest_failing_at_import_is_reported_as_an_invalid_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = f"dp_badmanifest_{secrets.token_hex(4)}"
    (tmp_path / f"{package}.py").write_text(
        textwrap.dedent(
            """
            from dentalpin.platform import Manifest, Module

            class Bad(Module):
                manifest = Manifest(
                    name="bad", version="1.0", summary="s", author="aa", license="MIT",
                    category="other", core=">=0.1,<1",
                )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib_metadata.EntryPoint(name="bad", value=f"{package}:Bad", group=ENTRY_POINT_GROUP)
    reason = Registry.build([_load_entry_point(ep)], CORE).quarantined["bad"].reason
    assert reason.startswith("invalid manifest: version: ")
    assert "version '1.0' is not semantic" in reason
    assert "\n" not in reason


def test_an_invalid_manifest_is_quarantined_with_every_problem() -> None:
    bad = raw_module_class(fields("bad", version="one", countries=("es",)))
    registry = Registry.build([candidate(bad, entry="bad"), candidate(module_class("aa"))], CORE)
    reason = registry.quarantined["bad"].reason
    assert reason.startswith("invalid manifest: ")
    assert "version: Value error, version 'one' is not semantic" in reason
    assert "countries: Value error, countries must be ISO 3166-1" in reason
    assert registry.names == ["aa"]


def test_a_missing_manifest_is_quarantined() -> None:
    no_manifest = type("NoManifest", (Module,), {})
    registry = Registry.build([Candidate("empty", no_manifest, "dist-e")], CORE)
    assert registry.quarantined["empty"].reason.startswith("invalid manifest: ")


def _with_table(name: str, *columns: Column[Any]) -> type[Module]:
    cls = module_class(name)
    metadata = module_metadata()
    Table(f"{name}_things", metadata, Column("id", Integer, primary_key=True), *columns)
    cls.metadata = metadata
    return cls


class _Wrapped(TypeDecorator[str]):
    impl = Enum("x", "y", name="wrapped_kind")
    cache_ok = True


def test_a_column_of_a_type_created_per_schema_is_quarantined_with_the_way_out() -> None:
    registry = Registry.from_classes(
        [
            _with_table("enum", Column("kind", Enum("a", "b", name="enum_kind"))),
            _with_table("pgenum", Column("kind", ENUM("a", name="pgenum_kind"))),
            _with_table("domain", Column("code", DOMAIN("domain_code", Text))),
            _with_table("arrayed", Column("kinds", ARRAY(Enum("a", name="arrayed_kind")))),
            _with_table("wrapped", Column("kind", _Wrapped())),
            _with_table(
                "plain", Column("kind", Enum("a", "b", native_enum=False)), Column("t", Text)
            ),
        ],
        CORE,
    )
    assert registry.names == ["plain"]
    found = reasons(registry)
    assert found["enum"].startswith(
        "tables: column enum_things.kind has the PostgreSQL enum type 'enum_kind'. "
        "Such a type is created in every clinic's schema with its own OID"
    )
    assert "use Enum(..., native_enum=False), or text with a CHECK constraint" in found["enum"]
    assert "column pgenum_things.kind has the PostgreSQL enum type 'pgenum_kind'" in found["pgenum"]
    assert (
        "column domain_things.code has the PostgreSQL domain type 'domain_code'" in found["domain"]
    )
    assert "column arrayed_things.kinds has the PostgreSQL enum type" in found["arrayed"]
    assert (
        "column wrapped_things.kind has the PostgreSQL enum type 'wrapped_kind'" in found["wrapped"]
    )


def test_entry_point_name_must_match_the_manifest_name() -> None:
    registry = Registry.build([candidate(module_class("real"), entry="alias")], CORE)
    assert registry.quarantined["alias"].reason == (
        "entry point 'alias' loads a module whose manifest is named 'real'; the two must match"
    )
    assert "real" not in registry


def test_an_unsupported_core_range_is_quarantined() -> None:
    registry = Registry.from_classes(
        [module_class("old", core=">=0.0.1,<0.1"), module_class("new", core=">=2,<3")], "0.1.0"
    )
    assert reasons(registry) == {
        "old": "supports core >=0.0.1,<0.1, but this is DentalPin 0.1.0",
        "new": "supports core >=2,<3, but this is DentalPin 0.1.0",
    }
    later = Registry.from_classes([module_class("new", core=">=2,<3")], "2.4.0")
    assert later.names == ["new"]


def test_a_missing_dependency_is_quarantined() -> None:
    registry = Registry.from_classes([module_class("aa", depends={"ghost": ">=1"})], CORE)
    assert reasons(registry) == {
        "aa": "depends on 'ghost', which is not installed on this platform"
    }


def test_an_incompatible_dependency_version_is_quarantined() -> None:
    registry = Registry.from_classes(
        [
            module_class("base", version="1.4.0"),
            module_class("wants_two", depends={"base": ">=2,<3"}),
            module_class("wants_one", depends={"base": ">=1.2,<2"}),
        ],
        CORE,
    )
    assert reasons(registry) == {
        "wants_two": "needs base >=2,<3, but base 1.4.0 is installed",
    }
    assert registry.names == ["base", "wants_one"]


def test_prerelease_dependencies_are_compared() -> None:
    registry = Registry.from_classes(
        [
            module_class("base", version="2.0.0-rc.1"),
            module_class("user", depends={"base": ">=2.0.0rc1"}),
        ],
        CORE,
    )
    assert registry.names == ["base", "user"]


def test_a_dependency_cycle_quarantines_its_members_and_their_dependents() -> None:
    registry = Registry.from_classes(
        [
            module_class("ok"),
            module_class("cyc_b", depends={"cyc_a": ">=1"}),
            module_class("cyc_a", depends={"cyc_b": ">=1", "ok": ">=1"}),
            module_class("user", depends={"cyc_b": ">=1"}),
            module_class("user_of_user", depends={"user": ">=1"}),
        ],
        CORE,
    )
    cycle = "dependency cycle: cyc_a -> cyc_b -> cyc_a"
    assert reasons(registry) == {
        "cyc_a": cycle,
        "cyc_b": cycle,
        "user": f"depends on 'cyc_b', which is quarantined ({cycle})",
        "user_of_user": f"depends on 'user', which is quarantined (depends on 'cyc_b', "
        f"which is quarantined ({cycle}))",
    }
    assert registry.names == ["ok"]


def test_a_three_module_cycle_is_reported_the_same_way_whatever_the_order() -> None:
    classes = [
        module_class("xx", depends={"yy": ">=1"}),
        module_class("yy", depends={"zz": ">=1"}),
        module_class("zz", depends={"xx": ">=1"}),
    ]
    expected = "dependency cycle: xx -> yy -> zz -> xx"
    for shuffled in (classes, classes[::-1], classes[1:] + classes[:1]):
        assert set(reasons(Registry.from_classes(shuffled, CORE)).values()) == {expected}


def test_a_module_provided_by_two_distributions_is_quarantined() -> None:
    registry = Registry.build(
        [
            candidate(module_class("twin"), dist="dentalpin-twin"),
            candidate(module_class("twin", version="2.0.0"), dist="acme-twin"),
            candidate(module_class("uses_twin", depends={"twin": ">=1"})),
            candidate(module_class("aa")),
        ],
        CORE,
    )
    assert registry.quarantined["twin"].reason == (
        "two distributions provide module 'twin' (dentalpin-twin and acme-twin); "
        "uninstall all but one"
    )
    assert registry.quarantined["uses_twin"].reason.startswith(
        "depends on 'twin', which is quarantined (two distributions provide module 'twin'"
    )
    assert registry.names == ["aa"]


@pytest.mark.parametrize("broken_first", [True, False])
def test_a_duplicate_is_reported_as_such_even_when_one_copy_is_broken(broken_first: bool) -> None:
    good = candidate(module_class("twin"), dist="dentalpin-twin")
    broken = Candidate("twin", None, "acme-twin", "import failed: boom")
    pair = [broken, good] if broken_first else [good, broken]
    reason = Registry.build(pair, CORE).quarantined["twin"].reason
    assert reason.startswith("two distributions provide module 'twin'")
    assert "dentalpin-twin" in reason
    assert "acme-twin" in reason


def test_a_module_that_cannot_be_instantiated_is_quarantined() -> None:
    def explode(self: Module) -> None:
        raise RuntimeError("no config")

    cls = type(
        "Exploding", (Module,), {"manifest": Manifest(**fields("boom")), "__init__": explode}
    )
    registry = Registry.from_classes([cls], CORE)
    assert reasons(registry) == {"boom": "could not be instantiated: RuntimeError: no config"}


def test_the_rest_of_the_registry_keeps_working() -> None:
    ghost = importlib_metadata.EntryPoint(name="ghost", value="no_such_pkg_q:M", group="g")
    registry = Registry.build(
        [
            _load_entry_point(ghost),
            candidate(raw_module_class(fields("badver", version="xx")), entry="badver"),
            candidate(module_class("cyc_a", depends={"cyc_b": ""})),
            candidate(module_class("cyc_b", depends={"cyc_a": ""})),
            candidate(module_class("orphan", depends={"nowhere": ""})),
            candidate(module_class("future", core=">=5")),
            candidate(module_class("base", version="1.0.0")),
            candidate(module_class("picky", depends={"base": ">=3"})),
            candidate(module_class("visits", depends={"base": ">=1,<2"})),
            candidate(module_class("recalls", depends={"base": ">=1", "visits": ">=1"})),
        ],
        CORE,
    )
    assert set(registry.quarantined) == {
        "ghost",
        "badver",
        "cyc_a",
        "cyc_b",
        "orphan",
        "future",
        "picky",
    }
    assert registry.names == ["base", "visits", "recalls"]
    assert registry.closure(["recalls"]) == ["base", "visits", "recalls"]
    assert registry.dependents("base", registry.names) == ["recalls", "visits"]
    with pytest.raises(UnknownModule, match="quarantined: dependency cycle"):
        registry.closure(["cyc_a"])


# The real thing: broken modules installed as a distribution ---------------------------


def _normalized(name: str) -> str:
    return name.replace("_", "-").replace(".", "-").lower()


def broken_entry_points() -> dict[str, importlib_metadata.EntryPoint]:
    return {
        ep.name: ep
        for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None and _normalized(ep.dist.name) == BROKEN_DISTRIBUTION
    }


@pytest.fixture(scope="module")
def broken_installed() -> dict[str, importlib_metadata.EntryPoint]:
    found = broken_entry_points()
    assert found, (
        f"the {BROKEN_DISTRIBUTION} fixture distribution is not installed; run "
        "`pip install -e tests/fixtures/dentalpin-broken-modules` (dev.py does it for you)"
    )
    return found


EXPECTED_REASONS = {
    "brk_import_error": "import failed: ModuleNotFoundError: "
    "No module named 'dentalpin_broken_missing_library'",
    "brk_not_a_module": "entry point 'dentalpin_broken.misc:not_a_module' is not a dentalpin "
    "Module subclass",
    "brk_bad_manifest": "invalid manifest: version: Value error, version 'one' is not semantic "
    "(MAJOR.MINOR.PATCH)",
    "brk_misnamed": "entry point 'brk_misnamed' loads a module whose manifest is named "
    "'brk_other_name'; the two must match",
    "brk_future_core": "supports core >=99,<100, but this is DentalPin 0.1.0",
    "brk_orphan": "depends on 'brk_nowhere', which is not installed on this platform",
    "brk_old_people": "needs fx_people >=2,<3, but fx_people 1.1.0 is installed",
    "brk_cycle_a": "dependency cycle: brk_cycle_a -> brk_cycle_b -> brk_cycle_a",
    "brk_cycle_b": "dependency cycle: brk_cycle_a -> brk_cycle_b -> brk_cycle_a",
    "brk_cycle_user": "depends on 'brk_cycle_a', which is quarantined (dependency cycle: "
    "brk_cycle_a -> brk_cycle_b -> brk_cycle_a)",
}


def test_discover_quarantines_every_broken_module_with_its_reason(
    broken_installed: dict[str, importlib_metadata.EntryPoint],
) -> None:
    assert set(broken_installed) == set(EXPECTED_REASONS)
    registry = Registry.discover()
    for name, reason in EXPECTED_REASONS.items():
        assert name in registry.quarantined, name
        quarantine = registry.quarantined[name]
        assert quarantine.reason == reason
        assert _normalized(quarantine.distribution or "") == BROKEN_DISTRIBUTION
        assert name not in registry
    for name in WORKING:
        assert name in registry, registry.quarantined.get(name)
    assert registry.closure(["recall"]) == ["patients", "recall"]


async def test_the_platform_boots_and_records_the_quarantine(
    platform: Platform, broken_installed: dict[str, importlib_metadata.EntryPoint]
) -> None:
    assert set(EXPECTED_REASONS) <= set(platform.registry.quarantined)
    assert set(WORKING) <= set(platform.registry.names)
    async with platform.db.engine.connect() as conn:
        rows = {
            r.name: r
            for r in await conn.execute(
                select(catalogue.c.name, catalogue.c.state, catalogue.c.reason)
            )
        }
    for name, reason in EXPECTED_REASONS.items():
        assert (rows[name].state, rows[name].reason) == ("quarantined", reason)
    for name in WORKING:
        assert (rows[name].state, rows[name].reason) == ("available", None)


def test_cli_lists_quarantined_modules_with_their_reasons(
    platform: Platform,
    broken_installed: dict[str, importlib_metadata.EntryPoint],
    tmp_path: Path,
) -> None:
    settings = platform.settings
    env = {
        **os.environ,
        "DATABASE_URL": str(settings.database_url),
        "DENTALPIN_ROLE_PREFIX": settings.role_prefix,
        "DENTALPIN_DATA_DIR": str(settings.data_dir),
    }
    result = subprocess.run(
        [sys.executable, "-m", "dentalpin", "modules", "list", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for name, reason in EXPECTED_REASONS.items():
        assert rows[name]["status"] == "quarantined"
        assert rows[name]["reason"] == reason
        assert rows[name]["distribution"] == BROKEN_DISTRIBUTION
    for name in WORKING:
        assert rows[name]["status"] == "available"
        assert rows[name]["reason"] is None
    assert rows["fx_people"]["head"] == "fxp_0002"

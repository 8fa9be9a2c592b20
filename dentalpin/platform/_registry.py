"""The module registry: discovery through entry points, the dependency graph, quarantine.

Modeled on Django's app registry (one small object that knows every module) and on
pluggy's entry-point loading. A module that cannot be used (import error, bad
manifest, unsatisfied or cyclic dependency, unsupported core version) is
quarantined with a reason; it never stops the platform from booting.
"""

from __future__ import annotations

import graphlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata as importlib_metadata

from pydantic import ValidationError

from .. import __version__ as core_version_of_this_build
from ._errors import UnknownModule
from ._events import check_subscriptions, declare_events
from ._manifest import Manifest, satisfies
from ._module import PER_SCHEMA_TYPES, Module, check_metadata
from ._periodic import check_periodic

ENTRY_POINT_GROUP = "dentalpin.modules"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModuleSpec:
    """A module the registry accepted: its instance, manifest and origin."""

    name: str
    module: Module
    distribution: str | None = None

    @property
    def manifest(self) -> Manifest:
        return self.module.manifest


@dataclass(frozen=True)
class Quarantine:
    name: str
    reason: str
    distribution: str | None = None


@dataclass(frozen=True)
class Candidate:
    """A loaded module class, before the graph checks."""

    entry_name: str
    cls: type[Module] | None
    distribution: str | None
    error: str | None = None


class Registry:
    """Every usable module, in dependency order, and every quarantined one with its reason."""

    def __init__(self, specs: Iterable[ModuleSpec], quarantined: Iterable[Quarantine] = ()) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self.quarantined: dict[str, Quarantine] = {q.name: q for q in quarantined}
        # Sorted, not sets: the order must not depend on the process's hash seed.
        sorter = graphlib.TopologicalSorter(
            {name: sorted(spec.manifest.depends) for name, spec in sorted(self._specs.items())}
        )
        self._order = list(sorter.static_order())

    # Construction --------------------------------------------------------------

    @classmethod
    def discover(
        cls, group: str = ENTRY_POINT_GROUP, core_version: str = core_version_of_this_build
    ) -> Registry:
        candidates = [_load_entry_point(ep) for ep in importlib_metadata.entry_points(group=group)]
        return cls.build(candidates, core_version)

    @classmethod
    def from_classes(
        cls, classes: Iterable[type[Module]], core_version: str = core_version_of_this_build
    ) -> Registry:
        candidates = [Candidate(c.manifest.name, c, None) for c in classes]
        return cls.build(candidates, core_version)

    @classmethod
    def build(cls, candidates: Iterable[Candidate], core_version: str) -> Registry:
        accepted: dict[str, ModuleSpec] = {}
        quarantined: dict[str, Quarantine] = {}
        by_name: dict[str, list[Candidate]] = {}
        for candidate in candidates:
            by_name.setdefault(candidate.entry_name, []).append(candidate)
        for name, group in by_name.items():
            if len(group) > 1:
                # Ambiguous whichever of them loads: never pick one silently.
                origins = " and ".join(str(c.distribution) for c in group)
                duplicate = (
                    f"{'two' if len(group) == 2 else len(group)} distributions provide module "
                    f"'{name}' ({origins}); uninstall all but one"
                )
                quarantined[name] = Quarantine(name, duplicate, group[-1].distribution)
                continue
            spec, reason = _accept(group[0], core_version)
            if spec is not None:
                accepted[name] = spec
            else:
                quarantined[name] = Quarantine(name, reason or "unusable", group[0].distribution)
        _quarantine_unsatisfied(accepted, quarantined)
        for q in quarantined.values():
            log.info("module %s quarantined: %s", q.name, q.reason)
        return cls(accepted.values(), quarantined.values())

    # Lookup --------------------------------------------------------------------

    def get(self, name: str) -> ModuleSpec:
        try:
            return self._specs[name]
        except KeyError:
            quarantined = {q.name: q.reason for q in self.quarantined.values()}
            raise UnknownModule(name, self._specs, quarantined) from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ModuleSpec]:
        """Modules in dependency order: every module after what it depends on."""
        return (self._specs[name] for name in self._order)

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def names(self) -> list[str]:
        return list(self._order)

    # Graph -----------------------------------------------------------------------

    def ordered(self, names: Iterable[str]) -> list[str]:
        wanted = set(names)
        for name in wanted:
            self.get(name)
        return [name for name in self._order if name in wanted]

    def closure(self, names: Iterable[str]) -> list[str]:
        """`names` and everything they depend on, dependencies first."""
        seen: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(self.get(name).manifest.depends)
        return self.ordered(seen)

    def dependents(self, name: str, among: Iterable[str]) -> list[str]:
        """Modules of `among` that depend on `name`, directly or not, dependents first."""
        # Walk the whole graph, then filter: `c -> b -> a` makes `c` a dependent of `a`
        # even when `b` is not among the candidates.
        found: set[str] = set()
        changed = True
        while changed:
            changed = False
            for other, spec in self._specs.items():
                if other in found or other == name:
                    continue
                if set(spec.manifest.depends) & (found | {name}):
                    found.add(other)
                    changed = True
        return list(reversed(self.ordered(found & set(among))))

    def auto_install(self) -> list[str]:
        return [s.name for s in self if s.manifest.auto_install and s.manifest.installable]

    def subscribers(self, installed: Iterable[str]) -> dict[str, list[str]]:
        """Event name -> the modules among `installed` that subscribe to it."""
        routes: dict[str, list[str]] = {}
        for name in self.ordered(n for n in installed if n in self._specs):
            for event in self._specs[name].module.subscriptions():
                routes.setdefault(event, []).append(name)
        return routes

    def permissions(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for spec in self:
            merged.update(spec.manifest.qualified_permissions())
        return merged


def _load_entry_point(ep: importlib_metadata.EntryPoint) -> Candidate:
    dist = ep.dist.name if ep.dist else None
    try:
        loaded = ep.load()
    except ValidationError as exc:
        if exc.title == Manifest.__name__:  # `manifest = Manifest(...)` failed at import
            return Candidate(ep.name, None, dist, f"invalid manifest: {_problems(exc)}")
        return Candidate(ep.name, None, dist, f"import failed: {type(exc).__name__}: {exc}")
    except Exception as exc:  # a third party's import error must not stop the boot
        return Candidate(ep.name, None, dist, f"import failed: {type(exc).__name__}: {exc}")
    if not (isinstance(loaded, type) and issubclass(loaded, Module)):
        return Candidate(
            ep.name, None, dist, f"entry point '{ep.value}' is not a dentalpin Module subclass"
        )
    return Candidate(ep.name, loaded, dist)


def _accept(candidate: Candidate, core_version: str) -> tuple[ModuleSpec | None, str | None]:
    if candidate.cls is None:
        return None, candidate.error
    cls = candidate.cls
    raw = getattr(cls, "manifest", None)
    try:
        manifest = raw if isinstance(raw, Manifest) else Manifest.model_validate(raw)
    except ValidationError as exc:
        return None, f"invalid manifest: {_problems(exc)}"
    cls.manifest = manifest
    if manifest.name != candidate.entry_name:
        return None, (
            f"entry point '{candidate.entry_name}' loads a module whose manifest is named "
            f"'{manifest.name}'; the two must match"
        )
    if not satisfies(core_version, manifest.core):
        return None, (f"supports core {manifest.core}, but this is DentalPin {core_version}")
    try:
        instance = cls()
        subscriptions = instance.subscriptions()
        periodic = instance.periodic()
    except Exception as exc:
        return None, f"could not be instantiated: {type(exc).__name__}: {exc}"
    problems = check_metadata(cls.metadata)
    if problems:
        return None, f"tables: {'; '.join(problems)}. {PER_SCHEMA_TYPES}"
    problems = check_periodic(manifest.name, periodic)
    if problems:
        return None, "periodic jobs: " + "; ".join(problems)
    problems = check_subscriptions(manifest.name, subscriptions) or declare_events(
        manifest.name, tuple(cls.events)
    )
    if problems:
        return None, "events: " + "; ".join(problems)
    return ModuleSpec(manifest.name, instance, candidate.distribution), None


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'manifest'}: {err['msg']}"
        for err in exc.errors()
    )


def _quarantine_unsatisfied(
    accepted: dict[str, ModuleSpec], quarantined: dict[str, Quarantine]
) -> None:
    """Quarantine modules whose dependencies are missing, incompatible or cyclic, to a fixpoint."""
    while True:
        changed = False
        for name, spec in list(accepted.items()):
            reason = _dependency_problem(spec, accepted, quarantined)
            if reason:
                quarantined[name] = Quarantine(name, reason, spec.distribution)
                del accepted[name]
                changed = True
        cycle = _find_cycle(accepted)
        if cycle:
            text = " -> ".join(cycle)
            for name in dict.fromkeys(cycle):
                quarantined[name] = Quarantine(
                    name, f"dependency cycle: {text}", accepted[name].distribution
                )
                del accepted[name]
            changed = True
        if not changed:
            return


def _dependency_problem(
    spec: ModuleSpec, accepted: dict[str, ModuleSpec], quarantined: dict[str, Quarantine]
) -> str | None:
    for dep, specifier in spec.manifest.depends.items():
        if dep in quarantined:
            return f"depends on '{dep}', which is quarantined ({quarantined[dep].reason})"
        if dep not in accepted:
            return f"depends on '{dep}', which is not installed on this platform"
        dep_version = accepted[dep].manifest.version
        if not satisfies(dep_version, specifier):
            return f"needs {dep} {specifier}, but {dep} {dep_version} is installed"
    return None


def _find_cycle(accepted: dict[str, ModuleSpec]) -> list[str] | None:
    graph = {
        name: sorted(set(spec.manifest.depends) & set(accepted))
        for name, spec in sorted(accepted.items())
    }
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        # graphlib walks from a module to those needing it and repeats the first node at
        # the end; report it as "a -> b" = "a depends on b", starting from the least name.
        members = list(reversed(exc.args[1]))[:-1]
        start = members.index(min(members))
        members = members[start:] + members[:start]
        return [*members, members[0]]
    return None

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
from ._manifest import Manifest, satisfies
from ._module import Module

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
        sorter = graphlib.TopologicalSorter(
            {name: set(spec.manifest.depends) for name, spec in self._specs.items()}
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
        for candidate in candidates:
            spec, reason = _accept(candidate, core_version)
            name = spec.name if spec else candidate.entry_name
            if spec and name in accepted:
                reason = (
                    f"two distributions provide module '{name}' "
                    f"({accepted[name].distribution} and {candidate.distribution})"
                )
                quarantined[name] = Quarantine(name, reason, candidate.distribution)
                del accepted[name]
            elif spec and name not in quarantined:
                accepted[name] = spec
            elif reason:
                quarantined[name] = Quarantine(name, reason, candidate.distribution)
        _quarantine_unsatisfied(accepted, quarantined)
        for spec in list(accepted.values()):
            if spec.name in quarantined:
                accepted.pop(spec.name, None)
        for q in quarantined.values():
            log.warning("module %s quarantined: %s", q.name, q.reason)
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
        among_set = set(among)
        found: set[str] = set()
        changed = True
        while changed:
            changed = False
            for other in among_set - found - {name}:
                spec = self._specs.get(other)
                if spec and set(spec.manifest.depends) & (found | {name}):
                    found.add(other)
                    changed = True
        return list(reversed(self.ordered(found)))

    def auto_install(self) -> list[str]:
        return [s.name for s in self if s.manifest.auto_install and s.manifest.installable]

    def permissions(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for spec in self:
            merged.update(spec.manifest.qualified_permissions())
        return merged


def _load_entry_point(ep: importlib_metadata.EntryPoint) -> Candidate:
    dist = ep.dist.name if ep.dist else None
    try:
        loaded = ep.load()
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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'manifest'}: {err['msg']}"
            for err in exc.errors()
        )
        return None, f"invalid manifest: {problems}"
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
    except Exception as exc:
        return None, f"could not be instantiated: {type(exc).__name__}: {exc}"
    return ModuleSpec(manifest.name, instance, candidate.distribution), None


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
            for name in set(cycle):
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
    graph = {name: set(spec.manifest.depends) & set(accepted) for name, spec in accepted.items()}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None

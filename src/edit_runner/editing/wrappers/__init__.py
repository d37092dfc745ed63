"""The source papers' wrappers as plug-ins on the two-stage core (DESIGN.md table).

Each wrapper is one module of this package: a config dataclass, a class implementing the
:class:`Wrapper` hooks it needs, and a :data:`WRAPPERS` entry. What a wrapper may wrap is derived
from what it declares (:attr:`Wrapper.needs`, :attr:`Wrapper.conflicts`) and what the algorithm's
solver declares (:attr:`~edit_runner.editing.algorithms.AlgorithmSpec.capabilities`); nothing here
or in the runner names a wrapper. A new wrapper is one module here plus its ``conf/wrapper`` yaml.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from edit_runner.data.record import EditRecord
from edit_runner.editing.algorithms import OPTIMIZATION, AlgorithmSpec, algorithm_registry
from edit_runner.errors import ConfigError
from edit_runner.registry import Registry

if TYPE_CHECKING:
    from edit_runner.editing.editor import EditorBuilder
    from edit_runner.plan import RunPlan

#: Config keys of the ``wrapper`` node that are not wrappers.
RESERVED_KEYS = ("preset", "per_model")

CAPABILITY_TEXT = {
    OPTIMIZATION: "an optimization stage",
    "spread:identity": "a spread stage that takes a +λI term",
    "spread:kkt": "a spread stage that takes extra K Kᵀ terms",
    "spread:running_sums": "a MEMIT-type spread stage (running sums)",
}


@dataclass
class PrepareContext:
    """What :meth:`Wrapper.prepare` may use: the unedited model and the run's records."""

    model: Any
    tokenizer: Any
    records: list[EditRecord]
    batch_size: int
    log: Callable[[str], None]


class Wrapper(Protocol):
    """A wrapper's hooks; each has a no-op default, so a wrapper implements only the ones it needs.

    * :meth:`check` — before any model loads (bad settings, records it cannot use);
    * :meth:`prepare` — on the unedited model, may filter the records (NA/NAP neighbour selection);
    * :meth:`install` — adds loss rows, stop rules, spread terms, a solver decorator or an outer loop;
    * :meth:`summarize` — adds its section to ``summary.json``.
    """

    name: str
    needs: frozenset[str]
    conflicts: frozenset[str]

    def check(self, plan: RunPlan) -> None:
        """Raise a ConfigError naming the key and the fix if this wrapper cannot run ``plan``."""

    def prepare(self, context: PrepareContext) -> list[EditRecord]:
        """The records to edit (default: all of them)."""
        return context.records

    def install(self, builder: EditorBuilder) -> None:
        """Add this wrapper's hooks to the editor under construction."""

    def summarize(self, summary: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        """Add this wrapper's results to the run summary (``steps``: the step rows)."""


@dataclass(frozen=True)
class WrapperEntry:
    """A registered wrapper: its config dataclass, its class and its place in the canonical order."""

    name: str
    config_type: type
    factory: Callable[[Any], Wrapper]
    order: int


WRAPPERS: Registry[WrapperEntry] = Registry("wrapper")


def wrapper_registry() -> Registry[WrapperEntry]:
    """The wrapper registry with every module of this package loaded."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return WRAPPERS


def wrapper_names() -> list[str]:
    """Registered wrapper names in canonical order."""
    registry = wrapper_registry()
    return sorted(registry.names(), key=lambda name: registry.get(name).order)


def selected_wrappers(node: Any) -> dict[str, Any]:
    """The wrapper configs set in the ``wrapper`` node, in canonical order; unknown keys fail with the choices."""
    registry = wrapper_registry()
    keys = [key for key in (node.keys() if hasattr(node, "keys") else node) if key not in RESERVED_KEYS]
    for key in keys:
        registry.get(key)
    chosen = {key: node[key] for key in keys if node[key] is not None}
    return {name: chosen[name] for name in wrapper_names() if name in chosen}


def build_wrappers(node: Any) -> list[Wrapper]:
    """The enabled wrappers built from their configs, in canonical order."""
    registry = wrapper_registry()
    return [registry.get(name).factory(config) for name, config in selected_wrappers(node).items()]


def check_combination(algo: AlgorithmSpec, wrappers: list[Wrapper] | list[str]) -> None:
    """Raise a ConfigError when a wrapper needs what ``algo`` lacks or two wrappers conflict."""
    registry = wrapper_registry()
    built = [registry.get(w).factory(registry.get(w).config_type()) if isinstance(w, str) else w for w in wrappers]
    names = {w.name for w in built}
    for wrapper in built:
        missing = sorted(wrapper.needs - algo.capabilities)
        if missing:
            supported = sorted(n for n in algorithm_registry().names() if wrapper.needs <= algorithm_registry().get(n).capabilities)
            why = "it has no spread stage" if not algo.has_spread else f"it needs {CAPABILITY_TEXT.get(missing[0], missing[0])}"
            raise ConfigError(
                f"wrapper={wrapper.name} cannot wrap algo={algo.name}: {why}. Algorithms it supports: {', '.join(supported)}"
            )
        for other in sorted(wrapper.conflicts & names):
            raise ConfigError(f"wrapper={wrapper.name} and wrapper={other} cannot be combined; choose one")

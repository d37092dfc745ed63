"""Every algorithm as a registry entry: a small declarative variant of the one two-stage core (DESIGN.md).

ROME, MEMIT, PMET, EMMET and AlphaEdit differ only in where δ is added (:attr:`AlgorithmSpec.sites`),
how templates are averaged, how the residual is spread over layers and which normal equations are
solved (their :class:`~edit_runner.editing.solver.Solver`). Each method lives in one module of
:mod:`edit_runner.editing.methods`, which registers its entries together with their typed
hyper-parameter dataclasses; adding a method is one module there plus its ``conf/algo`` yaml.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edit_runner.editing.solver import DirectEditor, Solver
from edit_runner.models.layout import ModelLayout
from edit_runner.registry import Registry

#: Capability a wrapper may need: the optimization stage; spread terms are ``"spread:<term>"``.
OPTIMIZATION = "optimization"


@dataclass
class TwoStageConfig:
    """Hyper-parameters shared by every locate-then-edit method (SPEC C §1.5–1.7).

    ``per_model`` holds values a paper fixes per model; they are merged under command-line
    overrides before the job starts.
    """

    name: str = "?"
    layers: list[int] = field(default_factory=lambda: [5])
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    nll_loss_factor: float = 1.0
    mom2_n_samples: int = 100000
    mom2_dtype: str = "float32"
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[5, 10], [10, 10]])
    target_chunk: int = 16
    per_model: dict[str, Any] = field(default_factory=dict)


def block_site(layout: ModelLayout, layer: int) -> tuple[str, ...]:
    """δ at the output of decoder block ``layer`` (MEMIT family)."""
    return (layout.layer(layer),)


@dataclass(frozen=True)
class AlgorithmSpec:
    """What an algorithm is made of and what it supports.

    Exactly one of ``solver_type`` (two-stage methods) and ``direct_type`` (fine-tuning) is set;
    both are built from the algorithm's config dataclass ``config_type``.
    """

    name: str
    config_type: type
    solver_type: Callable[[Any], Solver] | None = None
    direct_type: Callable[[Any], DirectEditor] | None = None
    template_style: str = "memit"  # "rome" (flat templates) | "memit" (bare + prefixes)
    sites: Callable[[ModelLayout, int], tuple[str, ...]] = block_site
    spread: str = "divide"  # "divide" 1/(L−i) | "sqrt" 1/sqrt(L−i) | "none"
    one_edit_per_pass: bool = False
    max_layers: int | None = None
    pmet_rule: bool = False
    supports_batched: bool = True
    supports_sequential: bool = True
    check_config: Callable[[Any], None] | None = None  # extra checks before any model loads (e.g. a file)

    @property
    def has_optimization(self) -> bool:
        """Whether the method has the optimization (target) stage."""
        return self.solver_type is not None

    @property
    def has_spread(self) -> bool:
        """Whether the method has the closed-form spread stage."""
        return self.solver_type is not None

    @property
    def capabilities(self) -> frozenset[str]:
        """What wrappers may hook into: the optimization stage and the spread terms its solver accepts."""
        if self.solver_type is None:
            return frozenset()
        accepts = getattr(self.solver_type, "accepts", frozenset())
        return frozenset({OPTIMIZATION, *(f"spread:{term}" for term in accepts)})

    def build_solver(self, config: Any) -> Solver:
        """A fresh solver (its run state empty) for ``config``."""
        if self.solver_type is None:
            raise TypeError(f"algo={self.name} has no spread stage")
        return self.solver_type(config)

    def check(self, config: Any) -> None:
        """Raise a ConfigError naming the field when ``config`` cannot run (before any model loads)."""
        if self.check_config is not None:
            self.check_config(config)

    def needs_covariance(self, config: Any) -> bool:
        """Whether the run must compute the layer statistics ``C`` for ``config``."""
        return self.solver_type is not None and self.build_solver(config).needs_covariance


ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm")


def algorithm_registry() -> Registry[AlgorithmSpec]:
    """The algorithm registry with every module of :mod:`edit_runner.editing.methods` loaded."""
    importlib.import_module("edit_runner.editing.methods")
    return ALGORITHMS


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The spec of a registered algorithm (did-you-mean error for unknown names)."""
    return algorithm_registry().get(name)

"""D4S (seed 003, SPEC B §11): running sums ``Σ R Kᵀ`` and ``Σ K Kᵀ`` over all past sequential edits.

The wrapper decorates a MEMIT-type solver: each layer's update is the cumulative solution
``S_RK (S_KK + λC + terms)⁻¹`` minus what that layer has already moved (``W − W₀``). In the
``reference`` residual mode the edited layers are reset to ``W₀`` before each step and the
residual is measured once, before any layer changes (the reference code); ``remeasured`` keeps
the edited weights and measures the residual per layer, as MEMIT does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from torch import Tensor

from edit_runner.editing.solver import LayerProbe, Solver, SpreadTerms
from edit_runner.editing.solvers import RunningSums
from edit_runner.editing.wrappers import WRAPPERS, Wrapper, WrapperEntry

if TYPE_CHECKING:
    from edit_runner.editing.editor import EditorBuilder


class D4SResidual(str, Enum):
    """D4S residual modes (SPEC Part B §11)."""

    reference = "reference"
    remeasured = "remeasured"


@dataclass
class D4SConfig:
    """Which residual mode D4S uses."""

    residual: D4SResidual = D4SResidual.reference


class RunningSumsSolver:
    """A MEMIT-type solver decorated with D4S running sums (run state: the sums per layer)."""

    def __init__(self, inner: Solver, offset: Callable[[int], Tensor]) -> None:
        self.inner = inner
        self.offset = offset
        self.sums = RunningSums()
        self.accepts = inner.accepts
        self.needs_covariance = True
        self.needs_bare_keys = False

    def current(self, probe: LayerProbe, z_layer: int, keys: Tensor | None) -> Tensor:
        """The inner solver's ``cur``."""
        return self.inner.current(probe, z_layer, keys)

    def delta(self, layer: int, K: Tensor, R: Tensor, C: Tensor | None, terms: SpreadTerms) -> Tensor:
        """Cumulative solution over every step so far, minus the layer's current offset ``W − W₀``."""
        assert C is not None
        self.sums.add(layer, K, R)
        preservation = self.inner.preservation(C, terms)  # type: ignore[attr-defined]
        cumulative = self.sums.delta(layer, preservation)
        return cumulative - self.offset(layer).to(K.device)

    def after_step(self, probe: LayerProbe, layers: list[int]) -> None:
        """The inner solver's update."""
        self.inner.after_step(probe, layers)

    def state_dict(self) -> dict[str, Tensor]:
        """The running sums and the inner solver's state."""
        return {**{f"sums.{k}": v for k, v in self.sums.state_dict().items()}, **{f"inner.{k}": v for k, v in self.inner.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        self.sums.load_state_dict({k[len("sums."):]: v for k, v in state.items() if k.startswith("sums.")})
        self.inner.load_state_dict({k[len("inner."):]: v for k, v in state.items() if k.startswith("inner.")})


class D4S(Wrapper):
    """Decorates the solver with running sums; ``reference`` resets the layers and fixes the residual."""

    name = "d4s"
    needs = frozenset({"spread:running_sums"})
    conflicts = frozenset({"iterative"})

    def __init__(self, config: D4SConfig) -> None:
        self.reference = D4SResidual(config.residual) is D4SResidual.reference

    def install(self, builder: EditorBuilder) -> None:
        """Wrap the solver; in reference mode reset to W₀ before each pass and measure R once."""
        assert builder.solver is not None
        builder.solver = RunningSumsSolver(builder.solver, builder.weight_offset)
        if self.reference:
            builder.before_pass.append(builder.reset_to_original)
            builder.residual_once = True


WRAPPERS.register("d4s", WrapperEntry("d4s", D4SConfig, D4S, order=70))

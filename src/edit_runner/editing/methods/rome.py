"""ROME and r-ROME (SPEC C §2, Part B §6): a rank-one update of one MLP output matrix per edit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from edit_runner.editing import solvers
from edit_runner.editing.algorithms import ALGORITHMS, AlgorithmSpec, TwoStageConfig
from edit_runner.editing.solver import LayerProbe, SpreadTerms, stateless
from edit_runner.models.layout import ModelLayout


@dataclass
class RomeConfig(TwoStageConfig):
    """ROME hyper-parameters: ``mom2_adjustment`` uses ``C⁻¹`` in ``u``; ``consistent_keys`` is r-ROME's fix."""

    mom2_adjustment: bool = True
    consistent_keys: bool = False


class RomeSolver:
    """``ΔW = r uᵀ / (uᵀ k)`` with ``k`` the bare-prompt key (ROME) or the template key ``k*`` (r-ROME)."""

    accepts: frozenset[str] = frozenset()

    def __init__(self, config: RomeConfig) -> None:
        self.mom2_adjustment = bool(config.mom2_adjustment)
        self.consistent_keys = bool(config.consistent_keys)
        self.needs_covariance = self.mom2_adjustment
        self.needs_bare_keys = not self.consistent_keys

    def current(self, probe: LayerProbe, z_layer: int, keys: Tensor | None) -> Tensor:
        """The rewrite module's output at the bare prompt (ROME) or at ``k*`` itself (r-ROME, SPEC B §6)."""
        name = probe.rewrite_module(z_layer)
        if not self.consistent_keys:
            return probe.bare_outputs(name)
        module = probe.model.get_submodule(name)
        with torch.no_grad():
            return module(keys.T.to(module.weight.dtype)).float().T

    def delta(self, layer: int, K: Tensor, R: Tensor, C: Tensor | None, terms: SpreadTerms) -> Tensor:
        """The rank-one ``ΔW`` of the single edit in ``K`` / ``R``."""
        bare = None if terms.bare_keys is None else terms.bare_keys[:, 0]
        return solvers.rome_delta(
            K[:, 0], bare, R[:, 0], C, mom2_adjustment=self.mom2_adjustment, consistent_keys=self.consistent_keys
        )

    def after_step(self, probe: LayerProbe, layers: list[int]) -> None:
        """ROME keeps no state between steps."""

    def state_dict(self) -> dict[str, Tensor]:
        """ROME has no run state."""
        return stateless()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """ROME has no run state."""


def mlp_site(layout: ModelLayout, layer: int) -> tuple[str, ...]:
    """δ at the MLP output of the edited layer (ROME)."""
    return (layout.mlp.format(layer),)


for _name in ("rome", "r_rome"):
    ALGORITHMS.register(
        _name,
        AlgorithmSpec(
            _name, RomeConfig, solver_type=RomeSolver, template_style="rome", sites=mlp_site, spread="none",
            one_edit_per_pass=True, max_layers=1,
        ),
    )

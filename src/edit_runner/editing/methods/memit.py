"""MEMIT and PMET (SPEC C §1.4–1.7, §4): least squares spread over several layers, optional D4S sums."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from edit_runner.editing import solvers
from edit_runner.editing.algorithms import ALGORITHMS, AlgorithmSpec, TwoStageConfig
from edit_runner.editing.solver import LayerProbe, SpreadTerms, stateless
from edit_runner.models.layout import ModelLayout


@dataclass
class MemitConfig(TwoStageConfig):
    """MEMIT / PMET hyper-parameters: ``mom2_update_weight`` is λ of ``λC + K Kᵀ``."""

    mom2_update_weight: float = 15000.0


def block_output(layout: ModelLayout, layer: int) -> str:
    """``cur`` is read at the block output (MEMIT)."""
    return layout.layer(layer)


def mlp_output(layout: ModelLayout, layer: int) -> str:
    """``cur`` is read at the MLP output (PMET: only the MLP share of δ is spread)."""
    return layout.mlp_out.format(layer)


class PreservingSolver:
    """``ΔW = R Kᵀ (λC + Σ terms + K Kᵀ)⁻¹``; the residual is read at ``residual_module`` of the last layer."""

    accepts: frozenset[str] = frozenset({"identity", "kkt", "running_sums"})
    needs_covariance = True
    needs_bare_keys = False
    residual_module: Callable[[ModelLayout, int], str] = staticmethod(block_output)

    def __init__(self, config: MemitConfig) -> None:
        self.mom2_update_weight = float(config.mom2_update_weight)

    def current(self, probe: LayerProbe, z_layer: int, keys: Tensor | None) -> Tensor:
        """Output of the residual module at the bare prompts."""
        return probe.bare_outputs(self.residual_module(probe.layout, z_layer))

    def preservation(self, C: Tensor, terms: SpreadTerms) -> Tensor:
        """``λC + λ_n I + Σ K_p K_pᵀ`` (float64)."""
        return solvers.preservation_matrix(C.double(), self.mom2_update_weight, norm_lambda=terms.identity, prev_kkt=terms.kkt)

    def delta(self, layer: int, K: Tensor, R: Tensor, C: Tensor | None, terms: SpreadTerms) -> Tensor:
        """MEMIT's normal equations."""
        assert C is not None
        return solvers.memit_delta(K, R, self.preservation(C, terms))

    def after_step(self, probe: LayerProbe, layers: list[int]) -> None:
        """MEMIT keeps no state between steps (D4S decorates it with running sums)."""

    def state_dict(self) -> dict[str, Tensor]:
        """MEMIT has no run state."""
        return stateless()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """MEMIT has no run state."""


class PmetSolver(PreservingSolver):
    """PMET reads the residual at the MLP output (its δ also covers attention, which is not spread)."""

    residual_module = staticmethod(mlp_output)


def pmet_sites(layout: ModelLayout, layer: int) -> tuple[str, ...]:
    """PMET optimizes δ jointly at the MLP and attention outputs of the last layer."""
    return (layout.mlp_out.format(layer), layout.attn_out.format(layer))


ALGORITHMS.register("memit", AlgorithmSpec("memit", MemitConfig, solver_type=PreservingSolver))
ALGORITHMS.register(
    "pmet", AlgorithmSpec("pmet", MemitConfig, solver_type=PmetSolver, sites=pmet_sites, spread="sqrt", pmet_rule=True)
)

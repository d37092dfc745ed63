"""EMMET (SPEC C §5): equality-constrained batched editing with a ridge ``emmet_lambda`` on ``D``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from edit_runner.editing import solvers
from edit_runner.editing.algorithms import ALGORITHMS, AlgorithmSpec
from edit_runner.editing.methods.memit import MemitConfig, PreservingSolver
from edit_runner.editing.solver import SpreadTerms


@dataclass
class EmmetConfig(MemitConfig):
    """EMMET hyper-parameters: ``C' = λC (+ terms)`` and the ridge ``emmet_lambda``."""

    emmet_lambda: float = 0.1


class EmmetSolver(PreservingSolver):
    """``ΔW = (R − ... ) D⁻¹ Kᵀ C'⁻¹`` with ``D = Kᵀ C'⁻¹ K + emmet_lambda·I`` (see :func:`solvers.emmet_delta`)."""

    accepts: frozenset[str] = frozenset({"identity", "kkt"})

    def __init__(self, config: EmmetConfig) -> None:
        super().__init__(config)
        self.emmet_lambda = float(config.emmet_lambda)

    def delta(self, layer: int, K: Tensor, R: Tensor, C: Tensor | None, terms: SpreadTerms) -> Tensor:
        """EMMET's constrained solve on the preservation matrix."""
        assert C is not None
        return solvers.emmet_delta(K, R, self.preservation(C, terms), self.emmet_lambda)


ALGORITHMS.register("emmet", AlgorithmSpec("emmet", EmmetConfig, solver_type=EmmetSolver))

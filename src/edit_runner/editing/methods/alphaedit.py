"""AlphaEdit (SPEC C §6): the MEMIT update projected on the null space of the preserved keys."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from edit_runner.editing import solvers
from edit_runner.editing.algorithms import ALGORITHMS, AlgorithmSpec, TwoStageConfig
from edit_runner.editing.methods.memit import block_output
from edit_runner.editing.solver import LayerProbe, SpreadTerms


@dataclass
class AlphaEditConfig(TwoStageConfig):
    """AlphaEdit hyper-parameters: null-space eigenvalue threshold, ridge ``l2``, solve precision."""

    nullspace_threshold: float = 2e-2
    l2: float = 10.0
    alphaedit_float64: bool = False


class AlphaEditSolver:
    """``ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + (l2 + λ_n) I)⁻¹``; run state: the key history ``Σ K_p K_pᵀ`` per layer.

    The projector ``P`` is derived from ``C`` (recomputed after a resume, not checkpointed). The
    history stays on the keys' device (float64, ``d_in × d_in`` per layer) and leaves it only when a
    checkpoint is written. With the previous-edit key memory (``wrapper=prev_edit_keys``; the ENCORE
    repository's AlphaEdit, whose ``SEQ_CACHE`` holds the in-loop keys of earlier batches) the
    history is that memory and the solver keeps none of its own.
    """

    accepts: frozenset[str] = frozenset({"identity", "kkt"})
    needs_covariance = True
    needs_bare_keys = False

    def __init__(self, config: AlphaEditConfig) -> None:
        self.threshold = float(config.nullspace_threshold)
        self.l2 = float(config.l2)
        self.dtype = torch.float64 if config.alphaedit_float64 else torch.float32
        self.key_history: dict[int, Tensor] = {}
        self._projectors: dict[int, Tensor] = {}
        self._history_from_memory = False

    def current(self, probe: LayerProbe, z_layer: int, keys: Tensor | None) -> Tensor:
        """Block output at the bare prompts (as MEMIT)."""
        return probe.bare_outputs(block_output(probe.layout, z_layer))

    def projector(self, layer: int, C: Tensor) -> Tensor:
        """The null-space projector of ``C`` for ``layer`` (computed once per run)."""
        if layer not in self._projectors:
            self._projectors[layer] = solvers.null_space_projector(C, self.threshold, dtype=self.dtype)
        return self._projectors[layer].to(C.device)

    def delta(self, layer: int, K: Tensor, R: Tensor, C: Tensor | None, terms: SpreadTerms) -> Tensor:
        """The projected update with the key history of earlier steps."""
        assert C is not None
        self._history_from_memory = terms.key_memory
        history = terms.kkt if terms.key_memory else self.key_history.get(layer)
        return solvers.alphaedit_delta(
            K, R, self.projector(layer, C), None if history is None else history.to(K.device), self.l2 + terms.identity,
            dtype=self.dtype,
        )

    def after_step(self, probe: LayerProbe, layers: list[int]) -> None:
        """Add the step's keys, re-measured on the edited model, to each layer's history (none with a key memory)."""
        if self._history_from_memory:
            return
        for layer in layers:
            keys = probe.keys(layer)
            kkt = keys @ keys.T
            previous = self.key_history.get(layer)
            self.key_history[layer] = kkt if previous is None else previous.to(kkt.device) + kkt

    def state_dict(self) -> dict[str, Tensor]:
        """The key histories, ``key_history.<layer>``."""
        return {f"key_history.{layer}": value.clone() for layer, value in self.key_history.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        self.key_history = {int(key.split(".")[1]): value.clone() for key, value in state.items()}


ALGORITHMS.register("alphaedit", AlgorithmSpec("alphaedit", AlphaEditConfig, solver_type=AlphaEditSolver))

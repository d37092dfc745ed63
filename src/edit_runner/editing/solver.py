"""The plug-in shapes of the spread stage: :class:`Solver`, :class:`SpreadTerm`, :class:`DirectEditor`.

Shape conventions are those of :mod:`edit_runner.editing.solvers` (the pure algebra): keys ``K`` are
``d_in × n`` (one column per edit), residuals ``R`` are ``d_out × n``, ``C = E[k kᵀ]`` is
``d_in × d_in`` and every ``ΔW`` is ``d_out × d_in`` (math layout; the caller handles GPT-2's
``Conv1D`` transpose).

A locate-then-edit method supplies a :class:`Solver`; wrappers add :class:`SpreadTerm` s (norm
constraint: ``+λ_n I``; previous-edit keys: ``+Σ K_p K_pᵀ``) or decorate the solver (D4S running
sums). Methods without the two stages (fine-tuning) supply a :class:`DirectEditor` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from edit_runner.data.record import EditRecord
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.keys import bare_activations, compute_keys
from edit_runner.models.layout import ModelLayout


@dataclass
class SpreadTerms:
    """What wrappers add to one layer's normal equations, and the keys some solvers need besides ``K``.

    ``identity`` is ``Σ λ_n`` of the ``+λ_n I`` terms (norm constraint), ``kkt`` the sum of extra
    ``K Kᵀ`` matrices (previous-edit key memory, ``d_in × d_in``), ``bare_keys`` the keys of the bare
    prompts (``d_in × n``; ROME's denominator key), filled only for solvers that declare
    ``needs_bare_keys``. ``key_memory`` is set when a previous-edit key memory is installed (even
    before it holds anything): a solver with a key history of its own (AlphaEdit) then takes the
    memory as that history instead of keeping one.
    """

    identity: float = 0.0
    kkt: Tensor | None = None
    bare_keys: Tensor | None = None
    key_memory: bool = False

    def add_kkt(self, matrix: Tensor) -> None:
        """Add one ``d_in × d_in`` matrix to :attr:`kkt`."""
        self.kkt = matrix if self.kkt is None else self.kkt + matrix.to(self.kkt.device)


@dataclass
class LayerProbe:
    """Measures keys and activations of the current model on one step's records (no gradients)."""

    model: torch.nn.Module
    tokenizer: Any
    layout: ModelLayout
    templates: ContextTemplates
    records: list[EditRecord]

    def rewrite_module(self, layer: int) -> str:
        """The edited matrix of ``layer`` (the MLP output projection)."""
        return self.layout.mlp_out.format(layer)

    def keys(self, layer: int) -> Tensor:
        """Template-averaged keys of ``layer`` (``d_in × n``, float64)."""
        return compute_keys(self.model, self.tokenizer, self.records, self.rewrite_module(layer), self.templates).double()

    def bare_inputs(self, module: str) -> Tensor:
        """``module``'s input at the subject-last token of the bare prompts (``d × n``)."""
        return bare_activations(self.model, self.tokenizer, self.records, module, "input")

    def bare_outputs(self, module: str) -> Tensor:
        """``module``'s output at the subject-last token of the bare prompts (``d × n``)."""
        return bare_activations(self.model, self.tokenizer, self.records, module, "output")


class Solver(Protocol):
    """The closed-form spread of one method: ``ΔW`` of a layer from its keys, residuals and ``C``.

    ``accepts`` names the :class:`SpreadTerms` a solver folds into its equations (``"identity"``,
    ``"kkt"``) and ``"running_sums"`` when it exposes :meth:`preservation` for D4S; wrappers that
    need a term the solver does not accept are refused before any model loads.
    """

    accepts: frozenset[str]
    needs_covariance: bool
    needs_bare_keys: bool

    def current(self, probe: LayerProbe, z_layer: int, keys: Tensor | None) -> Tensor:
        """``cur`` of the residual ``R = z − cur`` (``d_out × n``), measured on the current weights.

        ``keys`` are the layer's keys when the residual is measured per layer, ``None`` when it is
        measured once before any layer changes.
        """

    def delta(self, layer: int, K: Tensor, R: Tensor, C: Tensor | None, terms: SpreadTerms) -> Tensor:
        """``ΔW`` (``d_out × d_in``, float64) of ``layer``."""

    def after_step(self, probe: LayerProbe, layers: list[int]) -> None:
        """Update the solver's state once every layer of a step is edited (e.g. AlphaEdit's key history)."""

    def state_dict(self) -> dict[str, Tensor]:
        """Checkpointable state (tensors only)."""

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""


class SpreadTerm(Protocol):
    """A wrapper's contribution to every layer's normal equations, with its own checkpointable state."""

    term: str  # the SpreadTerms field it fills: "identity" | "kkt"

    def contribute(self, layer: int, terms: SpreadTerms) -> None:
        """Add this term for ``layer`` to ``terms`` before the solve."""

    def after_layer(self, layer: int, K: Tensor) -> None:
        """Note the keys just solved for at ``layer`` (memory terms)."""

    def state_dict(self) -> dict[str, Tensor]:
        """Checkpointable state (tensors only)."""

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""


class DirectEditor(Protocol):
    """A method without the two stages (fine-tuning, codebook or neuron editors): it edits the model itself.

    ``params`` are the rewrite modules' weights and biases (what fine-tuning trains); a method
    that edits elsewhere ignores them. Its run state (e.g. a codebook) round-trips through
    :meth:`state_dict`. The run checkpoint saves the rewrite modules' weights; an editor that changes
    other weights (MEND's gate/up projections) keeps them in its own state.
    """

    def attach(self, model: torch.nn.Module) -> None:
        """Called once when the editor is built (before any edit or resume): methods that act through
        forward hooks (GRACE's codebook) register them here; weight editors do nothing."""

    def edit(self, model: torch.nn.Module, tokenizer: Any, records: list[EditRecord], params: list[torch.nn.Parameter]) -> dict[str, float]:
        """Edit the model in place for ``records``; returns per-step statistics."""

    def state_dict(self) -> dict[str, Tensor]:
        """Checkpointable state (tensors only)."""

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""


def stateless() -> dict[str, Tensor]:
    """The :meth:`Solver.state_dict` of a solver without state."""
    return {}

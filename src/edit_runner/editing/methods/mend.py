"""MEND (Mitchell et al., 2022, "Fast Model Editing at Scale"): a trained editor maps the edit's gradient to a weight update.

The network and its math are in :mod:`edit_runner.editing.mend_network`, the gradient factors in
:mod:`edit_runner.editing.mend_factors`, training in :mod:`edit_runner.mend_training`
(``edit-train-mend``). Application (``algo=mend algo.checkpoint=DIR``) loads the trained network,
computes the raw factors ``(u_i, δ_i)`` of the NLL of ``target_new`` after each rewrite prompt on
the current weights, and adds ``ΔW = −α_l Σ_i δ̃_i ũ_iᵀ`` to every edited projection. Nothing is
sampled, so the update is a deterministic function of the checkpoint, the weights and the records.

Batched protocol: the records of one step are edited together as the sum of their transformed
gradients (each record's factors are those of editing it alone, see ``mend_factors``), as MEND's
batched editing does; the sequential protocol applies one such update per step on the weights
the previous steps left. MEND has no optimization or spread stage, so every wrapper is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from edit_runner.data.record import EditRecord
from edit_runner.editing.algorithms import ALGORITHMS, AlgorithmSpec
from edit_runner.editing.mend_factors import gradient_factors, math_shape
from edit_runner.editing.mend_network import load_network
from edit_runner.errors import ConfigError
from edit_runner.models.devices import input_device
from edit_runner.models.layout import add_to_weight, weight_matrix


@dataclass
class MendConfig:
    """MEND application settings: the trained editor (``checkpoint``, a file or a directory) and its layers."""

    name: str = "?"
    layers: list[int] = field(default_factory=lambda: [27, 28, 29])
    checkpoint: str | None = None
    per_model: dict[str, Any] = field(default_factory=dict)


class MendEditor:
    """Applies a trained MEND network as a :class:`~edit_runner.editing.solver.DirectEditor`."""

    def __init__(self, config: MendConfig) -> None:
        if not config.checkpoint:
            raise ConfigError("algo.checkpoint: MEND needs a trained editor; train one with `edit-train-mend --out DIR` and pass algo.checkpoint=DIR")
        self.network, _ = load_network(config.checkpoint)
        self.network.eval()
        trained = [int(x) for x in self.network.architecture.layers]
        if sorted(int(x) for x in config.layers) != sorted(trained):
            raise ConfigError(f"algo.layers={list(config.layers)} differ from the layers the checkpoint was trained for; set algo.layers={trained}")
        self.modules = list(self.network.architecture.modules)
        self.model: torch.nn.Module | None = None

    def attach(self, model: torch.nn.Module) -> None:
        """Check that every edited module exists in ``model`` with the shape the editor was trained for."""
        for name, shape in zip(self.modules, self.network.architecture.shapes):
            try:
                found = math_shape(model.get_submodule(name))
            except AttributeError:
                found = None
            if found != list(shape):
                raise ConfigError(
                    f"algo.checkpoint: the editor was trained for {self.network.architecture.model} ({name}: {list(shape)}), "
                    f"this model has {found}; train an editor for this model with edit-train-mend"
                )
        self.model = model

    def deltas(self, model: torch.nn.Module, tokenizer: Any, records: list[EditRecord]) -> dict[str, Tensor]:
        """``ΔW`` (math layout, float32) of every edited module for ``records`` on ``model``'s current weights."""
        factors = gradient_factors(model, tokenizer, records, self.modules)
        self.network.to(input_device(model))
        with torch.no_grad():
            return self.network.deltas(factors)

    def edit(self, model: torch.nn.Module, tokenizer: Any, records: list[EditRecord], params: list[torch.nn.Parameter]) -> dict[str, float]:
        """Add MEND's update for ``records`` to the edited projections (``params`` are not used)."""
        deltas = self.deltas(model, tokenizer, records)
        for name, delta in deltas.items():
            add_to_weight(model.get_submodule(name), delta)
        return {"mend_update_norm": float(sum(float(d.double().norm() ** 2) for d in deltas.values()) ** 0.5)}

    def state_dict(self) -> dict[str, Tensor]:
        """The current weights of every edited module (the run checkpoint saves only the MLP output projections)."""
        assert self.model is not None, "attach() the editor to a model first"
        return {name: weight_matrix(self.model.get_submodule(name)).detach().clone() for name in self.modules}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy :meth:`state_dict`'s weights back into the attached model."""
        assert self.model is not None, "attach() the editor to a model first"
        with torch.no_grad():
            for name, weight in state.items():
                target = weight_matrix(self.model.get_submodule(name))
                target.copy_(weight.to(device=target.device, dtype=target.dtype))


def check_mend_config(config: MendConfig) -> None:
    """The checkpoint exists, loads, and was trained for ``algo.layers`` (raises a ConfigError otherwise)."""
    MendEditor(config)


ALGORITHMS.register("mend", AlgorithmSpec("mend", MendConfig, direct_type=MendEditor, check_config=check_mend_config))

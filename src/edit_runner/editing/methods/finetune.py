"""FT and FT-C (SPEC C §3): fine-tuning the rewrite module(s) directly, FT-C within an L∞ box."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from edit_runner.data.record import EditRecord
from edit_runner.editing.algorithms import ALGORITHMS, AlgorithmSpec
from edit_runner.editing.finetune import FinetuneSettings, finetune
from edit_runner.editing.solver import stateless


@dataclass
class FinetuneConfig:
    """FT hyper-parameters; ``ft_norm_constraint`` (ε) set → FT-C."""

    name: str = "?"
    layers: list[int] = field(default_factory=lambda: [0])
    ft_lr: float = 5e-4
    ft_num_steps: int = 25
    ft_norm_constraint: float | None = None
    ft_weight_decay: float = 0.0
    ft_batch_size: int = 64
    per_model: dict[str, Any] = field(default_factory=dict)


class FinetuneEditor:
    """Adam on the rewrite modules' weights and biases (:func:`edit_runner.editing.finetune.finetune`)."""

    def __init__(self, config: FinetuneConfig) -> None:
        self.settings = FinetuneSettings(
            lr=float(config.ft_lr), num_steps=int(config.ft_num_steps),
            norm_constraint=None if config.ft_norm_constraint is None else float(config.ft_norm_constraint),
            weight_decay=float(config.ft_weight_decay), batch_size=int(config.ft_batch_size),
        )

    def attach(self, model: torch.nn.Module) -> None:
        """Fine-tuning edits weights directly: nothing to attach."""

    def edit(self, model: torch.nn.Module, tokenizer: Any, records: list[EditRecord], params: list[torch.nn.Parameter]) -> dict[str, float]:
        """Fine-tune ``params`` on ``records``."""
        return finetune(model, tokenizer, records, params, self.settings)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Fine-tuning keeps no state beyond the weights."""
        return stateless()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Fine-tuning keeps no state beyond the weights."""


for _name in ("ft", "ft_c"):
    ALGORITHMS.register(_name, AlgorithmSpec(_name, FinetuneConfig, direct_type=FinetuneEditor))

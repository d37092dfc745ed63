"""What MEND reads from the model: the edited MLP projections and the rank-1 gradient factors of an edit.

The edit loss of a batch of records is ``Σ_r mean_t −log p(y_{r,t} | x_r, y_{r,<t})`` (each record's
per-token mean NLL of ``target_new`` after its rewrite prompt, teacher-forced, right-padded rows
with explicit positions). Because rows do not interact, every record's factors are exactly those
of editing it alone. For an edited module (``y = W u + b``) the factors are the module's input
``u_i`` and the loss gradient at its output ``δ_i`` at every real position; positions with ``u = 0``
or ``δ = 0`` (padding, positions after the last scored one) are dropped, as in the paper's code.
``Σ_i δ_i u_iᵀ`` is then exactly the gradient of the loss with respect to ``W``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from edit_runner.data.record import EditRecord
from edit_runner.errors import ConfigError
from edit_runner.models.devices import input_device
from edit_runner.models.hooks import trace
from edit_runner.models.layout import ModelLayout, is_transposed
from edit_runner.models.padding import pad_id_of, right_padded
from edit_runner.models.scoring import encode_texts
from edit_runner.models.tokens import target_token_ids

Factors = dict[str, tuple[Tensor, Tensor]]


def mlp_projections(model: nn.Module, layout: ModelLayout, layers: Sequence[int], children: Sequence[str] = ()) -> list[str]:
    """Full names of the edited projections: ``children`` of each layer's MLP, or every Linear/Conv1D child."""
    names: list[str] = []
    for layer in layers:
        prefix = layout.mlp.format(int(layer))
        mlp = model.get_submodule(prefix)
        found = {name: child for name, child in mlp.named_children() if isinstance(child, nn.Linear) or is_transposed(child)}
        chosen = list(children) or list(found)
        missing = [name for name in chosen if name not in found]
        if missing:
            raise ConfigError(f"MEND modules {missing} are not projections of {prefix}; choose from: {', '.join(found)}")
        names += [f"{prefix}.{name}" for name in chosen]
    return names


def math_shape(module: nn.Module) -> list[int]:
    """``[d_out, d_in]`` of a Linear or Conv1D weight."""
    weight = module.weight
    return list(weight.shape[::-1]) if is_transposed(module) else list(weight.shape)


@dataclass(frozen=True)
class ScoredRows:
    """Token rows ``prompt + target`` and, per row, the position predicting the first target token."""

    rows: list[list[int]]
    starts: list[int]
    targets: list[list[int]]


def scored_rows(tokenizer: Any, prompts: Sequence[str], targets: Sequence[str]) -> ScoredRows:
    """Rows for teacher-forced scoring of ``targets[i]`` (SPEC B §1 tokenization) after ``prompts[i]``."""
    encoded = encode_texts(tokenizer, list(prompts))
    ids = [target_token_ids(tokenizer, target) for target in targets]
    return ScoredRows([p + t for p, t in zip(encoded, ids)], [len(p) - 1 for p in encoded], ids)


def edit_rows(tokenizer: Any, records: Sequence[EditRecord]) -> ScoredRows:
    """The rows of the edit loss: each record's rewrite prompt followed by ``target_new``."""
    return scored_rows(tokenizer, [r.rewrite_prompt for r in records], [r.target_new for r in records])


def forward(model: nn.Module, batch: ScoredRows, pad_id: int, weights: dict[str, Tensor] | None = None) -> Tensor:
    """Logits (``rows × width × vocab``) of ``batch``; ``weights`` (module name → math-layout weight) replace
    the modules' weights functionally (the model itself is never changed)."""
    input_ids, mask, positions = right_padded(batch.rows, pad_id, input_device(model))
    inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
    if not weights:
        return model(**inputs).logits
    stored = {
        f"{name}.weight": (value.T if is_transposed(model.get_submodule(name)) else value) for name, value in weights.items()
    }
    return torch.func.functional_call(model, stored, args=(), kwargs=inputs, strict=False).logits


def target_logits(logits: Tensor, batch: ScoredRows) -> tuple[Tensor, Tensor, Tensor]:
    """``(selected logits n_tok × V, target ids n_tok, row index n_tok)`` at every scored position."""
    rows, positions, ids = [], [], []
    for r, (start, target) in enumerate(zip(batch.starts, batch.targets)):
        rows += [r] * len(target)
        positions += range(start, start + len(target))
        ids += target
    device = logits.device
    row_index = torch.tensor(rows, device=device)
    return logits[row_index, torch.tensor(positions, device=device)].float(), torch.tensor(ids, device=device), row_index


def row_mean_nll(logits: Tensor, batch: ScoredRows) -> Tensor:
    """Per-row mean NLL of the targets (``rows``)."""
    selected, ids, row_index = target_logits(logits, batch)
    nll = torch.nn.functional.cross_entropy(selected, ids, reduction="none")
    totals = torch.zeros(len(batch.rows), device=nll.device).index_add(0, row_index, nll)
    counts = torch.tensor([len(t) for t in batch.targets], device=nll.device, dtype=nll.dtype)
    return totals / counts


def gradient_factors(model: nn.Module, tokenizer: Any, records: Sequence[EditRecord], modules: Sequence[str]) -> Factors:
    """``(u, δ)`` rows (``n × d_in``, ``n × d_out``, float32) of every module for the edit loss of ``records``."""
    batch = edit_rows(tokenizer, records)
    targets = [model.get_submodule(name) for name in modules]
    flags = [module.weight.requires_grad for module in targets]
    try:
        for module in targets:
            module.weight.requires_grad_(True)  # so the outputs are in the graph; the weights are not changed
        with torch.enable_grad(), trace(model, modules, inputs=True, outputs=True, detach=False) as seen:
            logits = forward(model, batch, pad_id_of(tokenizer))
            loss = row_mean_nll(logits, batch).sum()
            grads = torch.autograd.grad(loss, [seen.outputs[name] for name in modules])
    finally:
        for module, flag in zip(targets, flags):
            module.weight.requires_grad_(flag)
    factors: Factors = {}
    for name, grad in zip(modules, grads):
        u = seen.inputs[name].detach().reshape(-1, seen.inputs[name].shape[-1]).float()
        d = grad.reshape(-1, grad.shape[-1]).float()
        keep = (u != 0).any(dim=1) & (d != 0).any(dim=1)
        factors[name] = (u[keep], d[keep])
    return factors

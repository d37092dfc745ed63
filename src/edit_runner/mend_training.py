"""Training MEND's editor network on edit records (the paper's losses; ``edit-train-mend``).

One step takes ``batch_size`` edit records ``(x_e, y_e)`` and:

1. computes the raw factors ``(u_i, δ_i)`` of the edit loss on the *unedited* weights θ
   (:func:`~edit_runner.editing.mend_factors.gradient_factors`) and adds them to the running
   normalisation statistics;
2. forms the edited weights ``W̃ = W − α_l Σ_i δ̃_i ũ_iᵀ`` (the sum runs over every record of the step:
   one summed update, as batched editing applies it) functionally (``torch.func.functional_call``;
   the model is never changed, so the edit is differentiable in the editor's parameters);
3. the editing loss ``L_e`` = mean over the equivalence prompts (the rewrite prompt and its
   paraphrases: zsRE ``rephrase``, CounterFact ``paraphrase_prompts``) of the per-token mean NLL
   of ``y_e`` under ``W̃``;
4. the locality loss ``L_loc`` = mean over the positions predicting the neighbour targets
   (the first ``loc_prompts`` neighbourhood prompts of each record: zsRE ``loc``, CounterFact
   neighbourhood) of ``KL(p_θ(·|x) ‖ p_θ̃(·|x))``;
5. minimises ``c_edit·L_e + c_loc·L_loc`` with Adam (editor parameters at ``lr``, step sizes
   ``α_l`` at ``lr_lr``), gradient norm clipped at ``grad_clip``.

The paper's values are ``c_edit = 0.1``, ``c_loc = 1``, ``edit_lr = 1e-4``, ``lr_lr = 1e-4`` and an
editor learning rate of 1e-6 over many thousands of steps on a GPU; the entry's default editor
learning rate is 1e-4 so that short CPU runs learn something.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from edit_runner.data.record import EditRecord
from edit_runner.editing.mend_factors import (
    ScoredRows,
    forward,
    gradient_factors,
    mlp_projections,
    row_mean_nll,
    scored_rows,
    target_logits,
)
from edit_runner.editing.mend_network import MendArchitecture, MendNetwork
from edit_runner.errors import ConfigError
from edit_runner.models.layout import weight_matrix
from edit_runner.models.loading import LoadedModel
from edit_runner.models.padding import pad_id_of

#: ``progress(step, steps, row)`` after every training step.
TrainProgress = Callable[[int, int, dict[str, float]], None]


@dataclass
class MendTrainingConfig:
    """Training hyper-parameters (see the module docstring for the losses they weigh)."""

    steps: int = 100
    batch_size: int = 5
    lr: float = 1e-4
    lr_lr: float = 1e-4
    c_edit: float = 0.1
    c_loc: float = 1.0
    loc_prompts: int = 1
    grad_clip: float = 100.0
    seed: int = 0

    def check(self) -> None:
        """Raise a ConfigError naming the first unusable setting."""
        for key in ("steps", "batch_size", "loc_prompts"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "lr_lr", "grad_clip"):
            if float(getattr(self, key)) <= 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be positive, got {getattr(self, key)}")


def new_network(
    loaded: LoadedModel, layers: Sequence[int], children: Sequence[str] = (), rank: int = 1920, n_hidden: int = 1, edit_lr: float = 1e-4, seed: int = 0
) -> MendNetwork:
    """An untrained (identity) editor for the MLP projections of ``layers`` of ``loaded``."""
    if not layers:
        raise ConfigError("--layers: give at least one layer to edit")
    if int(rank) < 1 or int(n_hidden) < 0:
        raise ConfigError(f"--rank must be >= 1 and --n-hidden >= 0, got {rank} and {n_hidden}")
    modules = mlp_projections(loaded.model, loaded.layout, layers, children)
    shapes = [list(weight_matrix(loaded.model.get_submodule(m)).shape) for m in modules]
    architecture = MendArchitecture(
        model=loaded.name, layers=[int(x) for x in layers], modules=modules, shapes=shapes, rank=int(rank), n_hidden=int(n_hidden),
        edit_lr=float(edit_lr), seed=int(seed),
    )
    return MendNetwork(architecture).to(loaded.device)


def equivalence_rows(tokenizer: Any, records: Sequence[EditRecord]) -> ScoredRows:
    """Rows of ``L_e``: every record's rewrite prompt and paraphrases, each followed by its ``target_new``."""
    pairs = [(prompt, r.target_new) for r in records for prompt in (r.rewrite_prompt, *r.paraphrase_prompts)]
    return scored_rows(tokenizer, [p for p, _ in pairs], [t for _, t in pairs])


def locality_rows(tokenizer: Any, records: Sequence[EditRecord], per_record: int) -> ScoredRows | None:
    """Rows of ``L_loc``: the first ``per_record`` neighbourhood prompts of each record with their targets (None if none)."""
    pairs = [(n.prompt, n.target) for r in records for n in r.neighborhood[:per_record]]
    return scored_rows(tokenizer, [p for p, _ in pairs], [t for _, t in pairs]) if pairs else None


def edited_weights(loaded: LoadedModel, deltas: dict[str, Tensor]) -> dict[str, Tensor]:
    """``W + ΔW`` (math layout, the weights' dtype) of every module in ``deltas``, differentiable in ``ΔW``."""
    out = {}
    for name, delta in deltas.items():
        weight = weight_matrix(loaded.model.get_submodule(name)).detach()
        out[name] = (weight.float() + delta).to(weight.dtype)
    return out


def locality_kl(base_logits: Tensor, edited_logits: Tensor, batch: ScoredRows) -> Tensor:
    """Mean over scored positions of ``KL(p_base ‖ p_edited)``."""
    base, _, _ = target_logits(base_logits, batch)
    edited, _, _ = target_logits(edited_logits, batch)
    log_base = torch.log_softmax(base, dim=-1)
    return (log_base.exp() * (log_base - torch.log_softmax(edited, dim=-1))).sum(dim=-1).mean()


def step_losses(loaded: LoadedModel, network: MendNetwork, records: Sequence[EditRecord], config: MendTrainingConfig) -> dict[str, Tensor]:
    """``total``, ``edit`` and ``loc`` losses of one training step (statistics updated with the step's factors)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    pad = pad_id_of(tokenizer)
    factors = gradient_factors(model, tokenizer, records, network.architecture.modules)
    network.observe(factors)
    weights = edited_weights(loaded, network.deltas(factors))
    equivalent = equivalence_rows(tokenizer, records)
    edit_loss = row_mean_nll(forward(model, equivalent, pad, weights), equivalent).mean()
    neighbours = locality_rows(tokenizer, records, int(config.loc_prompts))
    loc_loss = torch.zeros((), device=edit_loss.device)
    if neighbours is not None:
        with torch.no_grad():
            base = forward(model, neighbours, pad)
        loc_loss = locality_kl(base, forward(model, neighbours, pad, weights), neighbours)
    total = float(config.c_edit) * edit_loss + float(config.c_loc) * loc_loss
    return {"total": total, "edit": edit_loss, "loc": loc_loss}


def train_mend(
    loaded: LoadedModel, network: MendNetwork, records: Sequence[EditRecord], config: MendTrainingConfig, progress: TrainProgress | None = None
) -> list[dict[str, float]]:
    """Train ``network`` in place on ``records`` for ``config.steps`` steps; returns one row of losses per step.

    Records are visited in a permutation of ``numpy.random.default_rng(seed)``, re-drawn after
    every pass, ``batch_size`` per step. The model's weights are never changed.
    """
    config.check()
    if len(records) < int(config.batch_size):
        raise ConfigError(f"--num-records: {len(records)} training records is fewer than --batch-size {config.batch_size}")
    rng = np.random.default_rng(int(config.seed))
    network.train()
    optimizer = torch.optim.Adam(
        [
            {"params": [p for name, p in network.named_parameters() if name != "edit_lrs"], "lr": float(config.lr)},
            {"params": [network.edit_lrs], "lr": float(config.lr_lr)},
        ]
    )
    order: list[int] = []
    history = []
    for step in range(int(config.steps)):
        start = time.perf_counter()
        while len(order) < int(config.batch_size):
            order += rng.permutation(len(records)).tolist()
        batch = [records[i] for i in order[: int(config.batch_size)]]
        del order[: int(config.batch_size)]
        losses = step_losses(loaded, network, batch, config)
        optimizer.zero_grad()
        losses["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(network.parameters(), float(config.grad_clip))
        optimizer.step()
        row = {name: float(value.detach()) for name, value in losses.items()}
        row.update(step=step, grad_norm=float(grad_norm), edit_lr=float(network.edit_lrs.detach().mean()), seconds=time.perf_counter() - start)
        history.append(row)
        if progress is not None:
            progress(step + 1, int(config.steps), row)
    network.eval()
    return history


def edited_logprobs(loaded: LoadedModel, network: MendNetwork | None, records: Sequence[EditRecord]) -> Tensor:
    """Per-record mean log-prob of ``target_new`` after its rewrite prompt, each record edited alone by
    ``network`` (functionally; ``None``: the unedited model)."""
    pad = pad_id_of(loaded.tokenizer)
    values = []
    for record in records:
        batch = scored_rows(loaded.tokenizer, [record.rewrite_prompt], [record.target_new])
        weights = None
        if network is not None:
            factors = gradient_factors(loaded.model, loaded.tokenizer, [record], network.architecture.modules)
            with torch.no_grad():
                weights = edited_weights(loaded, network.deltas(factors))
        with torch.no_grad():
            values.append(-row_mean_nll(forward(loaded.model, batch, pad, weights), batch)[0])
    return torch.stack(values).cpu()

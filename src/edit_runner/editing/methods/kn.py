"""KN (Dai et al., 2022, "Knowledge Neurons in Pretrained Transformers"): attribute, then edit value rows.

**Attribution.** A knowledge neuron is one FFN intermediate unit ``i`` of layer ``l``: coordinate
``i`` of the input of the MLP output projection ``layout.mlp_out`` (its *value row* is column ``i``
of that matrix in math layout). For a prompt ``x`` and the true object ``y = (y_1..y_T)`` the
integrated-gradients attribution of ``w̄`` (the neuron's activation at the position predicting
``y_j``, other layers untouched) is the right Riemann sum with ``m`` steps and the zero baseline::

    Attr_j(w_i) = w̄_i / m · Σ_{k=1..m} ∂ P(y_j | x, y_<j ; w = (k/m) w̄) / ∂ w_i

(teacher-forced; the whole layer's activation vector at that one position is scaled). A prompt's
attribution is the mean over its ``T`` target tokens. Coarse neurons of a prompt are those with
``Attr > t · max Attr`` (max over every attributed layer and neuron; the paper's ``t = 0.2``); the
selected (refined) neurons are those coarse for more than ``p · n`` of the record's ``n`` prompts
(the rewrite prompt and its paraphrases). Layers are ``algo.layers`` (the paper: every layer).

**Edit** (EasyEdit ``KnowledgeNeurons.modify_weights``, ``mode="edit"``). ``ŷ`` is the model's greedy
continuation of the rewrite prompt with as many tokens as ``target_new``; for every selected
neuron the value row changes as::

    W_out[:, i] += s · (Σ_t E[target_new_t] − Σ_t E[ŷ_t]),   s = 2 if the target is one token else 1

with ``E`` the input word-embedding matrix (EasyEdit's rule: doubled for single tokens, once per
token otherwise). Differences from EasyEdit: targets are tokenized as ``" " + target`` without
BOS (SPEC B §1), the attribution is teacher-forced on the true tokens (EasyEdit appends the
argmax token) and uses the paper's ``k/m``, ``k = 1..m`` points (EasyEdit ``linspace(0, 1, m)``).
Only the selected columns of the MLP output matrices change; the editor keeps no other state.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from edit_runner.data.record import EditRecord
from edit_runner.editing.algorithms import ALGORITHMS, AlgorithmSpec
from edit_runner.editing.solver import stateless
from edit_runner.errors import ConfigError
from edit_runner.models.devices import input_device
from edit_runner.models.layout import add_to_weight, layout_for, weight_matrix
from edit_runner.models.padding import pad_id_of, right_padded
from edit_runner.models.scoring import encode_texts, greedy_next_tokens
from edit_runner.models.tokens import target_token_ids


@dataclass
class KnConfig:
    """KN hyper-parameters: ``ig_steps`` = m, ``adaptive_threshold`` = t, ``share_threshold`` = p."""

    name: str = "?"
    layers: list[int] = field(default_factory=lambda: list(range(30)))
    ig_steps: int = 20
    adaptive_threshold: float = 0.2
    share_threshold: float = 0.5
    per_model: dict[str, Any] = field(default_factory=dict)


def _model_inputs(model: torch.nn.Module, rows: list[list[int]], pad_id: int) -> dict[str, Tensor]:
    input_ids, mask, positions = right_padded(rows, pad_id, input_device(model))
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}


def baseline_activations(model: torch.nn.Module, module: torch.nn.Module, row: list[int], where: list[int], pad_id: int) -> Tensor:
    """``module``'s input at positions ``where`` of one token row (``len(where) × d_ff``)."""
    seen: list[Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(**_model_inputs(model, [row], pad_id))
    finally:
        handle.remove()
    return seen[0][0, where]


def integrated_gradients(
    model: torch.nn.Module, module: torch.nn.Module, prompt: list[int], target: list[int], steps: int, pad_id: int
) -> Tensor:
    """Mean over target tokens of the IG attribution of every neuron of ``module``'s input (``d_ff``).

    One batch of ``T · m`` copies of ``prompt + target``: copy ``(j, k)`` has the activation at the
    position predicting ``target[j]`` replaced by ``(k/m) · w̄_j`` and contributes ``P(target[j])``.
    """
    row = prompt + target
    where = [len(prompt) - 1 + j for j in range(len(target))]
    base = baseline_activations(model, module, row, where, pad_id)  # T × d_ff
    alphas = torch.arange(1, steps + 1, device=base.device, dtype=base.dtype) / steps
    scaled = (base[:, None, :] * alphas[None, :, None]).reshape(-1, base.shape[-1]).requires_grad_(True)
    positions = torch.tensor(where, device=base.device).repeat_interleave(steps)
    batch = torch.arange(len(positions), device=base.device)

    def replace(_module: torch.nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        hidden = args[0].clone()
        hidden[batch, positions] = scaled.to(hidden.dtype)
        return (hidden, *args[1:])

    handle = module.register_forward_pre_hook(replace)
    try:
        logits = model(**_model_inputs(model, [row] * len(positions), pad_id)).logits
    finally:
        handle.remove()
    at = logits.device  # the LM head's output; ``batch``/``positions`` live on ``module``'s device
    wanted = torch.tensor(target, device=at).repeat_interleave(steps)
    rows = batch.to(at)
    probs = torch.softmax(logits[rows, positions.to(at)].float(), dim=-1)[rows, wanted]
    (grads,) = torch.autograd.grad(probs.sum(), scaled)
    per_token = base.float() * grads.float().reshape(len(target), steps, -1).mean(dim=1)
    return per_token.mean(dim=0)


def select_neurons(attributions: list[dict[int, Tensor]], adaptive_threshold: float, share_threshold: float) -> list[tuple[int, int]]:
    """Neurons ``(layer, index)`` with ``Attr > t · max`` in more than ``p · n`` of the ``n`` prompts."""
    counts: Counter[tuple[int, int]] = Counter()
    for per_layer in attributions:
        threshold = adaptive_threshold * max(float(a.max()) for a in per_layer.values())
        for layer, scores in per_layer.items():
            counts.update((layer, int(i)) for i in torch.nonzero(scores > threshold).flatten())
    needed = share_threshold * len(attributions)
    return sorted(neuron for neuron, count in counts.items() if count > needed)


class KnEditor:
    """Knowledge-neuron attribution and value-row edit as a :class:`~edit_runner.editing.solver.DirectEditor`."""

    def __init__(self, config: KnConfig) -> None:
        if int(config.ig_steps) < 1:
            raise ConfigError(f"algo.ig_steps must be a positive number of Riemann steps, got {config.ig_steps}")
        if not 0.0 <= float(config.share_threshold) < 1.0:
            raise ConfigError(f"algo.share_threshold must be in [0, 1) (a fraction of the prompts), got {config.share_threshold}")
        self.layers = sorted(int(layer) for layer in config.layers)
        self.steps = int(config.ig_steps)
        self.adaptive_threshold = float(config.adaptive_threshold)
        self.share_threshold = float(config.share_threshold)

    def attribute(self, model: torch.nn.Module, tokenizer: Any, record: EditRecord) -> list[dict[int, Tensor]]:
        """Per prompt (rewrite, then paraphrases): layer → IG attribution of ``target_true`` (``d_ff``)."""
        layout = layout_for(model.config.model_type)
        pad_id = pad_id_of(tokenizer)
        target = target_token_ids(tokenizer, record.target_true)
        prompts = encode_texts(tokenizer, [record.rewrite_prompt, *record.paraphrase_prompts])
        return [
            {layer: integrated_gradients(model, model.get_submodule(layout.mlp_out.format(layer)), prompt, target, self.steps, pad_id) for layer in self.layers}
            for prompt in prompts
        ]

    def attach(self, model: torch.nn.Module) -> None:
        """KN edits weights directly: nothing to attach."""

    def edit(self, model: torch.nn.Module, tokenizer: Any, records: list[EditRecord], params: list[torch.nn.Parameter]) -> dict[str, float]:
        """For each record: select its knowledge neurons, then move their value rows from ``ŷ`` to ``target_new``."""
        layout = layout_for(model.config.model_type)
        embeddings = model.get_input_embeddings().weight.detach()
        selected = 0
        for record in records:
            neurons = select_neurons(self.attribute(model, tokenizer, record), self.adaptive_threshold, self.share_threshold)
            new = target_token_ids(tokenizer, record.target_new)
            predicted = greedy_next_tokens(model, tokenizer, [record.rewrite_prompt], len(new))[0]
            scale = 2.0 if len(new) == 1 else 1.0
            direction = scale * (embeddings[new].sum(dim=0) - embeddings[predicted].sum(dim=0))
            for layer in {layer for layer, _ in neurons}:
                module = model.get_submodule(layout.mlp_out.format(layer))
                columns = torch.tensor([index for owner, index in neurons if owner == layer])
                delta = torch.zeros_like(weight_matrix(module), dtype=torch.float32)
                delta[:, columns] = direction.float().to(delta.device)[:, None]
                add_to_weight(module, delta)
            selected += len(neurons)
        return {"kn_neurons": float(selected) / len(records)}

    def state_dict(self) -> dict[str, Tensor]:
        """KN keeps no state beyond the weights."""
        return stateless()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """KN keeps no state beyond the weights."""


ALGORITHMS.register("kn", AlgorithmSpec("kn", KnConfig, direct_type=KnEditor))

"""Architecture facts in one place: one layout per model family, chosen from the HF config's ``model_type``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edit_runner.errors import ModelError
from edit_runner.registry import Registry


@dataclass(frozen=True)
class ModelLayout:
    """Module-name templates of one architecture family (``{}`` stands for the layer index).

    ``mlp_out`` is the "rewrite module" of the locate-then-edit family: its input is the MLP's
    hidden activation (the key) and its weight is what ROME/MEMIT edit.
    """

    family: str
    layers: str
    mlp: str
    mlp_out: str
    attn: str
    attn_out: str
    input_norm: str
    post_attn_norm: str
    final_norm: str
    embed: str
    lm_head: str

    def layer(self, index: int) -> str:
        """Name of decoder block ``index``."""
        return f"{self.layers}.{index}"

    def module_name(self, template: str, index: int) -> str:
        """Fill a layer template such as ``mlp_out`` with a layer index."""
        return template.format(index)


LAYOUTS: Registry[ModelLayout] = Registry("model layout (HF model_type)")

_GPT2 = ModelLayout(
    family="gpt2",
    layers="transformer.h",
    mlp="transformer.h.{}.mlp",
    mlp_out="transformer.h.{}.mlp.c_proj",
    attn="transformer.h.{}.attn",
    attn_out="transformer.h.{}.attn.c_proj",
    input_norm="transformer.h.{}.ln_1",
    post_attn_norm="transformer.h.{}.ln_2",
    final_norm="transformer.ln_f",
    embed="transformer.wte",
    lm_head="lm_head",
)
_GPTJ = ModelLayout(
    family="gptj",
    layers="transformer.h",
    mlp="transformer.h.{}.mlp",
    mlp_out="transformer.h.{}.mlp.fc_out",
    attn="transformer.h.{}.attn",
    attn_out="transformer.h.{}.attn.out_proj",
    input_norm="transformer.h.{}.ln_1",
    post_attn_norm="transformer.h.{}.ln_1",
    final_norm="transformer.ln_f",
    embed="transformer.wte",
    lm_head="lm_head",
)
_NEOX = ModelLayout(
    family="gpt_neox",
    layers="gpt_neox.layers",
    mlp="gpt_neox.layers.{}.mlp",
    mlp_out="gpt_neox.layers.{}.mlp.dense_4h_to_h",
    attn="gpt_neox.layers.{}.attention",
    attn_out="gpt_neox.layers.{}.attention.dense",
    input_norm="gpt_neox.layers.{}.input_layernorm",
    post_attn_norm="gpt_neox.layers.{}.post_attention_layernorm",
    final_norm="gpt_neox.final_layer_norm",
    embed="gpt_neox.embed_in",
    lm_head="embed_out",
)
_LLAMA = ModelLayout(
    family="llama",
    layers="model.layers",
    mlp="model.layers.{}.mlp",
    mlp_out="model.layers.{}.mlp.down_proj",
    attn="model.layers.{}.self_attn",
    attn_out="model.layers.{}.self_attn.o_proj",
    input_norm="model.layers.{}.input_layernorm",
    post_attn_norm="model.layers.{}.post_attention_layernorm",
    final_norm="model.norm",
    embed="model.embed_tokens",
    lm_head="lm_head",
)

for _model_type, _layout in {
    "gpt2": _GPT2,
    "gptj": _GPTJ,
    "gpt_neox": _NEOX,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
}.items():
    LAYOUTS.register(_model_type, _layout)


def layout_for(model_type: str) -> ModelLayout:
    """Return the layout registered for an HF ``model_type`` or raise a ModelError listing the supported ones."""
    if model_type not in LAYOUTS:
        raise ModelError(
            f"unknown model_type {model_type!r}: no layout is registered for it. Supported model_type values: "
            f"{', '.join(LAYOUTS.names())}. Add a ModelLayout in edit_runner/models/layout.py to support it."
        )
    return LAYOUTS.get(model_type)


def num_layers(model: nn.Module, layout: ModelLayout) -> int:
    """Number of decoder blocks of ``model``."""
    return len(model.get_submodule(layout.layers))


def context_limit(model: Any) -> int | None:
    """The model's maximum number of positions from its config (or ``model`` itself being a config).

    Read from ``max_position_embeddings`` (Llama family), ``n_positions`` / ``n_ctx`` (GPT-2),
    ``max_sequence_length`` or ``seq_length``, the first that is a positive int; None when none is.
    """
    config = getattr(model, "config", model)
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def is_transposed(module: nn.Module) -> bool:
    """True for GPT-2's ``Conv1D``, whose weight is stored as ``d_in × d_out``."""
    return type(module).__name__ == "Conv1D"


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight in math layout ``d_out × d_in`` (a view; GPT-2 Conv1D is transposed)."""
    weight = module.weight
    return weight.T if is_transposed(module) else weight


def add_to_weight(module: nn.Module, delta: torch.Tensor) -> None:
    """Add a math-layout (``d_out × d_in``) update to the module's weight in place."""
    with torch.no_grad():
        weight_matrix(module).add_(delta.to(device=module.weight.device, dtype=module.weight.dtype))

"""Text generation from a model: seeded top-k sampling (context templates, covariance fallback corpus)
and greedy generation on left-padded batches (fluency, downstream generation probes)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from edit_runner.models.devices import input_device
from edit_runner.models.padding import left_padded, length_sorted_chunks


def cache_keyword(model: torch.nn.Module) -> str:
    """The KV-cache argument (and output field) name of ``model.forward``: ``cache`` on current
    transformers, ``past_key_values`` on older releases."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def sample_top_k(
    model: torch.nn.Module, start_ids: torch.Tensor, num_new_tokens: int, generator: torch.Generator, top_k: int = 5
) -> torch.Tensor:
    """Top-k sampling with a KV cache for a batch of equal-length prompts (``rows × prompt_len`` ids).

    Softmax → keep the top ``k`` → renormalise → multinomial with ``generator`` (SPEC C §1.2).
    Returns the prompts with the sampled tokens appended.
    """
    device = input_device(model)
    sequence = start_ids.to(device)
    key = cache_keyword(model)
    past: dict[str, Any] = {}
    step_input = sequence
    for _ in range(num_new_tokens):
        out = model(input_ids=step_input, use_cache=True, **past)
        past = {key: out[key]}
        top_p, top_i = torch.softmax(out.logits[:, -1].float(), dim=-1).topk(top_k, dim=-1)
        pick = torch.multinomial((top_p / top_p.sum(-1, keepdim=True)).cpu(), 1, generator=generator).to(device)
        step_input = top_i.gather(1, pick)
        sequence = torch.cat([sequence, step_input], dim=1)
    return sequence


def sample_continuations(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[str],
    max_out_len: int,
    generator: torch.Generator,
    top_k: int = 5,
) -> list[str]:
    """Sample one continuation per prompt; ``max_out_len`` counts the prompt tokens too (``generate_fast``).

    Identical prompts are sampled together in one batch.
    """
    texts: dict[int, str] = {}
    for prompt in dict.fromkeys(prompts):
        rows = [i for i, p in enumerate(prompts) if p == prompt]
        ids = torch.tensor([tokenizer(prompt)["input_ids"]] * len(rows))
        out = sample_top_k(model, ids, max(0, max_out_len - ids.shape[1]), generator, top_k)
        for i, sequence in zip(rows, out):
            texts[i] = tokenizer.decode(sequence, skip_special_tokens=True)
    return [texts[i] for i in range(len(prompts))]


def greedy_generation_config(model: torch.nn.Module, max_new_tokens: int, pad_id: int) -> Any:
    """A ``transformers.GenerationConfig`` for plain greedy decoding of ``max_new_tokens`` tokens.

    Only the model's own BOS/EOS ids are taken from its generation config (a row stops at EOS);
    sampling, beams and penalties it may declare are not used.
    """
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=getattr(base, "eos_token_id", None),
        bos_token_id=getattr(base, "bos_token_id", None),
    )


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_id: int,
    batch_size: int = 64,
) -> list[list[int]]:
    """The new token ids ``model.generate`` decodes greedily after every row of prompt token ids.

    Rows are batched in length order and left padded (:func:`~edit_runner.models.padding.left_padded`);
    a row that reaches EOS before its batch ends is filled with ``pad_id`` after it, as ``generate``
    does. Results are in the order of ``rows``.
    """
    config = greedy_generation_config(model, max_new_tokens, pad_id)
    device = input_device(model)
    out: list[list[int]] = [[] for _ in rows]
    for chunk in length_sorted_chunks([len(r) for r in rows], batch_size):
        ids, mask, _ = left_padded([rows[i] for i in chunk], pad_id, device)
        generated = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for b, i in enumerate(chunk):
            out[i] = generated[b, ids.shape[1] :].tolist()
    return out

"""Downstream predictions (SPEC Part D) through the shared scorer and generator of :mod:`edit_runner.models`.

Two predictions per item, both batched:

* **probability** (the reference's ``f1_new``; our ``prob_*`` metrics): for each label word ``w``
  the mean over its tokens of ``-log p`` of ``tok(" " + w)`` after the prompt; the label with the
  strictly highest ``exp(-mean NLL)`` wins, ties give ``-1`` (:func:`predict_from_nll`).
  Single-token words (every label word under GPT-2 / Llama BPE) are all read at the prompt's last
  position from one left-padded pass per batch of prompts, LM head on that position only
  (:func:`~edit_runner.models.scoring.next_token_logprobs`); each longer word is teacher-forced
  after the prompt as its own sequence by :func:`~edit_runner.models.scoring.score_token_sequences`.
* **generation** (the reference's ``f1``; our ``gen_*`` metrics): greedy ``gen_len`` new tokens
  after the prompt by ``model.generate`` on left-padded batches
  (:func:`~edit_runner.models.sampling.greedy_generate`), to be parsed by
  :func:`~edit_runner.evaluation.downstream.prompts.parse_generation`.

Prompt tokens are ``tokenizer(prompt)["input_ids"]`` (special tokens as the tokenizer adds them, so
a Llama BOS is kept as in the reference), label-word tokens are ``tok(" " + w)`` without special
tokens (SPEC B §1). The scored sequence is the concatenation of the two; the reference tokenizes
``f"{prompt} {w}"`` jointly, which gives the same ids whenever the tokenizer splits at the space
(GPT-2/Llama BPE do). A prompt too long for the context keeps its last tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from edit_runner.evaluation.downstream.prompts import DEFAULT_GEN_LEN, model_max_length
from edit_runner.models.devices import input_device
from edit_runner.models.padding import pad_id_of
from edit_runner.models.sampling import greedy_generate, greedy_generation_config
from edit_runner.models.scoring import encode_texts, next_token_logprobs, score_token_sequences
from edit_runner.models.tokens import target_token_ids


def _label_inputs(
    model: Any, tokenizer: Any, prompts: Sequence[str], label_words: Sequence[str], max_length: int | None
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids (truncated so that prompt + the longest word but its last token fit) and word ids."""
    targets = [target_token_ids(tokenizer, w) for w in label_words]
    limit = max_length if max_length is not None else model_max_length(model)
    budget = max(1, limit - (max(len(t) for t in targets) - 1))
    return [ids[-budget:] for ids in encode_texts(tokenizer, prompts)], targets


def _generation_inputs(
    model: Any, tokenizer: Any, prompts: Sequence[str], gen_len: int, max_length: int | None
) -> list[list[int]]:
    """Prompt ids truncated so that the prompt and ``gen_len`` new tokens fit the context."""
    limit = max_length if max_length is not None else model_max_length(model)
    return [ids[-max(1, limit - gen_len) :] for ids in encode_texts(tokenizer, prompts)]


def _decoded(tokenizer: Any, prompt_ids: list[int], new_ids: list[int]) -> tuple[str, str]:
    """``(full_text, prompt_text)``: decoded prompt + continuation and decoded prompt, special tokens skipped."""
    return (
        tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=True),
        tokenizer.decode(prompt_ids, skip_special_tokens=True),
    )


def score_label_words(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    label_words: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
) -> torch.Tensor:
    """Mean per-token NLL of every label word after every prompt: a float32 ``(items, words)`` tensor.

    Single-token words cost one forward pass per batch of ``batch_size`` prompts together; each
    multi-token word is scored as its own ``prompt + word`` sequence. A prompt longer than
    ``max_length`` (default: the model's context) minus the longest word but its last token keeps
    its last tokens.
    """
    prompt_ids, targets = _label_inputs(model, tokenizer, prompts, label_words, max_length)
    pad_id = pad_id_of(tokenizer)
    nll = torch.zeros((len(prompt_ids), len(targets)), dtype=torch.float64)
    single = [w for w, t in enumerate(targets) if len(t) == 1]
    if single:
        first = [targets[w][0] for w in single]
        nll[:, single] = -next_token_logprobs(model, prompt_ids, first, batch_size=batch_size, pad_id=pad_id)
    pairs = [(i, w) for i in range(len(prompt_ids)) for w, t in enumerate(targets) if len(t) > 1]
    scores = score_token_sequences(
        model,
        [prompt_ids[i] for i, _ in pairs],
        [targets[w] for _, w in pairs],
        batch_size=batch_size,
        pad_id=pad_id,
    )
    for (i, w), score in zip(pairs, scores):
        nll[i, w] = score.mean_nll
    return nll.float()


@torch.no_grad()
def score_label_words_loop(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    label_words: Sequence[str],
    *,
    max_length: int | None = None,
) -> torch.Tensor:
    """The straightforward per-item, per-word reference of :func:`score_label_words` (tests, benchmarks).

    One forward pass of ``prompt + word[:-1]`` per (item, word), no padding, no cache.
    """
    prompt_ids, targets = _label_inputs(model, tokenizer, prompts, label_words, max_length)
    device = input_device(model)
    nll = torch.zeros((len(prompt_ids), len(targets)), dtype=torch.float32)
    for i, ids in enumerate(prompt_ids):
        for w, t in enumerate(targets):
            inputs = ids + t[:-1]
            logits = model(input_ids=torch.tensor([inputs], device=device)).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            total = 0.0
            for j, tok in enumerate(t):
                total += -logprobs[len(ids) - 1 + j, tok].item()
            nll[i, w] = total / len(t)
    return nll


def predict_from_nll(nll: torch.Tensor) -> list[int]:
    """Per row, the index with the strictly highest ``exp(-nll)`` (compared in float64); ties -> -1."""
    probs = torch.exp(-nll.double())
    best = probs.max(dim=1, keepdim=True).values
    winners = probs == best
    out = []
    for row, count in zip(probs.argmax(dim=1).tolist(), winners.sum(dim=1).tolist()):
        out.append(row if count == 1 else -1)
    return out


def generate_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    gen_len: int = DEFAULT_GEN_LEN,
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[tuple[str, str]]:
    """Greedy ``gen_len``-token continuations, batched with left padding.

    Returns ``(full_text, prompt_text)`` per prompt: the decoded prompt + continuation and the decoded
    prompt (special tokens skipped), ready for :func:`~edit_runner.evaluation.downstream.prompts.parse_generation`.
    """
    prompt_ids = _generation_inputs(model, tokenizer, prompts, gen_len, max_length)
    new_ids = greedy_generate(model, prompt_ids, gen_len, pad_id_of(tokenizer), batch_size=batch_size)
    return [_decoded(tokenizer, ids, new) for ids, new in zip(prompt_ids, new_ids)]


@torch.no_grad()
def generate_continuations_loop(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    gen_len: int = DEFAULT_GEN_LEN,
    max_length: int | None = None,
) -> list[tuple[str, str]]:
    """The per-item reference of :func:`generate_continuations`: ``model.generate`` on each unpadded prompt."""
    device = input_device(model)
    config = greedy_generation_config(model, gen_len, pad_id_of(tokenizer))
    out = []
    for ids in _generation_inputs(model, tokenizer, prompts, gen_len, max_length):
        generated = model.generate(input_ids=torch.tensor([ids], device=device), generation_config=config)
        out.append(_decoded(tokenizer, ids, generated[0, len(ids) :].tolist()))
    return out

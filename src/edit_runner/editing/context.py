"""Context templates ("random prefixes", SPEC C §1.2 and B §4): generated once per run, seeded, recorded."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from edit_runner.errors import ConfigError

MEMIT_SEED_WORDS = ("The", "Therefore", "Because", "I", "You")


@dataclass(frozen=True)
class ContextTemplates:
    """Groups of templates, each with one ``{}`` where the edit prompt goes.

    Keys are averaged within a group, then over groups (SPEC C §1.4): MEMIT-style runs use the two
    groups ``[["{}"], five prefixes]``, ROME one flat group of 21.
    """

    groups: tuple[tuple[str, ...], ...]

    @property
    def flat(self) -> list[str]:
        """All templates in order; the first is the bare ``"{}"``."""
        return [t for group in self.groups for t in group]

    def to_json(self) -> list[list[str]]:
        """A JSON-serialisable form (recorded in the results)."""
        return [list(g) for g in self.groups]

    @classmethod
    def from_json(cls, groups: list[list[str]]) -> ContextTemplates:
        """Inverse of :meth:`to_json`, validating every template."""
        for group in groups:
            for template in group:
                if template.count("{}") != 1:
                    raise ConfigError(f"context template {template!r} must contain exactly one '{{}}'")
        return cls(groups=tuple(tuple(g) for g in groups))


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).replace("\n\n", " ").replace("\n", " ")
    return text.replace("{", " ").replace("}", " ")


@torch.no_grad()
def sample_top_k(
    model: torch.nn.Module, start_ids: torch.Tensor, num_new_tokens: int, generator: torch.Generator, top_k: int = 5
) -> torch.Tensor:
    """Top-k sampling with a KV cache for a batch of equal-length prompts (``rows × prompt_len`` ids).

    Softmax → keep the top ``k`` → renormalise → multinomial with ``generator`` (SPEC C §1.2).
    Returns the prompts with the sampled tokens appended.
    """
    device = next(model.parameters()).device
    sequence = start_ids.to(device)
    past = None
    step_input = sequence
    for _ in range(num_new_tokens):
        out = model(input_ids=step_input, past_key_values=past, use_cache=True)
        past = out.past_key_values
        top_p, top_i = torch.softmax(out.logits[:, -1].float(), dim=-1).topk(top_k, dim=-1)
        pick = torch.multinomial((top_p / top_p.sum(-1, keepdim=True)).cpu(), 1, generator=generator).to(device)
        step_input = top_i.gather(1, pick)
        sequence = torch.cat([sequence, step_input], dim=1)
    return sequence


def sample_continuations(
    model: torch.nn.Module,
    tokenizer,
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


def generate_context_templates(
    model: torch.nn.Module,
    tokenizer,
    style: str,
    seed: int,
    length_params: list[list[int]] | None = None,
) -> ContextTemplates:
    """Generate the context templates of a run from the (unedited) model with a seeded generator.

    ``style="memit"``: ``["{}"]`` and one 10-token sample per seed word (SPEC C §1.2, MEMIT family).
    ``style="rome"``: ``"{}"`` plus, for every ``(length, count)`` in ``length_params``, ``count``
    samples of ``length`` tokens from the model's start token, in one flat group.
    """
    generator = torch.Generator().manual_seed(seed)
    if style == "memit":
        samples = sample_continuations(model, tokenizer, list(MEMIT_SEED_WORDS), 10, generator)
        return ContextTemplates(groups=(("{}",), tuple(_clean(s) + ". {}" for s in samples)))
    if style == "rome":
        start = tokenizer.bos_token or tokenizer.eos_token or ""
        templates = ["{}"]
        for length, count in length_params or [[5, 10], [10, 10]]:
            samples = sample_continuations(model, tokenizer, [start] * count, length, generator)
            templates += [_clean(s.replace(start, "")).strip() + ". {}" for s in samples]
        return ContextTemplates(groups=(tuple(templates),))
    raise ConfigError(f"unknown context-template style {style!r}; use 'rome' or 'memit'")


def load_context_templates(path: str | Path) -> ContextTemplates:
    """Read templates recorded by an earlier run (``context_templates.json``) for exact comparisons."""
    with open(path, encoding="utf-8") as handle:
        return ContextTemplates.from_json(json.load(handle))

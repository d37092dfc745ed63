"""Context templates ("random prefixes", SPEC C §1.2 and B §4): generated once per run, seeded, recorded."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from edit_runner.errors import ConfigError
from edit_runner.models.sampling import sample_continuations

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

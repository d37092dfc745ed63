"""Collapse check: mean perplexity over ME-PPL-50 (or the project-written general-text set).

Definition (reference ``util/perplexity.py`` of kmeng01/memit, used by RUOE's ``m_ppl``,
SPEC Part C §9.1 / §11.1): a text is tokenized as the tokenizer does by default (a BOS is
included when the tokenizer adds one), truncated to ``max_length`` tokens, and

    ppl(text) = exp( −(1/N) · Σ_{t=1}^{N−1} log p(x_t | x_<t) )

where ``N`` is the number of input tokens **including the first one** (which has no
prediction, so the sum has ``N − 1`` terms — the reference's normalisation, kept as is). The
reported value is the mean over texts of each text's own perplexity (not a token-pooled one).

Truncation: RUOE calls ``perplexity(model, tok, text)`` without ``max_input_length``, i.e. only
the model's own context limit applies; that is our default (``max_length=None`` → the model's
``max_position_embeddings``/``n_positions``). ``max_length=100`` gives the 100-token truncation
the reference uses for CounterFact's essence score. ME-PPL-50 texts are short (≤ ~80 GPT-2
tokens), so the two agree there for GPT-2/Llama-sized vocabularies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edit_runner.errors import DataError
from edit_runner.evaluation.general_text import GENERAL_TEXTS
from edit_runner.models.layout import context_limit
from edit_runner.models.padding import length_sorted_chunks, pad_id_of, right_padded
from edit_runner.models.scoring import encode_texts, forward_logits

ME_PPL_PREFIX = "me_ppl"
FALLBACK_DEFINITION = "general_text_fallback"


@dataclass(frozen=True)
class PerplexityTexts:
    """The texts of the collapse check and which set they are.

    ``definition`` is ``"me_ppl_50"`` for the 50-text ME-PPL file (``"me_ppl_<n>"`` for another
    ME-PPL file of ``n`` records) or ``"general_text_fallback"`` for the project-written set;
    ``source`` is the file path or ``"edit_runner.evaluation.general_text"``.
    """

    definition: str
    source: str
    texts: tuple[str, ...]


@torch.no_grad()
def perplexity_of_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    max_length: int | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Per-text perplexities (definition in the module docstring), batched with right padding.

    Returns ``{"mean_perplexity": float, "per_text": [float, ...], "num_tokens": [int, ...],
    "max_length": int | None}`` where ``max_length`` is the truncation actually applied.
    """
    if not texts:
        raise DataError("perplexity needs at least one text")
    limit = max_length if max_length is not None else context_limit(model)
    encoded = encode_texts(tokenizer, texts)
    for i, ids in enumerate(encoded):
        if not ids:
            raise DataError(f"perplexity text #{i} ({texts[i][:40]!r}) tokenizes to no tokens")
    if limit is not None:
        encoded = [ids[:limit] for ids in encoded]
    pad = pad_id_of(tokenizer)
    per_text: list[float] = [0.0] * len(encoded)
    for chunk in length_sorted_chunks([len(ids) for ids in encoded], batch_size):
        rows = [encoded[i] for i in chunk]
        logits = forward_logits(model, rows, pad)
        ids, mask, _ = right_padded(rows, pad, logits.device)
        if logits.shape[1] > 1:
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None])[..., 0]
            sums = (logprobs * mask[:, 1:]).sum(dim=1).double().cpu().tolist()
        else:
            sums = [0.0] * len(rows)
        for i, row, total in zip(chunk, rows, sums):
            per_text[i] = math.exp(-total / len(row))
    return {
        "mean_perplexity": sum(per_text) / len(per_text),
        "per_text": per_text,
        "num_tokens": [len(ids) for ids in encoded],
        "max_length": limit,
    }


def load_me_ppl(path: str | Path) -> list[str]:
    """Texts of an ME-PPL file: a JSON list of ``{"Corpus": ..., "Text": ...}`` records."""
    file = Path(path)
    if not file.is_file():
        raise DataError(
            f"eval.me_ppl.path: {file} does not exist; download ME-PPL_50.json (Yang et al. 2024, "
            "'The Butterfly Effect of Model Editing') there, or leave eval.me_ppl.path unset to use "
            "the project-written general-text set"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"eval.me_ppl.path: {file} is not valid JSON ({err})") from err
    if not isinstance(data, list) or not data:
        raise DataError(f"eval.me_ppl.path: {file} must hold a non-empty JSON list of {{Corpus, Text}} records")
    texts: list[str] = []
    for i, record in enumerate(data):
        if not isinstance(record, dict) or not isinstance(record.get("Text"), str) or not record["Text"].strip():
            raise DataError(f"eval.me_ppl.path: {file} record #{i} has no non-empty 'Text' field")
        texts.append(record["Text"])
    return texts


def resolve_me_ppl(path: str | Path | None) -> PerplexityTexts:
    """ME-PPL texts from ``path`` when given (a missing file is an error), else the fallback set.

    The returned ``definition`` label says which set was used, so results record it.
    """
    if path is None or str(path) == "":
        return PerplexityTexts(
            definition=FALLBACK_DEFINITION, source="edit_runner.evaluation.general_text", texts=GENERAL_TEXTS
        )
    texts = load_me_ppl(path)
    return PerplexityTexts(definition=f"{ME_PPL_PREFIX}_{len(texts)}", source=str(path), texts=tuple(texts))


def evaluate_perplexity(
    model: torch.nn.Module,
    tokenizer,
    me_ppl_path: str | Path | None = None,
    max_length: int | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """The collapse check as results record it: ``{"perplexity", "perplexity_definition",
    "perplexity_source", "perplexity_max_length", "per_text"}``."""
    chosen = resolve_me_ppl(me_ppl_path)
    result = perplexity_of_texts(model, tokenizer, chosen.texts, max_length=max_length, batch_size=batch_size)
    return {
        "perplexity": result["mean_perplexity"],
        "perplexity_definition": chosen.definition,
        "perplexity_source": chosen.source,
        "perplexity_max_length": result["max_length"],
        "per_text": result["per_text"],
    }

"""Padded batches of token-id rows: the pad id, right padding (teacher-forced scoring), left padding
(generation and next-token reads, where every row must end in the last column).

Both paddings give explicit position ids ``0..len-1`` over each row's real tokens, so a row's
results do not depend on how much padding its batch needs. Rows are batched in length order
(:func:`length_sorted_chunks`) so that a batch needs little padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def pad_id_of(tokenizer: Any) -> int:
    """The id used for padding: the pad token, else EOS, else 0 (pads are masked and never scored)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def length_sorted_chunks(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices into ``lengths`` sorted by length (shortest first), cut into batches of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _padded(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device, left: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        if ids:
            span = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[i, span] = torch.tensor(list(ids), dtype=torch.long)
            mask[i, span] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids.to(device), mask.to(device), positions.to(device)


def right_padded(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)`` of ``rows`` padded on the right with ``pad_id``.

    With right padding no real token of a causal model attends to a pad, so teacher-forced scores
    read at real positions are those of the unpadded row.
    """
    return _padded(rows, pad_id, device, left=False)


def left_padded(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)`` of ``rows`` padded on the left with ``pad_id``.

    Every row ends at the last column, so ``model.generate`` appends each row's new tokens in the
    same column; the attention mask hides the pads.
    """
    return _padded(rows, pad_id, device, left=True)

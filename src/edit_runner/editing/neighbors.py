"""Neighbor selection for NA / NAP (seed 000 App. B.2, SPEC C §9.2)."""

from __future__ import annotations

import dataclasses

import torch

from edit_runner.data.record import EditRecord
from edit_runner.models.scoring import score_targets
from edit_runner.models.tokens import target_token_ids


def select_train_neighbors(
    model: torch.nn.Module,
    tokenizer,
    records: list[EditRecord],
    num_train: int = 1,
    min_qualifying: int = 2,
    batch_size: int = 64,
) -> tuple[list[EditRecord], list[str]]:
    """Keep neighbors the unedited model gets right; split them into training and evaluation neighbors.

    A neighborhood prompt qualifies when the model's greedy continuation is the true object (every
    target token is the teacher-forced argmax). Records with fewer than ``min_qualifying``
    qualifying neighbors are dropped (their case ids are returned); of the rest, the first
    ``num_train`` qualifying neighbors are used for editing and removed from the evaluation set.
    """
    pairs = [(r, n) for r in records for n in r.neighborhood if n.subject is not None]
    scores = score_targets(
        model, tokenizer, [n.prompt for _, n in pairs], [target_token_ids(tokenizer, n.target) for _, n in pairs], batch_size
    )
    qualifying: dict[str, list] = {r.case_id: [] for r in records}
    for (record, neighbor), score in zip(pairs, scores):
        if score.all_argmax:
            qualifying[record.case_id].append(neighbor)
    kept, dropped = [], []
    for record in records:
        good = qualifying[record.case_id]
        if len(good) < min_qualifying:
            dropped.append(record.case_id)
            continue
        train = tuple(good[:num_train])
        evaluation = tuple(n for n in record.neighborhood if n not in train)
        kept.append(dataclasses.replace(record, train_neighbors=train, neighborhood=evaluation))
    return kept, dropped

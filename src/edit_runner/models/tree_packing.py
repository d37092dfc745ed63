"""Prefix-tree packing: many token sequences in a few rows, every shared prefix run once.

Teacher-forced scoring needs the logits after given prefixes of many sequences, and CounterFact's
sequences share long prefixes (the same prompt with ``target_new`` and ``target_true``; templates
shared by neighbourhood prompts; records repeated across a run). The sequences are put, in
lexicographic order, into rows of at most ``capacity`` tokens; inside a row they form a prefix
tree whose every node is one token, fed once. A node's position id is its depth and it attends
to exactly its ancestors and itself (a 4D attention mask), so its hidden states are those of the
unpacked sequence — which is why the order of the nodes in a row does not matter, and the nodes
whose logits are read are put in the row's last columns (only those go through the LM head).

Shapes: a packed batch of ``B`` rows has ``input_ids`` / ``position_ids`` ``(B, W)`` and
``attention_mask`` ``(B, 1, W, W)`` (bool, True = attend: the SDPA convention); pad columns
come first and attend only to themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PackedRow:
    """One row of a prefix tree: node tokens, each node's parent (``-1`` at a root), and which nodes are read."""

    tokens: list[int]
    parents: list[int]
    read: list[bool]

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class PackedLayout:
    """Where every sequence went: ``rows`` of nodes, and per sequence its row and the node of each of its prefixes.

    ``paths[s][k]`` is the node (index into its row) holding the prefix of length ``k + 1`` of sequence ``s``.
    """

    rows: list[PackedRow]
    row_of: list[int]
    paths: list[list[int]]


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def pack_prefix_trees(sequences: Sequence[Sequence[int]], reads: Sequence[Sequence[int]], capacity: int) -> PackedLayout:
    """Pack non-empty ``sequences`` into prefix-tree rows of at most ``capacity`` nodes.

    ``reads[s]`` lists the prefix lengths of sequence ``s`` whose last-token logits are wanted.
    A row never exceeds ``capacity`` nodes unless one sequence alone is longer. In lexicographic
    order a sequence shares with the row exactly its common prefix with the previous sequence,
    so each node is found in O(1) and the whole packing is linear in the tokens.
    """
    if len(sequences) != len(reads):
        raise ValueError(f"{len(sequences)} sequences but {len(reads)} read lists")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("cannot pack an empty sequence")
    order = sorted(range(len(sequences)), key=lambda s: tuple(sequences[s]))
    rows: list[PackedRow] = []
    row_of = [0] * len(sequences)
    paths: list[list[int]] = [[] for _ in sequences]
    previous: Sequence[int] = ()
    previous_path: list[int] = []
    for s in order:
        seq = sequences[s]
        shared = _common_prefix_length(previous, seq) if rows else 0
        if not rows or len(rows[-1]) + len(seq) - shared > capacity:
            rows.append(PackedRow(tokens=[], parents=[], read=[]))
            shared = 0
        row = rows[-1]
        path = previous_path[:shared]
        for token in seq[shared:]:
            row.parents.append(path[-1] if path else -1)
            row.tokens.append(int(token))
            row.read.append(False)
            path.append(len(row.tokens) - 1)
        for length in reads[s]:
            row.read[path[length - 1]] = True
        row_of[s], paths[s] = len(rows) - 1, path
        previous, previous_path = seq, path
    return PackedLayout(rows=rows, row_of=row_of, paths=paths)


def row_batches(layout: PackedLayout, tokens_per_batch: int) -> list[list[int]]:
    """Row indices cut into consecutive batches of at most ``tokens_per_batch`` padded tokens (at least one row each)."""
    batches: list[list[int]] = []
    width = 0
    for r, row in enumerate(layout.rows):
        wider = max(width, len(row))
        if batches and wider * (len(batches[-1]) + 1) <= tokens_per_batch:
            batches[-1].append(r)
            width = wider
        else:
            batches.append([r])
            width = len(row)
    return batches


@dataclass(frozen=True)
class PackedBatch:
    """Model inputs of a batch of rows and the column of every node (``columns[b][node]``).

    Read nodes occupy each row's last columns, so the last ``keep`` columns hold all of them.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    columns: list[list[int]]
    keep: int


def packed_batch(rows: Sequence[PackedRow], pad_id: int, device: torch.device) -> PackedBatch:
    """Inputs for ``rows``: pad columns first, then unread nodes, then read nodes; ancestor-only attention."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask_b: list[int] = []
    mask_q: list[int] = []
    mask_k: list[int] = []
    columns: list[list[int]] = []
    keep = 1
    for b, row in enumerate(rows):
        n = len(row)
        unread = [i for i in range(n) if not row.read[i]]
        read = [i for i in range(n) if row.read[i]]
        keep = max(keep, len(read))
        column = [0] * n
        for c, node in enumerate(unread + read, start=width - n):
            column[node] = c
        ancestors: list[list[int]] = []
        depth: list[int] = []
        for node in range(n):  # parents are created before their children
            parent = row.parents[node]
            ancestors.append((ancestors[parent] if parent >= 0 else []) + [column[node]])
            depth.append(depth[parent] + 1 if parent >= 0 else 0)
            mask_b.extend([b] * len(ancestors[node]))
            mask_q.extend([column[node]] * len(ancestors[node]))
            mask_k.extend(ancestors[node])
        for c in range(width - n):  # pads attend to themselves only (no empty softmax row)
            mask_b.append(b)
            mask_q.append(c)
            mask_k.append(c)
        input_ids[b, column] = torch.tensor(row.tokens, dtype=torch.long)
        position_ids[b, column] = torch.tensor(depth, dtype=torch.long)
        columns.append(column)
    mask = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    mask[torch.tensor(mask_b), 0, torch.tensor(mask_q), torch.tensor(mask_k)] = True
    return PackedBatch(
        input_ids=input_ids.to(device),
        position_ids=position_ids.to(device),
        attention_mask=mask.to(device),
        columns=columns,
        keep=keep,
    )

"""The one batched target scorer of metrics and editing checks: teacher-forced log-probs and argmax flags.

Given ``(prompt text, target token ids)`` pairs, each prompt is tokenized as the tokenizer does
by default (special tokens included, so a BOS-adding tokenizer such as Llama's gets its BOS),
the target ids are appended, and the sequences are scored in batches with explicit position
ids. For target token ``j`` of a pair with prompt length ``P`` the prediction is read at
position ``P + j - 1`` (teacher forcing), exactly as ``test_batch_prediction`` of kmeng01/memit
does (SPEC Part C §11.1). The last target token is never fed.

Two batchings, the same numbers (up to float32 summation order):

* **prefix-tree packing** (:mod:`edit_runner.models.tree_packing`) where the architecture and
  attention implementation take a custom 4D mask (:func:`tree_mask_form`): every distinct prefix
  of the needed sequences is one token of one row, run once — the prompt shared by
  ``target_new`` and ``target_true``, a template shared by neighbourhood prompts, a prompt
  repeated across records;
* otherwise **length-sorted left-padded batches** of the distinct sequences, a sequence that is a
  prefix of another read from the longer one (:func:`shared_sequences`).

Either way only the positions that are read go through the LM head, and the only Python loop
around forward passes is the loop over batches. :func:`next_token_logprobs` is the single-token
case for many candidate tokens after one prefix (downstream label words).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from edit_runner.errors import DataError
from edit_runner.models.devices import input_device, module_device
from edit_runner.models.layout import LAYOUTS
from edit_runner.models.padding import left_padded, length_sorted_chunks, pad_id_of, right_padded
from edit_runner.models.tree_packing import pack_prefix_trees, packed_batch, row_batches


@dataclass(frozen=True)
class TargetScore:
    """Teacher-forced scores of one target continuation after one prompt.

    ``token_logprobs[j]`` is ``log p(target_j | prompt, target_<j)``; ``argmax_ids[j]`` is the
    model's argmax token at that position and ``is_argmax[j]`` whether it equals ``target_j``.
    """

    token_logprobs: tuple[float, ...]
    argmax_ids: tuple[int, ...]
    is_argmax: tuple[bool, ...]

    @property
    def mean_logprob(self) -> float:
        """Per-token mean log-probability of the target."""
        return sum(self.token_logprobs) / len(self.token_logprobs)

    @property
    def mean_nll(self) -> float:
        """Per-token mean negative log-likelihood (the NLL of MEMIT's ``test_batch_prediction``)."""
        return -self.mean_logprob

    @property
    def mean_prob(self) -> float:
        """Per-token geometric-mean probability ``exp(-mean_nll)`` (used by the magnitudes)."""
        return math.exp(self.mean_logprob)

    @property
    def all_argmax(self) -> bool:
        """True when every target token is the teacher-forced argmax (MEMIT's ``*_correct``)."""
        return all(self.is_argmax)

    @property
    def token_accuracy(self) -> float:
        """Fraction of target tokens that are the teacher-forced argmax (zsRE / EasyEdit accuracy)."""
        return sum(self.is_argmax) / len(self.is_argmax)


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text with the special tokens the tokenizer adds by default (e.g. a BOS)."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [list(map(int, ids)) for ids in encoded]


def _logits_to_keep_kwarg(model: torch.nn.Module) -> str | None:
    """The forward argument that limits the LM head to the last positions (its name changed in transformers 4.50)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in ("logits_to_keep", "num_logits_to_keep") if name in params), None)


def forward_logits(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    first_position: int = 0,
) -> torch.Tensor:
    """Run one right-padded batch and return logits for positions ``first_position..width-1``.

    Position ids are explicit (``0..len-1`` per row); with right padding no real token attends
    to a pad, so results do not depend on the batch composition. When the model accepts
    ``logits_to_keep`` only the needed positions go through the LM head.
    """
    device = input_device(model)
    input_ids, mask, positions = right_padded(rows, pad_id, device)
    kwargs: dict[str, object] = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
    keep_from = max(0, first_position)
    keep_kwarg = _logits_to_keep_kwarg(model) if keep_from > 0 else None
    if keep_kwarg is not None:
        count = input_ids.shape[1] - keep_from
        # the index form keeps exactly the numbers of a full LM-head pass; older releases take a count
        kwargs[keep_kwarg] = torch.arange(keep_from, input_ids.shape[1], device=module_device(model.get_output_embeddings())) if keep_kwarg == "logits_to_keep" else count
        return model(**kwargs).logits
    return model(**kwargs).logits[:, keep_from:]


def last_token_logits(model: torch.nn.Module, rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Logits after every row's last token, ``(rows, vocab)``, from one left-padded pass.

    Left padding puts every row's last token in the last column, so only that column goes through
    the LM head; explicit position ids (``0..len-1`` over the real tokens) and the attention mask
    make each row's result that of the unpadded row.
    """
    device = input_device(model)
    input_ids, mask, positions = left_padded(rows, pad_id, device)
    kwargs: dict[str, object] = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
    keep_kwarg = _logits_to_keep_kwarg(model)
    if keep_kwarg is not None:
        kwargs[keep_kwarg] = 1
    return model(**kwargs).logits[:, -1]


def _check_non_empty(prefixes: Sequence[Sequence[int]]) -> None:
    if not all(prefixes):
        raise DataError("a prompt tokenizes to no tokens and the tokenizer adds no BOS; give a non-empty prompt")


def shared_sequences(prefixes: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> tuple[list[tuple[int, ...]], list[int]]:
    """The sequences to run and, per pair, which one holds its predictions.

    Pair ``i`` needs the logits after ``prefixes[i] + targets[i][:-1]`` (the last target token is
    only predicted, never fed). In a causal LM the logits along a sequence are those of every
    prefix of it, so a needed sequence that is a prefix of another (e.g. the same prompt with a
    one-token and a longer target, or a prompt repeated across records) is read from the longer
    one. In lexicographic order every sequence that starts with ``x`` directly follows ``x``, so
    each one's holder is found from its successor.
    """
    needed = [tuple(p) + tuple(t[:-1]) for p, t in zip(prefixes, targets)]
    ordered = sorted(set(needed))
    holder = list(range(len(ordered)))
    for k in range(len(ordered) - 2, -1, -1):
        following = ordered[k + 1]
        if following[: len(ordered[k])] == ordered[k]:
            holder[k] = holder[k + 1]
    kept = sorted(set(holder))
    renumber = {old: new for new, old in enumerate(kept)}
    slot = {seq: renumber[holder[k]] for k, seq in enumerate(ordered)}
    return [ordered[k] for k in kept], [slot[seq] for seq in needed]


#: Nodes per packed row (a longer sequence gets a row of its own length): small enough that the
#: attention over a row costs a few percent of the projections, large enough to share prefixes.
ROW_CAPACITY = 128
#: Padded tokens per packed forward pass per unit of ``batch_size`` (64 → 1,024 tokens, about what
#: 64 left-padded CounterFact sequences hold).
TOKENS_PER_SEQUENCE = 16
#: Attention implementations that take a custom 4D mask, and the mask form each expects.
TREE_MASK_FORMS: dict[str, str] = {"sdpa": "bool", "eager": "additive"}


def tree_mask_form(model: torch.nn.Module, longest: int) -> str | None:
    """How ``model`` takes a prefix-tree attention mask (``"bool"`` / ``"additive"``), or ``None`` when it cannot.

    Packing needs an architecture whose custom 4D masks are verified (the families of
    :data:`~edit_runner.models.layout.LAYOUTS`, tested one by one), an attention implementation
    that takes such a mask (SDPA or eager; flash-attention does not), and no sliding window
    shorter than the longest sequence (the tree mask would not apply it).
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in LAYOUTS:
        return None
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < longest:
        return None
    return TREE_MASK_FORMS.get(str(getattr(config, "_attn_implementation", None)))


Batch = tuple[torch.Tensor, list[int], list[int], list[int]]


def _padded_batches(
    model: torch.nn.Module, prefixes: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], batch_size: int, pad_id: int
) -> Iterator[Batch]:
    """Length-sorted left-padded batches of the distinct sequences (:func:`shared_sequences`).

    Yields ``(logits, row, column, owners)``: for every target token of the pairs ``owners`` (in
    that order) the logits row and column that predict it.
    """
    sequences, holder = shared_sequences(prefixes, targets)
    readers: list[list[int]] = [[] for _ in sequences]
    for i, s in enumerate(holder):
        readers[s].append(i)
    device = input_device(model)
    keep_kwarg = _logits_to_keep_kwarg(model)
    for chunk in length_sorted_chunks([len(s) for s in sequences], batch_size):
        # per target token: batch row and distance of its predicting position from the row's end
        row_index, back, owners = [], [], []
        for r, s in enumerate(chunk):
            for i in readers[s]:
                start = len(prefixes[i]) - 1  # position that predicts target token 0
                row_index.extend([r] * len(targets[i]))
                back.extend(len(sequences[s]) - start - j for j in range(len(targets[i])))
                owners.append(i)
        keep = max(back)
        input_ids, mask, positions = left_padded([sequences[s] for s in chunk], pad_id, device)
        kwargs: dict[str, object] = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
        if keep_kwarg is not None:
            kwargs[keep_kwarg] = keep
        yield model(**kwargs).logits[:, -keep:], row_index, [keep - b for b in back], owners


def _packed_batches(
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    mask_form: str,
) -> Iterator[Batch]:
    """Prefix-tree packed batches (:mod:`edit_runner.models.tree_packing`); yields as :func:`_padded_batches`."""
    needed = [tuple(p) + tuple(t[:-1]) for p, t in zip(prefixes, targets)]
    distinct = list(dict.fromkeys(needed))
    number = {seq: k for k, seq in enumerate(distinct)}
    readers: list[list[int]] = [[] for _ in distinct]
    reads: list[set[int]] = [set() for _ in distinct]
    for i, seq in enumerate(needed):
        k = number[seq]
        readers[k].append(i)
        reads[k].update(range(len(prefixes[i]), len(prefixes[i]) + len(targets[i])))
    layout = pack_prefix_trees(distinct, [sorted(r) for r in reads], max(ROW_CAPACITY, *map(len, distinct)))
    in_row: list[list[int]] = [[] for _ in layout.rows]
    for k, r in enumerate(layout.row_of):
        in_row[r].append(k)
    device = input_device(model)
    keep_kwarg = _logits_to_keep_kwarg(model)
    dtype = model.get_input_embeddings().weight.dtype
    for batch in row_batches(layout, batch_size * TOKENS_PER_SEQUENCE):
        packed = packed_batch([layout.rows[r] for r in batch], pad_id, device)
        mask = packed.attention_mask
        if mask_form == "additive":
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
        kwargs: dict[str, object] = {"input_ids": packed.input_ids, "attention_mask": mask, "position_ids": packed.position_ids}
        if keep_kwarg is not None:
            kwargs[keep_kwarg] = packed.keep
        first_kept = packed.input_ids.shape[1] - packed.keep
        row_index, column, owners = [], [], []
        for b, r in enumerate(batch):
            for k in in_row[r]:
                path = layout.paths[k]
                for i in readers[k]:
                    nodes = path[len(prefixes[i]) - 1 : len(prefixes[i]) - 1 + len(targets[i])]
                    row_index.extend([b] * len(nodes))
                    column.extend(packed.columns[b][node] - first_kept for node in nodes)
                    owners.append(i)
        yield model(**kwargs).logits[:, -packed.keep :], row_index, column, owners


@torch.no_grad()
def score_token_sequences(
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    batch_size: int = 64,
    pad_id: int = 0,
) -> list[TargetScore]:
    """Teacher-forced scores of ``targets[i]`` appended to the token ids ``prefixes[i]``.

    Every prefix must be non-empty (the first target token needs a position to be predicted
    from) and every target non-empty. Shared work runs once: prefix-tree packed rows of at most
    :data:`ROW_CAPACITY` tokens, ``batch_size`` × :data:`TOKENS_PER_SEQUENCE` tokens per forward,
    where the model takes tree masks; else left-padded length-sorted batches of at most
    ``batch_size`` distinct sequences. Only the read positions go through the LM head.
    """
    if len(prefixes) != len(targets):
        raise ValueError(f"{len(prefixes)} prefixes but {len(targets)} targets")
    _check_non_empty(prefixes)
    if not all(targets):
        raise DataError("a target has no tokens; give a non-empty target")
    if not prefixes:
        return []
    results: list[TargetScore | None] = [None] * len(prefixes)
    mask_form = tree_mask_form(model, max(len(p) + len(t) - 1 for p, t in zip(prefixes, targets)))
    if mask_form is None:
        batches = _padded_batches(model, prefixes, targets, batch_size, pad_id)
    else:
        batches = _packed_batches(model, prefixes, targets, batch_size, pad_id, mask_form)
    for logits, row_index, column, owners in batches:
        selected = logits[torch.tensor(row_index, device=logits.device), torch.tensor(column, device=logits.device)].float()
        token_ids = [token for i in owners for token in targets[i]]
        wanted = torch.tensor(token_ids, device=logits.device)
        logprobs = torch.log_softmax(selected, dim=-1).gather(1, wanted[:, None])[:, 0]
        argmax = selected.argmax(dim=-1)
        flat_lp, flat_arg = logprobs.cpu().tolist(), argmax.cpu().tolist()
        offset = 0
        for i in owners:
            t = len(targets[i])
            ids = tuple(int(a) for a in flat_arg[offset : offset + t])
            results[i] = TargetScore(
                token_logprobs=tuple(flat_lp[offset : offset + t]),
                argmax_ids=ids,
                is_argmax=tuple(a == b for a, b in zip(ids, targets[i])),
            )
            offset += t
    return [r for r in results if r is not None]


def score_targets(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[Sequence[int]],
    batch_size: int = 64,
) -> list[TargetScore]:
    """Score each ``(prompts[i], targets[i])`` pair: prompt tokenized with the tokenizer's special
    tokens (BOS where it adds one), target token ids appended, teacher-forced log-probs and argmax
    flags read per target token. Use :func:`edit_runner.models.tokens.target_token_ids` for targets.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    unique = list(dict.fromkeys(prompts))
    encoded = dict(zip(unique, encode_texts(tokenizer, unique)))
    for prompt in unique:
        if not encoded[prompt]:
            raise DataError(
                f"prompt {prompt!r} tokenizes to no tokens and the tokenizer adds no BOS; give a non-empty prompt"
            )
    return score_token_sequences(
        model, [encoded[p] for p in prompts], targets, batch_size=batch_size, pad_id=pad_id_of(tokenizer)
    )


@torch.no_grad()
def greedy_next_tokens(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    n: int,
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy continuation (``n`` new token ids) of every prompt, in batches (:func:`last_token_logits`).

    No KV cache: each of the ``n`` steps re-runs the batch and appends each row's argmax. Meant for
    short continuations (checking facts, pre-edit predictions).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    encoded = encode_texts(tokenizer, prompts)
    for prompt, ids in zip(prompts, encoded):
        if not ids:
            raise DataError(f"prompt {prompt!r} tokenizes to no tokens; give a non-empty prompt")
    pad = pad_id_of(tokenizer)
    results: list[list[int]] = [[] for _ in prompts]
    if n == 0:
        return results
    for chunk in length_sorted_chunks([len(ids) for ids in encoded], batch_size):
        rows = [list(encoded[i]) for i in chunk]
        for _ in range(n):
            picks = last_token_logits(model, rows, pad).argmax(dim=-1).cpu().tolist()
            for r, token in zip(rows, picks):
                r.append(int(token))
        for i, r in zip(chunk, rows):
            results[i] = r[len(encoded[i]) :]
    return results


@torch.no_grad()
def next_token_logprobs(
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]],
    token_ids: Sequence[int],
    batch_size: int = 64,
    pad_id: int = 0,
) -> torch.Tensor:
    """``log p(token_ids[k] | prefixes[i])`` as a float64 ``(len(prefixes), len(token_ids))`` tensor.

    The single-token case of :func:`score_token_sequences` for several candidate tokens after the
    same prefix: one pass per batch of prefixes (:func:`last_token_logits`) scores every candidate.
    """
    _check_non_empty(prefixes)
    out = torch.zeros((len(prefixes), len(token_ids)), dtype=torch.float64)
    if not prefixes or not token_ids:
        return out
    for chunk in length_sorted_chunks([len(p) for p in prefixes], batch_size):
        logits = last_token_logits(model, [prefixes[i] for i in chunk], pad_id)
        wanted = torch.tensor(list(token_ids), device=logits.device)
        out[torch.tensor(chunk)] = torch.log_softmax(logits.float(), dim=-1)[:, wanted].double().cpu()
    return out

"""Prefix-tree packing: the layout against a slow walk of the trie, and the packed scorer against
unpacked forward passes on every registered architecture (SDPA and eager attention)."""

from __future__ import annotations

import random

import pytest
import torch
import transformers

from edit_runner.models import scoring
from edit_runner.models.layout import LAYOUTS
from edit_runner.models.scoring import score_token_sequences, tree_mask_form
from edit_runner.models.tree_packing import PackedRow, pack_prefix_trees, packed_batch, row_batches

SEQUENCES = [[5, 6, 7, 8], [5, 6, 7, 9, 10], [5, 6], [11, 12, 13], [5, 20, 21], [11, 12, 13, 14], [5, 6, 7, 8]]


def random_pairs(seed: int, count: int, vocab: int = 90) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts drawn from a few shared stems (so that prefixes are shared) with 1-3 token targets."""
    rng = random.Random(seed)
    stems = [[rng.randrange(1, vocab) for _ in range(rng.randint(1, 6))] for _ in range(4)]
    prefixes, targets = [], []
    for _ in range(count):
        prefixes.append(rng.choice(stems) + [rng.randrange(1, vocab) for _ in range(rng.randint(0, 4))])
        targets.append([rng.randrange(1, vocab) for _ in range(rng.randint(1, 3))])
    prefixes += prefixes[:3]  # repeated pairs and a prompt scored with a second target
    targets += targets[:2] + [targets[5]]
    return prefixes, targets


def tiny_model(model_type: str, attention: str) -> torch.nn.Module:
    config = transformers.AutoConfig.for_model(
        model_type,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        n_positions=64,
        rotary_dim=4,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config._attn_implementation = attention
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@torch.no_grad()
def unpacked_scores(model: torch.nn.Module, prefix: list[int], target: list[int]) -> tuple[list[float], list[int]]:
    """Log-probs and argmax ids of ``target`` after ``prefix``: one forward of the bare sequence."""
    ids = torch.tensor([prefix + target])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    rows = logprobs[len(prefix) - 1 : len(prefix) + len(target) - 1]
    return rows.gather(1, torch.tensor(target)[:, None])[:, 0].tolist(), rows.argmax(dim=-1).tolist()


def prefix_of(row: PackedRow, node: int) -> tuple[int, ...]:
    """The tokens from the root of ``row``'s tree down to ``node``, walked through the parents."""
    return () if node < 0 else prefix_of(row, row.parents[node]) + (row.tokens[node],)


def test_layout_holds_every_prefix_once_per_row_and_respects_capacity() -> None:
    reads = [[len(s)] for s in SEQUENCES]
    wide = pack_prefix_trees(SEQUENCES, reads, capacity=100)
    distinct_prefixes = {tuple(s[:k]) for s in SEQUENCES for k in range(1, len(s) + 1)}
    assert len(wide.rows) == 1 and len(wide.rows[0]) == len(distinct_prefixes) == 12
    narrow = pack_prefix_trees(SEQUENCES, reads, capacity=6)
    assert all(len(row) <= 6 for row in narrow.rows) and len(narrow.rows) > 1
    for layout in (wide, narrow):
        for s, seq in enumerate(SEQUENCES):
            row, path = layout.rows[layout.row_of[s]], layout.paths[s]
            assert [row.tokens[node] for node in path] == seq
            assert [row.parents[node] for node in path] == [-1] + path[:-1]
            assert row.read[path[-1]]
        for row in layout.rows:  # nodes of one row are distinct prefixes
            assert len({prefix_of(row, n) for n in range(len(row))}) == len(row)
    with pytest.raises(ValueError, match="empty"):
        pack_prefix_trees([[1], []], [[1], []], capacity=4)


def test_packed_batch_mask_is_the_ancestor_relation() -> None:
    layout = pack_prefix_trees(SEQUENCES, [[2, len(s)] for s in SEQUENCES], capacity=8)
    rows = layout.rows
    batch = packed_batch(rows, pad_id=0, device=torch.device("cpu"))
    width = batch.input_ids.shape[1]
    for b, row in enumerate(rows):
        column = batch.columns[b]
        pads = width - len(row)
        read_columns = sorted(column[n] for n in range(len(row)) if row.read[n])
        assert read_columns == list(range(width - len(read_columns), width)) and len(read_columns) <= batch.keep
        for node in range(len(row)):
            ancestors, depth, walk = {node}, 0, row.parents[node]
            while walk >= 0:
                ancestors.add(walk)
                walk, depth = row.parents[walk], depth + 1
            attended = batch.attention_mask[b, 0, column[node]].nonzero()[:, 0].tolist()
            assert sorted(attended) == sorted(column[a] for a in ancestors)
            assert batch.position_ids[b, column[node]] == depth
            assert batch.input_ids[b, column[node]] == row.tokens[node]
        for c in range(pads):
            assert batch.attention_mask[b, 0, c].nonzero()[:, 0].tolist() == [c]
    batches = row_batches(layout, tokens_per_batch=16)
    assert sorted(r for group in batches for r in group) == list(range(len(rows)))
    assert all(len(g) == 1 or max(len(rows[r]) for r in g) * len(g) <= 16 for g in batches)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", LAYOUTS.names())
def test_packed_scores_equal_unpacked_forward_passes(model_type: str, attention: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(model_type, attention)
    prefixes, targets = random_pairs(seed=len(model_type), count=40)
    assert tree_mask_form(model, longest=12) == scoring.TREE_MASK_FORMS[attention]
    monkeypatch.setattr(scoring, "ROW_CAPACITY", 24)  # several rows, several batches
    packed = score_token_sequences(model, prefixes, targets, batch_size=2)
    monkeypatch.setattr(scoring, "TREE_MASK_FORMS", {})
    assert tree_mask_form(model, longest=12) is None
    padded = score_token_sequences(model, prefixes, targets, batch_size=5)
    for prefix, target, a, b in zip(prefixes, targets, packed, padded):
        logprobs, argmax = unpacked_scores(model, prefix, target)
        assert a.token_logprobs == pytest.approx(logprobs, abs=2e-6)
        assert b.token_logprobs == pytest.approx(logprobs, abs=2e-6)
        assert list(a.argmax_ids) == argmax == list(b.argmax_ids)


def test_tree_masks_are_refused_where_they_would_be_wrong() -> None:
    model = tiny_model("mistral", "sdpa")
    model.config.sliding_window = 8
    assert tree_mask_form(model, longest=8) == "bool"
    assert tree_mask_form(model, longest=9) is None  # the tree mask would not apply the window
    model.config._attn_implementation = "flash_attention_2"
    assert tree_mask_form(model, longest=4) is None
    assert tree_mask_form(torch.nn.Linear(2, 2), longest=4) is None


def test_packing_feeds_each_distinct_prefix_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With one row holding them all, the model is fed every distinct prefix of the needed sequences once."""
    model = tiny_model("llama", "sdpa")
    prefixes, targets = random_pairs(seed=3, count=30)
    fed: list[tuple[int, ...]] = []
    forward = model.forward

    def counting_forward(*args, **kwargs):
        fed.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting_forward)
    monkeypatch.setattr(scoring, "ROW_CAPACITY", 10_000)
    score_token_sequences(model, prefixes, targets, batch_size=10_000)
    needed = [tuple(p) + tuple(t[:-1]) for p, t in zip(prefixes, targets)]
    distinct = {s[:k] for s in needed for k in range(1, len(s) + 1)}
    assert fed == [(1, len(distinct))]
    assert len(distinct) < sum(map(len, set(needed)))  # sharing happened

"""Issue 11 §3: the optimization stage's prefix-cache and lower-block paths equal the full pass.

δ is added at each row's subject-last token, so in a causal LM nothing before that token depends on
it; :class:`~edit_runner.editing.targets._StepPass` runs the tokens before it once into a KV cache
and every Adam step only on the rest. These tests run the same optimization both ways (GPT-2 Conv1D
layout with learned positions, Llama layout with RoPE) with neighbour rows, MPES and PMET's two
sites, and check z, the steps and the NLLs agree to float tolerance; and that a model whose forward
has no cache argument falls back to the full pass. The blocks below the sites do not depend on δ
either (:mod:`edit_runner.models.partial_forward`): replaying their output gives the same z.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from edit_runner.data.record import EditRecord, NeighborPrompt
from edit_runner.editing.targets import OptimizationSettings, _StepPass, optimize_targets, rewrite_rows
from edit_runner.editing.wrappers.mpes import MPESRule
from edit_runner.editing.wrappers.neighbor import NeighborRows
from edit_runner.models.partial_forward import cut_block, lower_block_cache
from edit_runner.models.tokens import encode_prompts
from editing_helpers import MEMIT_TEMPLATES

STORY_RECORDS = [
    EditRecord("s0", "Lily", "{} liked to eat", "cake", "apples", train_neighbors=(NeighborPrompt("Sue liked to eat", "apples", "Sue"),)),
    EditRecord("s1", "Mia", "{} wanted to play with her", "ball", "doll", train_neighbors=(NeighborPrompt("Ann wanted to play with her", "doll", "Ann"),)),
    EditRecord("s2", "the big dog", "One day, {} saw a", "bird", "cat", train_neighbors=(NeighborPrompt("One day, the cat saw a", "cat", "the cat"),)),
]
GPT2_RECORDS = [
    EditRecord(
        "g0",
        "Danielle Darrieux",
        "The mother tongue of {} is",
        "English",
        "French",
        train_neighbors=(
            NeighborPrompt("The native language of Michel Rocard is", "French", "Michel Rocard"),
            NeighborPrompt("Jean Gabin, a native speaker of", "French", "Jean Gabin"),
        ),
    ),
    EditRecord("g1", "Paris", "{} is the capital of", "Italy", "France", train_neighbors=(NeighborPrompt("Lyon is a city in", "France", "Lyon"),)),
]


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    """Run this module's tiny-model tests on one thread."""


def settings_for(sites: tuple[str, ...], num_steps: int, **kw) -> OptimizationSettings:
    """MEMIT's optimization settings (large clamp so the tiny models move)."""
    values = {"lr": 0.5, "weight_decay": 0.5, "clamp_norm_factor": 4.0, "kl_factor": 0.0625}
    values.update(kw)
    return OptimizationSettings(sites=sites, num_steps=num_steps, **values)


def both_paths(loaded, records, settings, **kw):
    """The same optimization with the prefix cache and with the full pass every step."""
    cached = optimize_targets(loaded.model, loaded.tokenizer, records, MEMIT_TEMPLATES, settings, **kw)
    plain = dataclasses.replace(settings, reuse_prefix=False, reuse_lower=False)
    full = optimize_targets(loaded.model, loaded.tokenizer, records, MEMIT_TEMPLATES, plain, **kw)
    return cached, full


def assert_same(cached, full, sites, tol: float = 1e-4) -> None:
    """z, δ, steps and NLLs agree (z relative to its norm)."""
    assert cached.steps.tolist() == full.steps.tolist()
    for site in sites:
        scale = full.z[site].norm(dim=0).max()
        assert float((cached.z[site] - full.z[site]).abs().max() / scale) < tol
        assert float((cached.h_init[site] - full.h_init[site]).abs().max() / scale) < 1e-5
    assert torch.allclose(cached.init_nll, full.init_nll, atol=1e-5, rtol=1e-5)
    assert torch.allclose(cached.final_nll, full.final_nll, atol=1e-4, rtol=1e-4)


def test_step_pass_reproduces_the_full_hidden_states_from_the_subject_on(tiny_gpt2, stories260k):
    for loaded, records in ((tiny_gpt2, GPT2_RECORDS), (stories260k, STORY_RECORDS)):
        rows = rewrite_rows(records, MEMIT_TEMPLATES, loaded.tokenizer) + NeighborRows(True, False).rows(records, MEMIT_TEMPLATES, loaded.tokenizer)
        batch = encode_prompts(loaded.tokenizer, [r.prompt for r in rows], [list(r.target[:-1]) for r in rows])
        assert len(set(batch.subject_last.tolist())) > 1  # variable prefix lengths
        step = _StepPass(loaded.model.base_model, batch, reuse_prefix=True)
        assert step.prefix_cache is not None
        with torch.no_grad():
            full = loaded.model.base_model(**batch.model_inputs()).last_hidden_state
            first, second = step.hidden(), step.hidden()  # the cache does not grow across steps
        assert torch.equal(first, second)
        for i in range(len(rows)):
            start, stop = int(batch.subject_last[i]), int(batch.lengths[i])
            assert torch.allclose(first[i, : stop - start], full[i, start:stop], atol=1e-5), f"row {i}"


def test_cached_equals_full_pass_gpt2_with_neighbor_rows(tiny_gpt2):
    site = tiny_gpt2.layout.layer(2)
    cached, full = both_paths(tiny_gpt2, GPT2_RECORDS, settings_for((site,), 8), extra_rows=(NeighborRows(True, False),))
    assert_same(cached, full, (site,))
    assert float(cached.delta[site].norm()) > 0


def test_cached_equals_full_pass_llama_with_pooled_neighbors_and_mpes(stories260k):
    site = stories260k.layout.layer(2)
    settings = settings_for((site,), 25, pooled_neighbors=True)
    cached, full = both_paths(stories260k, STORY_RECORDS, settings, extra_rows=(NeighborRows(True, True),), stop_rules=(MPESRule(-2),))
    assert_same(cached, full, (site,))
    assert (cached.steps < 24).any()  # MPES stopped some record early, identically on both paths
    assert float((cached.final_nll - cached.init_nll).max()) < 0


def test_cached_equals_full_pass_llama_two_sites_pmet_rule(stories260k):
    layout = stories260k.layout
    sites = (layout.attn.format(2), layout.mlp.format(2))
    cached, full = both_paths(stories260k, STORY_RECORDS[:2], settings_for(sites, 10, pmet_rule=True))
    assert_same(cached, full, sites)


def test_records_that_stop_leave_the_batch_without_changing_the_others(stories260k):
    """Optimizing records together (MPES stops them at different steps, their rows are dropped) equals
    optimizing each alone."""
    site = stories260k.layout.layer(2)
    settings = settings_for((site,), 25)
    rule = (MPESRule(-1),)
    together = optimize_targets(stories260k.model, stories260k.tokenizer, STORY_RECORDS, MEMIT_TEMPLATES, settings, stop_rules=rule)
    assert len(set(together.steps.tolist())) > 1
    for r, record in enumerate(STORY_RECORDS):
        alone = optimize_targets(stories260k.model, stories260k.tokenizer, [record], MEMIT_TEMPLATES, settings, stop_rules=rule)
        assert int(alone.steps[0]) == int(together.steps[r])
        scale = float(alone.z[site].norm())
        assert float((alone.z[site][:, 0] - together.z[site][:, r]).abs().max()) / scale < 1e-4
        assert abs(float(alone.final_nll[0] - together.final_nll[r])) < 1e-4


class _NoCacheBase(nn.Module):
    """A base model whose forward takes no cache argument."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


class _NoCacheLM(nn.Module):
    """A GPT-2 LM seen through :class:`_NoCacheBase` (same weights, same module names)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.transformer = lm.transformer
        self.lm_head = lm.lm_head
        self.config = lm.config
        self.base_model = _NoCacheBase(lm.transformer)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


def test_model_without_cache_argument_falls_back_to_the_full_pass(tiny_gpt2):
    site = tiny_gpt2.layout.layer(1)
    wrapped = _NoCacheLM(tiny_gpt2.model)
    rows = rewrite_rows(GPT2_RECORDS, MEMIT_TEMPLATES, tiny_gpt2.tokenizer)
    batch = encode_prompts(tiny_gpt2.tokenizer, [r.prompt for r in rows], [list(r.target[:-1]) for r in rows])
    assert _StepPass(wrapped.base_model, batch, reuse_prefix=True).prefix_cache is None
    settings = settings_for((site,), 6)
    fallback = optimize_targets(wrapped, tiny_gpt2.tokenizer, GPT2_RECORDS, MEMIT_TEMPLATES, settings)
    cached = optimize_targets(tiny_gpt2.model, tiny_gpt2.tokenizer, GPT2_RECORDS, MEMIT_TEMPLATES, settings)
    assert_same(cached, fallback, (site,))


def test_cut_block_rules():
    assert cut_block(["model.layers.6"], "model.layers") == 6  # δ at block 6's output: blocks 0..6 replayed
    assert cut_block(["model.layers.6.mlp", "model.layers.6.self_attn"], "model.layers") == 5  # inside block 6
    assert cut_block(["model.layers.4", "model.layers.9"], "model.layers") == 4
    assert cut_block(["model.layers.0.mlp"], "model.layers") is None
    assert cut_block(["lm_head"], "model.layers") is None


@pytest.mark.parametrize("reuse_prefix", [True, False])
@pytest.mark.parametrize("which", ["tiny_gpt2", "stories260k"])
def test_lower_block_replay_equals_the_full_pass(which, reuse_prefix, request):
    """z with blocks 0..l replayed from their kept output equals running them every step (GPT-2 with
    learned positions, Llama with RoPE; with and without the prefix cache), and the model's blocks are
    its own again afterwards."""
    loaded = request.getfixturevalue(which)
    records = GPT2_RECORDS if which == "tiny_gpt2" else STORY_RECORDS
    site = loaded.layout.layer(1)
    settings = settings_for((site,), 8, reuse_prefix=reuse_prefix)
    assert lower_block_cache(loaded.model, settings.sites).cut == 1
    blocks = list(loaded.model.get_submodule(loaded.layout.layers))
    calls = []
    handle = blocks[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        replayed = optimize_targets(loaded.model, loaded.tokenizer, records, MEMIT_TEMPLATES, settings, extra_rows=(NeighborRows(True, False),))
    finally:
        handle.remove()
    assert len(calls) == 1 + reuse_prefix  # the kept output (and the prefix cache), not once per step
    assert list(loaded.model.get_submodule(loaded.layout.layers)) == blocks
    full = optimize_targets(
        loaded.model, loaded.tokenizer, records, MEMIT_TEMPLATES, dataclasses.replace(settings, reuse_lower=False), extra_rows=(NeighborRows(True, False),)
    )
    assert replayed.steps.tolist() == full.steps.tolist()
    scale = full.z[site].norm(dim=0).max()
    assert float((replayed.z[site] - full.z[site]).abs().max() / scale) < 1e-5
    assert float(replayed.delta[site].norm()) > 0
    assert torch.allclose(replayed.final_nll, full.final_nll, atol=1e-5, rtol=1e-5)

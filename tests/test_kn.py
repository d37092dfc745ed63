"""KN: integrated gradients against a slow per-neuron finite-difference Riemann sum, neuron selection by
hand, and an edit that changes exactly the selected neurons' value rows by EasyEdit's rule."""

from __future__ import annotations

import pytest
import torch

from edit_runner.data.record import EditRecord
from edit_runner.editing.methods.kn import (
    KnEditor,
    baseline_activations,
    integrated_gradients,
    select_neurons,
)
from edit_runner.errors import ConfigError
from edit_runner.models.padding import pad_id_of, right_padded
from edit_runner.models.scoring import encode_texts, greedy_next_tokens
from edit_runner.models.tokens import target_token_ids
from editing_helpers import algo_config

RECORD = EditRecord(
    case_id="0", subject="Paris", prompt="{} is the capital of", target_new="Rome", target_true="France",
    paraphrase_prompts=("Paris, a city, is the capital of", "The city of Paris is the capital of"),
)


def probability_with(model, module, row: list[int], position: int, activation: torch.Tensor, token: int) -> float:
    """P(token) read at ``position`` when ``module``'s input there is ``activation`` (one unbatched pass)."""

    def replace(_m, args):
        hidden = args[0].clone()
        hidden[0, position] = activation
        return (hidden, *args[1:])

    handle = module.register_forward_pre_hook(replace)
    try:
        input_ids, mask, positions = right_padded([row], 0, torch.device("cpu"))
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
    finally:
        handle.remove()
    return torch.softmax(logits[0, position], dim=-1)[token].item()


def test_attribution_matches_a_slow_per_neuron_riemann_sum(tiny_gpt2, one_thread):
    model = tiny_gpt2.model.double()
    tok = tiny_gpt2.tokenizer
    module = model.get_submodule(tiny_gpt2.layout.mlp_out.format(1))
    prompt = encode_texts(tok, [RECORD.rewrite_prompt])[0]
    target = target_token_ids(tok, " France is")
    steps, h = 4, 1e-5
    fast = integrated_gradients(model, module, prompt, target, steps, pad_id_of(tok))
    row = prompt + target
    base = baseline_activations(model, module, row, [len(prompt) - 1 + j for j in range(len(target))], 0)
    neurons = [0, 255] + fast.abs().topk(2).indices.tolist()
    for i in neurons:
        total = 0.0
        for j, token in enumerate(target):
            position = len(prompt) - 1 + j
            for k in range(1, steps + 1):
                point = base[j] * k / steps
                up, down = point.clone(), point.clone()
                up[i] += h
                down[i] -= h
                slope = (probability_with(model, module, row, position, up, token) - probability_with(model, module, row, position, down, token)) / (2 * h)
                total += base[j, i].item() * slope / steps
        assert fast[i].item() == pytest.approx(total / len(target), rel=1e-5, abs=1e-12), i


def test_selection_keeps_neurons_above_t_max_shared_by_more_than_p_of_prompts():
    a = {0: torch.tensor([1.0, 0.3, 0.1]), 1: torch.tensor([0.05, 0.25, 0.0])}  # max 1 → threshold 0.2
    b = {0: torch.tensor([0.1, 2.0, 0.5]), 1: torch.tensor([0.3, 0.0, 0.45])}  # max 2 → threshold 0.4
    c = {0: torch.tensor([0.9, 0.0, 0.0]), 1: torch.tensor([0.0, 1.0, 0.0])}  # max 1 → threshold 0.2
    # coarse: a {(0,0),(0,1),(1,1)}, b {(0,1),(0,2),(1,2)}, c {(0,0),(1,1)}; counts (0,0)2 (0,1)2 (1,1)2, others 1
    assert select_neurons([a, b, c], 0.2, 0.5) == [(0, 0), (0, 1), (1, 1)]  # > 1.5 prompts
    assert select_neurons([a, b, c], 0.2, 0.0) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2)]


def test_edit_changes_exactly_the_selected_value_rows_by_the_embedding_difference(tiny_gpt2, one_thread):
    loaded = tiny_gpt2
    config = algo_config("kn", layers=[1, 2], ig_steps=3, share_threshold=0.0)
    editor = KnEditor(config)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    neurons = select_neurons(editor.attribute(loaded.model, loaded.tokenizer, RECORD), 0.2, 0.0)
    assert neurons
    new = target_token_ids(loaded.tokenizer, RECORD.target_new)
    predicted = greedy_next_tokens(loaded.model, loaded.tokenizer, [RECORD.rewrite_prompt], len(new))[0]
    embed = loaded.model.get_input_embeddings().weight
    direction = (2.0 if len(new) == 1 else 1.0) * (embed[new].sum(0) - embed[predicted].sum(0))
    stats = editor.edit(loaded.model, loaded.tokenizer, [RECORD], [])
    assert stats["kn_neurons"] == len(neurons)
    after = loaded.model.state_dict()
    for name, tensor in after.items():
        layer = next((l for l in (1, 2) if name == f"transformer.h.{l}.mlp.c_proj.weight"), None)
        if layer is None:
            assert torch.equal(tensor, before[name]), name
            continue
        delta = (tensor - before[name]).T  # GPT-2 Conv1D: math layout d_out × d_ff
        changed = {i for i in range(delta.shape[1]) if delta[:, i].abs().max() > 0}
        assert changed == {i for l, i in neurons if l == layer}
        for i in changed:
            torch.testing.assert_close(delta[:, i], direction, rtol=1e-5, atol=1e-6)


def test_bad_share_threshold_names_the_field():
    with pytest.raises(ConfigError, match=r"algo.share_threshold must be in \[0, 1\)"):
        KnEditor(algo_config("kn", share_threshold=1.5))

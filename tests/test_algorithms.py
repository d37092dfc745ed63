"""Issue 3: every algorithm of the two-stage core, checked on the real layers of tiny models.

The closed-form solvers are tested on random matrices in ``test_solvers.py``; here the
:class:`~edit_runner.editing.editor.Editor` edits a model and the tests recompute, independently of
the editor, what the edited layer must now do: ROME maps its key to the optimized target, MEMIT's
per-layer update equals the normal-equation solve on keys re-measured after the lower layers were
edited, AlphaEdit's update annihilates the preserved subspace and carries its key history, EMMET
meets its equality constraint, and FT-C stays inside its L∞ box.

Models: ``tiny_gpt2`` (random weights, GPT-2 ``Conv1D`` stored transposed) and ``stories260k``
(trained Llama layout). Covariance statistics come from 200 wikitext paragraphs, cached per module.
"""

from __future__ import annotations

import math

import pytest
import torch

from edit_runner.data.record import EditRecord
from edit_runner.editing import solvers
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.keys import activations_at_subject, bare_activations, compute_keys, filled_prompts
from edit_runner.models.layout import weight_matrix
from editing_helpers import (
    MEMIT_TEMPLATES,
    algo_config,
    covariance,
    make_editor,
    restore_weights,
    wrapper_config,
)

ROME_TEMPLATES = ContextTemplates(
    groups=(("{}", "The cat sat. {}", "Once upon a time. {}", "It was a sunny day. {}", "She smiled. {}"),)
)

GPT2_RECORDS = [
    EditRecord("g0", "Danielle Darrieux", "The mother tongue of {} is", "English", "French"),
    EditRecord("g1", "Edwin of Northumbria", "The official religion of {} is", "Islam", "Christianity"),
    EditRecord("g2", "Toko Yasuda", "{} plays the instrument", "piano", "guitar"),
]
STORY_RECORDS = [
    EditRecord("s0", "Lily", "{} liked to eat", "cake", "apples"),
    EditRecord("s1", "the big dog", "One day, {} saw a", "bird", "cat"),
    EditRecord("s2", "Mia", "{} wanted to play with her", "ball", "doll"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Run this module's tiny-model tests on one thread."""


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def weights(model, names: list[str]) -> dict[str, torch.Tensor]:
    return {name: weight_matrix(model.get_submodule(name)).detach().clone() for name in names}


# ------------------------------------------------------------------------------------------ ROME


@pytest.mark.parametrize("consistent_keys", [True, False], ids=["r-rome", "rome"])
def test_rome_edited_layer_maps_its_key_to_the_target(tiny_gpt2, cov_dir, shared_dir, consistent_keys):
    loaded, layer, record = tiny_gpt2, 2, GPT2_RECORDS[0]
    name = loaded.layout.mlp_out.format(layer)
    module = loaded.model.get_submodule(name)
    cov = covariance(loaded, [layer], cov_dir, shared_dir)
    algo = algo_config("rome", layers=[layer], v_num_grad_steps=5, consistent_keys=consistent_keys)
    editor = make_editor(loaded, algo, ROME_TEMPLATES, cov)
    w0 = weight_matrix(module).detach().double().clone()
    assert module.weight.shape == (w0.shape[1], w0.shape[0])  # Conv1D stores the transpose

    captured = editor.edit([record]).targets

    z = captured[0].z[loaded.layout.mlp.format(layer)][:, 0].double()  # v* at the MLP output
    assert float(captured[0].delta[loaded.layout.mlp.format(layer)].norm()) > 0
    k_star = compute_keys(loaded.model, loaded.tokenizer, [record], name, ROME_TEMPLATES)[:, 0].double()
    k_bare = bare_activations(loaded.model, loaded.tokenizer, [record], name, "input")[:, 0].double()
    assert rel(k_star, k_bare) > 1e-2  # the two keys differ, so only one of them can map to v*
    w1 = weight_matrix(module).detach().double()
    bias = module.bias.detach().double()
    mapped, other = (k_star, k_bare) if consistent_keys else (k_bare, k_star)
    assert rel(w1 @ mapped + bias, z) < 1e-5
    assert rel(w1 @ other + bias, z) > 1e-3

    # the same through forward passes: the MLP output at the subject (bare prompt for ROME,
    # template average for r-ROME — the c_proj output is affine in its input) equals v*
    mlp = loaded.layout.mlp.format(layer)
    if consistent_keys:
        prompts = [p for t in ROME_TEMPLATES.flat for p in filled_prompts([record], t)]
        out = activations_at_subject(loaded.model, loaded.tokenizer, prompts, mlp, which="output").mean(dim=0)
    else:
        out = bare_activations(loaded.model, loaded.tokenizer, [record], mlp, "output")[:, 0]
    assert rel(out, z) < 1e-5

    singular = torch.linalg.svdvals(w1 - w0)
    assert singular[0] > 1e-4
    assert singular[1] / singular[0] < 1e-5  # rank one


# ------------------------------------------------------------------------------ MEMIT / PMET


@pytest.mark.parametrize("name", ["memit", "pmet"])
def test_spread_equals_per_layer_normal_equations_on_rekeyed_model(stories260k, cov_dir, shared_dir, name):
    """Every ΔW_l = memit_delta(K_l, R_l / divisor, λC_l), K_l and R_l re-measured after the lower layers' updates."""
    loaded, layers, records = stories260k, [1, 2, 3], STORY_RECORDS
    model, tok, layout = loaded.model, loaded.tokenizer, loaded.layout
    names = [layout.mlp_out.format(layer) for layer in layers]
    cov = covariance(loaded, layers, cov_dir, shared_dir)
    algo = algo_config(name, layers=layers, v_num_grad_steps=8, mom2_update_weight=50.0)
    z_layer = layers[-1]
    # MEMIT: z and cur at the block output of the last layer; PMET: at its MLP output projection
    site = layout.layer(z_layer) if name == "memit" else layout.mlp_out.format(z_layer)
    with restore_weights(model):
        w0 = weights(model, names)
        h_before = bare_activations(model, tok, records, site, "output").double()
        editor = make_editor(loaded, algo, MEMIT_TEMPLATES, cov)
        report = editor.edit(records)
        captured = report.targets
        w1 = weights(model, names)
        h_after = bare_activations(model, tok, records, site, "output").double()
        z = captured[0].z[site].double()
        assert set(report.seconds) >= {"key", "target", "solve"}

        # the per-layer loop, re-run by hand from the unedited weights
        with torch.no_grad():
            for n in names:
                weight_matrix(model.get_submodule(n)).copy_(w0[n])
        for i, (layer, n) in enumerate(zip(layers, names)):
            keys = compute_keys(model, tok, records, n, MEMIT_TEMPLATES).double()
            cur = bare_activations(model, tok, records, site, "output").double()
            remaining = len(layers) - i
            divisor = remaining if name == "memit" else math.sqrt(remaining)
            expected = solvers.memit_delta(
                keys, (z - cur) / divisor, solvers.preservation_matrix(cov.get(n), 50.0)
            )
            actual = w1[n].double() - w0[n].double()
            assert float(expected.norm()) > 1e-3, f"layer {layer}: no update"
            assert rel(actual, expected) < 1e-5, f"layer {layer}"
            with torch.no_grad():  # the editor's own update, so the next layer sees what the editor saw
                weight_matrix(model.get_submodule(n)).copy_(w1[n])
    # the last layer's output at the subject moved toward the target
    assert ((h_after - z).norm(dim=0) < (h_before - z).norm(dim=0)).all()


# --------------------------------------------------------------------------------- AlphaEdit


def test_alphaedit_annihilates_preserved_subspace_and_keeps_key_history(stories260k, cov_dir, shared_dir):
    loaded, layers = stories260k, [0, 1]
    model, tok, layout = loaded.model, loaded.tokenizer, loaded.layout
    names = [layout.mlp_out.format(layer) for layer in layers]
    cov = covariance(loaded, layers, cov_dir, shared_dir)
    algo = algo_config("alphaedit", layers=layers, v_num_grad_steps=6)
    threshold = float(algo.nullspace_threshold)
    with restore_weights(model):
        editor = make_editor(loaded, algo, MEMIT_TEMPLATES, cov)
        assert editor.state_dict()["solver"] == {}
        history: dict[int, torch.Tensor] = {}
        for step, record in enumerate(STORY_RECORDS):
            before = weights(model, names)
            # what the first layer's update must be: AlphaEdit's solve with the previous key history
            keys0 = compute_keys(model, tok, [record], names[0], MEMIT_TEMPLATES)
            cur0 = bare_activations(model, tok, [record], layout.layer(layers[-1]), "output")
            target = editor.edit([record]).targets[0]
            after = weights(model, names)
            resid0 = (target.z[layout.layer(layers[-1])] - cur0) / len(layers)
            projector = solvers.null_space_projector(cov.get(names[0]), threshold)
            expected = solvers.alphaedit_delta(
                keys0, resid0, projector, history.get(layers[0]), float(algo.l2)
            )
            assert rel(after[names[0]] - before[names[0]], expected) < 1e-4
            if step > 0:  # the history is honoured: without it the update would differ
                forgetful = solvers.alphaedit_delta(keys0, resid0, projector, None, float(algo.l2))
                assert rel(forgetful, expected) > 1e-2

            state = {int(k.split(".")[1]): v for k, v in editor.state_dict()["solver"].items()}
            assert sorted(state) == layers
            for layer, n in zip(layers, names):
                delta = after[n].double() - before[n].double()
                u, s, _ = torch.linalg.svd(cov.get(n).double())
                keep = u[:, s >= threshold]
                assert 0 < keep.shape[1] < keep.shape[0]
                assert float(delta.norm()) > 1e-3 * float(before[n].norm())
                assert float((delta @ keep).norm() / delta.norm()) < 2e-5  # ‖ΔW U_keep‖ ≈ 0
                # the history grows by this batch's keys measured on the fully edited model
                keys = compute_keys(model, tok, [record], n, MEMIT_TEMPLATES).double()
                previous = history.get(layer, torch.zeros_like(state[layer]))
                assert torch.allclose(state[layer].double(), previous + keys @ keys.T, rtol=1e-6, atol=1e-9)
                assert float(torch.trace(state[layer])) > float(torch.trace(previous)) + 1.0
                history[layer] = state[layer].clone()


def test_alphaedit_with_prev_edit_keys_uses_the_in_loop_key_memory_as_history(stories260k, cov_dir, shared_dir):
    """ENCORE's AlphaEdit: ``solve(P·SEQ_CACHE + L2·I, P K Rᵀ)``, ``SEQ_CACHE`` = in-loop keys of earlier batches.

    Layer l's key (the input of its output projection) depends only on layers below l, so the keys
    measured inside the layer loop equal those AlphaEdit re-measures after the step: both runs give
    the same weights, and the memory equals AlphaEdit's own history.
    """
    loaded, layers = stories260k, [0, 1]
    model, tok, layout = loaded.model, loaded.tokenizer, loaded.layout
    names = [layout.mlp_out.format(layer) for layer in layers]
    cov = covariance(loaded, layers, cov_dir, shared_dir)
    algo = algo_config("alphaedit", layers=layers, v_num_grad_steps=6)
    projector = solvers.null_space_projector(cov.get(names[0]), float(algo.nullspace_threshold))
    runs = []
    for wrappers in ({"prev_edit_keys": wrapper_config("prev_edit_keys")}, {}):
        with restore_weights(model):
            editor = make_editor(loaded, algo, MEMIT_TEMPLATES, cov, wrappers)
            memory, per_step = None, []
            for record in STORY_RECORDS[:2]:
                before = weights(model, names)
                keys0 = compute_keys(model, tok, [record], names[0], MEMIT_TEMPLATES).double()
                cur0 = bare_activations(model, tok, [record], layout.layer(layers[-1]), "output")
                target = editor.edit([record]).targets[0]
                after = weights(model, names)
                state = editor.state_dict()
                per_step.append((after, state))
                if wrappers:
                    resid0 = (target.z[layout.layer(layers[-1])] - cur0) / len(layers)
                    expected = solvers.alphaedit_delta(keys0, resid0, projector, memory, float(algo.l2))
                    assert rel(after[names[0]] - before[names[0]], expected) < 1e-4
                    assert state["solver"] == {}  # no history of its own
                    kkt = state["terms"]["prev_edit_keys"]["kkt.0"].double()
                    previous = torch.zeros_like(kkt) if memory is None else memory
                    assert torch.allclose(kkt, previous + keys0 @ keys0.T, rtol=1e-6, atol=1e-9)
                    memory = kkt.clone()
            runs.append(per_step)
    for (with_memory, memory_state), (plain, plain_state) in zip(*runs):
        for n in names:
            assert rel(with_memory[n], plain[n]) < 1e-6
        for layer in layers:
            assert torch.allclose(
                memory_state["terms"]["prev_edit_keys"][f"kkt.{layer}"].double(),
                plain_state["solver"][f"key_history.{layer}"].double(),
                rtol=1e-5,
                atol=1e-8,
            )


# ------------------------------------------------------------------------------------- EMMET


def test_emmet_single_edit_meets_its_constraint_exactly(tiny_gpt2, cov_dir, shared_dir):
    loaded, layer, record = tiny_gpt2, 2, GPT2_RECORDS[1]
    model, tok, layout = loaded.model, loaded.tokenizer, loaded.layout
    name = layout.mlp_out.format(layer)
    cov = covariance(loaded, [layer], cov_dir, shared_dir)
    algo = algo_config("emmet", layers=[layer], v_num_grad_steps=4)
    editor = make_editor(loaded, algo, MEMIT_TEMPLATES, cov)
    w0 = weight_matrix(model.get_submodule(name)).detach().double().clone()
    keys = compute_keys(model, tok, [record], name, MEMIT_TEMPLATES).double()
    cur = bare_activations(model, tok, [record], layout.layer(layer), "output").double()
    captured = editor.edit([record]).targets
    residual = captured[0].z[layout.layer(layer)].double() - cur
    delta = weight_matrix(model.get_submodule(name)).detach().double() - w0
    assert float(residual.norm()) > 1e-3
    assert rel(delta @ keys, residual) < 1e-5
    # minimum-C-norm solution: ΔW = R kᵀC⁻¹ / (kᵀC⁻¹k), rank one along C⁻¹k
    c_inv_k = torch.linalg.solve(cov.get(name).double(), keys)
    assert rel(delta, residual @ c_inv_k.T / float(keys.T @ c_inv_k)) < 1e-4


# ---------------------------------------------------------------------------------- FT / FT-C


def _finetune_run(loaded, name: str, monkeypatch, **overrides):
    """Run FT(-C) on three records; return the report and max |θ − θ0| before every Adam step and at the end."""
    module = loaded.model.get_submodule(loaded.layout.mlp_out.format(0))
    originals = [module.weight.detach().clone(), module.bias.detach().clone()]
    others = {k: v.clone() for k, v in loaded.model.state_dict().items() if ".h.0.mlp.c_proj." not in k}
    seen: list[float] = []

    def deviation() -> float:
        return max(float((p - p0).abs().max()) for p, p0 in zip((module.weight, module.bias), originals))

    class SpyAdam(torch.optim.Adam):
        # the box projection runs right after optimizer.step(): observe it at the next step and at the end
        def step(self, closure=None):
            seen.append(deviation())
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", SpyAdam)
    algo = algo_config(name, layers=[0], ft_num_steps=6, ft_lr=5e-3, **overrides)
    editor = make_editor(loaded, algo, MEMIT_TEMPLATES, None)
    report = editor.edit(GPT2_RECORDS)
    seen.append(deviation())
    for key, value in loaded.model.state_dict().items():
        if key in others:
            assert torch.equal(value, others[key]), f"{key} must not move"
    return report, seen


def test_ft_c_stays_inside_its_linf_box_at_every_step(tiny_gpt2, monkeypatch):
    eps = 5e-4
    report, seen = _finetune_run(tiny_gpt2, "ft_c", monkeypatch, ft_norm_constraint=eps)
    assert report.extra["ft_steps"] == 6  # the random model's loss never drops below 1e-2
    assert len(seen) == 7  # before each of the 6 steps and at the end
    assert seen[0] == 0.0
    assert all(value <= eps + 1e-7 for value in seen), seen
    assert seen[-1] >= 0.99 * eps  # lr ≫ ε: the box is what holds the weights


def test_ft_unconstrained_moves_beyond_epsilon(tiny_gpt2, monkeypatch):
    report, seen = _finetune_run(tiny_gpt2, "ft", monkeypatch)
    assert report.extra["ft_steps"] == 6
    assert seen[-1] > 4 * 5e-4

"""Issue 4: the source papers' wrappers as hooks on the two-stage core, on tiny models.

iterative (outer loop: p̄/p̂/|Δp| per iteration, stop rules, monotonic rollback), NA/NAP (extra
loss rows with δ at the neighbor subject), MPES (stop rule: first all-argmax pass + extra passes),
norm constraint (+λ_n I), D4S (running sums, reference residual mode), and the composition of every
algorithm with every wrapper list (valid ones run one edit, invalid ones fail with a message).

Models: ``stories260k`` (trained Llama layout: optimization really moves probabilities) and a tiny
random GPT-2 with the real BPE tokenizer (GPT-2 ``Conv1D`` layout; composition runs).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from edit_runner.config import effective_config, register_configs, register_resolvers
from edit_runner.data.record import EditRecord, NeighborPrompt
from edit_runner.editing import solvers
from edit_runner.editing.algorithms import algorithm_spec
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.corpora import build_covariance
from edit_runner.editing.editor import EditorBuilder
from edit_runner.editing.keys import bare_activations, compute_keys
from edit_runner.editing.targets import OptimizationSettings, StepStats, optimize_targets, rewrite_nll
from edit_runner.editing.wrappers.iterative import Iterative, iterate
from edit_runner.editing.wrappers.mpes import MPESRule
from edit_runner.editing.wrappers.neighbor import NeighborRows
from edit_runner.errors import ConfigError
from edit_runner.models.hooks import trace
from edit_runner.models.layout import weight_matrix
from edit_runner.models.tokens import encode_prompts, fill_template, target_token_ids
from edit_runner.plan import plan_run
from editing_helpers import (
    MEMIT_TEMPLATES,
    algo_config,
    covariance,
    make_editor,
    restore_weights,
    wrapper_config,
)

TEMPLATES = MEMIT_TEMPLATES
ROME_TEMPLATES = ContextTemplates(
    groups=(("{}", "The cat sat. {}", "Once upon a time. {}", "She smiled. {}"),)
)

STORY_RECORDS = [
    EditRecord(
        "s0",
        "Lily",
        "{} liked to eat",
        "cake",
        "apples",
        train_neighbors=(NeighborPrompt("Sue liked to eat", "apples", "Sue"),),
    ),
    EditRecord(
        "s1",
        "Mia",
        "{} wanted to play with her",
        "ball",
        "doll",
        train_neighbors=(NeighborPrompt("Ann wanted to play with her", "doll", "Ann"),),
    ),
    EditRecord("s2", "the big dog", "One day, {} saw a", "bird", "cat"),
]
GPT2_RECORD = EditRecord(
    "g0",
    "Danielle Darrieux",
    "The mother tongue of {} is",
    "English",
    "French",
    paraphrase_prompts=("Danielle Darrieux speaks",),
    neighborhood=(NeighborPrompt("The mother tongue of Léon Blum is", "French", "Léon Blum"),),
    train_neighbors=(
        NeighborPrompt("The native language of Michel Rocard is", "French", "Michel Rocard"),
        NeighborPrompt("Jean Gabin, a native speaker of", "French", "Jean Gabin"),
    ),
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Run this module's tiny-model tests on one thread."""


def weights(model, names: list[str]) -> dict[str, torch.Tensor]:
    return {name: weight_matrix(model.get_submodule(name)).detach().clone() for name in names}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def block_settings(layout, layer: int, num_steps: int, **kw) -> OptimizationSettings:
    """MEMIT's optimization settings with δ at the block output of ``layer``."""
    values = {"lr": 0.5, "weight_decay": 0.5, "clamp_norm_factor": 4.0, "kl_factor": 0.0625}
    values.update(kw)
    return OptimizationSettings(sites=(layout.layer(layer),), num_steps=num_steps, **values)


@torch.no_grad()
def score_with_delta(loaded, prompts, targets: list[list[int]], site: str, deltas: torch.Tensor):
    """Per prompt: mean target-token NLL and whether every target token is the teacher-forced argmax,
    with ``deltas[i]`` added to ``site``'s output at prompt i's subject-last token."""
    batch = encode_prompts(loaded.tokenizer, prompts, [t[:-1] for t in targets])

    def add(name, hidden):
        rows = torch.arange(hidden.shape[0])
        return hidden.index_put((rows, batch.subject_last), deltas.to(hidden.dtype), accumulate=True)

    with trace(loaded.model, [site], edit_output=add):
        logits = loaded.model(**batch.model_inputs()).logits
    nll, top1 = [], []
    for i, target in enumerate(targets):
        length = int(batch.lengths[i])
        positions = torch.arange(length - len(target), length)
        logp = torch.log_softmax(logits[i, positions].float(), dim=-1)
        ids = torch.tensor(target)
        nll.append(float(-logp[torch.arange(len(target)), ids].mean()))
        top1.append(bool((logp.argmax(dim=-1) == ids).all()))
    return nll, top1


# ------------------------------------------------------------------------------------- iterative


@pytest.mark.parametrize("name", ["rome", "memit", "alphaedit"])
def test_iterative_with_one_iteration_equals_the_plain_algorithm(stories260k, cov_dir, shared_dir, name):
    loaded = stories260k
    layers = [2] if name == "rome" else [1, 2]
    names = [loaded.layout.mlp_out.format(layer) for layer in layers]
    templates = ROME_TEMPLATES if name == "rome" else TEMPLATES
    cov = covariance(loaded, layers, cov_dir, shared_dir)
    algo = algo_config(name, layers=layers, v_num_grad_steps=5)
    results = []
    for wrappers in ({}, {"iterative": wrapper_config("iterative", max_iterations=1, stop_rule="abs_delta", epsilon=1.0)}):
        with restore_weights(loaded.model):
            editor = make_editor(loaded, algo, templates, cov, wrappers)
            report = editor.edit(STORY_RECORDS[:2])
            results.append((weights(loaded.model, names), editor.state_dict(), report))
    (plain_w, plain_state, plain_report), (iter_w, iter_state, iter_report) = results
    for n in names:
        assert torch.equal(plain_w[n], iter_w[n]), n
        assert not torch.equal(plain_w[n], weight_matrix(loaded.model.get_submodule(n))), (
            f"{n} was not edited"
        )
    assert plain_report.steps == iter_report.steps
    assert len(iter_report.iterations) == 1 and plain_report.iterations == []
    assert sorted(plain_state["solver"]) == sorted(iter_state["solver"])
    for key, history in plain_state["solver"].items():
        assert torch.equal(history, iter_state["solver"][key])


def _iterative_run(loaded, cov, stop_rule: str, epsilon: float, max_iterations: int = 4):
    algo = algo_config("memit", layers=[1, 2], v_num_grad_steps=5, mom2_update_weight=100.0)
    iterative = wrapper_config("iterative", max_iterations=max_iterations, stop_rule=stop_rule, epsilon=epsilon)
    editor = make_editor(loaded, algo, TEMPLATES, cov, {"iterative": iterative})
    return editor, editor.edit(STORY_RECORDS[:2])


def test_iterative_records_p_bar_p_hat_and_delta_p_of_every_iteration(stories260k, cov_dir, shared_dir):
    loaded, m = stories260k, 2
    cov = covariance(loaded, [1, 2], cov_dir, shared_dir)
    with restore_weights(loaded.model):
        _, report = _iterative_run(loaded, cov, "none", 1.0)
        after = rewrite_nll(loaded.model, loaded.tokenizer, STORY_RECORDS[:m], TEMPLATES)
    its = report.iterations
    assert [it["iteration"] for it in its] == [1, 2, 3, 4]
    assert len(report.final_nll) == len(report.init_nll) == 4 * m
    for k, it in enumerate(its):
        # p̄_k: mean exp(NLL) at the end of iteration k's optimization (δ = δ*)
        assert it["p_bar"] == pytest.approx(
            float(torch.tensor(report.final_nll[k * m : (k + 1) * m]).exp().mean()), rel=1e-6
        )
        assert it["delta_p"] == pytest.approx(it["p_hat"] - it["p_bar"], rel=1e-9)  # signed (seed 000 Table 6)
        assert math.isfinite(it["delta_p"]) and it["delta_p"] != 0
        if k + 1 < len(its):
            # p̂_k (δ = 0 on θ_{k+1}) is what iteration k+1's optimization starts from
            start_next = float(torch.tensor(report.init_nll[(k + 1) * m : (k + 2) * m]).exp().mean())
            assert it["p_hat"] == pytest.approx(start_next, rel=1e-4)
    assert its[-1]["p_hat"] == pytest.approx(float(after.exp().mean()), rel=1e-6)
    # the edits take hold: the target perplexity on the weights falls from iteration to iteration
    assert its[-1]["p_hat"] < its[0]["p_hat"]


def test_iterative_abs_delta_and_small_change_stop(stories260k, cov_dir, shared_dir):
    loaded = stories260k
    cov = covariance(loaded, [1, 2], cov_dir, shared_dir)
    with restore_weights(loaded.model):
        _, report = _iterative_run(loaded, cov, "abs_delta", 1e9)
    assert len(report.iterations) == 1  # |Δp_1| ≤ ε at once
    with restore_weights(loaded.model):
        _, report = _iterative_run(loaded, cov, "abs_delta", 0.0, max_iterations=3)
    assert len(report.iterations) == 3  # never ≤ 0: runs to the cap
    with restore_weights(loaded.model):
        _, report = _iterative_run(loaded, cov, "small_change", 1e9)
    assert len(report.iterations) == 2  # needs two p̂ to compare


def _pooled_perplexity(loaded, records, rows) -> float:
    """Mean over records of exp(mean over the record's rows of Σ target-token NLL / norm_len), δ = 0."""
    site = loaded.layout.layer(0)
    nll, _ = score_with_delta(
        loaded, [r.prompt for r in rows], [list(r.target) for r in rows], site, torch.zeros(len(rows), loaded.model.config.hidden_size)
    )
    per_record: dict[int, list[float]] = {}
    for row, value in zip(rows, nll):
        per_record.setdefault(row.record, []).append(value * len(row.target) / row.norm_len)
    return sum(math.exp(sum(v) / len(v)) for v in per_record.values()) / len(records)


def test_na_pooled_weighting_pools_the_neighbor_rows_into_p_bar_and_p_hat(stories260k, cov_dir, shared_dir):
    """RUOE reports the perplexity of the NA loss: rewriting and neighbour rows in one mean (SPEC C §9.2)."""
    from edit_runner.editing.targets import rewrite_rows

    loaded, records = stories260k, STORY_RECORDS[:2]
    cov = covariance(loaded, [1, 2], cov_dir, shared_dir)
    algo = algo_config("memit", layers=[1, 2], v_num_grad_steps=5, mom2_update_weight=100.0)
    wrappers = {
        "iterative": wrapper_config("iterative", max_iterations=2, stop_rule="none", epsilon=1.0),
        "na": wrapper_config("na", weighting="pooled"),
    }
    tok = loaded.tokenizer
    with restore_weights(loaded.model):
        editor = make_editor(loaded, algo, TEMPLATES, cov, wrappers)
        (neighbors,) = editor.extra_rows
        rows = rewrite_rows(records, TEMPLATES, tok, with_kl=False) + neighbors.rows(records, TEMPLATES, tok)
        plain_rows = rewrite_rows(records, TEMPLATES, tok, with_kl=False)
        pooled_before = _pooled_perplexity(loaded, records, rows)
        plain_before = _pooled_perplexity(loaded, records, plain_rows)
        report = editor.edit(records)
        pooled_after = _pooled_perplexity(loaded, records, rows)
    assert any(r.kind == "neighbor" for r in rows)
    assert abs(pooled_before - plain_before) / plain_before > 1e-3  # the neighbour rows change the mean
    its = report.iterations
    # δ = 0 at the first step of iteration 1: the pooled perplexity of the unedited model
    assert float(torch.tensor(report.init_nll[:2]).exp().mean()) == pytest.approx(pooled_before, rel=1e-4)
    assert its[-1]["p_hat"] == pytest.approx(pooled_after, rel=1e-4)
    assert its[0]["p_bar"] == pytest.approx(float(torch.tensor(report.final_nll[:2]).exp().mean()), rel=1e-6)


def test_iterate_stop_rules_on_a_constructed_sequence():
    """p̄ = 2 every iteration; p̂ = 2.5, 2.3, 2.4, 2.45, 2.2 → |Δp| = .5, .3, .4, .45, .2."""
    p_hats = [2.5, 2.3, 2.4, 2.45, 2.2]

    def run(stop_rule: str, epsilon: float):
        state = {"theta": 0, "restored": None}

        def single_pass():
            state["theta"] += 1
            return torch.full((3,), math.log(2.0))

        def measure():
            return torch.full((3,), math.log(p_hats[state["theta"] - 1]))

        def restore(snapshot):
            state["restored"] = snapshot
            state["theta"] = snapshot

        history = iterate(single_pass, measure, lambda: state["theta"], restore, 5, stop_rule, epsilon)
        return history, state

    history, state = run("monotonic", 0.0)
    assert [round(h.delta_p, 6) for h in history] == [0.5, 0.3, 0.4]
    assert state["restored"] == 2 and state["theta"] == 2  # |Δp_3| ≥ |Δp_2|: keep θ after iteration 2
    history, state = run("abs_delta", 0.35)
    assert len(history) == 2 and state["restored"] is None
    history, _ = run("small_change", 0.15)  # |p̂_3 − p̂_2| = 0.1
    assert len(history) == 3
    history, _ = run("none", 0.0)
    assert len(history) == 5
    assert [h.p_bar for h in history] == pytest.approx([2.0] * 5)
    assert [h.p_hat for h in history] == pytest.approx(p_hats)


def test_iterative_monotonic_rolls_the_weights_back_when_delta_p_grows(stories260k, cov_dir, shared_dir):
    loaded = stories260k
    names = [loaded.layout.mlp_out.format(layer) for layer in (1, 2)]
    cov = covariance(loaded, [1, 2], cov_dir, shared_dir)
    algo = algo_config("memit", layers=[1, 2], v_num_grad_steps=5, mom2_update_weight=100.0)
    calls, thetas = [], []

    class InflatedIterative(Iterative):
        """Iteration 2 measures a much worse p̂, so |Δp_2| > |Δp_1|."""

        def run(self, records, passes):
            def measure():
                calls.append(1)
                return passes.measure_after() + (0.0 if len(calls) <= 2 else 3.0)  # call 1: the unedited p̂_0

            return super().run(records, dataclasses.replace(passes, measure_after=measure))

    with restore_weights(loaded.model):
        builder = EditorBuilder(
            loaded, algorithm_spec("memit"), algo, TEMPLATES, cov,
            evaluate=lambda records: thetas.append(weights(loaded.model, names)) or {},
        )
        iterative = wrapper_config("iterative", max_iterations=4, stop_rule="monotonic", epsilon=1.0, full_metrics=True)
        InflatedIterative(iterative).install(builder)
        report = builder.build().edit(STORY_RECORDS[:2])
        final = weights(loaded.model, names)
    assert len(report.iterations) == 2
    assert abs(report.iterations[1]["delta_p"]) > abs(report.iterations[0]["delta_p"])
    for n in names:
        assert torch.equal(final[n], thetas[0][n])  # θ after iteration 1 is kept
        assert not torch.equal(thetas[1][n], thetas[0][n])  # iteration 2 had changed it


# ------------------------------------------------------------------------------------------ NA


@pytest.mark.parametrize(
    "with_prefix,pooled", [(False, False), (True, False), (True, True)], ids=["na", "nap", "nap-pooled"]
)
def test_neighbor_rows_put_delta_at_the_neighbor_subject(tiny_gpt2, with_prefix, pooled):
    tok = tiny_gpt2.tokenizer
    rows = NeighborRows(with_prefix=with_prefix, pooled=pooled).rows([GPT2_RECORD], TEMPLATES, tok)
    prefixes = ["{}"] if not with_prefix else (TEMPLATES.flat[1:2] if pooled else TEMPLATES.flat[1:])
    assert len(rows) == len(GPT2_RECORD.train_neighbors) * len(prefixes)
    batch = encode_prompts(tok, [r.prompt for r in rows])
    new_len = len(target_token_ids(tok, GPT2_RECORD.target_new))
    for i, row in enumerate(rows):
        neighbor = GPT2_RECORD.train_neighbors[i // len(prefixes)]
        prefix = prefixes[i % len(prefixes)]
        assert row.kind == "neighbor" and row.record == 0
        assert row.prompt.text == prefix.replace("{}", neighbor.prompt)
        assert row.prompt.text[row.prompt.subject_start : row.prompt.subject_end] == neighbor.subject
        assert row.target == tuple(target_token_ids(tok, neighbor.target))
        assert row.norm_len == (new_len if pooled else len(row.target))
        # the lookup index is the neighbor subject's last token, as separate tokenisation gives it
        ids = tok(row.prompt.text)["input_ids"]
        index = int(batch.subject_last[i])
        assert index == len(tok(row.prompt.text[: row.prompt.subject_end])["input_ids"]) - 1
        assert tok.decode(ids[: index + 1]).endswith(neighbor.subject)
        assert not tok.decode(ids[:index]).endswith(neighbor.subject)


def test_neighbor_rows_need_training_neighbors(tiny_gpt2):
    bare = dataclasses.replace(GPT2_RECORD, train_neighbors=())
    with pytest.raises(ConfigError, match="case_id=g0.*training neighbors"):
        NeighborRows(with_prefix=False, pooled=False).rows([bare], TEMPLATES, tiny_gpt2.tokenizer)


def test_na_loss_term_lowers_the_neighbor_nll_under_delta(stories260k):
    loaded, layer, records = stories260k, 2, STORY_RECORDS[:2]
    site = loaded.layout.layer(layer)
    tok = loaded.tokenizer
    plain = optimize_targets(loaded.model, tok, records, TEMPLATES, block_settings(loaded.layout, layer, 10))
    na = optimize_targets(
        loaded.model,
        tok,
        records,
        TEMPLATES,
        block_settings(loaded.layout, layer, 10),
        extra_rows=(NeighborRows(False, False),),
    )
    pooled = optimize_targets(
        loaded.model,
        tok,
        records,
        TEMPLATES,
        block_settings(loaded.layout, layer, 10, pooled_neighbors=True),
        extra_rows=(NeighborRows(True, True),),
    )
    assert rel(na.delta[site], plain.delta[site]) > 1e-2  # the loss has a neighbor term
    assert rel(pooled.delta[site], na.delta[site]) > 1e-2
    # the rewrite NLL is unaffected by the neighbor rows at δ = 0
    assert torch.allclose(na.init_nll, plain.init_nll, atol=1e-5)

    rows = NeighborRows(False, False).rows(records, TEMPLATES, tok)
    prompts, targets = [r.prompt for r in rows], [list(r.target) for r in rows]
    with_plain, _ = score_with_delta(
        loaded, prompts, targets, site, plain.delta[site].T[[r.record for r in rows]]
    )
    with_na, _ = score_with_delta(loaded, prompts, targets, site, na.delta[site].T[[r.record for r in rows]])
    for before, after in zip(with_plain, with_na):
        assert after < before - 0.1  # −ln p(o | neighbor, δ at s̃) is lower when NA optimizes it


# ---------------------------------------------------------------------------------------- MPES


def test_mpes_rule_counts_all_argmax_passes_and_probability_cutoff():
    def stats(step, prefixed, nll, prob=None):
        flags = torch.tensor(prefixed)
        prob = torch.exp(-torch.tensor(nll)) if prob is None else torch.tensor(prob)
        return StepStats(step, torch.tensor(nll), flags, flags, torch.zeros(len(prefixed)), prob)

    rule = MPESRule(-3)
    rule.reset(2)
    outcomes = [
        rule.should_stop(stats(s, p, [1.0, 1.0])).tolist()
        for s, p in enumerate([[True, False], [False, True], [True, True], [True, False]])
    ]
    # record 0 is top-1 at passes 0, 2, 3 (not consecutive): the third such pass stops it
    assert outcomes == [[False, False], [False, False], [False, False], [True, False]]
    rule = MPESRule(0.5)
    rule.reset(2)
    # record 0: two prompts with NLL 0.5 and 1.0 → (e^−0.5 + e^−1)/2 = 0.487 < 0.5 (exp(−mean NLL) = 0.472 would
    # not stop either); record 1: NLLs 0.1 and 1.2 → (0.905 + 0.301)/2 = 0.603 > 0.5, while exp(−0.65) = 0.522
    prob = [(math.exp(-0.5) + math.exp(-1.0)) / 2, (math.exp(-0.1) + math.exp(-1.2)) / 2]
    assert rule.should_stop(stats(0, [False, False], [0.75, 0.65], prob)).tolist() == [False, True]
    rule = MPESRule(0.55)
    rule.reset(2)  # the mean of probabilities, not exp(−mean NLL): 0.603 > 0.55 although exp(−0.65) = 0.522 < 0.55
    assert rule.should_stop(stats(0, [False, False], [0.75, 0.65], prob)).tolist() == [False, True]
    with pytest.raises(ConfigError, match="prob_cutoff=0"):
        MPESRule(0)


def test_mpes_stops_at_the_first_all_argmax_pass_and_cutoff_minus_3_two_passes_later(
    stories260k, cov_dir, shared_dir
):
    loaded, layer, records = stories260k, 2, STORY_RECORDS[:2]
    site, tok, cap = loaded.layout.layer(layer), loaded.tokenizer, 25
    settings = block_settings(loaded.layout, layer, cap)
    fixed = optimize_targets(loaded.model, tok, records, TEMPLATES, settings)
    early = optimize_targets(loaded.model, tok, records, TEMPLATES, settings, stop_rules=(MPESRule(-1),))
    later = optimize_targets(loaded.model, tok, records, TEMPLATES, settings, stop_rules=(MPESRule(-3),))
    assert fixed.steps.tolist() == [cap - 1] * len(records)
    assert (early.steps < cap - 3).all() and (early.steps > 0).all()
    assert later.steps.tolist() == (early.steps + 2).tolist()

    for r, record in enumerate(records):
        target = target_token_ids(tok, record.target_new)
        prompts = [fill_template(t.replace("{}", record.prompt), record.subject) for t in TEMPLATES.flat[1:]]
        targets = [target] * len(prompts)
        _, top1 = score_with_delta(
            loaded, prompts, targets, site, early.delta[site][:, r].expand(len(prompts), -1)
        )
        assert all(top1), f"record {record.case_id}: new object is not the argmax in every prefixed prompt"
        _, top1_unedited = score_with_delta(
            loaded, prompts, targets, site, torch.zeros(len(prompts), early.delta[site].shape[0])
        )
        assert not all(top1_unedited)
        # one pass earlier it did not hold yet (δ after steps−1 Adam steps)
        steps = int(early.steps[r])
        before = optimize_targets(
            loaded.model, tok, [record], TEMPLATES, block_settings(loaded.layout, layer, steps)
        )
        assert int(before.steps[0]) == steps - 1
        _, top1_before = score_with_delta(
            loaded, prompts, targets, site, before.delta[site][:, 0].expand(len(prompts), -1)
        )
        assert not all(top1_before)

    # through the editor: the steps used per edit are reported
    cov = covariance(loaded, [1, 2], cov_dir, shared_dir)
    algo = algo_config("memit", layers=[1, 2], v_num_grad_steps=cap, clamp_norm_factor=4.0)
    with restore_weights(loaded.model):
        report = make_editor(loaded, algo, TEMPLATES, cov, {"mpes": wrapper_config("mpes", prob_cutoff=-1)}).edit(records)
    assert report.steps == early.steps.tolist()


# ------------------------------------------------------------------------------ norm constraint


def test_norm_constraint_shrinks_the_update_monotonically(stories260k, cov_dir, shared_dir):
    loaded, layers = stories260k, [1, 2]
    names = [loaded.layout.mlp_out.format(layer) for layer in layers]
    cov = covariance(loaded, layers, cov_dir, shared_dir)
    algo = algo_config("memit", layers=layers, v_num_grad_steps=5)
    w0 = weights(loaded.model, names)
    norms, first = [], None
    for lam in (None, 0.0, 1e2, 1e4, 1e6):
        with restore_weights(loaded.model):
            wrappers = {} if lam is None else {"norm_constraint": wrapper_config("norm_constraint", norm_lambda=lam)}
            make_editor(loaded, algo, TEMPLATES, cov, wrappers).edit(STORY_RECORDS)
            w = weights(loaded.model, names)
        if lam is None:
            first = w
            continue
        if lam == 0.0:
            assert all(torch.equal(w[n], first[n]) for n in names)  # λ_n = 0 is the plain algorithm
        norms.append([float((w[n].double() - w0[n].double()).norm()) for n in names])
    first_layer = [row[0] for row in norms]
    total = [sum(row) for row in norms]
    assert all(a > b for a, b in itertools.pairwise(first_layer)), first_layer
    assert all(a > b for a, b in itertools.pairwise(total)), total
    assert total[-1] < 0.05 * total[0]


# ---------------------------------------------------------------------------------------- D4S


def test_d4s_reference_model_is_w0_plus_the_running_sum_solve(stories260k, cov_dir, shared_dir):
    loaded, layers, lam = stories260k, [1, 2], 100.0
    names = [loaded.layout.mlp_out.format(layer) for layer in layers]
    site = loaded.layout.layer(layers[-1])
    cov = covariance(loaded, layers, cov_dir, shared_dir)
    algo = algo_config("memit", layers=layers, v_num_grad_steps=5, mom2_update_weight=lam)
    with restore_weights(loaded.model):
        w0 = weights(loaded.model, names)
        editor = make_editor(loaded, algo, TEMPLATES, cov, {"d4s": wrapper_config("d4s", residual="reference")})
        sums = editor.solver.sums
        captured = []
        for step, record in enumerate(STORY_RECORDS):
            captured += editor.edit([record]).targets
            now = weights(loaded.model, names)
            for layer, n in zip(layers, names):
                assert sums.num_edits(layer) == step + 1
                expected = w0[n].double() + sums.delta(
                    layer, solvers.preservation_matrix(cov.get(n), lam)
                )
                assert rel(now[n], expected) < 1e-5, (step, n)
                assert rel(now[n], w0[n]) > 1e-4
        state = editor.state_dict()["solver"]
    # every edit's target is optimized on the unedited weights (SPEC C §8, literal)
    with restore_weights(loaded.model):
        fresh_targets = make_editor(loaded, algo, TEMPLATES, cov).edit([STORY_RECORDS[-1]]).targets
    assert torch.allclose(captured[-1].z[site], fresh_targets[0].z[site], rtol=1e-6, atol=1e-7)
    assert sorted(k for k in state if k.startswith("sums.count.")) == ["sums.count.1", "sums.count.2"]


def test_d4s_running_sums_equal_one_batched_solve_on_model_keys(stories260k, cov_dir, shared_dir):
    loaded, layer = stories260k, 1
    name = loaded.layout.mlp_out.format(layer)
    cov = covariance(loaded, [layer], cov_dir, shared_dir)
    keys = compute_keys(loaded.model, loaded.tokenizer, STORY_RECORDS, name, TEMPLATES).double()
    outputs = bare_activations(
        loaded.model, loaded.tokenizer, STORY_RECORDS, loaded.layout.layer(2), "output"
    ).double()
    inputs = bare_activations(
        loaded.model, loaded.tokenizer, STORY_RECORDS, loaded.layout.layer(1), "output"
    ).double()
    residuals = outputs - inputs  # real d_out vectors of the model, one per edit
    preservation = solvers.preservation_matrix(cov.get(name), 15000.0)
    sums = solvers.RunningSums()
    for b in range(keys.shape[1]):
        sums.add(layer, keys[:, b], residuals[:, b])
        batched = solvers.memit_delta(keys[:, : b + 1], residuals[:, : b + 1], preservation)
        assert rel(sums.delta(layer, preservation), batched) < 1e-5
    restored = solvers.RunningSums()
    restored.load_state_dict(sums.state_dict())
    assert torch.equal(restored.delta(layer, preservation), sums.delta(layer, preservation))


# ---------------------------------------------------------------------------------- composition

WRAPPER_GROUPS = ["iterative", "na", "nap", "mpes", "norm_constraint", "d4s", "encore"]
WRAPPER_LISTS = (
    [[]]
    + [[w] for w in WRAPPER_GROUPS]
    + [list(pair) for pair in itertools.combinations(WRAPPER_GROUPS, 2)]
    + [
        ["iterative", "na", "mpes", "norm_constraint"],
        ["nap", "mpes", "norm_constraint", "d4s"],
        ["iterative", "nap", "encore"],
    ]
)
ALGOS = ["rome", "r_rome", "memit", "pmet", "emmet", "alphaedit", "ft", "ft_c"]
LAYERS = {"rome": [2], "r_rome": [2], "emmet": [2], "ft": [1], "ft_c": [0]}

# what the issue asks, written independently of the registry: the wrappers each algorithm can take
SUPPORTED = {
    "rome": {"iterative", "na", "nap", "mpes"},
    "r_rome": {"iterative", "na", "nap", "mpes"},
    "memit": {"iterative", "na", "nap", "mpes", "norm_constraint", "prev_edit_keys", "d4s"},
    "pmet": {"iterative", "na", "nap", "mpes", "norm_constraint", "prev_edit_keys", "d4s"},
    "emmet": {"iterative", "na", "nap", "mpes", "norm_constraint", "prev_edit_keys"},
    "alphaedit": {"iterative", "na", "nap", "mpes", "norm_constraint", "prev_edit_keys"},
    "ft": set(),
    "ft_c": set(),
}
CONFLICTS = [{"na", "nap"}, {"iterative", "d4s"}]


def expected_wrappers(groups: list[str]) -> set[str]:
    out = set(groups) - {"encore"}
    if "encore" in groups:
        out |= {"mpes", "norm_constraint", "prev_edit_keys"}
    return out


@pytest.fixture(scope="module")
def composer(custom_data, shared_dir):
    """Hydra-composed configs: one composition per wrapper list and one per algorithm (composing is
    the slow part), joined by putting the algorithm's ``algo`` node into the wrapper list's config."""
    register_configs()
    register_resolvers()
    common = [
        "model=local",
        "model.path=unused",
        "model.name=tiny-gpt2",
        "data=custom",
        f"data.path={custom_data}",
        "stats.corpus=text",
        f"stats.text_path={shared_dir / 'data' / 'wikitext' / 'wiki.test.raw'}",
        "stats.max_length=128",
    ]
    wrapper_cfgs: dict[str, object] = {}
    algo_nodes: dict[str, object] = {}
    with initialize_config_module("edit_runner.conf", version_base="1.3"):

        def get(algo: str, groups: list[str]):
            key = ",".join(groups)
            if key not in wrapper_cfgs:
                extra = ["wrapper.iterative.max_iterations=2"] if "iterative" in groups else []
                wrapper_cfgs[key] = compose(
                    "config", overrides=[f"wrapper=[{key}]" if groups else "wrapper=none", *common, *extra]
                )
            if algo not in algo_nodes:
                layers = ",".join(map(str, LAYERS.get(algo, [1, 2])))
                steps = ["algo.ft_num_steps=2"] if algo.startswith("ft") else ["algo.v_num_grad_steps=3", "algo.mom2_n_samples=200"]
                algo_nodes[algo] = compose("config", overrides=[f"algo={algo}", f"algo.layers=[{layers}]", *steps]).algo
            cfg = wrapper_cfgs[key].copy()
            cfg.algo = algo_nodes[algo].copy()
            return cfg

        yield get


@pytest.fixture(scope="module")
def tiny_model(shared_dir):
    """One random tiny GPT-2 for every composition case (weights restored after each)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from edit_runner.models.layout import layout_for
    from edit_runner.models.loading import LoadedModel
    from edit_runner.models.tokens import ensure_pad_token

    torch.manual_seed(0)
    tokenizer = GPT2TokenizerFast.from_pretrained(str(shared_dir / "models" / "gpt2-tokenizer"))
    ensure_pad_token(tokenizer)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=4, n_embd=64, n_head=4, n_positions=128, vocab_size=len(tokenizer))
    ).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(
        model=model, tokenizer=tokenizer, layout=layout_for("gpt2"), name="tiny-gpt2", revision="random"
    )


@pytest.fixture(scope="module")
def custom_data(tmp_path_factory) -> Path:
    import json

    row = {
        "case_id": GPT2_RECORD.case_id,
        "subject": GPT2_RECORD.subject,
        "prompt": GPT2_RECORD.prompt,
        "target_new": GPT2_RECORD.target_new,
        "target_true": GPT2_RECORD.target_true,
        "neighborhood_prompts": [
            {"prompt": n.prompt, "subject": n.subject} for n in GPT2_RECORD.neighborhood
        ],
    }
    path = tmp_path_factory.mktemp("data") / "edit.json"
    path.write_text(json.dumps([row]))
    return path


@pytest.mark.parametrize("groups", WRAPPER_LISTS, ids=lambda g: "+".join(g) or "plain")
@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_wrapper_combination_runs_or_fails_clearly(
    algo, groups, composer, tiny_model, cov_dir
):
    wrappers = expected_wrappers(groups)
    valid = wrappers <= SUPPORTED[algo] and not any(pair <= wrappers for pair in CONFLICTS)
    layers = LAYERS.get(algo, [1, 2])
    cfg = effective_config(composer(algo, groups))
    assert list(cfg.algo.layers) == layers and cfg.algo.name == algo
    if not valid:
        with pytest.raises(
            ConfigError, match=r"wrapper=\w+ (cannot wrap algo=|and wrapper=\w+ cannot be combined)"
        ):
            plan_run(cfg, cov_dir)
        return

    plan = plan_run(cfg, cov_dir)
    assert set(plan.wrapper_names) == wrappers
    loaded = tiny_model
    covariance = None
    if plan.spec.needs_covariance(plan.config):
        covariance = build_covariance(cfg.stats, plan.config.mom2_n_samples, plan.config.mom2_dtype, cfg.model.max_length, loaded, cov_dir)
        covariance.ensure(
            loaded.model, loaded.tokenizer, [loaded.layout.mlp_out.format(layer) for layer in layers]
        )
    templates = ROME_TEMPLATES if plan.spec.template_style == "rome" else TEMPLATES
    record = dataclasses.replace(plan.records[0], train_neighbors=GPT2_RECORD.train_neighbors)
    names = [loaded.layout.mlp_out.format(layer) for layer in layers]
    with restore_weights(loaded.model):
        before = weights(loaded.model, names)
        builder = EditorBuilder(loaded, plan.spec, plan.config, templates, covariance)
        for wrapper in plan.wrappers:
            wrapper.install(builder)
        editor = builder.build()
        report = editor.edit([record])
        after = weights(loaded.model, names)
        state = editor.state_dict()
    assert any(not torch.equal(before[n], after[n]) for n in names), "nothing was edited"
    if plan.spec.has_optimization:
        assert report.steps and all(0 <= s <= 2 for s in report.steps)
        assert report.seconds["target"] > 0 and report.seconds["solve"] > 0
    else:
        assert report.extra["ft_steps"] >= 1
    if "iterative" in wrappers:
        assert 1 <= len(report.iterations) <= 2
    if "d4s" in wrappers:
        assert any(key.startswith("sums.") for key in state["solver"])
    if "prev_edit_keys" in wrappers:
        assert sorted(int(key.split(".")[1]) for key in state["terms"]["prev_edit_keys"]) == layers
    if algo == "alphaedit" and "prev_edit_keys" in wrappers:
        assert state["solver"] == {}  # the key memory is its history (the ENCORE repository's AlphaEdit)
    elif algo == "alphaedit":
        assert sorted(int(key.split(".")[1]) for key in state["solver"]) == layers

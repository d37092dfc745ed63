"""Reference-exact metric definitions (issue 10 §3), each against a tiny hand computation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from edit_runner.data.record import EditRecord
from edit_runner.editing.finetune import FinetuneSettings, finetune
from edit_runner.editing.wrappers.iterative import Iterative, IterativeConfig, iterate
from edit_runner.evaluation.health import catastrophic_forgetting_point, forgetting_stats, layer_norm_stats
from edit_runner.evaluation.trackers import record_success
from edit_runner.results import RunOutcome, fact_probabilities


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny models on one thread."""


# ---------------------------------------------------------------- seed 002: normalized distance


def test_normalized_distance_is_frobenius_delta_over_numel():
    w0 = torch.zeros(2, 3)
    w = w0.clone()
    w[0, 0], w[1, 2] = 3.0, 4.0  # ‖ΔW‖_F = 5 (not the spectral norm 4), numel = 6
    stats = layer_norm_stats({"m.weight": w}, {"m.weight": w0})["m.weight"]
    assert stats["normalized_distance"] == pytest.approx(5 / 6, rel=1e-12)
    assert stats["delta_fro"] == pytest.approx(5.0)
    assert stats["relative_distance"] == math.inf  # ‖W₀‖ = 0 ≠ ‖W‖: today's relative norm, renamed
    w0 = torch.ones(2, 3)  # ‖W₀‖_F = √6
    stats = layer_norm_stats({"m.weight": w0 + w}, {"m.weight": w0})["m.weight"]
    assert stats["relative_distance"] == pytest.approx(5 / math.sqrt(6), rel=1e-12)
    assert stats["normalized_distance"] == pytest.approx(5 / 6, rel=1e-12)


# ---------------------------------------------------------------- seed 002: fact forgetting


def test_fact_forgetting_counts_cumulatively_from_the_first_failure():
    # A, B, C succeeded right after their own edit, D never did (not counted)
    first = {"A": True, "B": True, "C": True, "D": False}
    at_10 = forgetting_stats(first, {"A": False, "B": True, "C": True, "D": True})
    assert at_10["forgotten"] == pytest.approx(1 / 3) and at_10["forgotten_ids"] == {"A"}
    # A is correct again and B fails now: A stays forgotten (first failure counts), B joins
    at_20 = forgetting_stats(first, {"A": True, "B": False, "C": True, "D": False}, at_10["forgotten_ids"])
    assert at_20["forgotten"] == pytest.approx(2 / 3) and at_20["retained"] == pytest.approx(1 / 3)
    assert at_20["currently_failing"] == pytest.approx(1 / 3)  # the non-cumulative rate: only B now
    assert at_20["num_forgotten"] == 2 and at_20["num_first_successful"] == 3
    assert math.isnan(forgetting_stats({"D": False}, {"D": True})["forgotten"])


def test_forgetting_success_is_argmax_correctness_of_the_rewrite_prompt():
    # MEMIT definition: efficacy_correct[0] (all target tokens teacher-forced argmax), even though
    # the probability comparison (efficacy_success) says otherwise
    assert record_success({"efficacy_correct": [False], "efficacy_success": 1.0, "efficacy_accuracy": 0.0}) is False
    assert record_success({"efficacy_correct": [True], "efficacy_success": 0.0, "efficacy_accuracy": 1.0}) is True
    # EasyEdit / zsRE: token accuracy; correct only when every token is the argmax
    assert record_success({"efficacy_accuracy": 2 / 3}) is False
    assert record_success({"efficacy_accuracy": 1.0}) is True


# ---------------------------------------------------------------- seed 002: catastrophic-forgetting point


def _point(n: int, f1s: list[float] | None, ppl: float | None) -> dict:
    point: dict = {"num_edits": n}
    if f1s is not None:
        point["downstream"] = {f"t{i}": {"gen_f1": f} for i, f in enumerate(f1s)}
    if ppl is not None:
        point["perplexity"] = ppl
    return point


def test_catastrophic_forgetting_point_needs_f1_and_ppl_collapse():
    initial = _point(0, [0.8, 0.6], 20.0)  # mean F1 0.7 → collapse at ≤ 0.35; ME-PPL collapse above 10 × 20
    points = [
        _point(10, [0.7, 0.5], 25.0),
        _point(20, [0.3, 0.3], 50.0),  # F1 collapsed (0.3) but ME-PPL not
        _point(30, [0.6, 0.6], 500.0),  # ME-PPL collapsed but F1 not
        _point(40, [0.4, 0.3], float("inf")),  # both: mean F1 0.35 ≤ 0.35, ME-PPL not finite
        _point(50, [0.0, 0.0], 1e6),
    ]
    assert catastrophic_forgetting_point(initial, points, 10.0) == 40
    assert catastrophic_forgetting_point(initial, points[:3], 10.0) is None
    # only ME-PPL tracked: it alone decides
    assert catastrophic_forgetting_point(_point(0, None, 20.0), [_point(10, None, 150.0), _point(20, None, 300.0)], 10.0) == 20
    assert catastrophic_forgetting_point(_point(0, None, None), points, 10.0) is None


# ---------------------------------------------------------------- seed 004: fact probabilities


def test_fact_probs_original_on_the_unedited_model_edited_right_after_its_step():
    pre = [{"efficacy_nll_true": [math.log(2)], "efficacy_nll_new": [5.0]}, {"efficacy_nll_true": [math.log(4)], "efficacy_nll_new": [5.0]}]
    after = [{"efficacy_nll_true": [9.0], "efficacy_nll_new": [0.0]}, {"efficacy_nll_true": [9.0], "efficacy_nll_new": [math.log(5)]}]
    end = [{"efficacy_nll_true": [0.0], "efficacy_nll_new": [9.0]}] * 2  # later edits undid both: not what Table 1 reports
    outcome = RunOutcome(
        revision="r", metric_definition="memit", pre={}, post={}, post_rows=end, pre_rows=pre, after_step_rows=after,
        steps=[{}, {}], health_initial={}, health_alarms=[], has_health=False, templates={}, seconds=0.0, environment={},
    )
    probs = fact_probabilities(outcome)
    assert probs["original"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert probs["edited"] == pytest.approx((1 + 1 / 5) / 2)
    assert "right after" in probs["definition"]
    no_step_eval = RunOutcome(**{**vars(outcome), "after_step_rows": [], "pre_rows": []})
    assert fact_probabilities(no_step_eval) == {}  # sequential run without after-step rows: not the Table 1 quantity


# ---------------------------------------------------------------- seed 000: signed Δp, p̂_0, per-record rows


def test_iterative_delta_p_is_signed_with_per_record_rows_and_the_unedited_p_hat():
    """Two edits: unedited NLLs log 8, log 6; pass k reaches p̄ = (2, 2); the weights then give
    p̂_1 = (1, 3) and p̂_2 = (2.5, 1.5) → Δp_1 = 0, per record (−1, +1); Δp_2 = 0, per record (0.5, −0.5)."""
    measured = iter([[8.0, 6.0], [1.0, 3.0], [2.5, 1.5]])
    passes = SimpleNamespace(
        single_pass=lambda: torch.log(torch.tensor([2.0, 2.0])),
        measure_after=lambda: torch.log(torch.tensor(next(measured))),
        snapshot=lambda: None,
        restore=lambda _: None,
    )
    wrapper = Iterative(IterativeConfig(max_iterations=2, stop_rule="none"))
    records = [EditRecord("a", "S", "{} is", "x", "y"), EditRecord("b", "T", "{} is", "x", "y")]
    rows = wrapper.run(records, passes)
    assert [r["delta_p"] for r in rows] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert [[x["delta_p"] for x in r["records"]] for r in rows] == [pytest.approx([-1.0, 1.0], abs=1e-6), pytest.approx([0.5, -0.5], abs=1e-6)]
    assert rows[0]["p_hat_0"] == pytest.approx(7.0) and [x["p_hat_0"] for x in rows[1]["records"]] == pytest.approx([8.0, 6.0])
    assert [x["case_id"] for x in rows[0]["records"]] == ["a", "b"]
    summary = {"pre": {"efficacy_success": 0.1}}
    wrapper.summarize(summary, [{"iterations": rows}])
    table = summary["iterations"]
    assert table[0] == {"iteration": 0, "p_bar": None, "p_hat": pytest.approx(7.0), "delta_p": None, "post": None}
    assert [t["iteration"] for t in table] == [0, 1, 2]
    # a negative Δp stops abs_delta when |Δp| ≤ ε: p̄ = 2, p̂ = 1.5 → Δp = −0.5
    history = iterate(lambda: torch.log(torch.tensor([2.0])), lambda: torch.log(torch.tensor([1.5])), lambda: None, lambda _: None, 5, "abs_delta", 0.6)
    assert len(history) == 1 and history[0].delta_p == pytest.approx(-0.5)


# ---------------------------------------------------------------- FT-C on a Llama-architecture model


def _reference_ft(model, tokenizer, texts, targets, param, lr, num_steps, eps, target_ids):
    """kmeng01 ``execute_ft`` written out: one chunk, last prompt token, masked mean over target
    tokens, Adam step only when the loss ≥ 1e-2, then the L∞ clamp; stop when the epoch loss < 1e-2."""
    w0 = param.detach().clone()
    param.requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    tokenizer.padding_side = "right"
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    last = inputs["attention_mask"].sum(1) - 1
    mask = target_ids != tokenizer.unk_token_id
    for _ in range(num_steps):
        opt.zero_grad()
        logp = torch.log_softmax(model(**inputs).logits[torch.arange(len(texts)), last].float(), dim=-1)
        loss = (-(torch.gather(logp, 1, target_ids) * mask).sum(1) / mask.sum(1)).mean()
        if loss.item() >= 1e-2:
            loss.backward()
            opt.step()
            with torch.no_grad():
                param.copy_(torch.clamp(param, min=w0 - eps, max=w0 + eps))
        if loss.item() < 1e-2:
            break
    param.requires_grad_(False)
    delta = param.detach() - w0
    with torch.no_grad():
        param.copy_(w0)
    return delta


FT_RECORDS = [
    EditRecord("s0", "Lily", "{} liked to eat", "cake", "apples"),
    EditRecord("s1", "the big dog", "One day, {} saw a", "bird", "cat"),
    EditRecord("s2", "Mia", "{} wanted to play with her", "apples", "doll"),
]


def _ours(model, tokenizer, param, settings):
    w0 = param.detach().clone()
    finetune(model, tokenizer, FT_RECORDS, [param], settings)
    delta = param.detach() - w0
    with torch.no_grad():
        param.copy_(w0)
    return delta


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def test_ft_c_on_a_tiny_random_llama_matches_the_reference_loop_with_bos_free_targets(shared_dir):
    """The cause of the Llama disagreement: the reference tokenises targets with ``tok(targets,
    padding=True)``, which on a Llama tokenizer prepends BOS (id 1 ≠ unk 0, so the mask keeps it) and
    pads with EOS (≠ unk, also kept): BOS and padding become extra bag-of-token targets scored from the
    last prompt position. On GPT-2 no BOS is added and pad = unk is masked, so both agree. Our targets
    follow SPEC B §1 (no BOS, no padding); given those ids the reference loop and ours agree exactly."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(str(shared_dir / "models" / "stories260K"))
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    ).eval()
    param = model.model.layers[1].mlp.down_proj.weight
    settings = FinetuneSettings(lr=5e-3, num_steps=3, norm_constraint=4e-3, weight_decay=0.0, batch_size=64)
    ours = _ours(model, tokenizer, param, settings)
    texts = [r.rewrite_prompt for r in FT_RECORDS]
    targets = [" " + r.target_new for r in FT_RECORDS]
    reference_ids = tokenizer(targets, return_tensors="pt", padding=True)["input_ids"]
    assert (reference_ids[:, 0] == tokenizer.bos_token_id).all()  # BOS is a reference target token on Llama
    assert (reference_ids == tokenizer.eos_token_id).any()  # and so is the EOS padding of shorter targets
    # SPEC B §1 ids, padded with unk so the reference mask drops exactly the padding
    plain = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets]
    width = max(map(len, plain))
    spec_ids = torch.tensor([ids + [tokenizer.unk_token_id] * (width - len(ids)) for ids in plain])
    slow = _reference_ft(model, tokenizer, texts, targets, param, settings.lr, settings.num_steps, settings.norm_constraint, spec_ids)
    assert torch.allclose(ours, slow, atol=1e-7, rtol=0) and ours.abs().max() > 0
    assert ours.abs().max() <= settings.norm_constraint * (1 + 1e-6)
    as_reference = _reference_ft(model, tokenizer, texts, targets, param, settings.lr, settings.num_steps, settings.norm_constraint, reference_ids)
    assert _cos(as_reference, ours) < 0.99  # BOS/EOS targets turn the update


def test_ft_c_on_gpt2_matches_the_reference_loop_with_its_own_tokenisation(tiny_gpt2):
    model, tokenizer = tiny_gpt2.model, tiny_gpt2.tokenizer
    param = model.transformer.h[0].mlp.c_proj.weight
    settings = FinetuneSettings(lr=5e-3, num_steps=3, norm_constraint=4e-3, weight_decay=0.0, batch_size=64)
    ours = _ours(model, tokenizer, param, settings)
    texts = [r.rewrite_prompt for r in FT_RECORDS]
    targets = [" " + r.target_new for r in FT_RECORDS]
    reference_ids = tokenizer(targets, return_tensors="pt", padding=True)["input_ids"]  # no BOS; pad = unk: masked
    slow = _reference_ft(model, tokenizer, texts, targets, param, settings.lr, settings.num_steps, settings.norm_constraint, reference_ids)
    assert torch.allclose(ours, slow, atol=1e-7, rtol=0) and ours.abs().max() > 0


# ---------------------------------------------------------------- seed 002: fixed few-shot prompts


def test_seed002_fixed_prompts_are_the_authors_glue_eval_strings(shared_dir):
    from edit_runner.evaluation.downstream.prompts import build_prompt, parse_generation
    from edit_runner.evaluation.downstream.tasks import load_task_split, task_file

    sst2, used = build_prompt("sst2_seed002", {"sentence": "a gem", "label": 1})
    assert used == 0 and sst2 == (
        "Review : excruciatingly unfunny and pitifully unromantic\nSentiment : negative\n\n"
        "Review : rich veins of funny stuff in this movie\nSentiment : positive\n\n"
        "Review : by far the worst movie of the year\nSentiment : negative\n\n"
        "Review : fashioning an engrossing entertainment out\nSentiment : positive\n\n"
        "Review : a gem\nSentiment :"
    )
    cola, _ = build_prompt("cola_seed002", {"sentence": "Dogs bark.", "label": 1})
    assert cola.startswith("Is this sentence linguistically acceptable?\nSentence : Bill pushed Harry off the sofa for hours.\nAnswer : No\n\n")
    assert cola.endswith("Answer : No\n\nIs this sentence linguistically acceptable?\nSentence : Dogs bark.\nAnswer :")
    assert cola.count("Answer :") == 7  # six fixed shots + the question
    mrpc, _ = build_prompt("mrpc_seed002", {"sentence1": "A.", "sentence2": "B.", "label": 0})
    assert mrpc.count("Answer:") == 7 and mrpc.endswith("\n\nAre the sentences paraphrases of each other.\nSentence 1: A.\nSentence 2: B.\nAnswer:")
    rte, _ = build_prompt("rte_seed002", {"sentence1": "P.", "sentence2": "H.", "label": 0})
    assert rte.count("True or False?\nanswer:") == 4 and rte.endswith("answer: False\n\nP.\nquestion: H. True or False?\nanswer:")
    # answers are read after the last marker, so the fixed shots' labels never count
    assert parse_generation("rte_seed002", rte + " True", rte) == 1
    assert parse_generation("sst2_seed002", sst2 + " negative", sst2) == 0
    # the variants read the base task's file
    data_dir = shared_dir / "data" / "downstream"
    assert task_file("mrpc_seed002", data_dir) == task_file("mrpc", data_dir)
    assert len(load_task_split("cola_seed002", data_dir, num_items=4, num_shots=0).tests) == 4


# ---------------------------------------------------------------- seed 004: generation entropy


def test_fluency_samples_top5_up_to_100_tokens_for_every_record_and_averages_per_record(monkeypatch):
    from edit_runner.evaluation import trackers

    calls = []
    canned = {"g1": "a b a b", "g2": "x y", "r2": "p q p q"}

    def fake_sample(model, tokenizer, prompts, max_out_len, generator, top_k=5):
        calls.append((list(prompts), max_out_len, top_k))
        return [canned[p] for p in prompts]

    monkeypatch.setattr(trackers, "sample_continuations", fake_sample)
    records = [
        EditRecord("1", "S", "{} r", "x", "y", generation_prompts=("g1", "g2")),
        EditRecord("2", "T", "{} r", "x", "y", generation_prompts=("r2",)),
    ]
    value = trackers.fluency(None, None, records, seed=3)
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))  # "a b a b": bigrams ab ×2, ba ×1
    h3 = 1.0  # trigrams aba, bab
    abab = (2 / 3 * h2 + 4 / 3 * h3) / 2
    xy = 0.0  # one bigram, no trigram
    assert value == pytest.approx(((abab + xy) / 2 + abab) / 2, rel=1e-12)  # mean over records of the record means
    assert calls == [(["g1", "g2"], 100, 5), (["r2"], 100, 5)]


def test_zsre_success_under_easyedit_is_ruoes_comparison_with_endoftext_and_per_answer_token(tiny_gpt2):
    """RUOE zsRE: new vs ``<|endoftext|>`` for efficacy/generalization; per answer token for specificity."""
    from edit_runner.data.record import NeighborPrompt, RecordKind
    from edit_runner.evaluation.edit_metrics import ZSRE_EASYEDIT_GROUND_TRUTH, evaluate_records, summarize
    from edit_runner.models.scoring import score_targets
    from edit_runner.models.tokens import target_token_ids

    model, tok = tiny_gpt2.model, tiny_gpt2.tokenizer
    record = EditRecord(
        "z0", "Danielle Darrieux", "What is the native language of {}?", "English French", "<|endoftext|>",
        kind=RecordKind.zsre, paraphrase_prompts=("Which language did Danielle Darrieux speak?", "Darrieux spoke"),
        neighborhood=(NeighborPrompt("nq question: who wrote the book thief?", "Markus Zusak"),),
    )
    new, eos = target_token_ids(tok, record.target_new), target_token_ids(tok, ZSRE_EASYEDIT_GROUND_TRUTH)
    answer = target_token_ids(tok, "Markus Zusak")
    assert len(answer) >= 2  # several per-token prompts

    def mean(values):
        return sum(values) / len(values)

    def beats(prompt: str) -> float:
        with_new, with_eos = score_targets(model, tok, [prompt, prompt], [new, eos])
        return float(with_new.mean_logprob > with_eos.mean_logprob)

    expected_efficacy = beats(record.rewrite_prompt)
    expected_generalization = mean([beats(p) for p in record.paraphrase_prompts])
    prompt = record.neighborhood[0].prompt
    (answer_score,) = score_targets(model, tok, [prompt], [answer])
    flags = []
    for i in range(len(answer)):
        (after_prefix,) = score_targets(model, tok, [prompt], [answer[:i] + new])
        new_logprob = mean(after_prefix.token_logprobs[i:])
        flags.append(float(answer_score.token_logprobs[i] > new_logprob))
    (row,) = evaluate_records(model, tok, [record], "easyedit")
    assert row["efficacy_success"] == expected_efficacy
    assert row["generalization_success"] == pytest.approx(expected_generalization)
    assert row["specificity_success"] == pytest.approx(mean(flags))
    summary = summarize([row], "easyedit")
    assert summary["score_success"] is not None and "efficacy_magnitude" not in summary
    # under memit (kmeng01's zsRE evaluation) there is no success metric
    (memit_row,) = evaluate_records(model, tok, [record], "memit")
    assert "efficacy_success" not in memit_row and "score_success" not in summarize([memit_row], "memit")

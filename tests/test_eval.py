"""Evaluation: batched scorer vs a slow reference, metric definitions, hmean rules, perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from edit_runner.data.record import EditRecord, NeighborPrompt, RecordKind
from edit_runner.errors import DataError
from edit_runner.evaluation import edit_metrics
from edit_runner.evaluation.edit_metrics import evaluate_records, harmonic_mean, summarize
from edit_runner.evaluation.general_text import GENERAL_TEXTS
from edit_runner.evaluation.perplexity import (
    FALLBACK_DEFINITION,
    load_me_ppl,
    perplexity_of_texts,
    resolve_me_ppl,
)
from edit_runner.models.padding import left_padded, length_sorted_chunks, pad_id_of, right_padded
from edit_runner.models.sampling import greedy_generate
from edit_runner.models.scoring import (
    TargetScore,
    encode_texts,
    greedy_next_tokens,
    next_token_logprobs,
    score_targets,
    shared_sequences,
)
from edit_runner.models.tokens import target_token_ids

PROMPTS = [
    "The capital of France is",
    "Zoo",
    "Once upon a time there was a little girl who lived in a small house near the woods and",
    "She said",
    "The mother tongue of Danielle Darrieux is",
]
TARGETS = ["Paris", "was a little girl", "she liked to play outside", "hello", "French"]


# --------------------------------------------------------------------------- slow references


def slow_score(model: torch.nn.Module, tokenizer, prompt: str, target: list[int]) -> tuple[list[float], list[bool]]:
    """One prompt at a time, no padding, manual log-softmax over the full vocabulary."""
    ids = list(tokenizer(prompt)["input_ids"]) + list(target)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    start = len(ids) - len(target)
    lps = [float(logprobs[start + j - 1, t]) for j, t in enumerate(target)]
    hits = [int(logits[start + j - 1].argmax()) == t for j, t in enumerate(target)]
    return lps, hits


def slow_perplexity(model: torch.nn.Module, tokenizer, text: str) -> float:
    """``util/perplexity.py``: exp(-(1/N) Σ_{t≥1} log p(x_t | x_<t)), N counting the first token."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)
    gathered = torch.gather(logprobs[:, :-1], 2, ids[:, 1:, None])[0]
    return math.exp(-gathered.sum().item() / ids.shape[1])


# --------------------------------------------------------------------------- batched scorer


@pytest.mark.parametrize("which", ["tiny_gpt2", "stories260k"])
def test_batched_scorer_equals_slow_reference(which: str, request: pytest.FixtureRequest) -> None:
    lm = request.getfixturevalue(which)
    tok = lm.tokenizer
    targets = [target_token_ids(tok, t) for t in TARGETS]
    assert any(len(t) > 1 for t in targets)
    assert len({len(encode_texts(tok, [p])[0]) for p in PROMPTS}) > 2
    scores = score_targets(lm.model, tok, PROMPTS, targets, batch_size=3)
    for prompt, target, score in zip(PROMPTS, targets, scores):
        lps, hits = slow_score(lm.model, tok, prompt, target)
        assert score.token_logprobs == pytest.approx(lps, rel=1e-6, abs=1e-5)
        assert list(score.is_argmax) == hits
        assert score.mean_nll == pytest.approx(-sum(lps) / len(lps), abs=1e-5)


def test_shared_sequences_run_each_distinct_sequence_once() -> None:
    prefixes = [[1, 2], [1, 2], [1, 2], [1, 2, 3], [4]]
    targets = [[9], [3, 7], [3, 7, 8], [5], [6]]
    sequences, holder = shared_sequences(prefixes, targets)
    # needed: [1,2], [1,2,3], [1,2,3,7], [1,2,3], [4]: all but [1,2,3,7] and [4] are prefixes of [1,2,3,7]
    assert sequences == [(1, 2, 3, 7), (4,)]
    assert holder == [0, 0, 0, 0, 1]


@pytest.mark.parametrize("which", ["tiny_gpt2", "stories260k"])
def test_shared_prompts_and_targets_equal_slow_reference(which: str, request: pytest.FixtureRequest) -> None:
    """One prompt with several targets (one a prefix of another), a prompt that is a prefix of
    another prompt, and repeated pairs: every score is that of its own unshared sequence."""
    lm = request.getfixturevalue(which)
    tok = lm.tokenizer
    prompts = ["The capital of France is", "The capital of France is", "The capital of France is", "The capital of", "Zoo", "Zoo"]
    texts = ["Paris", "Paris and Lyon", "a city", "France is", "was a little girl", "was a little girl"]
    targets = [target_token_ids(tok, t) for t in texts]
    scores = score_targets(lm.model, tok, prompts, targets, batch_size=2)
    for prompt, target, score in zip(prompts, targets, scores):
        lps, hits = slow_score(lm.model, tok, prompt, target)
        assert score.token_logprobs == pytest.approx(lps, rel=1e-6, abs=1e-5)
        assert list(score.is_argmax) == hits
        assert len(score.argmax_ids) == len(target)


def test_bos_handling(tiny_gpt2, stories260k) -> None:
    # stories260K's tokenizer adds a BOS to prompts, GPT-2's does not; neither target gets one.
    assert encode_texts(stories260k.tokenizer, ["Zoo"])[0][0] == stories260k.tokenizer.bos_token_id
    assert stories260k.tokenizer.bos_token_id not in target_token_ids(stories260k.tokenizer, "Lily")
    gpt2_ids = encode_texts(tiny_gpt2.tokenizer, ["The capital of France is"])[0]
    assert gpt2_ids == [464, 3139, 286, 4881, 318]


@pytest.mark.parametrize("which", ["tiny_gpt2", "stories260k"])
def test_padding_invariance(which: str, request: pytest.FixtureRequest) -> None:
    lm = request.getfixturevalue(which)
    tok = lm.tokenizer
    prompts = PROMPTS * 2
    targets = [target_token_ids(tok, t) for t in TARGETS + TARGETS[::-1]]
    one = score_targets(lm.model, tok, prompts, targets, batch_size=1)
    eight = score_targets(lm.model, tok, prompts, targets, batch_size=8)
    for a, b in zip(one, eight):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, rel=1e-6, abs=1e-5)
        assert a.is_argmax == b.is_argmax


def test_greedy_next_tokens_matches_known_continuation(stories260k) -> None:
    tok = stories260k.tokenizer
    prompts = ["Zoo", "Once upon a time, there was a"]
    batched = greedy_next_tokens(stories260k.model, tok, prompts, 10, batch_size=2)
    assert tok.decode(batched[0]).startswith("was a little girl named Lily")
    for prompt, got in zip(prompts, batched):
        ids = list(tok(prompt)["input_ids"])
        for _ in range(10):
            with torch.no_grad():
                ids.append(int(stories260k.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        assert got == ids[-10:]


def test_empty_prompt_without_bos_is_an_error(tiny_gpt2) -> None:
    with pytest.raises(DataError):
        score_targets(tiny_gpt2.model, tiny_gpt2.tokenizer, [""], [[318]])
    with pytest.raises(DataError):
        next_token_logprobs(tiny_gpt2.model, [[464], []], [318])


def test_padded_batches_and_length_chunks() -> None:
    cpu = torch.device("cpu")
    ids, mask, positions = right_padded([[5, 6, 7], [8]], 0, cpu)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]
    ids, mask, positions = left_padded([[5, 6, 7], [8]], 9, cpu)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert length_sorted_chunks([3, 1, 2, 5, 1], 2) == [[1, 4], [2, 0], [3]]
    with pytest.raises(ValueError):
        length_sorted_chunks([1], 0)


@pytest.mark.parametrize("which", ["tiny_gpt2", "stories260k"])
def test_next_token_logprobs_equal_single_token_scores(which: str, request: pytest.FixtureRequest) -> None:
    lm = request.getfixturevalue(which)
    prefixes = encode_texts(lm.tokenizer, PROMPTS)
    candidates = [target_token_ids(lm.tokenizer, t)[0] for t in TARGETS]
    table = next_token_logprobs(lm.model, prefixes, candidates, batch_size=2, pad_id=0)
    assert table.shape == (len(PROMPTS), len(candidates)) and table.dtype == torch.float64
    for i, prompt in enumerate(PROMPTS):
        for k, token in enumerate(candidates):
            lps, _ = slow_score(lm.model, lm.tokenizer, prompt, [token])
            assert float(table[i, k]) == pytest.approx(lps[0], abs=1e-5)


def test_greedy_generate_equals_right_padded_argmax(stories260k) -> None:
    tok = stories260k.tokenizer
    prompts = ["Zoo", "Once upon a time, there was a", "She said"]
    new_ids = greedy_generate(stories260k.model, encode_texts(tok, prompts), 10, pad_id_of(tok), batch_size=2)
    texts = tok.batch_decode(new_ids, skip_special_tokens=True)
    assert texts[0].startswith("was a little girl named Lily")
    expected = greedy_next_tokens(stories260k.model, tok, prompts, 10, batch_size=3)
    assert texts == [tok.decode(ids, skip_special_tokens=True) for ids in expected]


# --------------------------------------------------------------------------- metric definitions on fake scores


def ts(lps: list[float], hits: list[bool], ids: list[int] | None = None) -> TargetScore:
    """A TargetScore from per-token log-probs and argmax flags (argmax ids default to 1 / 0)."""
    return TargetScore(tuple(lps), tuple(ids if ids is not None else [int(h) for h in hits]), tuple(hits))


TARGET_IDS = {"N": [101, 102], "T": [201], "A": [301, 302, 303], "B": [401]}


@pytest.fixture()
def fake_scorer(monkeypatch: pytest.MonkeyPatch):
    """Replace tokenization of targets and the scorer with a lookup table ``(prompt, target) -> score``."""
    table: dict[tuple[str, str], TargetScore] = {}
    by_ids = {tuple(v): k for k, v in TARGET_IDS.items()}

    def fake_ids(tokenizer, target: str) -> list[int]:
        return TARGET_IDS[target]

    def fake_score(model, tokenizer, prompts, targets, batch_size=64):
        fake_score.calls += 1
        return [table[(p, by_ids[tuple(t)])] for p, t in zip(prompts, targets)]

    fake_score.calls = 0
    monkeypatch.setattr(edit_metrics, "target_token_ids", fake_ids)
    monkeypatch.setattr(edit_metrics, "score_targets", fake_score)
    return table, fake_score


def counterfact_records() -> list[EditRecord]:
    return [
        EditRecord(
            case_id="a", subject="X", prompt="{} lives in", target_new="N", target_true="T",
            paraphrase_prompts=("p1", "p2"),
            neighborhood=(NeighborPrompt("n1", "T"), NeighborPrompt("n2", "T")),
        ),
        EditRecord(
            case_id="b", subject="Y", prompt="{} works in", target_new="N", target_true="T",
            paraphrase_prompts=("q1",),
            neighborhood=(NeighborPrompt("m1", "T"),),
        ),
    ]


def fill_counterfact(table: dict) -> None:
    # record a
    table[("X lives in", "N")] = ts([-0.5, -0.5], [True, True])   # nll_new 0.5
    table[("X lives in", "T")] = ts([-1.0], [False])               # nll_true 1.0 -> success
    table[("p1", "N")] = ts([-1.0, -3.0], [True, False])           # nll_new 2.0
    table[("p1", "T")] = ts([-1.0], [True])                        # nll_true 1.0 -> fail
    table[("p2", "N")] = ts([-0.2, -0.2], [True, True])            # 0.2
    table[("p2", "T")] = ts([-0.3], [False])                       # 0.3 -> success
    table[("n1", "T")] = ts([-0.1], [True], [201])                 # true 0.1
    table[("n1", "N")] = ts([-3.0, -3.0], [False, False])          # new 3.0 -> success
    table[("n2", "T")] = ts([-2.0], [False], [7])                  # true 2.0
    table[("n2", "N")] = ts([-1.0, -1.0], [False, False])          # new 1.0 -> fail
    # record b
    table[("Y works in", "N")] = ts([-2.0, -2.0], [False, True])   # 2.0
    table[("Y works in", "T")] = ts([-0.5], [True])                # 0.5 -> fail
    table[("q1", "N")] = ts([-1.0, -1.0], [True, False])           # 1.0
    table[("q1", "T")] = ts([-2.0], [False])                       # 2.0 -> success
    table[("m1", "T")] = ts([-0.4], [True], [201])                 # 0.4
    table[("m1", "N")] = ts([-0.6, -0.6], [True, True])            # 0.6 -> success


def hmean3(a: float, b: float, c: float) -> float:
    return 3 / (1 / a + 1 / b + 1 / c)


def test_memit_definition_on_constructed_scores(fake_scorer) -> None:
    table, fake = fake_scorer
    fill_counterfact(table)
    rows = evaluate_records(None, None, counterfact_records(), definition="memit")
    assert fake.calls == 1  # every prompt of every record in one scorer call
    a, b = rows
    assert a["efficacy_nll_new"] == pytest.approx([0.5]) and a["efficacy_nll_true"] == pytest.approx([1.0])
    assert a["generalization_correct"] == [False, True]
    assert a["specificity_correct"] == [True, False]
    assert (a["efficacy_success"], a["generalization_success"], a["specificity_success"]) == (1.0, 0.5, 0.5)
    assert (b["efficacy_success"], b["generalization_success"], b["specificity_success"]) == (0.0, 1.0, 1.0)
    assert (a["efficacy_accuracy"], a["generalization_accuracy"], a["specificity_accuracy"]) == (1.0, 0.5, 0.5)
    assert (b["efficacy_accuracy"], b["generalization_accuracy"], b["specificity_accuracy"]) == (0.0, 0.0, 1.0)
    summary = summarize(rows, "memit")
    assert list(summary) == [*edit_metrics.SUMMARY_KEYS, *edit_metrics.MAGNITUDE_KEYS]
    assert summary["efficacy_success"] == pytest.approx(0.5)
    assert summary["generalization_success"] == pytest.approx(0.75)
    assert summary["specificity_success"] == pytest.approx(0.75)
    assert summary["score_success"] == pytest.approx(hmean3(0.5, 0.75, 0.75))
    assert summary["efficacy_accuracy"] == pytest.approx(0.5)
    assert summary["generalization_accuracy"] == pytest.approx(0.25)
    assert summary["specificity_accuracy"] == pytest.approx(0.75)
    assert summary["score_accuracy"] == pytest.approx(hmean3(0.5, 0.25, 0.75))
    e = math.exp
    em = ((e(-0.5) - e(-1.0)) + (e(-2.0) - e(-0.5))) / 2
    pm = (((e(-2.0) - e(-1.0)) + (e(-0.2) - e(-0.3))) / 2 + (e(-1.0) - e(-2.0))) / 2
    nm = (((e(-0.1) - e(-3.0)) + (e(-2.0) - e(-1.0))) / 2 + (e(-0.4) - e(-0.6))) / 2
    assert summary["efficacy_magnitude"] == pytest.approx(em)
    assert summary["generalization_magnitude"] == pytest.approx(pm)
    assert summary["specificity_magnitude"] == pytest.approx(nm)


def test_easyedit_definition_and_pre_predictions(fake_scorer) -> None:
    table, _ = fake_scorer
    fill_counterfact(table)
    records = counterfact_records()
    pre_rows = evaluate_records(None, None, records, definition="easyedit")
    assert pre_rows[0]["specificity_argmax_ids"] == [[201], [7]]
    assert pre_rows[0]["specificity_accuracy"] == 1.0  # unedited model agrees with itself
    # After the edit the second neighbor of record a changes its prediction; m1 keeps it.
    table[("n2", "T")] = ts([-2.0], [False], [9])
    rows = evaluate_records(None, None, records, definition="easyedit", pre_predictions=pre_rows)
    a, b = rows
    assert a["efficacy_accuracy"] == 1.0 and b["efficacy_accuracy"] == 0.5  # token-averaged
    assert a["generalization_token_accuracy"] == [0.5, 1.0] and b["generalization_accuracy"] == 0.5
    assert a["specificity_matches_pre"] == [True, False] and b["specificity_accuracy"] == 1.0
    summary = summarize(rows, "easyedit")
    assert summary["efficacy_accuracy"] == pytest.approx(0.75)
    assert summary["generalization_accuracy"] == pytest.approx(0.625)
    assert summary["specificity_accuracy"] == pytest.approx(0.75)
    assert summary["score_accuracy"] == pytest.approx(hmean3(0.75, 0.625, 0.75))
    assert summary["efficacy_success"] == pytest.approx(0.5)  # same comparison as memit
    # Mapping form of pre_predictions and the error for a missing case id.
    mapping = {"a": [[201], [7]], "b": [[201]]}
    again = evaluate_records(None, None, records, definition="easyedit", pre_predictions=mapping)
    assert again[0]["specificity_matches_pre"] == [True, False]
    with pytest.raises(ValueError, match="case_id=b"):
        evaluate_records(None, None, records, definition="easyedit", pre_predictions={"a": [[201], [7]]})
    assert summarize(rows) == summary  # the definition defaults to the rows' own
    with pytest.raises(ValueError, match="memit"):
        summarize(rows, "memit")


def test_harmonic_mean_rules() -> None:
    assert harmonic_mean([0.5, 1.0, 1.0], "memit") == pytest.approx(0.75)
    assert harmonic_mean([0.0, 1.0, 1.0], "memit") == 0.0
    assert harmonic_mean([0.5, 1.0, None], "memit") is None
    assert harmonic_mean([0.0, 0.5, 1.0], "easyedit") == pytest.approx(2 / 3)  # 0 dropped
    assert harmonic_mean([0.0, 0.0, 0.0], "easyedit") == 0.0
    assert harmonic_mean([0.25, 0.5, 1.0], "easyedit") == pytest.approx(hmean3(0.25, 0.5, 1.0))
    with pytest.raises(ValueError, match="memit, easyedit"):
        harmonic_mean([1.0], "rome")


def test_zsre_token_accuracy(fake_scorer) -> None:
    table, _ = fake_scorer
    record = EditRecord(
        case_id="z1", subject="Q", prompt="What is {}?", target_new="A", target_true="<|endoftext|>",
        kind=RecordKind.zsre, paraphrase_prompts=("Which is Q?",),
        neighborhood=(NeighborPrompt("nq question: who wrote it?", "B"),),
    )
    table[("What is Q?", "A")] = ts([-1, -1, -1], [True, False, True])
    table[("Which is Q?", "A")] = ts([-1, -1, -1], [False, False, True])
    table[("nq question: who wrote it?", "B")] = ts([-1], [True], [401])
    rows = evaluate_records(None, None, [record], definition="memit")
    row = rows[0]
    assert row["efficacy_token_correct"] == [[True, False, True]]
    assert row["efficacy_accuracy"] == pytest.approx(2 / 3)
    assert row["generalization_accuracy"] == pytest.approx(1 / 3)
    assert row["specificity_accuracy"] == 1.0
    summary = summarize(rows, "memit")
    assert set(summary) == {"efficacy_accuracy", "generalization_accuracy", "specificity_accuracy", "score_accuracy"}
    assert summary["score_accuracy"] == pytest.approx(hmean3(2 / 3, 1 / 3, 1.0))


def test_evaluate_records_real_model_matches_slow_reference(tiny_gpt2) -> None:
    tok = tiny_gpt2.tokenizer
    record = EditRecord(
        case_id="r", subject="Danielle Darrieux", prompt="The mother tongue of {} is",
        target_new="English language", target_true="French",
        paraphrase_prompts=("Danielle Darrieux speaks", "Danielle Darrieux was born in Bordeaux. Her language is"),
        neighborhood=(NeighborPrompt("Jean Gabin speaks", "French"), NeighborPrompt("Louis XIV spoke", "French")),
    )
    row = evaluate_records(tiny_gpt2.model, tok, [record], batch_size=4)[0]
    new, true = target_token_ids(tok, "English language"), target_token_ids(tok, "French")
    prompts = [record.rewrite_prompt, *record.paraphrase_prompts]
    for key, plist in (("efficacy", prompts[:1]), ("generalization", prompts[1:])):
        nll_new = [-sum(slow_score(tiny_gpt2.model, tok, p, new)[0]) / len(new) for p in plist]
        nll_true = [-sum(slow_score(tiny_gpt2.model, tok, p, true)[0]) / len(true) for p in plist]
        assert row[f"{key}_nll_new"] == pytest.approx(nll_new, abs=1e-5)
        assert row[f"{key}_nll_true"] == pytest.approx(nll_true, abs=1e-5)
        assert row[f"{key}_success"] == pytest.approx(sum(t > n for n, t in zip(nll_new, nll_true)) / len(plist))
    nb = [n.prompt for n in record.neighborhood]
    nll_true = [-sum(slow_score(tiny_gpt2.model, tok, p, true)[0]) / len(true) for p in nb]
    assert row["specificity_nll_true"] == pytest.approx(nll_true, abs=1e-5)


# --------------------------------------------------------------------------- perplexity


@pytest.mark.parametrize("which", ["tiny_gpt2", "stories260k"])
def test_perplexity_equals_direct_computation(which: str, request: pytest.FixtureRequest) -> None:
    lm = request.getfixturevalue(which)
    texts = list(GENERAL_TEXTS[:5]) + ["Short.", "A"]
    batched = perplexity_of_texts(lm.model, lm.tokenizer, texts, batch_size=3)
    direct = [slow_perplexity(lm.model, lm.tokenizer, t) for t in texts]
    assert batched["per_text"] == pytest.approx(direct, rel=1e-5)
    assert batched["mean_perplexity"] == pytest.approx(sum(direct) / len(direct), rel=1e-5)
    single = perplexity_of_texts(lm.model, lm.tokenizer, texts, batch_size=1)
    assert single["per_text"] == pytest.approx(batched["per_text"], rel=1e-5)


def test_perplexity_truncation(tiny_gpt2) -> None:
    text = GENERAL_TEXTS[0]
    truncated = perplexity_of_texts(tiny_gpt2.model, tiny_gpt2.tokenizer, [text], max_length=8)
    ids = torch.tensor([tiny_gpt2.tokenizer(text)["input_ids"][:8]])
    with torch.no_grad():
        logprobs = torch.log_softmax(tiny_gpt2.model(input_ids=ids).logits.double(), dim=-1)
    expected = math.exp(-torch.gather(logprobs[:, :-1], 2, ids[:, 1:, None]).sum().item() / 8)
    assert truncated["num_tokens"] == [8]
    assert truncated["per_text"][0] == pytest.approx(expected, rel=1e-5)


def test_resolve_me_ppl(shared_dir, tmp_path) -> None:
    fallback = resolve_me_ppl(None)
    assert fallback.definition == FALLBACK_DEFINITION == "general_text_fallback"
    assert 15 <= len(fallback.texts) <= 30 and len(set(fallback.texts)) == len(fallback.texts)
    me_ppl = resolve_me_ppl(shared_dir / "data" / "me-ppl" / "ME-PPL_50.json")
    assert me_ppl.definition == "me_ppl_50" and len(me_ppl.texts) == 50
    assert me_ppl.texts[0] == load_me_ppl(shared_dir / "data" / "me-ppl" / "ME-PPL_50.json")[0]
    with pytest.raises(DataError, match="does not exist"):
        resolve_me_ppl(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"Corpus": "x"}]')
    with pytest.raises(DataError, match="Text"):
        load_me_ppl(bad)


# --------------------------------------------------------------------------- SmolLM2 (once)


@pytest.mark.slow
def test_smollm2_unedited_prefers_the_truth(smollm2) -> None:
    def fact(case_id: str, subject: str, prompt: str, true: str, new: str, paraphrases, neighbors) -> EditRecord:
        return EditRecord(
            case_id=case_id, subject=subject, prompt=prompt, target_new=new, target_true=true,
            paraphrase_prompts=tuple(paraphrases),
            neighborhood=tuple(NeighborPrompt(p, true) for p in neighbors),
        )

    records = [
        fact("1", "France", "The capital of {} is", "Paris", "Berlin",
             ["Everyone knows that the capital of France is", "France's capital city is"],
             ["The city of the Eiffel Tower is", "The Louvre museum is located in"]),
        fact("2", "Danielle Darrieux", "The mother tongue of {} is", "French", "Japanese",
             ["Danielle Darrieux, a native speaker of"],
             ["The mother tongue of Jean Gabin is", "The mother tongue of Alain Delon is"]),
        fact("3", "Japan", "The capital of {} is", "Tokyo", "Paris",
             ["Japan's capital city is"],
             ["The largest city in Japan is"]),
    ]
    rows = evaluate_records(smollm2.model, smollm2.tokenizer, records, batch_size=8)
    summary = summarize(rows)
    assert summary["efficacy_success"] == 0.0
    assert summary["efficacy_accuracy"] == 0.0
    assert summary["specificity_success"] >= 0.8

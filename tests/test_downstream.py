"""Downstream few-shot probes (SPEC Part D): metrics, prompts, data selection, batched scoring, lm-eval adapter."""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from edit_runner.errors import ConfigError, DataError
from edit_runner.evaluation.downstream.evaluate import evaluate_downstream, evaluate_downstream_detailed
from edit_runner.evaluation.downstream.metrics import (
    accuracy,
    classification_metrics,
    matthews_corrcoef,
    weighted_f1,
)
from edit_runner.evaluation.downstream.prompts import (
    build_prompt,
    build_prompts,
    model_max_length,
    parse_generation,
)
from edit_runner.evaluation.downstream.scoring import (
    generate_continuations,
    generate_continuations_loop,
    predict_from_nll,
    score_label_words,
    score_label_words_loop,
)
from edit_runner.evaluation.downstream.tasks import (
    DOWNSTREAM_TASKS,
    FEW_SHOT_POOL,
    build_task_file,
    get_task,
    load_task_items,
    load_task_split,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    path = Path(os.environ.get("EDIT_RUNNER_SHARED", REPO_ROOT.parent / "shared")).resolve()
    assert (path / "data" / "downstream").is_dir(), (
        f"reference data not found at {path}/data/downstream; set EDIT_RUNNER_SHARED to the shared directory"
    )
    return path


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models here are tiny: one intra-op thread is fastest and avoids OpenMP spin on busy CI hosts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return _shared() / "data" / "downstream"


@pytest.fixture(scope="module")
def stories():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _shared() / "models" / "stories260K"
    assert path.is_dir(), f"missing {path}"
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ------------------------------------------------------------------------------------------------
# metrics against hand-computed values
# ------------------------------------------------------------------------------------------------


def test_metrics_multiclass_with_invalid():
    labels = [0, 0, 1, 1, 1, 2]
    preds = [0, 1, 1, 1, -1, 2]
    # per class F1 = 2TP/(2TP+FP+FN): c0 = 2/3 (support 2), c1 = 4/6 (support 3), c2 = 1 (support 1)
    assert weighted_f1(labels, preds) == pytest.approx((2 * 2 / 3 + 3 * 2 / 3 + 1) / 6)  # 13/18
    assert accuracy(labels, preds) == pytest.approx(4 / 6)
    # MCC: (c*s - Σ t_k p_k) / sqrt((s² - Σp²)(s² - Σt²)) = (24 - 12) / sqrt(24 * 22)
    assert matthews_corrcoef(labels, preds) == pytest.approx(12 / math.sqrt(24 * 22))
    metrics = classification_metrics(labels, preds)
    assert metrics["invalid"] == 1.0
    assert metrics["f1"] == pytest.approx(13 / 18)


def test_metrics_binary():
    labels = [1, 1, 0, 0]
    preds = [1, 0, 0, 0]
    # c0: TP 2, FP 1, FN 0 -> 0.8; c1: TP 1, FP 0, FN 1 -> 2/3; both support 2
    assert weighted_f1(labels, preds) == pytest.approx((0.8 + 2 / 3) / 2)
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / sqrt(1*2*2*3)
    assert matthews_corrcoef(labels, preds) == pytest.approx(2 / math.sqrt(12))
    assert accuracy(labels, preds) == 0.75
    assert matthews_corrcoef([1, 1], [1, 1]) == 0.0  # undefined -> 0 like sklearn
    assert weighted_f1([0, 1], [1, 0]) == 0.0


def test_predict_from_nll_ties_are_invalid():
    nll = torch.tensor([[0.5, 1.0], [1.0, 0.2], [0.7, 0.7], [2.0, 1.0, 1.0, 3.0][:2]])
    assert predict_from_nll(nll) == [0, 1, -1, 1]
    four = torch.tensor([[1.0, 0.5, 0.5, 2.0], [3.0, 2.0, 1.0, 0.1]])
    assert predict_from_nll(four) == [-1, 3]


# ------------------------------------------------------------------------------------------------
# prompts, verbatim from SPEC Part D
# ------------------------------------------------------------------------------------------------


def _expected_question(task: str, x: dict) -> str:
    if task == "sst2":
        return "Review :" + x["sentence"] + "\nSentiment :"
    if task == "mrpc":
        return (
            "Are the sentences paraphrases of each other.\nSentence 1: "
            + x["sentence1"]
            + "\nSentence 2: "
            + x["sentence2"]
            + "\nAnswer:"
        )
    if task == "cola":
        return "Is this sentence linguistically acceptable?\nSentence: " + x["sentence"] + "\nAnswer: "
    if task == "rte":
        return x["sentence1"] + "\nquestion: " + x["sentence2"] + " True or False?\nanswer:"
    if task == "nli":
        return x["sentence1"] + " entails the " + x["sentence2"] + " True or False? Answer:"
    if task == "sentiment_analysis":
        return (
            "For each snippet of text,label the sentiment of the text as positive or negative."
            "The answer should be exact 'positive' or 'negative'. text: " + x["sentence"] + " answer:"
        )
    if task == "mmlu":
        c = x["choices"]
        return (
            "Question: "
            + x["question"]
            + "\n(A) "
            + c[0]
            + "\n(B) "
            + c[1]
            + "\n(C) "
            + c[2]
            + "\n(D) "
            + c[3]
            + "\nAnswer:"
        )
    if task == "dialogue":
        o = x["options"]
        return (
            "Q: Given the following: "
            + x["article"]
            + "\nWhich choice is correct?\n(A)"
            + o[0]
            + "\n(B)"
            + o[1]
            + "\n(C)"
            + o[2]
            + "\n(D)"
            + o[3]
            + "\nAnswer:"
        )
    raise AssertionError(task)


def _expected_shot(task: str, x: dict) -> str:
    if task == "sst2":
        word = "positive" if int(x["label"]) == 1 else "negative"
        return "Review : " + x["sentence"] + "\nSentiment : " + word + "\n"
    if task == "cola":
        word = "No" if int(x["label"]) == 0 else "Yes"
        return (
            "Is this sentence linguistically acceptable?\nSentence: "
            + x["sentence"]
            + "\nAnswer: "
            + word
            + "\n"
        )
    if task == "mrpc":
        word = "No" if int(x["label"]) == 0 else "Yes"
    elif task == "rte":
        word = "False" if int(x["label"]) == 0 else "True"
    elif task == "nli":
        word = "True" if x["label"] == "entailment" else "False"
    elif task == "sentiment_analysis":
        word = "positive" if x["label"] == "1" else "negative"
    elif task == "mmlu":
        word = "ABCD"[int(x["answer"])]
    elif task == "dialogue":
        return _expected_question(task, x) + " " + x["answers"] + "\n\n"
    else:
        raise AssertionError(task)
    return _expected_question(task, x) + " " + word + "\n"


@pytest.mark.parametrize(
    "task", ["sst2", "mrpc", "cola", "rte", "nli", "sentiment_analysis", "mmlu", "dialogue"]
)
def test_prompts_verbatim(task, data_dir):
    items = load_task_items(task, data_dir)
    item, shots = items[10], items[:3]
    prompt, used = build_prompt(task, item)
    assert (prompt, used) == (_expected_question(task, item), 0)
    prompt, used = build_prompt(task, item, shots)
    assert used == 3
    assert prompt == "".join(_expected_shot(task, s) for s in shots) + _expected_question(task, item)


def test_registry_names_and_label_words():
    assert DOWNSTREAM_TASKS.names() == [
        "sst2",
        "mrpc",
        "cola",
        "rte",
        "nli",
        "sentiment_analysis",
        "mmlu",
        "dialogue",
        "sst2_seed002",
        "mrpc_seed002",
        "cola_seed002",
        "rte_seed002",
    ]
    assert get_task("sst2").label_words == ("negative", "positive")
    assert get_task("rte").label_words == ("False", "True")
    with pytest.raises(ConfigError, match="sst2"):
        get_task("sst")


def test_few_shot_fitting_rule(stories, data_dir):
    model, tokenizer = stories
    items = load_task_items("sst2", data_dir)
    item, shots = items[10], items[:4]
    n_question = len(tokenizer(_expected_question("sst2", item))["input_ids"])
    shot_lens = [len(tokenizer(_expected_shot("sst2", s))["input_ids"]) for s in shots]
    gen_len = 3
    # room for exactly the first two shots
    max_length = n_question + gen_len + shot_lens[0] + shot_lens[1]
    prompt, used = build_prompt(
        "sst2", item, shots, tokenizer=tokenizer, max_length=max_length, gen_len=gen_len
    )
    assert used == 2
    assert prompt == _expected_shot("sst2", shots[0]) + _expected_shot("sst2", shots[1]) + _expected_question(
        "sst2", item
    )
    _, counts = build_prompts("sst2", [item], shots, tokenizer, max_length - 1, gen_len)
    assert counts == [1]
    assert model_max_length(model) == 512


def test_parse_generation():
    assert parse_generation("sst2", "Review :x\nSentiment : Positive.", "Review :x\nSentiment :") == 1
    assert parse_generation("sst2", "Review :x\nSentiment : bad", "Review :x\nSentiment :") == -1
    assert parse_generation("rte", "a\nquestion: b True or False?\nanswer: false", "") == 0
    assert parse_generation("nli", "x entails the y True or False? Answer: True", "") == 1
    assert parse_generation("mrpc", "...\nAnswer: No", "") == 0
    prompt = "Question: q\n(A) a\n(B) b\n(C) c\n(D) d\nAnswer:"
    assert parse_generation("mmlu", prompt + " C\n", prompt) == 2
    assert parse_generation("dialogue", prompt + " C", prompt) == -1


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(DataError) as info:
        load_task_items("mrpc", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "mrpc.json") in message and "sentence1" in message and "build_task_file" in message


@pytest.mark.parametrize("task", ["sst2", "mrpc", "rte", "nli", "mmlu", "dialogue"])
def test_balanced_subset(task, data_dir):
    spec = get_task(task)
    split = load_task_split(task, data_dir, num_items=200, num_shots=2)
    counts = Counter(spec.label_of(x) for x in split.tests)
    assert len(split.tests) == 200
    assert set(counts.values()) == {200 // len(spec.label_words)}
    assert split.test_indices == sorted(split.test_indices) and min(split.test_indices) >= FEW_SHOT_POOL
    assert len(split.shots) == 2
    again = load_task_split(task, data_dir, num_items=200, num_shots=2)
    assert again.test_indices == split.test_indices
    other = load_task_split(task, data_dir, num_items=200, seed=1)
    assert Counter(spec.label_of(x) for x in other.tests) == counts


def test_first_and_unseeded_selection(data_dir):
    first = load_task_split("sst2", data_dir, num_items=7, selection="first")
    assert first.test_indices == list(range(10, 17))
    items = load_task_items("sst2", data_dir)
    plain = load_task_split("sst2", data_dir, num_items=4, seed=None)
    labels = [int(x["label"]) for x in items[10:]]
    expected = sorted(
        [i for i, y in enumerate(labels) if y == 0][:2] + [i for i, y in enumerate(labels) if y == 1][:2]
    )
    assert plain.test_indices == [10 + i for i in expected]
    with pytest.raises(ConfigError):
        load_task_split("sst2", data_dir, num_shots=11)


def test_builder_offline_and_unsupported(tmp_path):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub (offline mode)")

    with pytest.raises(DataError, match="needs the network"):
        build_task_file("sst2", tmp_path, load_dataset=offline)
    with pytest.raises(DataError, match="dialogue"):
        build_task_file("dialogue", tmp_path)


def test_builder_with_fake_hub(tmp_path):
    rows = [{"sentence": f"s{i}", "label": i % 2, "idx": i} for i in range(40)]
    path = build_task_file("sentiment_analysis", tmp_path, seed=3, load_dataset=lambda *a, **k: rows)
    items = load_task_items("sentiment_analysis", tmp_path)
    assert path == tmp_path / "sentiment_analysis.json"
    assert Counter(x["label"] for x in items) == {"0": 20, "1": 20}
    assert Counter(x["label"] for x in items[:10]) == {"0": 5, "1": 5}


# ------------------------------------------------------------------------------------------------
# batched scoring == per-item loop
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "shots"), [("sst2", 2), ("mmlu", 0)])
def test_batched_probability_scorer_matches_loop(stories, data_dir, task, shots):
    model, tokenizer = stories
    split = load_task_split(task, data_dir, num_items=20, num_shots=shots)
    prompts, _ = build_prompts(task, split.tests, split.shots, tokenizer, model_max_length(model))
    words = get_task(task).label_words
    batched = score_label_words(model, tokenizer, prompts, words, batch_size=6)
    loop = score_label_words_loop(model, tokenizer, prompts, words)
    assert batched.shape == (20, len(words))
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=0)
    assert predict_from_nll(batched) == predict_from_nll(loop)


def test_batched_scorer_single_token_words_gpt2(data_dir):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    torch.manual_seed(0)
    tokenizer = GPT2TokenizerFast.from_pretrained(str(_shared() / "models" / "gpt2-tokenizer"))
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256, vocab_size=len(tokenizer))
    ).eval()
    split = load_task_split("mrpc", data_dir, num_items=10, num_shots=2)
    prompts, used = build_prompts("mrpc", split.tests, split.shots, tokenizer, 256)
    assert min(used) < 2  # the 256-token context drops shots for some items
    batched = score_label_words(model, tokenizer, prompts, ("No", "Yes"), batch_size=4)
    loop = score_label_words_loop(model, tokenizer, prompts, ("No", "Yes"))
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=0)


def test_batched_generation_matches_loop(stories, data_dir):
    model, tokenizer = stories
    split = load_task_split("rte", data_dir, num_items=6, num_shots=1)
    prompts, _ = build_prompts("rte", split.tests, split.shots, tokenizer, 512)
    batched = generate_continuations(model, tokenizer, prompts, batch_size=4)
    loop = generate_continuations_loop(model, tokenizer, prompts)
    assert batched == loop
    assert all(full.startswith(prompt) for full, prompt in batched)


def test_evaluate_downstream_end_to_end(stories, data_dir):
    model, tokenizer = stories
    model.train()
    results = evaluate_downstream(
        model, tokenizer, ["cola", "dialogue"], data_dir, num_items=4, mode="both"
    )
    assert model.training  # training flag restored
    model.eval()
    assert set(results) == {"cola", "dialogue"}
    for metrics in results.values():
        assert metrics["num_items"] == 4
        for key in ("prob_f1", "prob_accuracy", "gen_f1", "gen_accuracy"):
            assert 0.0 <= metrics[key] <= 1.0
        assert -1.0 <= metrics["prob_mcc"] <= 1.0
    detailed = evaluate_downstream_detailed(model, tokenizer, ["sst2"], data_dir, num_items=4)
    assert len(detailed["sst2"].prob_predictions) == 4 and len(detailed["sst2"].label_nll[0]) == 2
    with pytest.raises(ConfigError):
        evaluate_downstream(model, tokenizer, ["sst2"], data_dir, num_items=4, mode="greedy")
    with pytest.raises(ConfigError):
        evaluate_downstream(model, tokenizer, ["sst-2"], data_dir, num_items=4)


# ------------------------------------------------------------------------------------------------
# lm-eval adapter
# ------------------------------------------------------------------------------------------------


def test_lm_eval_missing_package_error(monkeypatch):
    from edit_runner.evaluation import lm_eval_adapter

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", None)
    with pytest.raises(lm_eval_adapter.MissingDependencyError, match=r'pip install "edit-runner\[lm-eval\]"'):
        lm_eval_adapter.run_lm_eval(torch.nn.Linear(2, 2), None, ["hellaswag"], limit=5, batch_size=2)

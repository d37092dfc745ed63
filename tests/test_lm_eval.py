"""lm-evaluation-harness for real: tasks defined here on local JSONL data, run offline through
:func:`run_lm_eval` on an edited tiny GPT-2 and checked against the project's own scorer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edit_runner.data.record import EditRecord
from edit_runner.editing.context import ContextTemplates
from edit_runner.evaluation.lm_eval_adapter import run_lm_eval
from edit_runner.models.scoring import score_targets
from edit_runner.models.tokens import target_token_ids
from editing_helpers import algo_config, make_editor

# lm-eval is a dev extra (pyproject [dev]); without it run_lm_eval fails with the install command.

RECORDS = [
    EditRecord("r0", "Danielle Darrieux", "The mother tongue of {} is", "English", "French"),
    EditRecord("r1", "Edwin of Northumbria", "The official religion of {} is", "Islam", "Christianity"),
    EditRecord("r2", "Toko Yasuda", "{} plays the instrument", "piano", "guitar"),
    EditRecord("r3", "Apple A5", "{} was created by", "Google", "Apple"),
]
#: Items the edit did not target (a random model answers them arbitrarily).
OTHER = [("The capital of France is", "Paris"), ("Water is made of", "hydrogen"), ("The sky is", "blue")]


def _task_yaml(name: str, data: Path, output_type: str, metrics: list[tuple[str, str]], extra: str = "") -> str:
    metric_list = "".join(
        f"  - metric: {metric}\n    aggregation: {aggregation}\n    higher_is_better: true\n"
        for metric, aggregation in metrics
    )
    return (
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {data.parent / 'hf-cache'}\n"
        "test_split: test\n"
        f"output_type: {output_type}\n"
        'doc_to_text: "{{prompt}}"\n'
        'target_delimiter: " "\n'
        f"{extra}metric_list:\n{metric_list}"
    )


@pytest.fixture()
def offline(monkeypatch, tmp_path: Path) -> None:
    """Nothing may reach the network: hub, datasets and transformers offline, caches in tmp_path."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def test_lm_eval_task_on_an_edited_model_agrees_with_the_scorer(tiny_gpt2, offline, tmp_path: Path, one_thread) -> None:
    model, tokenizer = tiny_gpt2.model, tiny_gpt2.tokenizer
    algo = algo_config("ft", layers=[1], ft_lr=5.0e-2, ft_num_steps=15)
    make_editor(tiny_gpt2, algo, ContextTemplates(groups=(("{}",),)), None).edit(RECORDS)

    items = [(r.rewrite_prompt, r.target_new, r.target_true) for r in RECORDS] + [(p, t, "banana") for p, t in OTHER]
    data = tmp_path / "items.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p, "target": t, "choices": [t, o], "label": 0}) + "\n" for p, t, o in items)
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    # loglikelihood tasks use doc_to_target verbatim (target_delimiter is for multiple_choice only)
    (tasks / "ll.yaml").write_text(
        _task_yaml("er_ll", data, "loglikelihood", [("acc", "mean"), ("perplexity", "perplexity")],
                   'doc_to_target: " {{target}}"\n')
    )
    (tasks / "mc.yaml").write_text(
        _task_yaml("er_mc", data, "multiple_choice", [("acc", "mean")],
                   'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n')
    )

    results = run_lm_eval(
        model, tokenizer, ["er_ll", "er_mc"], batch_size=4, include_path=tasks, include_default_tasks=False,
        bootstrap_iters=0,
    )

    prompts = [p for p, _, _ in items]
    correct = score_targets(model, tokenizer, prompts, [target_token_ids(tokenizer, t) for _, t, _ in items])
    other = score_targets(model, tokenizer, prompts, [target_token_ids(tokenizer, o) for _, _, o in items])
    greedy = sum(s.all_argmax for s in correct) / len(items)
    assert 0 < sum(s.all_argmax for s in correct[: len(RECORDS)])  # the edit made some targets greedy
    assert results["er_ll"]["acc,none"] == pytest.approx(greedy)
    mean_ll = sum(sum(s.token_logprobs) for s in correct) / len(items)
    assert results["er_ll"]["perplexity,none"] == pytest.approx(math.exp(-mean_ll), rel=1e-4)
    assert math.isnan(results["er_ll"]["acc_stderr,none"])  # bootstrap_iters=0: no stderr
    wins = sum(sum(c.token_logprobs) > sum(o.token_logprobs) for c, o in zip(correct, other)) / len(items)
    assert results["er_mc"]["acc,none"] == pytest.approx(wins)

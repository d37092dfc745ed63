"""Downstream few-shot evaluation (SPEC Part D: the EMMET / AlphaEdit / ENCORE ``glue_eval`` probes).

:func:`evaluate_downstream` reads each task's data (:mod:`.tasks`), builds its few-shot prompts
(:mod:`.prompts`), predicts every item by label-word probability and/or greedy generation
(:mod:`.scoring`) and scores the predictions (:mod:`.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edit_runner.errors import ConfigError
from edit_runner.evaluation.downstream.metrics import classification_metrics
from edit_runner.evaluation.downstream.prompts import (
    DEFAULT_GEN_LEN,
    build_prompts,
    model_max_length,
    parse_generation,
)
from edit_runner.evaluation.downstream.scoring import (
    generate_continuations,
    predict_from_nll,
    score_label_words,
)
from edit_runner.evaluation.downstream.tasks import get_task, load_task_split

MODES = ("probability", "generation", "both")
"""What :func:`evaluate_downstream` predicts: label-word probabilities, greedy generations or both."""


@dataclass
class TaskResult:
    """Metrics and per-item predictions of one task."""

    task: str
    metrics: dict[str, float]
    item_indices: list[int]
    labels: list[int]
    shots_used: list[int]
    prob_predictions: list[int] = field(default_factory=list)
    label_nll: list[list[float]] = field(default_factory=list)
    gen_predictions: list[int] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)


def evaluate_task(
    model: Any,
    tokenizer: Any,
    task: str,
    data_dir: str | Path,
    *,
    num_items: int | None = 200,
    num_shots: int = 0,
    batch_size: int = 16,
    max_length: int | None = None,
    mode: str = "probability",
    gen_len: int = DEFAULT_GEN_LEN,
    selection: str = "balanced",
    seed: int | None = 0,
) -> TaskResult:
    """Metrics and per-item predictions of one task on ``num_items`` test items with ``num_shots`` shots.

    Metrics: ``num_items``, ``mean_shots`` and, per mode, ``prob_f1 / prob_accuracy / prob_mcc /
    prob_invalid`` (probability prediction = the reference's ``f1_new``) and ``gen_f1 / gen_accuracy /
    gen_mcc / gen_invalid`` (generation prediction = the reference's headline ``f1``). ``max_length``
    defaults to the model config's context length; ``batch_size`` counts sequences per forward pass;
    ``selection`` and ``seed`` choose the test items (:func:`~.tasks.select_test_indices`).
    The model is used in eval mode under ``torch.no_grad`` and its training flag is restored.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown downstream mode {mode!r}; valid: {', '.join(MODES)}")
    spec = get_task(task)
    data = load_task_split(
        task, data_dir, num_items=num_items, num_shots=num_shots, selection=selection, seed=seed
    )
    limit = max_length if max_length is not None else model_max_length(model)
    prompts, used = build_prompts(task, data.tests, data.shots, tokenizer, limit, gen_len)
    labels = [spec.label_of(x) for x in data.tests]
    result = TaskResult(task=task, metrics={}, item_indices=data.test_indices, labels=labels, shots_used=used)
    metrics: dict[str, float] = {"num_items": float(len(labels)), "mean_shots": sum(used) / max(1, len(used))}
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        if mode in ("probability", "both"):
            nll = score_label_words(
                model, tokenizer, prompts, spec.label_words, batch_size=batch_size, max_length=limit
            )
            result.label_nll = nll.tolist()
            result.prob_predictions = predict_from_nll(nll)
            metrics.update(
                {f"prob_{k}": v for k, v in classification_metrics(labels, result.prob_predictions).items()}
            )
        if mode in ("generation", "both"):
            texts = generate_continuations(
                model, tokenizer, prompts, gen_len=gen_len, batch_size=batch_size, max_length=limit
            )
            result.gen_predictions = [parse_generation(task, full, prompt) for full, prompt in texts]
            result.generations = [full.removeprefix(prompt) for full, prompt in texts]
            metrics.update(
                {f"gen_{k}": v for k, v in classification_metrics(labels, result.gen_predictions).items()}
            )
    finally:
        if was_training:
            model.train()
    result.metrics = metrics
    return result


def evaluate_downstream_detailed(
    model: Any,
    tokenizer: Any,
    tasks: Iterable[str],
    data_dir: str | Path,
    **options: Any,
) -> dict[str, TaskResult]:
    """:func:`evaluate_downstream` keeping per-item predictions, NLLs and generations."""
    task_list = list(tasks)
    for task in task_list:
        get_task(task)  # fail on a typo before any model work
    return {task: evaluate_task(model, tokenizer, task, data_dir, **options) for task in task_list}


def evaluate_downstream(
    model: Any,
    tokenizer: Any,
    tasks: Iterable[str],
    data_dir: str | Path,
    **options: Any,
) -> dict[str, dict[str, float]]:
    """Few-shot downstream metrics per task: ``{task: {metric: value}}``.

    ``options`` are the keyword arguments of :func:`evaluate_task` (``num_items``, ``num_shots``,
    ``batch_size``, ``max_length``, ``mode``, ``gen_len``, ``selection``, ``seed``), which also
    lists the metrics. Every task name is checked before any model work.
    """
    results = evaluate_downstream_detailed(model, tokenizer, tasks, data_dir, **options)
    return {task: r.metrics for task, r in results.items()}

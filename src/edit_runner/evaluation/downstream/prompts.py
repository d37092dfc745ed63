"""Downstream prompts (SPEC Part D): few-shot prompts fitted to the context, and reading answers back.

A prompt is the task's shot lines (few-shot pool items, in order, while they fit) followed by the
test item's question. Token counts are ``tokenizer(text)["input_ids"]`` (special tokens as the
tokenizer adds them, so a Llama BOS counts as in the reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edit_runner.errors import ConfigError
from edit_runner.evaluation.downstream.tasks import get_task
from edit_runner.models.layout import context_limit

DEFAULT_GEN_LEN = 3
"""Greedy tokens generated per item (SPEC D ``gen_len``)."""


def model_max_length(model: Any) -> int:
    """The context length from the model config (:func:`~edit_runner.models.layout.context_limit`).

    A ConfigError when the config declares none: pass ``max_length=`` explicitly then.
    """
    limit = context_limit(model)
    if limit is None:
        raise ConfigError(
            "cannot read the context length from the model config (no max_position_embeddings / n_positions); "
            "pass max_length= explicitly"
        )
    return limit


def _token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def build_prompt(
    task: str,
    item: Mapping[str, Any],
    shots: Sequence[Mapping[str, Any]] = (),
    *,
    tokenizer: Any = None,
    max_length: int | None = None,
    gen_len: int = DEFAULT_GEN_LEN,
) -> tuple[str, int]:
    """The full prompt for ``item`` and how many shots it holds.

    Shots are prepended in order while they fit: the budget is ``max_length - len(tok(question)) -
    gen_len`` tokens (token counts as ``tokenizer(text)["input_ids"]``, like the reference), each
    shot subtracts its own count, and the first shot that leaves fewer than the task's ``fit_margin``
    tokens (0; 5 for dialogue) stops the loop. Without a tokenizer or ``max_length`` every shot is used.
    """
    spec = get_task(task)
    question = spec.question_text(item)
    shot_texts = [spec.shot_text(s) for s in shots]
    if tokenizer is None or max_length is None:
        return "".join(shot_texts) + question, len(shot_texts)
    used = _fit_shots(
        _token_count(tokenizer, question),
        [_token_count(tokenizer, s) for s in shot_texts],
        max_length,
        gen_len,
        spec.fit_margin,
    )
    return "".join(shot_texts[:used]) + question, used


def _fit_shots(
    question_len: int, shot_lens: Sequence[int], max_length: int, gen_len: int, margin: int
) -> int:
    remaining = max_length - question_len - gen_len
    used = 0
    for n in shot_lens:
        remaining -= n
        if remaining < margin:
            break
        used += 1
    return used


def build_prompts(
    task: str,
    tests: Sequence[Mapping[str, Any]],
    shots: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    max_length: int,
    gen_len: int = DEFAULT_GEN_LEN,
) -> tuple[list[str], list[int]]:
    """:func:`build_prompt` for many items, tokenizing the shots once and the questions in one call."""
    spec = get_task(task)
    questions = [spec.question_text(x) for x in tests]
    shot_texts = [spec.shot_text(s) for s in shots]
    if not questions:
        return [], []
    question_lens = [len(ids) for ids in tokenizer(questions)["input_ids"]]
    shot_lens = [len(ids) for ids in tokenizer(shot_texts)["input_ids"]] if shot_texts else []
    prompts, used_counts = [], []
    for question, q_len in zip(questions, question_lens):
        used = _fit_shots(q_len, shot_lens, max_length, gen_len, spec.fit_margin)
        prompts.append("".join(shot_texts[:used]) + question)
        used_counts.append(used)
    return prompts, used_counts


def parse_generation(task: str, full_text: str, prompt_text: str) -> int:
    """The class read from a generation (SPEC D), or -1 when no answer word is found.

    ``full_text`` is the decoded prompt + continuation, ``prompt_text`` the decoded prompt (both
    with special tokens skipped), as in the reference.
    """
    spec = get_task(task)
    if spec.answer_marker is not None:
        answer = full_text.split(spec.answer_marker)[-1].strip()
    else:
        answer = full_text.replace(prompt_text, "")
    answer = answer.lower()
    for needle, label in spec.answer_checks:
        if needle in answer:
            return label
    return -1

"""Downstream few-shot evaluation (SPEC Part D: the EMMET / AlphaEdit / ENCORE ``glue_eval`` probes).

Eight tasks (``sst2``, ``mrpc``, ``cola``, ``rte``, ``nli``, ``sentiment_analysis``, ``mmlu``,
``dialogue``) are registered in :data:`DOWNSTREAM_TASKS` with their prompt templates (verbatim from
SPEC D / the reference code), label words and label mapping.

Data: ``<data_dir>/<task>.json`` is a JSON list of dicts in the reference pickles' order. The first
:data:`FEW_SHOT_POOL` items are the few-shot pool; test items start after it. A test subset of
``num_items`` items is chosen deterministically (balanced per label by default).

Two predictions per item, both batched:

* **probability** (the reference's ``f1_new``; our ``prob_*`` metrics): for each label word ``w``
  the mean over its tokens of ``-log p`` of ``tok(" " + w)`` after the prompt; the label with the
  strictly highest ``exp(-mean NLL)`` wins, ties give ``-1``. Rows are left padded with explicit
  position ids, and only the last few positions' logits are computed (``logits_to_keep``).
* **generation** (the reference's ``f1``; our ``gen_*`` metrics): greedy ``gen_len`` new tokens
  after the left-padded prompt, parsed as in the reference (:func:`parse_generation`).

Metrics (weighted F1, accuracy, MCC, invalid count) are implemented here without sklearn and match
``sklearn.metrics.f1_score(average="weighted")`` / ``matthews_corrcoef``.

Prompt tokens are ``tokenizer(prompt)["input_ids"]`` (special tokens as the tokenizer adds them, so
a Llama BOS is kept as in the reference), label-word tokens are ``tok(" " + w)`` without special
tokens (SPEC B §1). The scored sequence is the concatenation of the two; the reference tokenizes
``f"{prompt} {w}"`` jointly, which gives the same ids whenever the tokenizer splits at the space
(GPT-2/Llama BPE do).
"""

from __future__ import annotations

import inspect
import json
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edit_runner.errors import ConfigError, DataError
from edit_runner.models.tokens import target_token_ids
from edit_runner.registry import Registry

FEW_SHOT_POOL = 10
"""The first this-many items of every task file are the few-shot pool (reference ``FEW_SHOT_TEST_SPLIT``)."""

DEFAULT_GEN_LEN = 3
"""Greedy tokens generated per item (SPEC D ``gen_len``)."""

MODES = ("probability", "generation", "both")


# --------------------------------------------------------------------------------------------------
# Task registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownstreamTask:
    """One few-shot classification probe.

    ``question`` and ``shot`` are ``str.format`` templates over :meth:`fields` (``{answer}`` in
    ``shot`` is the label word of the shot's label). ``label_words[c]`` is the word of class ``c``.
    Generation parsing: the text after the last ``answer_marker`` of the decoded prompt+continuation
    (or, with no marker, the continuation alone) is lower-cased and searched for each substring of
    ``answer_checks`` in order.
    """

    name: str
    question: str
    shot: str
    label_words: tuple[str, ...]
    required_fields: tuple[str, ...]
    label_of: Callable[[Mapping[str, Any]], int]
    answer_checks: tuple[tuple[str, int], ...]
    answer_marker: str | None
    list_fields: tuple[tuple[str, str], ...] = ()
    fit_margin: int = 0
    hf_source: tuple[str, str, str] | None = None
    hf_label_format: Callable[[int], Any] | None = None

    def fields(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Template fields of ``item``; list fields (MMLU choices, dialogue options) become ``c0``.. / ``o0``.."""
        values = dict(item)
        for source, prefix in self.list_fields:
            for i, value in enumerate(item[source]):
                values[f"{prefix}{i}"] = value
        return values

    def question_text(self, item: Mapping[str, Any]) -> str:
        """The question part of the prompt for ``item`` (no few-shot context)."""
        return self.question.format_map(self.fields(item))

    def shot_text(self, item: Mapping[str, Any]) -> str:
        """One few-shot line for ``item``, ending with its label word and the line terminator."""
        return self.shot.format_map({**self.fields(item), "answer": self.label_words[self.label_of(item)]})


DOWNSTREAM_TASKS: Registry[DownstreamTask] = Registry("downstream task")


def _int_label(item: Mapping[str, Any]) -> int:
    return int(item["label"])


def _register(task: DownstreamTask) -> None:
    DOWNSTREAM_TASKS.register(task.name, task)


_POS_NEG = (("positive", 1), ("negative", 0))
_YES_NO = (("yes", 1), ("no", 0))
_LETTERS = (("a\n", 0), ("b\n", 1), ("c\n", 2), ("d\n", 3))

_register(
    DownstreamTask(
        name="sst2",
        question="Review :{sentence}\nSentiment :",
        shot="Review : {sentence}\nSentiment : {answer}\n",
        label_words=("negative", "positive"),
        required_fields=("sentence", "label"),
        label_of=_int_label,
        answer_checks=_POS_NEG,
        answer_marker="Sentiment :",
        hf_source=("nyu-mll/glue", "sst2", "validation"),
    )
)
_MRPC_Q = (
    "Are the sentences paraphrases of each other.\nSentence 1: {sentence1}\nSentence 2: {sentence2}\nAnswer:"
)
_register(
    DownstreamTask(
        name="mrpc",
        question=_MRPC_Q,
        shot=_MRPC_Q + " {answer}\n",
        label_words=("No", "Yes"),
        required_fields=("sentence1", "sentence2", "label"),
        label_of=_int_label,
        answer_checks=_YES_NO,
        answer_marker="Answer:",
        hf_source=("nyu-mll/glue", "mrpc", "validation"),
    )
)
_register(
    DownstreamTask(
        name="cola",
        # The question ends with "Answer: " (trailing space), the shot line with "Answer: {answer}".
        question="Is this sentence linguistically acceptable?\nSentence: {sentence}\nAnswer: ",
        shot="Is this sentence linguistically acceptable?\nSentence: {sentence}\nAnswer: {answer}\n",
        label_words=("No", "Yes"),
        required_fields=("sentence", "label"),
        label_of=_int_label,
        answer_checks=_YES_NO,
        answer_marker="Answer:",
        hf_source=("nyu-mll/glue", "cola", "validation"),
    )
)
_RTE_Q = "{sentence1}\nquestion: {sentence2} True or False?\nanswer:"
_register(
    DownstreamTask(
        name="rte",
        question=_RTE_Q,
        shot=_RTE_Q + " {answer}\n",
        # Reference mapping: label 0 -> "False", 1 -> "True" (GLUE RTE's own ids: 0 = entailment).
        label_words=("False", "True"),
        required_fields=("sentence1", "sentence2", "label"),
        label_of=_int_label,
        answer_checks=(("false", 0), ("true", 1)),
        answer_marker="answer:",
        hf_source=("nyu-mll/glue", "rte", "validation"),
    )
)
_NLI_Q = "{sentence1} entails the {sentence2} True or False? Answer:"
_register(
    DownstreamTask(
        name="nli",
        question=_NLI_Q,
        shot=_NLI_Q + " {answer}\n",
        label_words=("False", "True"),
        required_fields=("sentence1", "sentence2", "label"),
        label_of=lambda item: 1 if item["label"] == "entailment" else 0,
        answer_checks=(("true", 1), ("false", 0)),
        answer_marker="True or False? Answer:",
        hf_source=("nyu-mll/glue", "rte", "train"),
        hf_label_format=lambda label: "entailment" if label == 0 else "not_entailment",
    )
)
_SA_Q = (
    "For each snippet of text,label the sentiment of the text as positive or negative."
    "The answer should be exact 'positive' or 'negative'. text: {sentence} answer:"
)
_register(
    DownstreamTask(
        name="sentiment_analysis",
        question=_SA_Q,
        shot=_SA_Q + " {answer}\n",
        label_words=("negative", "positive"),
        required_fields=("sentence", "label"),
        label_of=_int_label,  # labels are the strings "0" / "1"
        answer_checks=_POS_NEG,
        answer_marker="answer:",
        hf_source=("nyu-mll/glue", "sst2", "validation"),
        hf_label_format=str,
    )
)
_MMLU_Q = "Question: {question}\n(A) {c0}\n(B) {c1}\n(C) {c2}\n(D) {c3}\nAnswer:"
_register(
    DownstreamTask(
        name="mmlu",
        question=_MMLU_Q,
        shot=_MMLU_Q + " {answer}\n",
        label_words=("A", "B", "C", "D"),
        required_fields=("question", "choices", "answer"),
        label_of=lambda item: int(item["answer"]),
        answer_checks=_LETTERS,
        answer_marker=None,
        list_fields=(("choices", "c"),),
        hf_source=("cais/mmlu", "all", "test"),
    )
)
_DIALOGUE_Q = (
    "Q: Given the following: {article}\nWhich choice is correct?\n(A){o0}\n(B){o1}\n(C){o2}\n(D){o3}\nAnswer:"
)
_register(
    DownstreamTask(
        name="dialogue",
        question=_DIALOGUE_Q,
        # The reference's dialogue shots end with a blank line ("\n\n"), unlike the other tasks.
        shot=_DIALOGUE_Q + " {answer}\n\n",
        label_words=("A", "B", "C", "D"),
        required_fields=("article", "options", "answers"),
        label_of=lambda item: "ABCD".index(str(item["answers"]).strip()),
        answer_checks=_LETTERS,
        answer_marker=None,
        list_fields=(("options", "o"),),
        fit_margin=5,  # the reference stops adding dialogue shots when fewer than 5 tokens remain
    )
)


def get_task(name: str) -> DownstreamTask:
    """The registered task ``name`` (a ConfigError lists the valid names)."""
    return DOWNSTREAM_TASKS.get(name)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def task_file(task: str, data_dir: str | Path) -> Path:
    """``<data_dir>/<task>.json``."""
    return Path(data_dir) / f"{task}.json"


def load_task_items(task: str, data_dir: str | Path) -> list[dict[str, Any]]:
    """All items of ``<data_dir>/<task>.json`` (few-shot pool first), validated against the task's fields."""
    spec = get_task(task)
    path = task_file(task, data_dir)
    if not path.is_file():
        raise DataError(
            f"downstream data for task {task!r} not found: {path} does not exist. Put there a JSON list "
            f"of dicts with fields {', '.join(spec.required_fields)} (the EMMET/AlphaEdit/ENCORE "
            f"glue_eval/dataset/{task}.pkl converted to JSON; a CI copy lives in ../shared/data/downstream), "
            f"set eval.downstream.data_dir to the directory that holds it, or build it while online with "
            f"edit_runner.evaluation.downstream.build_task_file({task!r}, {str(path.parent)!r})."
        )
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise DataError(f"{path}: expected a JSON list of objects")
    for i, item in enumerate(items):
        missing = [f for f in spec.required_fields if f not in item]
        if missing:
            raise DataError(f"{path}: item {i} lacks field(s) {', '.join(missing)}")
        try:
            label = spec.label_of(item)
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{path}: item {i} has an unreadable label ({exc})") from exc
        if not 0 <= label < len(spec.label_words):
            raise DataError(f"{path}: item {i} has label {label} outside 0..{len(spec.label_words) - 1}")
    if len(items) <= FEW_SHOT_POOL:
        raise DataError(f"{path}: {len(items)} items; need more than the {FEW_SHOT_POOL} few-shot pool items")
    return items


def select_test_indices(
    labels: Sequence[int],
    num_items: int | None,
    *,
    num_labels: int,
    selection: str = "balanced",
    seed: int | None = 0,
) -> list[int]:
    """Indices (into ``labels``, ascending) of the test subset.

    ``selection="first"``: the first ``num_items`` (the reference's ``number_of_tests``).
    ``selection="balanced"``: ``num_items // num_labels`` items of every label (``num_items`` is
    rounded down to a multiple of the label count), chosen by ``random.Random(seed)`` per label, or
    the first ones per label when ``seed`` is None; returned in file order. ``num_items=None``: all.
    """
    if num_items is None or (selection == "first" and num_items >= len(labels)):
        return list(range(len(labels)))
    if num_items <= 0:
        raise ConfigError(f"num_items must be positive, got {num_items}")
    if selection == "first":
        return list(range(num_items))
    if selection != "balanced":
        raise ConfigError(f"unknown selection {selection!r}; valid: balanced, first")
    per_label = num_items // num_labels
    if per_label == 0:
        raise ConfigError(f"num_items={num_items} is smaller than the number of labels ({num_labels})")
    chosen: list[int] = []
    for label in range(num_labels):
        pool = [i for i, y in enumerate(labels) if y == label]
        if len(pool) < per_label:
            raise DataError(
                f"balanced subset needs {per_label} items of label {label} but only {len(pool)} test items have it; "
                "lower num_items or use selection='first'"
            )
        if seed is None:
            chosen.extend(pool[:per_label])
        else:
            chosen.extend(random.Random(f"{seed}:{label}").sample(pool, per_label))
    return sorted(chosen)


@dataclass
class TaskData:
    """Few-shot items and selected test items of one task (``test_indices`` index the task file)."""

    task: str
    shots: list[dict[str, Any]]
    tests: list[dict[str, Any]]
    test_indices: list[int]


def load_task_split(
    task: str,
    data_dir: str | Path,
    *,
    num_items: int | None = 200,
    num_shots: int = 0,
    selection: str = "balanced",
    seed: int | None = 0,
) -> TaskData:
    """Read a task file and return its first ``num_shots`` pool items and the selected test items."""
    if not 0 <= num_shots <= FEW_SHOT_POOL:
        raise ConfigError(f"num_shots must be in 0..{FEW_SHOT_POOL}, got {num_shots}")
    spec = get_task(task)
    items = load_task_items(task, data_dir)
    pool, rest = items[:FEW_SHOT_POOL], items[FEW_SHOT_POOL:]
    labels = [spec.label_of(x) for x in rest]
    chosen = select_test_indices(
        labels, num_items, num_labels=len(spec.label_words), selection=selection, seed=seed
    )
    return TaskData(
        task=task,
        shots=pool[:num_shots],
        tests=[rest[i] for i in chosen],
        test_indices=[FEW_SHOT_POOL + i for i in chosen],
    )


def build_task_file(
    task: str,
    data_dir: str | Path,
    *,
    num_items: int | None = None,
    seed: int = 0,
    load_dataset: Callable[..., Any] | None = None,
) -> Path:
    """Build ``<data_dir>/<task>.json`` from the Hugging Face GLUE / MMLU datasets (needs the network).

    The split named by the task's ``hf_source`` is grouped by label; every group is shuffled with
    ``random.Random(seed)`` and truncated to the smallest group's size (or ``num_items // labels``),
    then the groups are interleaved so that the few-shot pool (first 10 items) is balanced too. These
    files are not the reference pickles' exact subsets; use the originals for comparisons with papers.
    ``dialogue`` has no builder (the reference subset's source is not on the hub in this form).
    """
    spec = get_task(task)
    if spec.hf_source is None:
        raise DataError(
            f"task {task!r} cannot be built from the Hugging Face hub; provide {task_file(task, data_dir)} "
            "(the reference glue_eval/dataset pickle converted to a JSON list)"
        )
    path_name, config, split = spec.hf_source
    if load_dataset is None:
        try:
            from datasets import load_dataset as hf_load_dataset
        except ImportError as exc:  # pragma: no cover - datasets is a core dependency
            raise DataError("building downstream data needs the `datasets` package") from exc
        load_dataset = hf_load_dataset
    try:
        rows = load_dataset(path_name, config, split=split)
    except Exception as exc:  # network/offline/cache errors come in many types
        raise DataError(
            f"could not load {path_name}/{config} split {split!r} from the Hugging Face hub for task {task!r} "
            f"({type(exc).__name__}: {exc}). Building downstream data needs the network (unset HF_HUB_OFFLINE / "
            f"HF_DATASETS_OFFLINE) or a populated datasets cache; or copy {task}.json into {data_dir}."
        ) from exc
    records = [_hf_record(task, dict(row)) for row in rows]
    groups: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(spec.label_of(record), []).append(record)
    size = min(len(g) for g in groups.values())
    if num_items is not None:
        size = min(size, max(1, num_items // len(spec.label_words)))
    ordered = []
    rng = random.Random(seed)
    for label in sorted(groups):
        group = list(groups[label])
        rng.shuffle(group)
        groups[label] = group[:size]
    for i in range(size):
        for label in sorted(groups):
            ordered.append(groups[label][i])
    out = task_file(task, data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(ordered, ensure_ascii=False, indent=1), encoding="utf-8")
    return out


def _hf_record(task: str, row: dict[str, Any]) -> dict[str, Any]:
    """Convert one hub row to the reference file's schema for ``task``."""
    spec = get_task(task)
    if task == "mmlu":
        return {
            "question": row["question"],
            "subject": row.get("subject", ""),
            "choices": list(row["choices"]),
            "answer": int(row["answer"]),
        }
    keep = {k: row[k] for k in spec.required_fields if k in row}
    if "idx" in row:
        keep["index" if task == "nli" else "idx"] = str(row["idx"]) if task == "nli" else row["idx"]
    if spec.hf_label_format is not None:
        keep["label"] = spec.hf_label_format(int(row["label"]))
    return keep


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def model_max_length(model: Any) -> int:
    """The context length from the model config (``max_position_embeddings``, ``n_positions`` or ``n_ctx``)."""
    config = getattr(model, "config", model)
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ConfigError(
        "cannot read the context length from the model config (no max_position_embeddings / n_positions); "
        "pass max_length= explicitly"
    )


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


# --------------------------------------------------------------------------------------------------
# Metrics (no sklearn)
# --------------------------------------------------------------------------------------------------


def _classes(labels: Sequence[int], predictions: Sequence[int]) -> list[int]:
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    return sorted(set(labels) | set(predictions))


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Correct / total (invalid predictions count as wrong); NaN for no items."""
    _classes(labels, predictions)
    if not labels:
        return math.nan
    return sum(int(y == p) for y, p in zip(labels, predictions)) / len(labels)


def weighted_f1(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """``sklearn.metrics.f1_score(labels, predictions, average="weighted")`` (zero-division -> 0).

    Per class ``c`` of ``labels ∪ predictions``: ``F1_c = 2TP / (2TP + FP + FN)``; the result is the
    support-weighted mean over the true labels (a predicted-only class such as -1 has weight 0 but
    its predictions are false positives of nothing and false negatives of the true class).
    """
    classes = _classes(labels, predictions)
    if not labels:
        return math.nan
    total = 0.0
    for c in classes:
        tp = sum(1 for y, p in zip(labels, predictions) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, predictions) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, predictions) if y == c and p != c)
        support = tp + fn
        denominator = 2 * tp + fp + fn
        f1 = 2 * tp / denominator if denominator else 0.0
        total += support * f1
    return total / len(labels)


def matthews_corrcoef(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Multi-class MCC as ``sklearn.metrics.matthews_corrcoef`` (0 when undefined)."""
    classes = _classes(labels, predictions)
    if not labels:
        return math.nan
    n = len(labels)
    correct = sum(int(y == p) for y, p in zip(labels, predictions))
    t = {c: sum(1 for y in labels if y == c) for c in classes}
    p = {c: sum(1 for y in predictions if y == c) for c in classes}
    cov_ytyp = correct * n - sum(t[c] * p[c] for c in classes)
    cov_ypyp = n * n - sum(p[c] ** 2 for c in classes)
    cov_ytyt = n * n - sum(t[c] ** 2 for c in classes)
    if cov_ypyp == 0 or cov_ytyt == 0:
        return 0.0
    return cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp)


def classification_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """``{"f1", "accuracy", "mcc", "invalid"}`` for one prediction set (-1 = invalid)."""
    return {
        "f1": weighted_f1(labels, predictions),
        "accuracy": accuracy(labels, predictions),
        "mcc": matthews_corrcoef(labels, predictions),
        "invalid": float(sum(1 for p in predictions if p == -1)),
    }


def predict_from_nll(nll: torch.Tensor) -> list[int]:
    """Per row, the index with the strictly highest ``exp(-nll)`` (compared in float64); ties -> -1."""
    probs = torch.exp(-nll.double())
    best = probs.max(dim=1, keepdim=True).values
    winners = probs == best
    out = []
    for row, count in zip(probs.argmax(dim=1).tolist(), winners.sum(dim=1).tolist()):
        out.append(row if count == 1 else -1)
    return out


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ConfigError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)


def _keep_kwarg(model: Any) -> str | None:
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return name
    return None


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _prompt_budget(limit: int, targets: Sequence[Sequence[int]]) -> int:
    """Tokens a prompt may keep so that prompt + the longest label word but its last token fit ``limit``."""
    return max(1, limit - (max(len(t) for t in targets) - 1))


@torch.no_grad()
def score_label_words(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    label_words: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
) -> torch.Tensor:
    """Mean per-token NLL of every label word after every prompt: a float32 ``(items, words)`` tensor.

    Batched over items: prompts are sorted by length, left padded with explicit position ids and run
    once per batch (only the last position's logits are materialised), which scores the first token
    of every label word. The remaining tokens of multi-token words are scored by feeding each word's
    tokens on top of the prompts' KV cache, which is cropped back to the prompt afterwards (a model
    whose cache cannot be cropped re-runs prompt + word instead). A prompt longer than ``max_length``
    (default: the model's context) minus the longest word keeps its last tokens.
    """
    targets = [target_token_ids(tokenizer, w) for w in label_words]
    limit = max_length if max_length is not None else model_max_length(model)
    budget = _prompt_budget(limit, targets)
    prompt_ids = [list(x)[-budget:] for x in tokenizer(list(prompts))["input_ids"]] if prompts else []
    nll = torch.zeros((len(prompt_ids), len(targets)), dtype=torch.float64)
    if not prompt_ids:
        return nll.float()
    device = _device(model)
    pad_id = _pad_id(tokenizer)
    keep_kwarg = _keep_kwarg(model)
    multi = [(w, t) for w, t in enumerate(targets) if len(t) > 1]
    first_ids = torch.tensor([t[0] for t in targets], device=device)
    order = sorted(range(len(prompt_ids)), key=lambda r: -len(prompt_ids[r]))
    for start in range(0, len(order), max(1, batch_size)):
        chunk = order[start : start + batch_size]
        ids, mask, positions = _left_pad([prompt_ids[r] for r in chunk], pad_id, device)
        keep = {keep_kwarg: 1} if keep_kwarg else {}
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=bool(multi), **keep)
        first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)[:, first_ids]  # (B, words)
        sums = -first.double().cpu()
        cache = getattr(out, "past_key_values", None)
        croppable = cache is not None and hasattr(cache, "crop") and getattr(cache, "is_croppable", True)
        for w, t in multi:
            rest = torch.tensor(t[1:], device=device)
            cont = torch.tensor(t[:-1], device=device).unsqueeze(0).expand(len(chunk), -1)
            cont_mask = torch.cat([mask, torch.ones_like(cont)], dim=1)
            cont_pos = positions[:, -1:] + 1 + torch.arange(cont.shape[1], device=device).unsqueeze(0)
            if croppable:
                step = model(
                    input_ids=cont,
                    attention_mask=cont_mask,
                    position_ids=cont_pos,
                    past_key_values=cache,
                    use_cache=True,
                )
                logits = step.logits
                cache.crop(-cont.shape[1])  # drop the word tokens, keep the prompt
            else:
                keep_t = {keep_kwarg: cont.shape[1]} if keep_kwarg else {}
                logits = model(
                    input_ids=torch.cat([ids, cont], dim=1),
                    attention_mask=cont_mask,
                    position_ids=torch.cat([positions, cont_pos], dim=1),
                    **keep_t,
                ).logits[:, -cont.shape[1] :, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            picked = logprobs.gather(2, rest.view(1, -1, 1).expand(len(chunk), -1, 1)).squeeze(2)
            sums[:, w] += -picked.double().sum(dim=1).cpu()
        lengths = torch.tensor([len(t) for t in targets], dtype=torch.float64)
        nll[torch.tensor(chunk)] = sums / lengths
    return nll.float()


@torch.no_grad()
def score_label_words_loop(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    label_words: Sequence[str],
    *,
    max_length: int | None = None,
) -> torch.Tensor:
    """The straightforward per-item, per-word reference of :func:`score_label_words` (tests, benchmarks).

    One forward pass of ``prompt + word[:-1]`` per (item, word), no padding, no cache.
    """
    targets = [target_token_ids(tokenizer, w) for w in label_words]
    limit = max_length if max_length is not None else model_max_length(model)
    budget = _prompt_budget(limit, targets)
    device = _device(model)
    nll = torch.zeros((len(prompts), len(targets)), dtype=torch.float32)
    for i, prompt in enumerate(prompts):
        ids = list(tokenizer(prompt)["input_ids"])[-budget:]
        for w, t in enumerate(targets):
            inputs = ids + t[:-1]
            logits = model(input_ids=torch.tensor([inputs], device=device)).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            total = 0.0
            for j, tok in enumerate(t):
                total += -logprobs[len(ids) - 1 + j, tok].item()
            nll[i, w] = total / len(t)
    return nll


def _generation_config(model: Any, gen_len: int, pad_id: int) -> Any:
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    eos = getattr(base, "eos_token_id", None) if base is not None else None
    bos = getattr(base, "bos_token_id", None) if base is not None else None
    return GenerationConfig(
        max_new_tokens=gen_len,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=eos,
        bos_token_id=bos,
    )


@torch.no_grad()
def generate_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    gen_len: int = DEFAULT_GEN_LEN,
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[tuple[str, str]]:
    """Greedy ``gen_len``-token continuations, batched with left padding.

    Returns ``(full_text, prompt_text)`` per prompt: the decoded prompt + continuation and the decoded
    prompt (special tokens skipped), ready for :func:`parse_generation`.
    """
    limit = max_length if max_length is not None else model_max_length(model)
    prompt_ids = (
        [list(x)[-max(1, limit - gen_len) :] for x in tokenizer(list(prompts))["input_ids"]]
        if prompts
        else []
    )
    device = _device(model)
    pad_id = _pad_id(tokenizer)
    config = _generation_config(model, gen_len, pad_id)
    out: list[tuple[str, str] | None] = [None] * len(prompt_ids)
    order = sorted(range(len(prompt_ids)), key=lambda r: -len(prompt_ids[r]))
    for start in range(0, len(order), max(1, batch_size)):
        chunk = order[start : start + batch_size]
        ids, mask, _ = _left_pad([prompt_ids[r] for r in chunk], pad_id, device)
        generated = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new_tokens = generated[:, ids.shape[1] :].tolist()
        for b, r in enumerate(chunk):
            prompt_text = tokenizer.decode(prompt_ids[r], skip_special_tokens=True)
            full_text = tokenizer.decode(prompt_ids[r] + new_tokens[b], skip_special_tokens=True)
            out[r] = (full_text, prompt_text)
    return [x for x in out if x is not None]


@torch.no_grad()
def generate_continuations_loop(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    gen_len: int = DEFAULT_GEN_LEN,
    max_length: int | None = None,
) -> list[tuple[str, str]]:
    """The per-item reference of :func:`generate_continuations` (no padding)."""
    limit = max_length if max_length is not None else model_max_length(model)
    device = _device(model)
    config = _generation_config(model, gen_len, _pad_id(tokenizer))
    out = []
    for prompt in prompts:
        ids = list(tokenizer(prompt)["input_ids"])[-max(1, limit - gen_len) :]
        generated = model.generate(input_ids=torch.tensor([ids], device=device), generation_config=config)
        new = generated[0, len(ids) :].tolist()
        out.append(
            (
                tokenizer.decode(ids + new, skip_special_tokens=True),
                tokenizer.decode(ids, skip_special_tokens=True),
            )
        )
    return out


# --------------------------------------------------------------------------------------------------
# Public entry
# --------------------------------------------------------------------------------------------------


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
    """Evaluate one task; see :func:`evaluate_downstream`."""
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
    **kwargs: Any,
) -> dict[str, TaskResult]:
    """:func:`evaluate_downstream` keeping per-item predictions, NLLs and generations."""
    task_list = list(tasks)
    for task in task_list:
        get_task(task)  # fail on a typo before any model work
    return {task: evaluate_task(model, tokenizer, task, data_dir, **kwargs) for task in task_list}


def evaluate_downstream(
    model: Any,
    tokenizer: Any,
    tasks: Iterable[str],
    data_dir: str | Path,
    num_items: int | None = 200,
    num_shots: int = 0,
    batch_size: int = 16,
    max_length: int | None = None,
    mode: str = "probability",
    *,
    gen_len: int = DEFAULT_GEN_LEN,
    selection: str = "balanced",
    seed: int | None = 0,
) -> dict[str, dict[str, float]]:
    """Few-shot downstream metrics per task: ``{task: {metric: value}}``.

    Metrics: ``num_items``, ``mean_shots`` and, per mode, ``prob_f1 / prob_accuracy / prob_mcc /
    prob_invalid`` (probability prediction = the reference's ``f1_new``) and ``gen_f1 / gen_accuracy /
    gen_mcc / gen_invalid`` (generation prediction = the reference's headline ``f1``). ``max_length``
    defaults to the model config's context length; ``batch_size`` counts sequences per forward pass.
    The model is used in eval mode under ``torch.no_grad`` and its training flag is restored.
    """
    results = evaluate_downstream_detailed(
        model,
        tokenizer,
        tasks,
        data_dir,
        num_items=num_items,
        num_shots=num_shots,
        batch_size=batch_size,
        max_length=max_length,
        mode=mode,
        gen_len=gen_len,
        selection=selection,
        seed=seed,
    )
    return {task: r.metrics for task, r in results.items()}

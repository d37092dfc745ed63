"""Downstream tasks (SPEC Part D): the task registry, reading task files and choosing test items.

Eight tasks (``sst2``, ``mrpc``, ``cola``, ``rte``, ``nli``, ``sentiment_analysis``, ``mmlu``,
``dialogue``) are registered in :data:`DOWNSTREAM_TASKS` with their prompt templates (verbatim from
SPEC D / the reference code), label words and label mapping. Seed 002's fixed few-shot prompts (its
App. A.3 Tables 4–7) are the variants ``sst2_seed002``, ``mrpc_seed002``, ``cola_seed002`` and
``rte_seed002`` (its "NLI"), read from the same task files; use them with ``num_shots=0``.

Data: ``<data_dir>/<task>.json`` is a JSON list of dicts in the reference pickles' order. The first
:data:`FEW_SHOT_POOL` items are the few-shot pool; test items start after it. A test subset of
``num_items`` items is chosen deterministically (balanced per label by default).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edit_runner.errors import ConfigError, DataError
from edit_runner.registry import Registry

FEW_SHOT_POOL = 10
"""The first this-many items of every task file are the few-shot pool (reference ``FEW_SHOT_TEST_SPLIT``)."""


@dataclass(frozen=True)
class DownstreamTask:
    """One few-shot classification probe.

    ``question`` and ``shot`` are ``str.format`` templates over :meth:`fields` (``{answer}`` in
    ``shot`` is the label word of the shot's label). ``label_words[c]`` is the word of class ``c``.
    Generation parsing: the text after the last ``answer_marker`` of the decoded prompt+continuation
    (or, with no marker, the continuation alone) is lower-cased and searched for each substring of
    ``answer_checks`` in order. ``context`` is a fixed few-shot text put before every question (seed
    002's prompts); ``data_name`` the task file's stem when it is not ``name``.
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
    context: str = ""
    data_name: str | None = None

    def fields(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Template fields of ``item``; list fields (MMLU choices, dialogue options) become ``c0``.. / ``o0``.."""
        values = dict(item)
        for source, prefix in self.list_fields:
            for i, value in enumerate(item[source]):
                values[f"{prefix}{i}"] = value
        return values

    def question_text(self, item: Mapping[str, Any]) -> str:
        """The question part of the prompt for ``item``, after the fixed ``context`` (no pool shots)."""
        return self.context + self.question.format_map(self.fields(item))

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


# Seed 002 (App. A.3, Tables 4–7): fixed few-shot contexts, verbatim from the authors'
# scalable-model-editing/gradual-catastrophic-forgetting glue_eval/{sst,mrpc,cola,rte}_eval.py (the MRPC
# shots are in the code's order, which differs from Table 5's; seed 002 generates 10 tokens for CoLA).
_SEED002_SST2 = "".join(
    f"Review : {text}\nSentiment : {label}\n\n"
    for text, label in (
        ("excruciatingly unfunny and pitifully unromantic", "negative"),
        ("rich veins of funny stuff in this movie", "positive"),
        ("by far the worst movie of the year", "negative"),
        ("fashioning an engrossing entertainment out", "positive"),
    )
)
_SEED002_MRPC = "".join(
    f"Are the sentences paraphrases of each other.\nSentence 1: {one}\nSentence 2: {two}\nAnswer: {label}\n\n"
    for one, two, label in (
        (
            "Mr McDevitt has been granted control of three crucial aspects of policing in the Solomons.",
            "Mr McDevitt has been granted control of three aspects of policing by Commissioner William Morrell.",
            "No",
        ),
        (
            "They had published an advertisement on the Internet on June 10, offering the cargo for sale, he added.",
            "On June 10, the ship's owners had published an advertisement on the Internet, offering the explosives for sale.",
            "Yes",
        ),
        (
            "In 2002, Linksys overtook Cisco Systems as the leading wireless equipment vendor, accounting for 14.1 percent of revenue.",
            "Rolfe said Linksys overtook Cisco Systems last year as the leading supplier of WLAN equipment.",
            "No",
        ),
        ("The notification was first reported Friday by MSNBC.", "MSNBC.com first reported the CIA request on Friday.", "Yes"),
        (
            '"The anticipated global sales improvement in the month of June did not materialize", said Chief Financial Officer Robert Rivet.',
            '"The anticipated global sales improvement in the month of June did not materialize as we had anticipated", the company said.',
            "Yes",
        ),
        (
            "That compared with $ 35.18 million, or 24 cents per share, in the year-ago period.",
            "Earnings were affected by a non-recurring $8 million tax benefit in the year-ago period.",
            "No",
        ),
    )
)
_SEED002_COLA = "".join(
    f"Is this sentence linguistically acceptable?\nSentence : {text}\nAnswer : {label}\n\n"
    for text, label in (
        ("Bill pushed Harry off the sofa for hours.", "No"),
        ("Bill floated down the river for hours.", "Yes"),
        ("It is important for the more you eat, the more careful you to be.", "No"),
        ("It is important for you to be more careful, the more you eat.", "Yes"),
        ("Mary will believe Susan, and you will Bob.", "Yes"),
        ("You will Bob believe.", "No"),
    )
)
_SEED002_RTE = "".join(
    f"{premise}\nquestion: {hypothesis} True or False?\nanswer: {label}\n\n"
    for premise, hypothesis, label in (
        (
            ("Cyrus captured Babylon without a battle, and remedied the evils done by previous Assyrian and Babylonian "
            "rulers by sending prisoners in Babylonia back to their original homelands and aiding in the restoration "
            "of temples of the gods of various nations."),
            "Babylon surrendered to Cyrus without going to battle.",
            "False",
        ),
        (
            "Successful plaintiffs recovered punitive damages in Texas discrimination cases 53% of the time.",
            "Legal costs to recover punitive damages are a deductible business expense.",
            "True",
        ),
        (
            ("The gastric bypass operation, also known as stomach stapling, has become the most common surgical procedure "
            "for treating obesity."),
            "Obesity is medically treated.",
            "False",
        ),
    )
)


def _seed002_variant(base: str, context: str, question: str, marker: str) -> None:
    task = DOWNSTREAM_TASKS.get(base)
    _register(
        replace(
            task, name=f"{base}_seed002", context=context, question=question, shot=question + " {answer}\n\n",
            answer_marker=marker, data_name=base,
        )
    )


_seed002_variant("sst2", _SEED002_SST2, "Review : {sentence}\nSentiment :", "Sentiment :")
_seed002_variant(
    "mrpc", _SEED002_MRPC, "Are the sentences paraphrases of each other.\nSentence 1: {sentence1}\nSentence 2: {sentence2}\nAnswer:",
    "Answer:",
)
_seed002_variant("cola", _SEED002_COLA, "Is this sentence linguistically acceptable?\nSentence : {sentence}\nAnswer :", "Answer :")
_seed002_variant("rte", _SEED002_RTE, "{sentence1}\nquestion: {sentence2} True or False?\nanswer:", "answer:")


def get_task(name: str) -> DownstreamTask:
    """The registered task ``name`` (a ConfigError lists the valid names)."""
    return DOWNSTREAM_TASKS.get(name)


def task_file(task: str, data_dir: str | Path) -> Path:
    """``<data_dir>/<stem>.json``, the stem being the task's ``data_name`` (its own name by default)."""
    return Path(data_dir) / f"{get_task(task).data_name or task}.json"


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
            f"edit_runner.evaluation.downstream.tasks.build_task_file({task!r}, {str(path.parent)!r})."
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

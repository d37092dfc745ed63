"""Dataset formats: each turns the rows of a published (or user-written) JSON file into EditRecords.

Registered formats (``data.format``):

* ``counterfact`` — ROME's ``counterfact.json``: ``case_id``, ``requested_rewrite{prompt, subject,
  relation_id, target_new{str,id}, target_true{str,id}}``, ``paraphrase_prompts``,
  ``neighborhood_prompts``, ``attribute_prompts``, ``generation_prompts``.
* ``multi_counterfact`` — MEMIT's ``multi_counterfact.json`` (same schema). Both accept the extra
  ``neighborhood_samples: [{subject, prompt}]`` list of our reference copy, aligned one to one with
  ``neighborhood_prompts``: it fills :attr:`NeighborPrompt.subject`.
* ``zsre`` — ROME/MEMIT's ``zsre_mem_eval.json`` (``subject, src, rephrase, answers, loc, loc_ans``
  ...), mapped as ``dsets/zsre.py:MENDQADataset`` does (SPEC Part C §11.2).
* ``easyedit`` — EasyEdit's flat format (``prompt, subject, target_new, ground_truth,
  rephrase_prompt, locality{name: {prompt, ground_truth}}``, optional ``neighborhood_samples``
  = the neighbours used by neighbor-assisted editing, stored in :attr:`EditRecord.train_neighbors`).
* ``custom`` — a JSON list or JSONL file of simple dicts (see :func:`parse_custom`).
* ``demo`` — the hand-written facts shipped in the package (``demo_facts.json``, CounterFact format).
* ``knowedit`` — zjunlp/KnowEdit files with ``portability`` groups (:mod:`edit_runner.data.knowedit`).
* ``mquake`` — princeton-nlp/MQuAKE cases, one record per rewrite (:mod:`edit_runner.data.mquake`).

Every malformed input raises a :class:`~edit_runner.errors.DataError` naming the file, the record
(index and case id) and the field.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edit_runner.data.record import EditRecord, NeighborPrompt, RecordKind, validate_records
from edit_runner.errors import ConfigError, DataError
from edit_runner.registry import Registry

#: zsRE has no true object. ROME/MEMIT's loader puts GPT-2's end-of-text string here; we keep that
#: placeholder (records are ``kind=zsre``, whose metrics never score ``target_true``).
ZSRE_TARGET_TRUE = "<|endoftext|>"
DEMO_FACTS_FILE = "demo_facts.json"

Row = dict[str, Any]
Parser = Callable[[Sequence[Any], str], list[EditRecord]]


@dataclass(frozen=True)
class DatasetFormat:
    """A named dataset format: how its rows become EditRecords."""

    name: str
    parse: Parser
    description: str


DATASET_FORMATS: Registry[DatasetFormat] = Registry("dataset format")


class _Where:
    """Names one record of one file in error messages."""

    def __init__(self, source: str, index: int, case_id: Any = None) -> None:
        self.source = source
        self.index = index
        self.case_id = case_id

    def label(self) -> str:
        case = f" (case_id={self.case_id})" if self.case_id is not None else ""
        return f"{self.source}: record {self.index}{case}"

    def error(self, field: str, problem: str) -> DataError:
        return DataError(f"{self.label()}: field {field!r} {problem}")


def _require_row(row: Any, where: _Where) -> Row:
    if not isinstance(row, dict):
        raise DataError(
            f"{where.source}: record {where.index} must be a JSON object, got {type(row).__name__}"
        )
    return row


def _string(value: Any, field: str, where: _Where, *, allow_empty: bool = False) -> str:
    if value is None:
        raise where.error(field, "is missing")
    if not isinstance(value, str):
        raise where.error(field, f"must be a string, got {type(value).__name__} {value!r}")
    if not allow_empty and not value.strip():
        raise where.error(field, "is empty")
    return value


def _get(row: Row, field: str, where: _Where) -> Any:
    if field not in row or row[field] is None:
        raise where.error(field, "is missing")
    return row[field]


def _target(value: Any, field: str, where: _Where) -> str:
    """A target object: a string or CounterFact's ``{"str": ...}``; stored stripped (no leading space)."""
    if isinstance(value, dict):
        value = value.get("str")
        field = f"{field}.str"
    return _string(value, field, where).strip()


def _string_list(value: Any, field: str, where: _Where) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise where.error(field, f"must be a list of strings, got {type(value).__name__}")
    return tuple(_string(item, f"{field}[{i}]", where) for i, item in enumerate(value))


def _check_braces(template: str, field: str, where: _Where) -> None:
    rest = template.replace("{}", "", 1)
    if template.count("{}") != 1 or "{" in rest or "}" in rest:
        raise where.error(
            field,
            f"{template!r} must contain exactly one '{{}}' (where the subject goes) and no other braces",
        )


def to_template(prompt: str, subject: str, where: _Where, field: str = "prompt") -> str:
    """Turn a prompt into a ``{}`` template: kept if it has ``{}``, else ``prompt.replace(subject, "{}")``.

    The subject must occur exactly once in a plain prompt (SPEC Part C §1.1, Part B §2).
    """
    if "{}" in prompt:
        _check_braces(prompt, field, where)
        return prompt
    count = prompt.count(subject)
    if count == 0:
        raise where.error(
            field,
            f"{prompt!r} does not contain the subject {subject!r}; fix the subject or write the prompt "
            "as a template with '{}' where the subject goes",
        )
    if count > 1:
        raise where.error(
            field,
            f"{prompt!r} contains the subject {subject!r} {count} times; write it as a template with "
            "exactly one '{}' where the edited subject goes",
        )
    template = prompt.replace(subject, "{}")
    _check_braces(template, field, where)
    return template


def _check_targets(target_new: str, target_true: str, where: _Where, true_field: str) -> None:
    if target_new == target_true:
        raise where.error(
            "target_new",
            f"equals {true_field} ({target_new!r}); an edit must change the object: give a different new target",
        )


def _sample_matches(prompt: str, template: str, subject: str) -> bool:
    """Whether ``template.format(subject)`` is ``prompt`` (up to one apostrophe the samples dropped)."""
    filled = template.replace("{}", subject, 1)
    if filled == prompt:
        return True
    if len(prompt) != len(filled) + 1 or subject not in prompt:
        return False
    return any(prompt[i] == "'" and prompt[:i] + prompt[i + 1 :] == filled for i in range(len(prompt)))


def _aligned_neighbors(
    prompts: Sequence[str], samples: Any, target: str, field: str, where: _Where
) -> tuple[tuple[NeighborPrompt, ...], bool]:
    """Neighbour prompts with their subjects from an aligned ``neighborhood_samples`` list (if present)."""
    if samples is None:
        return tuple(NeighborPrompt(prompt, target) for prompt in prompts), False
    if not isinstance(samples, list) or len(samples) != len(prompts):
        got = len(samples) if isinstance(samples, list) else type(samples).__name__
        raise where.error(
            "neighborhood_samples",
            f"must be a list aligned with {field} ({len(prompts)} entries), got {got}",
        )
    neighbors = []
    for i, (prompt, sample) in enumerate(zip(prompts, samples)):
        name = f"neighborhood_samples[{i}]"
        if not isinstance(sample, dict):
            raise where.error(name, f"must be an object {{subject, prompt}}, got {type(sample).__name__}")
        subject = _string(sample.get("subject"), f"{name}.subject", where)
        template = _string(sample.get("prompt"), f"{name}.prompt", where)
        if not _sample_matches(prompt, template, subject):
            raise where.error(
                name,
                f"does not correspond to {field}[{i}] {prompt!r}: {template!r} with subject {subject!r} "
                f"gives {template.replace('{}', subject, 1)!r}",
            )
        neighbors.append(NeighborPrompt(prompt, target, subject))
    return tuple(neighbors), True


def _finish(records: list[EditRecord], source: str) -> list[EditRecord]:
    try:
        validate_records(records)
    except DataError as err:
        raise DataError(f"{source}: {err}") from None
    return records


# ----------------------------------------------------------------------------------------- formats


def _counterfact_record(
    row: Row,
    where: _Where,
    case_id: Any,
    subject: str,
    template: str,
    targets: tuple[str, str],
    neighbors: tuple[NeighborPrompt, ...],
    known: bool,
    relation: Any,
) -> EditRecord:
    """A CounterFact-kind record with the optional prompt lists read from ``row``."""
    return EditRecord(
        case_id=str(case_id),
        subject=subject,
        prompt=template,
        target_new=targets[0],
        target_true=targets[1],
        kind=RecordKind.counterfact,
        paraphrase_prompts=_string_list(row.get("paraphrase_prompts"), "paraphrase_prompts", where),
        neighborhood=neighbors,
        attribute_prompts=_string_list(row.get("attribute_prompts"), "attribute_prompts", where),
        generation_prompts=_string_list(row.get("generation_prompts"), "generation_prompts", where),
        relation_id=str(relation) if relation is not None else None,
        neighbor_subjects_known=known,
    )


def _parse_counterfact_row(row: Row, index: int, source: str) -> EditRecord:
    where = _Where(source, index, row.get("case_id"))
    case_id = _get(row, "case_id", where)
    rewrite = _get(row, "requested_rewrite", where)
    if not isinstance(rewrite, dict):
        raise where.error("requested_rewrite", f"must be an object, got {type(rewrite).__name__}")
    subject = _string(rewrite.get("subject"), "requested_rewrite.subject", where)
    prompt = _string(rewrite.get("prompt"), "requested_rewrite.prompt", where)
    template = to_template(prompt, subject, where, "requested_rewrite.prompt")
    target_new = _target(rewrite.get("target_new"), "requested_rewrite.target_new", where)
    target_true = _target(rewrite.get("target_true"), "requested_rewrite.target_true", where)
    _check_targets(target_new, target_true, where, "requested_rewrite.target_true")
    neighbor_prompts = _string_list(row.get("neighborhood_prompts"), "neighborhood_prompts", where)
    neighbors, known = _aligned_neighbors(
        neighbor_prompts, row.get("neighborhood_samples"), target_true, "neighborhood_prompts", where
    )
    return _counterfact_record(
        row, where, case_id, subject, template, (target_new, target_true), neighbors,
        known and bool(neighbors), rewrite.get("relation_id"),
    )


def parse_counterfact(rows: Sequence[Any], source: str = "<counterfact>") -> list[EditRecord]:
    """CounterFact / MultiCounterFact rows (ROME/MEMIT schema, optional aligned ``neighborhood_samples``)."""
    return _finish(
        [
            _parse_counterfact_row(_require_row(row, _Where(source, i)), i, source)
            for i, row in enumerate(rows)
        ],
        source,
    )


def _parse_zsre_row(row: Row, index: int, source: str) -> EditRecord:
    where = _Where(source, index, row.get("case_id", index))
    subject = _string(row.get("subject"), "subject", where)
    src = _string(row.get("src"), "src", where)
    template = to_template(src, subject, where, "src")
    answers = _get(row, "answers", where)
    if not isinstance(answers, list) or not answers:
        raise where.error(
            "answers", "must be a non-empty list of answer strings (answers[0] is the new target)"
        )
    target_new = _string(answers[0], "answers[0]", where).strip()
    loc = _string(row.get("loc"), "loc", where)
    loc_ans = _string(row.get("loc_ans"), "loc_ans", where).strip()
    neighbors, known = _aligned_neighbors(
        [loc + "?"], row.get("neighborhood_samples"), loc_ans, "loc + '?'", where
    )
    return EditRecord(
        case_id=str(row.get("case_id", index)),
        subject=subject,
        prompt=template,
        target_new=target_new,
        target_true=ZSRE_TARGET_TRUE,
        kind=RecordKind.zsre,
        paraphrase_prompts=_string_list(row.get("rephrase"), "rephrase", where),
        neighborhood=neighbors,
        neighbor_subjects_known=known,
    )


def parse_zsre(rows: Sequence[Any], source: str = "<zsre>") -> list[EditRecord]:
    """zsRE rows in ``zsre_mem_eval.json`` schema (SPEC Part C §11.2).

    ``prompt = src.replace(subject, "{}")``, ``target_new = answers[0]``, ``target_true`` =
    :data:`ZSRE_TARGET_TRUE` (placeholder; zsRE has no true object), paraphrase = ``rephrase``,
    neighbourhood = ``loc + "?"`` with target ``loc_ans``. The file has no case ids: a record's case
    id is its position in the file (as ``MENDQADataset`` numbers them) unless it carries ``case_id``.
    """
    return _finish(
        [_parse_zsre_row(_require_row(row, _Where(source, i)), i, source) for i, row in enumerate(rows)],
        source,
    )


def first_answer(value: Any, field: str, where: _Where) -> str:
    """The first string of an answer given as a string, a list of answers or a list of alias lists (stripped)."""
    while isinstance(value, list):
        if not value:
            raise where.error(field, "is an empty list; give at least one answer string")
        value, field = value[0], f"{field}[0]"
    return _string(value, field, where).strip()


def _locality(value: Any, where: _Where) -> tuple[NeighborPrompt, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise where.error(
            "locality", f"must be an object {{name: {{prompt, ground_truth}}}}, got {type(value).__name__}"
        )
    neighbors: list[NeighborPrompt] = []
    for name, entry in value.items():
        field = f"locality.{name}"
        if not isinstance(entry, dict):
            raise where.error(
                field, f"must be an object {{prompt, ground_truth}}, got {type(entry).__name__}"
            )
        prompts = entry.get("prompt")
        truths = entry.get("ground_truth")
        if prompts is None:
            raise where.error(f"{field}.prompt", "is missing")
        if truths is None:
            raise where.error(f"{field}.ground_truth", "is missing")
        prompt_list = prompts if isinstance(prompts, list) else [prompts]
        truth_list = truths if isinstance(truths, list) else [truths] * len(prompt_list)
        if len(truth_list) != len(prompt_list):
            raise where.error(
                f"{field}.ground_truth", f"has {len(truth_list)} entries for {len(prompt_list)} prompts"
            )
        for i, (prompt, truth) in enumerate(zip(prompt_list, truth_list)):
            neighbors.append(
                NeighborPrompt(
                    _string(prompt, f"{field}.prompt[{i}]", where),
                    first_answer(truth, f"{field}.ground_truth[{i}]", where),
                )
            )
    return tuple(neighbors)


def _train_neighbors(value: Any, target: str, where: _Where) -> tuple[NeighborPrompt, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise where.error(
            "neighborhood_samples", f"must be a list of {{subject, prompt}}, got {type(value).__name__}"
        )
    out = []
    for i, sample in enumerate(value):
        name = f"neighborhood_samples[{i}]"
        if not isinstance(sample, dict):
            raise where.error(name, f"must be an object {{subject, prompt}}, got {type(sample).__name__}")
        subject = _string(sample.get("subject"), f"{name}.subject", where)
        template = to_template(
            _string(sample.get("prompt"), f"{name}.prompt", where), subject, where, f"{name}.prompt"
        )
        out.append(NeighborPrompt(template.replace("{}", subject, 1), target, subject))
    return tuple(out)


def _parse_easyedit_row(row: Row, index: int, source: str) -> EditRecord:
    case_id = row.get("case_id", index)
    where = _Where(source, index, case_id)
    subject = _string(row.get("subject"), "subject", where)
    template = to_template(_string(row.get("prompt"), "prompt", where), subject, where)
    target_new = first_answer(_get(row, "target_new", where), "target_new", where)
    target_true = first_answer(_get(row, "ground_truth", where), "ground_truth", where)
    _check_targets(target_new, target_true, where, "ground_truth")
    return EditRecord(
        case_id=str(case_id),
        subject=subject,
        prompt=template,
        target_new=target_new,
        target_true=target_true,
        kind=RecordKind.counterfact,
        paraphrase_prompts=_string_list(row.get("rephrase_prompt"), "rephrase_prompt", where),
        neighborhood=_locality(row.get("locality"), where),
        train_neighbors=_train_neighbors(row.get("neighborhood_samples"), target_true, where),
    )


def parse_easyedit(rows: Sequence[Any], source: str = "<easyedit>") -> list[EditRecord]:
    """EasyEdit flat rows: ``prompt`` (plain; turned into a template by ``replace(subject, "{}")``),
    ``subject``, ``target_new``, ``ground_truth``, ``rephrase_prompt`` (str or list), ``locality``
    (every entry's prompts become neighbourhood prompts with their ``ground_truth``; subjects
    unknown) and ``neighborhood_samples`` (neighbours for neighbor-assisted editing, removed from the
    locality set by the files' authors) → :attr:`EditRecord.train_neighbors` with ``ground_truth``
    as their target. ``case_id`` defaults to the position in the file.
    """
    return _finish(
        [_parse_easyedit_row(_require_row(row, _Where(source, i)), i, source) for i, row in enumerate(rows)],
        source,
    )


CUSTOM_FIELDS = (
    "case_id",
    "prompt",
    "subject",
    "target_new",
    "target_true",
    "paraphrase_prompts",
    "neighborhood_prompts",
    "attribute_prompts",
    "generation_prompts",
    "relation_id",
)


def _custom_neighbors(value: Any, target_true: str, where: _Where) -> tuple[tuple[NeighborPrompt, ...], bool]:
    if value is None:
        return (), False
    if not isinstance(value, list):
        raise where.error("neighborhood_prompts", f"must be a list, got {type(value).__name__}")
    out: list[NeighborPrompt] = []
    for i, item in enumerate(value):
        field = f"neighborhood_prompts[{i}]"
        if isinstance(item, str):
            if "{}" in item:
                raise where.error(
                    field, f'{item!r} has \'{{}}\': give it as {{"prompt": ..., "subject": ...}}'
                )
            out.append(NeighborPrompt(_string(item, field, where), target_true))
            continue
        if not isinstance(item, dict):
            raise where.error(
                field,
                f"must be a string or an object {{prompt, target?, subject?}}, got {type(item).__name__}",
            )
        unknown = sorted(set(item) - {"prompt", "target", "subject"})
        if unknown:
            raise where.error(field, f"has unknown keys {unknown}; allowed: prompt, target, subject")
        subject = item.get("subject")
        prompt = _string(item.get("prompt"), f"{field}.prompt", where)
        if subject is not None:
            subject = _string(subject, f"{field}.subject", where)
            if "{}" in prompt:
                prompt = to_template(prompt, subject, where, f"{field}.prompt").replace("{}", subject, 1)
            elif subject not in prompt:
                raise where.error(f"{field}.subject", f"{subject!r} does not occur in its prompt {prompt!r}")
        elif "{}" in prompt:
            raise where.error(
                f"{field}.subject", "is missing: a prompt with '{}' needs the subject that fills it"
            )
        target = _target(item["target"], f"{field}.target", where) if "target" in item else target_true
        out.append(NeighborPrompt(prompt, target, subject))
    return tuple(out), bool(out) and all(n.subject is not None for n in out)


def _parse_custom_row(row: Row, index: int, source: str) -> EditRecord:
    case_id = row.get("case_id", index)
    where = _Where(source, index, case_id)
    if "requested_rewrite" in row:
        if "case_id" not in row:
            row = {**row, "case_id": index}
        return _parse_counterfact_row(row, index, source)
    unknown = sorted(set(row) - set(CUSTOM_FIELDS) - {"neighborhood_samples"})
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, CUSTOM_FIELDS, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise DataError(
            f"{where.label()}: unknown field(s) {', '.join(hints)}; allowed: {', '.join(CUSTOM_FIELDS)}"
        )
    subject = _string(row.get("subject"), "subject", where)
    template = to_template(_string(row.get("prompt"), "prompt", where), subject, where)
    target_new = _target(row.get("target_new"), "target_new", where)
    target_true = _target(row.get("target_true"), "target_true", where)
    _check_targets(target_new, target_true, where, "target_true")
    neighbors, known = _custom_neighbors(row.get("neighborhood_prompts"), target_true, where)
    return _counterfact_record(
        row, where, case_id, subject, template, (target_new, target_true), neighbors, known, row.get("relation_id")
    )


def parse_custom(rows: Sequence[Any], source: str = "<custom>") -> list[EditRecord]:
    """Simple user-written edits, one dict per record::

        {"case_id": "paris-rome",                 # optional, default: position in the file
         "prompt": "The Eiffel Tower is in",      # a template with {} or a prompt containing the subject
         "subject": "The Eiffel Tower",
         "target_new": "Rome", "target_true": "Paris",
         "paraphrase_prompts": ["..."],           # optional
         "neighborhood_prompts": ["The Louvre is in",                       # target = target_true
                                  {"prompt": "{} is in", "subject": "Notre-Dame", "target": "Paris"}],
         "attribute_prompts": [...], "generation_prompts": [...], "relation_id": "..."}   # optional

    Unknown keys are an error (with a did-you-mean). A row with ``requested_rewrite`` is read as a
    CounterFact record.
    """
    return _finish(
        [_parse_custom_row(_require_row(row, _Where(source, i)), i, source) for i, row in enumerate(rows)],
        source,
    )


DATASET_FORMATS.register(
    "counterfact", DatasetFormat("counterfact", parse_counterfact, "ROME counterfact.json")
)
DATASET_FORMATS.register(
    "multi_counterfact",
    DatasetFormat(
        "multi_counterfact", parse_counterfact, "MEMIT multi_counterfact.json (+ neighborhood_samples)"
    ),
)
DATASET_FORMATS.register("zsre", DatasetFormat("zsre", parse_zsre, "ROME/MEMIT zsre_mem_eval.json"))
DATASET_FORMATS.register("easyedit", DatasetFormat("easyedit", parse_easyedit, "EasyEdit flat records"))
DATASET_FORMATS.register("custom", DatasetFormat("custom", parse_custom, "simple JSON / JSONL edits"))
DATASET_FORMATS.register(
    "demo", DatasetFormat("demo", parse_counterfact, "hand-written demo facts shipped with the package")
)


# ----------------------------------------------------------------------------------------- reading


def read_json_rows(path: str | os.PathLike[str]) -> list[Any]:
    """Read a JSON list (or a JSON object holding one list of records) or a JSON-lines file.

    Malformed JSON raises a DataError with the file, line and column.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file {file} does not exist; check data.path") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err}); expected a JSON or JSONL file") from None
    if not text.strip():
        raise DataError(f"{file}: the file is empty; expected a JSON list of records or JSONL")
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as err:
        lines = [line for line in text.splitlines() if line.strip()]
        looks_jsonl = file.suffix.lower() in (".jsonl", ".ndjson") or (
            err.msg == "Extra data" and len(lines) > 1 and lines[0].lstrip().startswith("{")
        )
        if not looks_jsonl:
            raise DataError(
                f"{file}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
            ) from None
        return _read_jsonl_text(text, file)
    if isinstance(loaded, dict):
        lists = [value for value in loaded.values() if isinstance(value, list)]
        if len(lists) == 1 and len(loaded) == 1:
            loaded = lists[0]
        elif file.suffix.lower() in (".jsonl", ".ndjson"):
            loaded = [loaded]
        else:
            raise DataError(
                f"{file}: expected a JSON list of records, got an object with keys {sorted(loaded)[:8]}"
            )
    if not isinstance(loaded, list):
        raise DataError(f"{file}: expected a JSON list of records, got {type(loaded).__name__}")
    return loaded


def _read_jsonl_text(text: str, file: Path) -> list[Any]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(
                f"{file}: malformed JSON on line {number} column {err.colno}: {err.msg}"
            ) from None
    return rows


def dataset_format(name: Any) -> DatasetFormat:
    """The registered format ``name`` (a string or a ``DataFormat`` enum); unknown names raise a
    DataError with a did-you-mean and the valid choices."""
    try:
        return DATASET_FORMATS.get(str(getattr(name, "value", name)))
    except ConfigError as err:
        raise DataError(f"data.format: {err}") from None


def demo_facts_path() -> Path:
    """Path of the hand-written demo facts shipped inside the package."""
    return Path(str(resources.files("edit_runner.data").joinpath(DEMO_FACTS_FILE)))


def parse_records(fmt: str, rows: Sequence[Any], source: str = "<memory>") -> list[EditRecord]:
    """Convert in-memory rows of format ``fmt`` into validated EditRecords."""
    return dataset_format(fmt).parse(rows, source)


def load_records(fmt: str, path: str | os.PathLike[str] | None = None) -> list[EditRecord]:
    """Load every record of the file ``path`` in format ``fmt`` (``demo``: ``path`` defaults to the shipped set)."""
    spec = dataset_format(fmt)
    if path is None or str(path) == "":
        if spec.name != "demo":
            raise DataError(f"data.format={spec.name} needs a file: pass data.path=<file>")
        path = demo_facts_path()
    file = Path(path)
    return spec.parse(read_json_rows(file), str(file))


def load_demo_records() -> list[EditRecord]:
    """The shipped hand-written demo facts (CounterFact format, with neighbour subjects)."""
    return load_records("demo")


def load_dataset(cfg: Any, cache_dir: str | os.PathLike[str] | None = None) -> list[EditRecord]:
    """Resolve, load and select the records a run edits from a ``data`` config.

    ``cfg`` has the fields of ``edit_runner.config.DataConfig`` (``name, format, path, url, sha256,
    num_edits, offset, seed, shuffle, case_ids_file, unique_subjects``); missing optional fields take their defaults.
    The file is ``data.path``, else (formats with a canonical download) the cached/downloaded copy,
    else (``demo``) the shipped set.
    """
    from edit_runner.data.download import resolve_dataset_file
    from edit_runner.data.selection import select_records

    fmt = dataset_format(getattr(cfg, "format", None) or "demo")
    name = str(getattr(cfg, "name", None) or fmt.name)
    path = getattr(cfg, "path", None)
    url = getattr(cfg, "url", None)
    if path or url or (fmt.name not in ("demo", "custom", "easyedit")):
        file = resolve_dataset_file(name, path, url, getattr(cfg, "sha256", None), cache_dir)
    elif fmt.name == "demo":
        file = demo_facts_path()
    else:
        raise DataError(f"data={name} (format {fmt.name}) needs a file: pass data.path=<file>")
    records = fmt.parse(read_json_rows(file), str(file))
    return select_records(
        records,
        num_edits=getattr(cfg, "num_edits", None),
        offset=getattr(cfg, "offset", 0) or 0,
        seed=getattr(cfg, "seed", 0) or 0,
        shuffle=bool(getattr(cfg, "shuffle", False)),
        case_ids_file=getattr(cfg, "case_ids_file", None),
        unique_subjects=bool(getattr(cfg, "unique_subjects", False)),
    )


# Formats defined in their own modules register themselves when imported (they use the helpers above).
from edit_runner.data import knowedit, mquake  # noqa: F401

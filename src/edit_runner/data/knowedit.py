"""KnowEdit (zjunlp/KnowEdit) JSON files: WikiData_counterfact, ZsRE and WikiData_recent.

One record per row (EasyEdit's ``KnowEditDataset`` schema)::

    {"subject": "Leo Arons", "prompt": "The place of death of Leo Arons is",
     "target_new": "Berlin", "ground_truth": "Potsdam",            # ground_truth absent in WikiData_recent
     "rephrase_prompt": "...",                                     # optional (ZsRE), str or list
     "portability": {"Reasoning": [{"prompt": "...", "ground_truth": [["Kai Wegner", "Kai Peter Wegner"]]}],
                     "Subject_Aliasing": [...], "Logical_Generalization": [...]},
     "locality": {"Relation_Specificity": [{"prompt": "...", "ground_truth": ["Albert Arons"]}],
                  "Forgetfulness": [...]}}

An answer (``target_new``, ``ground_truth`` and the group entries' ``ground_truth``) may be a
string, a list of answers or a list of alias lists; as EasyEdit's KnowEdit scripts do, the first
string is used (the first alias of the first answer). ``prompt`` is plain text containing the
subject once (or a ``{}`` template). Rows with ``ground_truth`` are CounterFact-kind records;
rows without it (knowledge insertion, WikiData_recent) are zsRE-kind records (accuracy metrics
only, no true object). Portability groups become :attr:`EditRecord.portability` (their prompts and
first answers), every locality group's prompts the neighbourhood prompts with their own answers.
WikiBio rows (``text``/``labels``/``concept``) are not edit records of this kind and are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edit_runner.data.loaders import (
    DATASET_FORMATS,
    ZSRE_TARGET_TRUE,
    DatasetFormat,
    Row,
    _check_targets,
    _finish,
    _require_row,
    _string,
    _string_list,
    _Where,
    first_answer,
    to_template,
)
from edit_runner.data.record import EditRecord, NeighborPrompt, PortabilityPrompt, RecordKind


def prompt_groups(value: Any, field: str, where: _Where) -> list[tuple[str, str, str]]:
    """``(group name, prompt, first answer)`` for every entry of ``{group: [{prompt, ground_truth}]}``."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise where.error(
            field, f"must be an object {{group: [{{prompt, ground_truth}}, ...]}}, got {type(value).__name__}"
        )
    out: list[tuple[str, str, str]] = []
    for group, entries in value.items():
        name = f"{field}.{group}"
        if isinstance(entries, dict):
            entries = [entries]
        if not isinstance(entries, list):
            raise where.error(name, f"must be a list of {{prompt, ground_truth}}, got {type(entries).__name__}")
        for i, entry in enumerate(entries):
            item = f"{name}[{i}]"
            if not isinstance(entry, dict):
                raise where.error(item, f"must be an object {{prompt, ground_truth}}, got {type(entry).__name__}")
            prompt = _string(entry.get("prompt"), f"{item}.prompt", where)
            if "ground_truth" not in entry:
                raise where.error(f"{item}.ground_truth", "is missing")
            out.append((str(group), prompt, first_answer(entry["ground_truth"], f"{item}.ground_truth", where)))
    return out


def _parse_knowedit_row(row: Row, index: int, source: str) -> EditRecord:
    case_id = row.get("case_id", index)
    where = _Where(source, index, case_id)
    if "subject" not in row and "concept" in row:
        raise where.error(
            "subject", "is missing: this looks like a KnowEdit WikiBio row (text/labels/concept), which is not supported"
        )
    subject = _string(row.get("subject"), "subject", where)
    template = to_template(_string(row.get("prompt"), "prompt", where), subject, where)
    if "target_new" not in row:
        raise where.error("target_new", "is missing")
    target_new = first_answer(row["target_new"], "target_new", where)
    has_truth = row.get("ground_truth") is not None
    target_true = first_answer(row["ground_truth"], "ground_truth", where) if has_truth else ZSRE_TARGET_TRUE
    if has_truth:
        _check_targets(target_new, target_true, where, "ground_truth")
    rephrase_field = "rephrase_prompt" if "rephrase_prompt" in row else "rephrase"
    return EditRecord(
        case_id=str(case_id),
        subject=subject,
        prompt=template,
        target_new=target_new,
        target_true=target_true,
        kind=RecordKind.counterfact if has_truth else RecordKind.zsre,
        paraphrase_prompts=_string_list(row.get(rephrase_field), rephrase_field, where),
        neighborhood=tuple(
            NeighborPrompt(prompt, answer) for _, prompt, answer in prompt_groups(row.get("locality"), "locality", where)
        ),
        portability=tuple(
            PortabilityPrompt(prompt, answer, group)
            for group, prompt, answer in prompt_groups(row.get("portability"), "portability", where)
        ),
    )


def parse_knowedit(rows: Sequence[Any], source: str = "<knowedit>") -> list[EditRecord]:
    """KnowEdit rows (see the module docstring); ``case_id`` defaults to the position in the file."""
    return _finish(
        [_parse_knowedit_row(_require_row(row, _Where(source, i)), i, source) for i, row in enumerate(rows)],
        source,
    )


DATASET_FORMATS.register(
    "knowedit",
    DatasetFormat("knowedit", parse_knowedit, "KnowEdit WikiData_counterfact / ZsRE / WikiData_recent"),
)

"""MQuAKE (princeton-nlp/MQuAKE: ``MQuAKE-CF-3k.json``, ``MQuAKE-CF.json``, ``MQuAKE-T.json``).

A case holds several edits that together change the answer of its multi-hop questions::

    {"case_id": 2500,
     "requested_rewrite": [{"prompt": "{} is a citizen of", "subject": "Vince McMahon",
                            "target_new": {"str": "Libya"}, "target_true": {"str": "United States of America"},
                            "relation_id": "P27", "question": "What is the country of citizenship of Vince McMahon?"},
                           ...],
     "questions": ["What city serves as the capital of ...?", ...],     # three multi-hop paraphrases
     "answer": "Washington, D.C.", "answer_alias": [...],               # before the edits
     "new_answer": "Franklin", "new_answer_alias": [...],               # after all edits of the case
     "new_single_hops": [{"question": ..., "cloze": ..., "answer": ..., "answer_alias": [...]}, ...]}

:func:`parse_mquake_cases` gives :class:`MquakeCase` objects (for the multi-hop metric of
:mod:`edit_runner.evaluation.edit_metrics`, which a run computes per case through the case suite of
:mod:`edit_runner.evaluation.multi_hop`: steps of whole cases, each case evaluated after its step). The ``mquake`` data format flattens the cases into one
CounterFact-kind EditRecord per rewrite, case id ``"<case_id>:<k>"``, the rewrite's ``question`` as its
paraphrase prompt; the case's multi-hop questions (answer ``new_answer``) are the portability prompts
(group ``multi_hop``) of the case's first record only, so every case counts once (as EasyEdit's
``MQuAKEDataset`` uses them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from edit_runner.data.loaders import (
    DATASET_FORMATS,
    DatasetFormat,
    Row,
    _check_targets,
    _finish,
    _get,
    _require_row,
    _string,
    _string_list,
    _target,
    _Where,
    read_json_rows,
    to_template,
)
from edit_runner.data.record import EditRecord, PortabilityPrompt, RecordKind

MULTI_HOP = "multi_hop"


@dataclass(frozen=True)
class SingleHop:
    """One single-hop fact of a case's (new) chain: its cloze prompt and accepted answers."""

    cloze: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class MquakeCase:
    """One MQuAKE case: its edits, its multi-hop questions and the accepted answers after the edits.

    ``new_answers`` is ``new_answer`` followed by ``new_answer_alias`` (duplicates removed);
    ``answers`` the same for the pre-edit answer.
    """

    case_id: str
    records: tuple[EditRecord, ...]
    questions: tuple[str, ...]
    new_answers: tuple[str, ...]
    answers: tuple[str, ...]
    new_single_hops: tuple[SingleHop, ...] = ()


def _answers(row: Row, key: str, where: _Where, prefix: str = "") -> tuple[str, ...]:
    """``row[key]`` then ``row[key + "_alias"]``, stripped, duplicates removed."""
    main = _string(row.get(key), f"{prefix}{key}", where).strip()
    aliases = _string_list(row.get(f"{key}_alias"), f"{prefix}{key}_alias", where)
    return tuple(dict.fromkeys([main, *(a.strip() for a in aliases)]))


def _rewrite_record(rewrite: Any, k: int, case_id: str, where: _Where) -> EditRecord:
    field = f"requested_rewrite[{k}]"
    if not isinstance(rewrite, dict):
        raise where.error(field, f"must be an object, got {type(rewrite).__name__}")
    subject = _string(rewrite.get("subject"), f"{field}.subject", where)
    template = to_template(_string(rewrite.get("prompt"), f"{field}.prompt", where), subject, where, f"{field}.prompt")
    target_new = _target(rewrite.get("target_new"), f"{field}.target_new", where)
    target_true = _target(rewrite.get("target_true"), f"{field}.target_true", where)
    _check_targets(target_new, target_true, where, f"{field}.target_true")
    relation = rewrite.get("relation_id")
    return EditRecord(
        case_id=f"{case_id}:{k}",
        subject=subject,
        prompt=template,
        target_new=target_new,
        target_true=target_true,
        kind=RecordKind.counterfact,
        paraphrase_prompts=_string_list(rewrite.get("question"), f"{field}.question", where),
        relation_id=str(relation) if relation is not None else None,
    )


def _single_hops(value: Any, where: _Where) -> tuple[SingleHop, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise where.error("new_single_hops", f"must be a list of objects, got {type(value).__name__}")
    hops = []
    for i, hop in enumerate(value):
        field = f"new_single_hops[{i}]"
        if not isinstance(hop, dict):
            raise where.error(field, f"must be an object {{cloze, answer, answer_alias}}, got {type(hop).__name__}")
        cloze = _string(hop.get("cloze"), f"{field}.cloze", where)
        hops.append(SingleHop(cloze, _answers(hop, "answer", where, prefix=f"{field}.")))
    return tuple(hops)


def _parse_case(row: Row, index: int, source: str) -> MquakeCase:
    where = _Where(source, index, row.get("case_id"))
    case_id = str(_get(row, "case_id", where))
    rewrites = _get(row, "requested_rewrite", where)
    if not isinstance(rewrites, list) or not rewrites:
        raise where.error("requested_rewrite", "must be a non-empty list of edits {prompt, subject, target_new, target_true}")
    records = [_rewrite_record(rewrite, k, case_id, where) for k, rewrite in enumerate(rewrites)]
    questions = _string_list(_get(row, "questions", where), "questions", where)
    if not questions:
        raise where.error("questions", "is empty; a case needs at least one multi-hop question")
    new_answers = _answers(row, "new_answer", where)
    portability = tuple(PortabilityPrompt(q, new_answers[0], MULTI_HOP) for q in questions)
    records[0] = replace(records[0], portability=portability)
    return MquakeCase(
        case_id=case_id,
        records=tuple(records),
        questions=questions,
        new_answers=new_answers,
        answers=_answers(row, "answer", where) if row.get("answer") is not None else (),
        new_single_hops=_single_hops(row.get("new_single_hops"), where),
    )


def parse_mquake_cases(rows: Sequence[Any], source: str = "<mquake>") -> list[MquakeCase]:
    """MQuAKE rows as cases; every record is validated and case ids must be unique."""
    cases = [_parse_case(_require_row(row, _Where(source, i)), i, source) for i, row in enumerate(rows)]
    _finish([record for case in cases for record in case.records], source)
    return cases


def parse_mquake(rows: Sequence[Any], source: str = "<mquake>") -> list[EditRecord]:
    """MQuAKE rows flattened to one EditRecord per rewrite (see the module docstring)."""
    return [record for case in parse_mquake_cases(rows, source) for record in case.records]


def load_mquake_cases(path: str | os.PathLike[str]) -> list[MquakeCase]:
    """Every case of the MQuAKE file ``path``."""
    return parse_mquake_cases(read_json_rows(path), str(path))


DATASET_FORMATS.register(
    "mquake", DatasetFormat("mquake", parse_mquake, "MQuAKE cases, one record per requested rewrite")
)

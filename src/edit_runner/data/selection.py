"""Which records of a dataset a run edits: an explicit case-id list, or seeded shuffle + offset + count."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edit_runner.data.record import EditRecord
from edit_runner.errors import DataError

_MAX_LISTED = 20


def _fmt_ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_MAX_LISTED])
    return shown + (f", ... ({len(ids) - _MAX_LISTED} more)" if len(ids) > _MAX_LISTED else "")


def read_case_ids(path: str | os.PathLike[str]) -> list[str]:
    """Read an ordered case-id list.

    Accepted: a JSON list of ids (ints or strings, e.g. ``counterfact/trial_subsets/*.case_ids.json``),
    a JSON object with a ``case_ids`` list, or a text file with one id per line (blank lines and
    ``#`` comments ignored). Ids are returned as strings, in file order; duplicates are an error.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data.case_ids_file={str(path)!r} does not exist or is not a file")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"data.case_ids_file={str(path)!r}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
            ) from None
        if isinstance(loaded, dict) and "case_ids" in loaded:
            loaded = loaded["case_ids"]
        if not isinstance(loaded, list):
            raise DataError(
                f"data.case_ids_file={str(path)!r}: expected a JSON list of case ids "
                f"(or an object with a 'case_ids' list), got {type(loaded).__name__}"
            )
        raw: list[object] = loaded
    else:
        raw = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        raw = [item for item in raw if item]
    ids: list[str] = []
    for position, item in enumerate(raw):
        if (
            isinstance(item, bool)
            or not isinstance(item, (int, str))
            or (isinstance(item, str) and not item.strip())
        ):
            raise DataError(
                f"data.case_ids_file={str(path)!r}: entry {position} is {item!r}; case ids must be integers or strings"
            )
        ids.append(str(item).strip())
    seen: set[str] = set()
    duplicates: list[str] = []
    for case_id in ids:
        if case_id in seen:
            duplicates.append(case_id)
        seen.add(case_id)
    if duplicates:
        raise DataError(f"data.case_ids_file={str(path)!r}: duplicate case ids {_fmt_ids(duplicates)}")
    return ids


def select_by_case_ids(
    records: Sequence[EditRecord], case_ids: Sequence[str], source: str = "case id list"
) -> list[EditRecord]:
    """The records with the given case ids, in the order of ``case_ids``; every missing id is listed."""
    by_id = {record.case_id: record for record in records}
    missing = [case_id for case_id in case_ids if case_id not in by_id]
    if missing:
        raise DataError(
            f"{source} names {len(missing)} case id(s) not in the dataset ({len(records)} records): "
            f"{_fmt_ids(missing)}. Check that the list belongs to this dataset (data.path / data=...)."
        )
    return [by_id[case_id] for case_id in case_ids]


def unique_subject_records(records: Sequence[EditRecord]) -> list[EditRecord]:
    """The first record of every distinct subject (compared lower-cased), in the given order.

    This is the authors' rule of seeds 002 and 004 (``create_samples.py``: ``subject.lower()`` kept on
    first sight) that no subject is edited twice within a sample.
    """
    seen: set[str] = set()
    kept = []
    for record in records:
        key = record.subject.lower()
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def select_records(
    records: Sequence[EditRecord],
    num_edits: int | None = None,
    offset: int = 0,
    seed: int = 0,
    shuffle: bool = False,
    case_ids_file: str | os.PathLike[str] | None = None,
    unique_subjects: bool = False,
) -> list[EditRecord]:
    """Choose the records a run edits.

    With ``case_ids_file`` the records are those ids in the file's order (``shuffle`` and ``seed``
    are ignored); otherwise the dataset order, permuted by ``numpy.random.default_rng(seed)`` when
    ``shuffle``. ``unique_subjects`` keeps the first record of each subject (lower-cased) — in the
    dataset's order before the shuffle, as the authors' sampling scripts do, or in the file's order
    with ``case_ids_file``. Then ``offset`` records are skipped and the first ``num_edits`` kept
    (``None`` or ``-1``: all remaining). Asking for more records than are available is an error.
    """
    if case_ids_file is not None and str(case_ids_file) != "":
        ordered = select_by_case_ids(
            records, read_case_ids(case_ids_file), source=f"data.case_ids_file={str(case_ids_file)!r}"
        )
        if unique_subjects:
            ordered = unique_subject_records(ordered)
    elif unique_subjects:
        ordered = unique_subject_records(records)
        if shuffle:
            permutation = np.random.default_rng(seed).permutation(len(ordered))
            ordered = [ordered[int(i)] for i in permutation]
    elif shuffle:
        permutation = np.random.default_rng(seed).permutation(len(records))
        ordered = [records[int(i)] for i in permutation]
    else:
        ordered = list(records)
    if offset is None:
        offset = 0
    if offset < 0:
        raise DataError(f"data.offset={offset} must be >= 0")
    if offset > len(ordered) or (offset == len(ordered) and ordered):
        raise DataError(f"data.offset={offset} skips every record: only {len(ordered)} are available")
    remaining = ordered[offset:]
    if num_edits is None or num_edits == -1:
        chosen = remaining
    elif num_edits <= 0:
        raise DataError(f"data.num_edits={num_edits} must be a positive count, or null / -1 for all records")
    elif num_edits > len(remaining):
        after = f" after data.offset={offset}" if offset else ""
        raise DataError(
            f"data.num_edits={num_edits} but only {len(remaining)} records are available{after}; "
            "lower data.num_edits or set it to null for all"
        )
    else:
        chosen = remaining[:num_edits]
    if not chosen:
        raise DataError("the selection is empty: the dataset has no records")
    return chosen

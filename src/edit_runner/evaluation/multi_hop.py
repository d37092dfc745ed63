"""Case-level evaluation: datasets whose edits come in cases that are edited and evaluated together.

A data format with a :class:`CaseSuite` (registered in :data:`CASE_SUITES` under the format's name)
makes the plan cut its steps at case boundaries (a case's requested rewrites are one batch; never
split) and the runner evaluate the cases' own questions on the pre-edit model, right after each
step on that step's cases, and on the final model. MQuAKE (Zhong et al. 2023) is the one suite:
its multi-hop questions are answered after all facts of their case were edited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from edit_runner.data.mquake import MquakeCase, load_mquake_cases
from edit_runner.data.record import EditRecord
from edit_runner.errors import DataError
from edit_runner.evaluation.edit_metrics import evaluate_mquake, summarize_mquake
from edit_runner.registry import Registry

MQUAKE_DEFINITION = (
    "MQuAKE (Zhong et al. 2023 §3.3): a prompt is answered when every token of an accepted answer (new_answer or an "
    "alias) is the teacher-forced argmax; multi_hop_accuracy = fraction of cases with at least one of their multi-hop "
    "questions answered, edit_wise_success = fraction of edited facts whose rewrite prompt gives the new target, "
    "instance_wise_accuracy = fraction of cases whose every new single-hop cloze is answered. Cases are edited in "
    "steps of whole cases (protocol.batch_size = cases per step; batched = all cases in one step), cumulatively; "
    "'post' reads each case right after its own step, 'post.final' every case on the final model"
)


class CaseSuite(Protocol):
    """The cases behind a run's records: how they cut the steps and how a case is scored."""

    definition: str

    def steps(self, records: list[EditRecord], cases_per_step: int | None) -> list[list[EditRecord]]:
        """``records`` cut into steps of ``cases_per_step`` whole cases (``None``: one step)."""
        ...

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, records: Sequence[EditRecord], batch_size: int) -> list[dict[str, Any]]:
        """One row per case of ``records`` on the model as it is."""
        ...

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
        """The suite's named metrics over case rows."""
        ...


#: ``factory(dataset_file, selected_records)`` → the suite of those records.
CaseSuiteFactory = Callable[[Path, list[EditRecord]], CaseSuite]
CASE_SUITES: Registry[CaseSuiteFactory] = Registry("case-level evaluation")


def case_id_of(record: EditRecord) -> str:
    """The MQuAKE case of a record (its id is ``"<case_id>:<k>"``)."""
    return record.case_id.rsplit(":", 1)[0]


@dataclass(frozen=True)
class MquakeSuite:
    """MQuAKE cases by id; the selection must hold every rewrite of each case it touches."""

    cases: dict[str, MquakeCase]
    definition: str = MQUAKE_DEFINITION

    def groups(self, records: Sequence[EditRecord]) -> list[list[EditRecord]]:
        """``records`` grouped by case, in order of first appearance."""
        grouped: dict[str, list[EditRecord]] = {}
        for record in records:
            grouped.setdefault(case_id_of(record), []).append(record)
        return list(grouped.values())

    def steps(self, records: list[EditRecord], cases_per_step: int | None) -> list[list[EditRecord]]:
        """Steps of ``cases_per_step`` whole cases."""
        groups = self.groups(records)
        size = len(groups) if cases_per_step is None else cases_per_step
        return [[r for group in groups[i : i + size] for r in group] for i in range(0, len(groups), size)]

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, records: Sequence[EditRecord], batch_size: int) -> list[dict[str, Any]]:
        """:func:`~edit_runner.evaluation.edit_metrics.evaluate_mquake` on the cases of ``records``."""
        return evaluate_mquake(model, tokenizer, [self.cases[case_id_of(g[0])] for g in self.groups(records)], batch_size)

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
        """Multi-hop accuracy, edit-wise success and instance-wise accuracy."""
        return summarize_mquake(rows)


def mquake_suite(path: Path, records: list[EditRecord]) -> MquakeSuite:
    """The cases of ``records`` in the MQuAKE file ``path``; a DataError when the selection splits a case."""
    cases = {case.case_id: case for case in load_mquake_cases(path)}
    chosen: dict[str, list[str]] = {}
    for record in records:
        chosen.setdefault(case_id_of(record), []).append(record.case_id)
    for case_id, ids in chosen.items():
        wanted = [r.case_id for r in cases[case_id].records]
        if sorted(ids) != sorted(wanted):
            cut = len(records) - len(ids)
            hint = f" (e.g. data.num_edits={cut or len(records) - len(ids) + len(wanted)})" if case_id == case_id_of(records[-1]) else ""
            raise DataError(
                f"data.num_edits / data.offset / data.shuffle: the selection holds {ids} of MQuAKE case {case_id}, whose "
                f"rewrites are {wanted}; a case is edited whole — select whole cases (data.shuffle=false and a "
                f"data.num_edits / data.offset on case boundaries{hint}, or a data.case_ids_file listing every rewrite of each case)"
            )
    return MquakeSuite({case_id: cases[case_id] for case_id in chosen})


CASE_SUITES.register("mquake", mquake_suite)

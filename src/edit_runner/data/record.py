"""The one edit-record type every loader produces and every algorithm and metric consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from edit_runner.errors import DataError


class RecordKind(str, Enum):
    """Which evaluation family a record belongs to (decides the metric definitions)."""

    counterfact = "counterfact"
    zsre = "zsre"


@dataclass(frozen=True)
class NeighborPrompt:
    """A neighborhood (locality) prompt with the answer it should keep and, when known, its subject."""

    prompt: str
    target: str
    subject: str | None = None


@dataclass(frozen=True)
class PortabilityPrompt:
    """A prompt whose answer should follow from the edit (EasyEdit/KnowEdit "portability").

    ``kind`` names the group it comes from (KnowEdit: ``Reasoning``, ``Subject_Aliasing``,
    ``Logical_Generalization``; MQuAKE: ``multi_hop``); the metric averages within a group first.
    """

    prompt: str
    target: str
    kind: str


@dataclass(frozen=True)
class EditRecord:
    """One requested edit ``(subject, relation) : target_true -> target_new`` with its evaluation prompts.

    ``prompt`` is a template with exactly one ``{}`` standing for the subject, e.g.
    ``"The mother tongue of {} is"``. Targets are stored without a leading space; the
    tokenization helpers add it (SPEC Part B §1).
    """

    case_id: str
    subject: str
    prompt: str
    target_new: str
    target_true: str
    kind: RecordKind = RecordKind.counterfact
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood: tuple[NeighborPrompt, ...] = ()
    attribute_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    relation_id: str | None = None
    neighbor_subjects_known: bool = field(default=False)
    train_neighbors: tuple[NeighborPrompt, ...] = ()
    portability: tuple[PortabilityPrompt, ...] = ()

    @property
    def rewrite_prompt(self) -> str:
        """The edit prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    def validate(self) -> None:
        """Raise a DataError naming this record's case id if it cannot be edited."""
        where = f"record case_id={self.case_id}"
        if not self.subject or not self.subject.strip():
            raise DataError(f"{where}: empty subject; give the entity whose fact is edited")
        if self.prompt.count("{}") != 1:
            raise DataError(
                f"{where}: prompt {self.prompt!r} must contain exactly one '{{}}' where the subject goes"
            )
        if not self.target_new or not self.target_new.strip():
            raise DataError(f"{where}: target_new is empty or missing; give the new object of the edit")
        if self.kind is RecordKind.counterfact and (not self.target_true or not self.target_true.strip()):
            raise DataError(f"{where}: target_true is empty or missing; give the original object")
        if self.target_new.strip() == (self.target_true or "").strip():
            raise DataError(
                f"{where}: target_new equals target_true ({self.target_new!r}); an edit must change the object"
            )


def validate_records(records: list[EditRecord]) -> None:
    """Validate every record and reject duplicate case ids."""
    seen: set[str] = set()
    for record in records:
        record.validate()
        if record.case_id in seen:
            raise DataError(f"record case_id={record.case_id}: duplicate case id in the selection")
        seen.add(record.case_id)

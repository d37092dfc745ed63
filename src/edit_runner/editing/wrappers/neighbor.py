"""Neighbor-assisted editing (seed 000 §3.2, SPEC B §10): NA (neighbor prompts) and NAP (with random prefixes).

Each adds loss rows ``−ln p(o | neighbor prompt, δ at the neighbor subject)`` to the optimization
stage. Training neighbors are selected on the unedited model (:mod:`edit_runner.editing.neighbors`)
unless the records bring their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from edit_runner.data.record import EditRecord
from edit_runner.editing.algorithms import OPTIMIZATION
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.neighbors import select_train_neighbors
from edit_runner.editing.targets import LossRow
from edit_runner.editing.wrappers import WRAPPERS, PrepareContext, Wrapper, WrapperEntry
from edit_runner.errors import ConfigError
from edit_runner.models.tokens import FilledPrompt, find_subject, target_token_ids

if TYPE_CHECKING:
    from edit_runner.editing.editor import EditorBuilder
    from edit_runner.plan import RunPlan


class NeighborWeighting(str, Enum):
    """NA loss weighting: the paper's separate mean, or the reference code's pooled mean (SPEC B §10)."""

    paper = "paper"
    pooled = "pooled"


@dataclass
class NeighborConfig:
    """NA / NAP settings: loss weight and weighting, and the neighbour selection on the unedited model."""

    neighbor_weight: float = 1.0
    weighting: NeighborWeighting = NeighborWeighting.paper
    num_train_neighbors: int = 1
    min_qualifying: int = 2


def _prefixed(prompt: FilledPrompt, template: str) -> FilledPrompt:
    head = template[: template.index("{}")]
    tail = template[template.index("{}") + 2 :]
    return FilledPrompt(head + prompt.text + tail, prompt.subject_start + len(head), prompt.subject_end + len(head))


class NeighborRows:
    """NA / NAP loss rows (seed 000 §3.2, SPEC B §10): −ln p(o | neighbor prompt, δ at the neighbor subject).

    NA uses the neighbor prompts as they are; NAP adds the random prefixes (with ``pooled`` the
    first prefix only, as the reference code). Rows of the paper weighting are normalised by the
    true object's length; pooled rows by the new object's length (reference).
    """

    def __init__(self, with_prefix: bool, pooled: bool) -> None:
        self.with_prefix = with_prefix
        self.pooled = pooled

    def rows(self, records: list[EditRecord], templates: ContextTemplates, tokenizer) -> list[LossRow]:
        """Neighbor rows for every record's training neighbors."""
        rows = []
        if self.with_prefix:
            chosen = templates.flat[1:2] if self.pooled else templates.flat[1:]
        else:
            chosen = ["{}"]
        for r, record in enumerate(records):
            if not record.train_neighbors:
                raise ConfigError(
                    f"record case_id={record.case_id}: neighbor-assisted editing needs training neighbors; "
                    "use a dataset with neighborhood subjects (multi_counterfact / easyedit / demo)"
                )
            norm_new = len(target_token_ids(tokenizer, record.target_new))
            for neighbor in record.train_neighbors:
                assert neighbor.subject is not None
                base = find_subject(neighbor.prompt, neighbor.subject, record.case_id)
                target = tuple(target_token_ids(tokenizer, neighbor.target))
                for template in chosen:
                    rows.append(LossRow(r, _prefixed(base, template), target, "neighbor", 0, norm_new if self.pooled else len(target)))
        return rows


class NeighborAssisted(Wrapper):
    """NA (``with_prefix=False``) or NAP (``with_prefix=True``)."""

    needs = frozenset({OPTIMIZATION})

    def __init__(self, config: NeighborConfig, *, with_prefix: bool) -> None:
        self.config = config
        self.with_prefix = with_prefix
        self.name = "nap" if with_prefix else "na"
        self.conflicts = frozenset({"na" if with_prefix else "nap"})
        self.pooled = NeighborWeighting(config.weighting) is NeighborWeighting.pooled
        self.dropped: list[str] = []
        self.kept = 0

    def check(self, plan: RunPlan) -> None:
        """Every record needs neighbour subjects (for δ at the neighbour subject): given training
        neighbours (EasyEdit ``neighborhood_samples``) or neighbourhood prompts with known subjects."""
        missing = next(
            (r.case_id for r in plan.records if not (r.train_neighbors or r.neighbor_subjects_known)), None
        )
        if missing is not None:
            raise ConfigError(
                f"wrapper: neighbor-assisted editing needs neighbor subjects, but record case_id={missing} has none; use "
                "data=multi_counterfact (with neighborhood_samples), an EasyEdit file with neighborhood_samples, or data=demo"
            )

    def prepare(self, context: PrepareContext) -> list[EditRecord]:
        """Select training neighbours the unedited model gets right; drop records with too few."""
        if all(r.train_neighbors for r in context.records):
            return context.records
        cfg = self.config
        records, self.dropped = select_train_neighbors(
            context.model, context.tokenizer, context.records, int(cfg.num_train_neighbors), int(cfg.min_qualifying), context.batch_size
        )
        if not records:
            raise ConfigError(
                f"wrapper: every record was dropped by neighbor selection ({len(self.dropped)} had < {cfg.min_qualifying} qualifying neighbors)"
            )
        self.kept = len(records)
        context.log(
            f"neighbor selection: kept {len(records)} records, dropped {len(self.dropped)} with fewer than {cfg.min_qualifying} qualifying neighbors"
        )
        return records

    def install(self, builder: EditorBuilder) -> None:
        """Add the neighbour loss rows and their weighting."""
        builder.extra_rows.append(NeighborRows(with_prefix=self.with_prefix, pooled=self.pooled))
        builder.optimization.update(neighbor_weight=float(self.config.neighbor_weight), pooled_neighbors=self.pooled)

    def summarize(self, summary: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        """Which records the neighbour selection dropped."""
        if self.dropped:
            summary["neighbor_selection"] = {"dropped": len(self.dropped), "dropped_case_ids": self.dropped, "kept": self.kept}


def _na(config: NeighborConfig) -> NeighborAssisted:
    return NeighborAssisted(config, with_prefix=False)


def _nap(config: NeighborConfig) -> NeighborAssisted:
    return NeighborAssisted(config, with_prefix=True)


WRAPPERS.register("na", WrapperEntry("na", NeighborConfig, _na, order=20))
WRAPPERS.register("nap", WrapperEntry("nap", NeighborConfig, _nap, order=30))

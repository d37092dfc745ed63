"""Everything decided before a model is loaded: validated config choices and the selected edits.

Bad input fails here with one clear message (record case id or config key, and the fix), before
any expensive work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edit_runner.config import (
    DataConfig,
    ModelConfig,
    ModelSource,
    ProtocolName,
    RunConfig,
    StatsConfig,
    fail,
)
from edit_runner.data.record import EditRecord, validate_records
from edit_runner.editing.algorithms import AlgorithmSpec, algorithm_spec
from edit_runner.editing.wrappers import Wrapper, build_wrappers, check_combination
from edit_runner.models.tokens import find_subject

if TYPE_CHECKING:
    from edit_runner.evaluation.multi_hop import CaseSuite


@dataclass
class RunPlan:
    """The validated choices of a run and its edits split into protocol steps."""

    spec: AlgorithmSpec
    config: Any  # the algorithm's hyper-parameter dataclass
    wrappers: list[Wrapper]
    records: list[EditRecord]
    steps: list[list[EditRecord]]
    cases: CaseSuite | None = None  # case-level evaluation of the dataset (steps are whole cases)
    cases_per_step: int | None = None  # with ``cases``: whole cases per step (None: all in one step)

    @property
    def batch_size(self) -> int:
        """Edits per step."""
        return len(self.steps[0]) if self.steps else 0

    @property
    def wrapper_names(self) -> list[str]:
        """The enabled wrappers' names in canonical order."""
        return [w.name for w in self.wrappers]

    def with_records(self, records: list[EditRecord]) -> RunPlan:
        """The same plan over ``records`` (e.g. after neighbour selection), steps re-split."""
        size = self.batch_size if len(self.steps) > 1 else len(records)
        if self.cases is not None:
            steps = self.cases.steps(records, self.cases_per_step)
            return RunPlan(self.spec, self.config, self.wrappers, records, steps, self.cases, self.cases_per_step)
        return RunPlan(self.spec, self.config, self.wrappers, records, [records[i : i + size] for i in range(0, len(records), size)])


def load_edit_records(data: DataConfig, cache_dir: Path) -> list[EditRecord]:
    """Load and select the run's edit records from ``data`` (local path, cache or canonical URL)."""
    from edit_runner.data.download import resolve_dataset_file
    from edit_runner.data.loaders import load_records
    from edit_runner.data.selection import select_records

    fmt = data.format.value
    if fmt == "demo":
        records = load_records("demo", data.path)
    else:
        path = resolve_dataset_file(data.name, data.path, data.url, data.sha256, cache_dir)
        records = load_records(fmt, path)
    return select_records(
        records,
        num_edits=data.num_edits,
        offset=data.offset,
        seed=data.seed,
        shuffle=data.shuffle,
        case_ids_file=data.case_ids_file,
        unique_subjects=data.unique_subjects,
    )


def load_case_suite(data: DataConfig, cache_dir: Path, records: list[EditRecord]) -> CaseSuite | None:
    """The case-level evaluation of ``data``'s format over the selected ``records`` (None when the format has none)."""
    from edit_runner.data.download import resolve_dataset_file
    from edit_runner.evaluation.multi_hop import CASE_SUITES

    fmt = data.format.value
    if fmt not in CASE_SUITES:
        return None
    return CASE_SUITES.get(fmt)(resolve_dataset_file(data.name, data.path, data.url, data.sha256, cache_dir), records)


def check_subjects(records: list[EditRecord]) -> None:
    """Every subject must occur in its prompt (and neighbor subjects in theirs)."""
    for record in records:
        find_subject(record.rewrite_prompt, record.subject, record.case_id)


def check_covariance_corpus(stats: StatsConfig) -> None:
    """A local covariance corpus must exist before any model is loaded."""
    path = stats.text_path
    if stats.corpus.value == "text" and not path:
        raise fail("stats.text_path", "stats.corpus=text needs a text file, e.g. stats.text_path=wiki.test.raw")
    if path and not Path(path).is_file():
        raise fail("stats.text_path", f"covariance corpus file {path} does not exist; give an existing text file")


def check_model_path(model: ModelConfig) -> None:
    """A ``model.path`` that names a local file or directory must exist (hub ids look like ``org/name``)."""
    path = model.path
    if not path or model.source is ModelSource.smollm2:
        return
    local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or path.endswith(".gguf")
    if local and not Path(path).expanduser().exists():
        raise fail(
            "model.path",
            f"no such directory or file: {path}; give an existing local model directory or .gguf file, or a hub id such as org/name",
        )


def check_independent(cfg: RunConfig) -> None:
    """``protocol=independent`` reports each step's evaluation (the model is restored after it), so it
    needs ``protocol.eval_each_step``; a health tracker would only ever see the restored model."""
    if not cfg.protocol.eval_each_step:
        raise fail(
            "protocol.eval_each_step",
            "protocol=independent restores the unedited model after each step, so its results are the after-step "
            "evaluations; set protocol.eval_each_step=true",
        )
    if cfg.eval.every_n_edits:
        raise fail(
            "eval.every_n_edits",
            "protocol=independent restores the unedited model after each step, so health trackers would measure the "
            "unedited model; set eval.every_n_edits=null (or use protocol=sequential)",
        )


def plan_run(cfg: RunConfig, cache_dir: Path) -> RunPlan:
    """Validate the config and the data, and split the edits into steps — no model needed."""
    spec = algorithm_spec(cfg.algo.name)
    if not isinstance(cfg.algo, spec.config_type):
        raise fail("algo.name", f"{cfg.algo.name!r} does not match the composed algorithm config; choose it with algo={spec.name}")
    wrappers = build_wrappers(cfg.wrapper)
    check_combination(spec, wrappers)
    protocol = ProtocolName(cfg.protocol.name)
    if protocol is ProtocolName.batched and not spec.supports_batched:
        raise fail("protocol", f"algo={spec.name} does not support batched editing; use protocol=sequential")
    if protocol is ProtocolName.sequential and not spec.supports_sequential:
        raise fail("protocol", f"algo={spec.name} does not support sequential editing; use protocol=batched")
    if protocol is ProtocolName.independent:
        check_independent(cfg)
    layers = list(cfg.algo.layers)
    if not layers:
        raise fail("algo.layers", "give at least one layer index")
    if spec.max_layers is not None and len(layers) > spec.max_layers:
        allowed = "exactly one layer" if spec.max_layers == 1 else f"at most {spec.max_layers} layers"
        raise fail("algo.layers", f"{spec.name.upper().replace('_', '-')} edits {allowed}, got {layers}")
    if cfg.protocol.batch_size is not None and int(cfg.protocol.batch_size) < 1:
        raise fail("protocol.batch_size", f"must be a positive number of edits per step, got {cfg.protocol.batch_size}")
    if cfg.data.num_edits is not None and int(cfg.data.num_edits) < 1:
        raise fail("data.num_edits", f"must be a positive number of edits, or null for every record; got {cfg.data.num_edits}")
    check_model_path(cfg.model)
    spec.check(cfg.algo)
    if spec.needs_covariance(cfg.algo):
        check_covariance_corpus(cfg.stats)
    records = load_edit_records(cfg.data, cache_dir)
    if not records:
        raise fail("data.num_edits", "the selection is empty; select at least one edit")
    validate_records(records)
    check_subjects(records)
    size = len(records) if protocol is ProtocolName.batched or cfg.protocol.batch_size is None else int(cfg.protocol.batch_size)
    steps = [records[i : i + size] for i in range(0, len(records), size)]
    cases = load_case_suite(cfg.data, cache_dir, records)
    per_step = None
    if cases is not None:  # steps of whole cases: protocol.batch_size counts cases (sequential default: one)
        per_step = None if protocol is ProtocolName.batched else int(cfg.protocol.batch_size or 1)
        steps = cases.steps(records, per_step)
    plan = RunPlan(spec=spec, config=cfg.algo, wrappers=wrappers, records=records, steps=steps, cases=cases, cases_per_step=per_step)
    for wrapper in wrappers:
        wrapper.check(plan)
    return plan

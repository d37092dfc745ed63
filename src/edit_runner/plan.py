"""Everything decided before a model is loaded: validated config choices and the selected edits.

Bad input fails here with one clear message (record case id or config key, and the fix), before
any expensive work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from edit_runner.config import enabled_wrappers, fail
from edit_runner.data.record import EditRecord, validate_records
from edit_runner.editing.algorithms import AlgorithmSpec, algorithm_spec
from edit_runner.editing.wrappers import check_combination
from edit_runner.models.tokens import find_subject


@dataclass
class RunPlan:
    """The validated choices of a run and its edits split into protocol steps."""

    spec: AlgorithmSpec
    wrappers: list[str]
    records: list[EditRecord]
    steps: list[list[EditRecord]]

    @property
    def batch_size(self) -> int:
        """Edits per step."""
        return len(self.steps[0]) if self.steps else 0


def load_edit_records(data: DictConfig, cache_dir: Path) -> list[EditRecord]:
    """Load and select the run's edit records from ``data`` (local path, cache or canonical URL)."""
    from edit_runner.data.download import resolve_dataset_file
    from edit_runner.data.loaders import load_records
    from edit_runner.data.selection import select_records

    fmt = data.format.value if hasattr(data.format, "value") else str(data.format)
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
    )


def check_subjects(records: list[EditRecord]) -> None:
    """Every subject must occur in its prompt (and neighbor subjects in theirs)."""
    for record in records:
        find_subject(record.rewrite_prompt, record.subject, record.case_id)


def check_covariance_corpus(cfg: DictConfig) -> None:
    """A local covariance corpus must exist before any model is loaded."""
    corpus = cfg.stats.corpus.value if hasattr(cfg.stats.corpus, "value") else str(cfg.stats.corpus)
    path = cfg.stats.text_path
    if corpus == "text" and not path:
        raise fail("stats.text_path", "stats.corpus=text needs a text file, e.g. stats.text_path=wiki.test.raw")
    if path and not Path(path).is_file():
        raise fail("stats.text_path", f"covariance corpus file {path} does not exist; give an existing text file")


def plan_run(cfg: DictConfig, cache_dir: Path) -> RunPlan:
    """Validate the config and the data, and split the edits into steps — no model needed."""
    spec = algorithm_spec(cfg.algo.name.value if hasattr(cfg.algo.name, "value") else str(cfg.algo.name))
    wrappers = enabled_wrappers(cfg)
    check_combination(spec, wrappers)
    protocol = cfg.protocol.name.value if hasattr(cfg.protocol.name, "value") else str(cfg.protocol.name)
    if protocol == "batched" and not spec.supports_batched:
        raise fail("protocol", f"algo={spec.name} does not support batched editing; use protocol=sequential")
    if protocol == "sequential" and not spec.supports_sequential:
        raise fail("protocol", f"algo={spec.name} does not support sequential editing; use protocol=batched")
    if not cfg.algo.layers:
        raise fail("algo.layers", "give at least one layer index")
    if spec.solver == "rome" and len(cfg.algo.layers) != 1:
        raise fail("algo.layers", f"ROME edits exactly one layer, got {list(cfg.algo.layers)}")
    if spec.needs_covariance:
        check_covariance_corpus(cfg)
    records = load_edit_records(cfg.data, cache_dir)
    if not records:
        raise fail("data.num_edits", "the selection is empty; select at least one edit")
    validate_records(records)
    check_subjects(records)
    if ("na" in wrappers or "nap" in wrappers) and not all(r.neighbor_subjects_known for r in records):
        missing = next(r.case_id for r in records if not r.neighbor_subjects_known)
        raise fail(
            "wrapper",
            f"neighbor-assisted editing needs neighbor subjects, but record case_id={missing} has none; use "
            "data=multi_counterfact (with neighborhood_samples), an EasyEdit file with neighborhood_samples, or data=demo",
        )
    size = len(records) if protocol == "batched" or cfg.protocol.batch_size is None else int(cfg.protocol.batch_size)
    if size < 1:
        raise fail("protocol.batch_size", "must be a positive number of edits per step")
    steps = [records[i : i + size] for i in range(0, len(records), size)]
    return RunPlan(spec=spec, wrappers=wrappers, records=records, steps=steps)

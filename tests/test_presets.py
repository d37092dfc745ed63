"""Experiment presets (``conf/experiment/*.yaml``, one per seed table).

Each preset must:
- compose with every launch command written in its header;
- be a valid algorithm × wrapper combination in every cell of those commands;
- feed the report layout it names, with the protocol, dataset, algorithm and wrapper set that layout
  selects on.

The presets' own paper hyper-parameters must also land in the composed cells. Only composition
happens here: no model or data file is loaded.
"""

from __future__ import annotations

import functools
import itertools
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from edit_runner.config import (
    apply_paper_hyperparameters,
    config_hash,
    enabled_wrappers,
)
from edit_runner.editing.algorithms import algorithm_spec
from edit_runner.editing.wrappers import check_combination
from edit_runner.reporting import paper_numbers
from edit_runner.reporting.layouts import get_layout, layout_names

PRESET_DIR = Path(str(resources.files("edit_runner.conf") / "experiment"))
PRESETS = sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))

#: One preset per seed table (issue 6); the names are part of the user-facing contract.
EXPECTED_PRESETS = {
    "seed000_table1",
    "seed000_table2",
    "seed000_table3",
    "seed000_table4",
    "seed000_table6",
    "seed000_table7",
    "seed002",
    "seed003_table2",
    "seed003_appD",
    "seed004_table1",
    "seed004_tables2_4",
    "seed004_tables12_14",
}

#: Sweep keys whose product is composed in full for every command: together they decide whether
#: the algorithm × wrapper combination is valid and which layout a run lands in. Every value of the
#: other sweep keys (model, trial, data.num_edits, ...) is composed at least once per preset, on top of
#: a cell of its command. This keeps the test fast; the per-model paper values are checked cell by cell
#: in ``test_paper_hyperparameters_reach_the_cell``.
PRODUCT_KEYS = ("algo", "wrapper")

_PARSER = OverridesParser.create()


@pytest.fixture(scope="module", autouse=True)
def _hydra(hydra_context):
    """Compose from the packaged config tree in this module."""


def header(name: str) -> list[str]:
    """The leading comment block of a preset, without the ``#``."""
    lines = []
    for line in (PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def launch_commands(name: str) -> list[list[str]]:
    """The ``edit-run`` commands of a preset's header, as override lists (flags such as ``-m`` dropped)."""
    commands = []
    for line in header(name):
        if line.startswith("edit-run "):
            tokens = shlex.split(line)[1:]
            commands.append([token for token in tokens if not token.startswith("-")])
    return commands


def _sweeps(overrides: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The fixed overrides of a command and its sweeps as ``(key, ["key=value", ...])``."""
    fixed: list[str] = []
    sweeps: list[tuple[str, list[str]]] = []
    for override in _PARSER.parse_overrides(overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            sweeps.append(
                (override.key_or_group, [f"{key}={value}" for value in override.sweep_string_iterator()])
            )
        else:
            fixed.append(override.input_line)
    return fixed, sweeps


def _assemble(fixed: list[str], sweeps: list[tuple[str, list[str]]], choice: tuple[int, ...]) -> list[str]:
    return fixed + [values[i] for (_, values), i in zip(sweeps, choice)]


def expand(overrides: list[str], seen: set[str]) -> list[list[str]]:
    """Cells of one command: the ``PRODUCT_KEYS`` product, plus one cell per other sweep value not in ``seen``."""
    fixed, sweeps = _sweeps(overrides)
    ranges = [range(len(values)) if key in PRODUCT_KEYS else range(1) for key, values in sweeps]
    choices = list(itertools.product(*ranges))
    for position, (key, values) in enumerate(sweeps):
        if key in PRODUCT_KEYS:
            continue
        for i, value in enumerate(values[1:], start=1):
            if value not in seen:
                choices.append(tuple(i if p == position else 0 for p in range(len(sweeps))))
        seen.update(values)
    return [_assemble(fixed, sweeps, choice) for choice in choices]


def full_product(overrides: list[str]) -> list[list[str]]:
    """Every cell of one command (the full sweep product)."""
    fixed, sweeps = _sweeps(overrides)
    ranges = [range(len(values)) for _, values in sweeps]
    return [_assemble(fixed, sweeps, choice) for choice in itertools.product(*ranges)]


def all_cells(name: str) -> list[list[str]]:
    """Cells covering every header command of a preset (see ``PRODUCT_KEYS``)."""
    seen: set[str] = set()
    return [cell for command in launch_commands(name) for cell in expand(command, seen)]


def compose_cell(overrides: list[str]) -> DictConfig:
    """Compose one cell as ``edit-run`` would, then apply the per-model paper hyper-parameters."""
    cfg = compose("config", overrides=overrides, return_hydra_config=True)
    apply_paper_hyperparameters(cfg, [o for o in overrides if not o.startswith("hydra")])
    return cfg


def job_config(cfg: DictConfig) -> DictConfig:
    """The config the task function receives (Hydra strips the ``hydra`` node)."""
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])


@functools.cache
def composed_cell(overrides: tuple[str, ...]) -> DictConfig:
    """One cell, composed once per test session."""
    return compose_cell(list(overrides))


def composed(name: str) -> list[tuple[tuple[str, ...], DictConfig]]:
    """The covering cells of a preset's header commands, composed."""
    return [(tuple(cell), composed_cell(tuple(cell))) for cell in all_cells(name)]


def _value(node) -> object:
    return node.value if hasattr(node, "value") else node


def wrapper_label(cfg: DictConfig) -> frozenset[str]:
    """The wrapper set a run records (``wrapper.preset`` such as ``encore`` stands for its parts)."""
    return frozenset([cfg.wrapper.preset]) if cfg.wrapper.get("preset") else frozenset(enabled_wrappers(cfg))


def run_field(cfg: DictConfig, field: str) -> object:
    """The value a finished run of ``cfg`` records for a layout's ``where`` field."""
    protocol = _value(cfg.protocol.name)
    if field == "protocol.name":
        return protocol
    if field == "protocol.batch_size":
        if protocol == "batched" or cfg.protocol.batch_size is None:
            return cfg.data.num_edits
        return cfg.protocol.batch_size
    if field == "dataset":
        return cfg.data.name
    if field == "num_edits":
        return cfg.data.num_edits
    raise AssertionError(f"test_presets.run_field does not know layout field {field!r}; extend it")


def test_one_preset_per_seed_table():
    assert set(PRESETS) == EXPECTED_PRESETS


def test_every_layout_has_a_preset():
    """Each layout is a preset's own (``report.layout``) or rendered from a preset's runs by a header line."""
    targets = {OmegaConf.load(PRESET_DIR / f"{name}.yaml").report.layout for name in PRESETS}
    assert set(layout_names()) >= targets, f"presets naming unknown layouts: {targets - set(layout_names())}"
    for name in PRESETS:
        for line in header(name):
            if line.startswith("edit-report "):
                targets |= set(re.findall(r"--table (\w+)", line))
    assert set(layout_names()) <= targets, f"layouts no preset renders: {set(layout_names()) - targets}"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_file_shape(name: str):
    text = (PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "# @package _global_", "presets are global packages (# @package _global_)"
    raw = OmegaConf.load(PRESET_DIR / f"{name}.yaml")
    assert raw.experiment == name, "the preset must record its own name in `experiment`"
    commands = launch_commands(name)
    assert commands, f"{name}: the header must carry at least one `edit-run` launch command"
    for command in commands:
        assert f"experiment={name}" in command, (
            f"{name}: a header command does not select the preset: {command}"
        )
    layout = raw.report.layout
    assert any(re.search(rf"edit-report .*--table {layout}\b", line) for line in header(name)), (
        f"{name}: the header must show the edit-report command for layout {layout}"
    )


@pytest.mark.parametrize("name", PRESETS)
def test_report_points_at_layout_and_paper_numbers(name: str):
    report = OmegaConf.load(PRESET_DIR / f"{name}.yaml").report
    layout = get_layout(report.layout)  # ConfigError listing the layouts if unknown
    table = getattr(paper_numbers, report.paper_table, None)
    assert isinstance(table, paper_numbers.PaperTable), f"paper_numbers has no table {report.paper_table!r}"
    assert table.layout == layout.name
    assert paper_numbers.paper_table(layout.name) is table


@pytest.mark.parametrize("name", PRESETS)
def test_header_commands_compose_and_feed_the_layout(name: str):
    layout = get_layout(OmegaConf.load(PRESET_DIR / f"{name}.yaml").report.layout)
    hashes: dict[str, list[str]] = {}
    for overrides, cfg in composed(name):
        where = f"{name} cell {list(overrides)}"
        assert cfg.experiment == name, where
        assert cfg.report.layout == layout.name, where
        if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
            assert cfg.hydra.sweep.dir == f"{cfg.output_root}/multirun/{name}", where
        missing = sorted(OmegaConf.missing_keys(job_config(cfg)))
        assert not missing, f"{where}: mandatory values left unset: {missing}"

        # invalid combinations fail before any model is loaded: every cell must pass
        algo = str(_value(cfg.algo.name))
        spec = algorithm_spec(algo)
        check_combination(spec, enabled_wrappers(cfg))
        protocol = _value(cfg.protocol.name)
        assert spec.supports_batched if protocol == "batched" else spec.supports_sequential, where
        if spec.max_layers is not None:
            assert len(cfg.algo.layers) <= spec.max_layers, f"{where}: {algo} edits one layer, got {list(cfg.algo.layers)}"

        # the layout picks these runs up
        assert algo in layout.algos, f"{where}: layout {layout.name} does not select algo {algo}"
        assert wrapper_label(cfg) in layout.wrapper_sets, (
            f"{where}: layout {layout.name} does not select wrappers {sorted(wrapper_label(cfg))}"
        )
        assert cfg.data.name in layout.datasets, (
            f"{where}: layout {layout.name} does not select {cfg.data.name}"
        )
        for field, allowed in layout.where:
            assert run_field(cfg, field) in allowed, (
                f"{where}: {field}={run_field(cfg, field)!r} not in {allowed}"
            )

        # interpolations (${trial}, ${oc.env:...}) resolve; no two cells are the same run
        digest = config_hash(job_config(cfg))
        hashes.setdefault(digest, []).append(" ".join(overrides))
    duplicates = {h: cells for h, cells in hashes.items() if len(cells) > 1}
    assert not duplicates, f"{name}: cells that would repeat the same run: {duplicates}"


def matching_cells(name: str, algo: str, model: str, wrappers: frozenset[str]) -> Iterator[DictConfig]:
    """The composed cells of a preset's commands (full sweep product) with this algo, model and wrapper set."""
    for command in launch_commands(name):
        for cell in full_product(command):
            given = dict(item.split("=", 1) for item in cell)
            if given.get("algo", algo) != algo or given.get("model", model) != model:
                continue  # cheap textual filter before composing
            cfg = composed_cell(tuple(cell))
            if (
                str(_value(cfg.algo.name)) == algo
                and cfg.model.name == model
                and wrapper_label(cfg) == wrappers
            ):
                yield cfg


def _find_cell(name: str, algo: str, model: str, wrappers: frozenset[str]) -> DictConfig:
    cfg = next(matching_cells(name, algo, model, wrappers), None)
    assert cfg is not None, f"{name} has no cell algo={algo} model={model} wrappers={sorted(wrappers)}"
    return cfg


@pytest.mark.parametrize("name", PRESETS)
def test_default_is_one_of_the_tables_cells(name: str):
    """``edit-run experiment=NAME`` alone runs one cell of the table, identical to that cell in the sweep."""
    cfg = composed_cell((f"experiment={name}",))
    algo, wrappers = str(_value(cfg.algo.name)), wrapper_label(cfg)
    digest = config_hash(job_config(cfg))
    same = (
        c
        for c in matching_cells(name, algo, cfg.model.name, wrappers)
        if config_hash(job_config(c)) == digest
    )
    assert next(same, None) is not None, (
        f"{name}: the default cell ({algo}, {cfg.model.name}, {sorted(wrappers)}) is not launched by any header command"
    )


#: Paper hyper-parameters that must reach the composed cell (values read from the papers' tables).
PAPER_VALUES = [
    # seed 000 (RUOE / EasyEdit yamls, SPEC C §9.2): MEMIT Llama-2 clamp 4, wd 1e-3; PMET keeps its own
    ("seed000_table1", "memit", "llama2-7b", {"iterative"},
     {"algo.clamp_norm_factor": 4.0, "algo.v_weight_decay": 1e-3, "algo.layers": [4, 5, 6, 7, 8]}),
    ("seed000_table1", "pmet", "llama2-7b", {"iterative"}, {"algo.clamp_norm_factor": 1.0}),
    ("seed000_table1", "memit", "gpt2-xl", {"iterative"},
     {"algo.layers": [13, 14, 15, 16, 17], "algo.mom2_update_weight": 20000.0,
      "wrapper.iterative.max_iterations": 10, "wrapper.iterative.full_metrics": True, "eval.metrics": "easyedit",
      "data.num_edits": 1000}),
    ("seed000_table2", "pmet", "llama2-7b", {"iterative", "na"}, {"data.num_edits": 1340}),
    # seed 002: FT-C ε and layer per model (App. A.2), kmeng01's ROME (mom2_adjustment on)
    ("seed002", "ft_c", "gpt-j", set(), {"algo.ft_norm_constraint": 5e-5, "algo.layers": [5], "protocol.batch_size": 1}),
    ("seed002", "ft_c", "gpt2-xl", set(), {"algo.ft_norm_constraint": 5e-4, "algo.layers": [17], "eval.every_n_edits": 10}),
    ("seed002", "rome", "gpt-j", set(), {"algo.mom2_adjustment": True, "data.num_edits": 1000}),
    # seed 003: D4S = MEMIT with EasyEdit's Llama-2 values
    ("seed003_table2", "memit", "llama2-7b", {"d4s"}, {"algo.clamp_norm_factor": 4.0, "algo.v_weight_decay": 1e-3}),
    # seed 004, COUNTERFACT: Tables 6 (MPES), 7 (norm constraint), 8 (ENCORE); cutoff +k = -(k+1)
    ("seed004_tables2_4", "memit", "llama3-8b", {"encore"},
     {"wrapper.mpes.prob_cutoff": -2.0, "wrapper.norm_constraint.norm_lambda": 20.0,
      "wrapper.prev_edit_keys.enabled": True, "protocol.batch_size": 100, "data.num_edits": 10000}),
    ("seed004_tables2_4", "memit", "gpt2-xl", {"encore"},
     {"wrapper.mpes.prob_cutoff": -4.0, "wrapper.norm_constraint.norm_lambda": 10.0}),
    ("seed004_tables2_4", "memit", "gpt2-xl", {"mpes", "prev_edit_keys"}, {"wrapper.mpes.prob_cutoff": -3.0}),
    ("seed004_tables2_4", "memit", "llama3-8b", {"norm_constraint", "prev_edit_keys"},
     {"wrapper.norm_constraint.norm_lambda": 20.0}),
    ("seed004_tables2_4", "alphaedit", "gpt2-xl", {"mpes", "prev_edit_keys"}, {"wrapper.mpes.prob_cutoff": -2.0}),
    ("seed004_tables2_4", "emmet", "gpt2-xl", {"mpes", "prev_edit_keys"},
     {"algo.mom2_update_weight": 10000.0, "wrapper.mpes.prob_cutoff": -2.0}),
    ("seed004_tables2_4", "emmet", "llama2-7b", {"prev_edit_keys"}, {"algo.mom2_update_weight": 15000.0}),
    # seed 004, zsRE: Tables 9 (MPES), 10 (norm constraint), 11 (ENCORE)
    ("seed004_tables12_14", "memit", "gpt2-xl", {"encore"},
     {"wrapper.mpes.prob_cutoff": -5.0, "wrapper.norm_constraint.norm_lambda": 40.0}),
    ("seed004_tables12_14", "memit", "llama3-8b", {"encore"},
     {"wrapper.mpes.prob_cutoff": -4.0, "wrapper.norm_constraint.norm_lambda": 10.0}),
    ("seed004_tables12_14", "memit", "gpt2-xl", {"mpes", "prev_edit_keys"}, {"wrapper.mpes.prob_cutoff": -6.0}),
    ("seed004_tables12_14", "memit", "llama3-8b", {"norm_constraint", "prev_edit_keys"},
     {"wrapper.norm_constraint.norm_lambda": 20.0}),
    ("seed004_tables12_14", "alphaedit", "llama3-8b", {"mpes", "prev_edit_keys"}, {"wrapper.mpes.prob_cutoff": -4.0}),
    ("seed004_tables12_14", "emmet", "llama3-8b", {"mpes", "prev_edit_keys"}, {"wrapper.mpes.prob_cutoff": -3.0}),
    ("seed004_table1", "memit", "llama2-7b", {"mpes", "prev_edit_keys"}, {"wrapper.mpes.prob_cutoff": -2.0}),
    ("seed004_table1", "emmet", "gpt2-xl", {"mpes", "prev_edit_keys"},
     {"algo.mom2_update_weight": 10000.0, "wrapper.mpes.prob_cutoff": -2.0}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "algo", "model", "wrappers", "expected"),
    PAPER_VALUES,
    ids=[f"{p}-{a}-{m}-{'+'.join(sorted(w)) or 'none'}" for p, a, m, w, _ in PAPER_VALUES],
)
def test_paper_hyperparameters_reach_the_cell(name, algo, model, wrappers, expected):
    cfg = _find_cell(name, algo, model, frozenset(wrappers))
    for key, value in expected.items():
        got = OmegaConf.select(cfg, key)
        got = _value(got)
        if isinstance(got, (list, tuple)) or OmegaConf.is_list(got):
            got = list(got)
        assert got == value, f"{name} {algo}/{model}/{sorted(wrappers)}: {key} = {got!r}, expected {value!r}"


def test_installed_cli_finds_the_presets():
    """``edit-run experiment=... --cfg job`` (the documented dry run) composes a preset from the package."""
    code = "import sys; from edit_runner.cli import run_main; sys.argv[0] = 'edit-run'; run_main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "experiment=seed000_table1", "algo=pmet", "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=str(Path(__file__).parent),
    )
    assert result.returncode == 0, result.stderr
    assert "experiment: seed000_table1" in result.stdout
    assert "name: pmet" in result.stdout


def test_unknown_preset_lists_the_presets():
    with pytest.raises(Exception) as info:
        compose("config", overrides=["experiment=seed000_tabel1"])
    message = str(info.value)
    assert "experiment/seed000_tabel1" in message
    for name in ("seed000_table1", "seed004_tables2_4"):
        assert name in message

"""Every seed table from real runs: each preset's cells in miniature through the runner, then ``edit-report``.

For every preset in ``conf/experiment/`` (the directory listing, so a new preset is covered without
editing this file):

1. its header's ``edit-run`` launch commands are expanded into cells (every ``algo`` × ``wrapper``
   combination, with each command's data overrides; one model, one trial);
2. each cell is composed *with the preset*, then shrunk (:func:`shrink`): stories260K instead of the
   paper's model, 2 edits (3 where the layout reads forgetting), 2 iterations, 3 optimisation steps,
   a small wikitext covariance, the trackers at 0 edits and at the end, the first downstream task
   with 2 items. The data files the presets read from
   ``${EDIT_RUNNER_DATA}`` are tiny stand-ins written under the paths the presets name (built from
   ``../shared/data`` records), so the presets' paths are checked too;
3. every cell runs through the real :class:`~edit_runner.runner.Runner`; cells whose composed
   configuration is identical (seed 000 Tables 1/4/6 …) run once and are shared;
4. every ``edit-report`` line of the header is run with ``report_command`` on those outputs, and each
   column of each layout it names must have a value in at least one of our rows.

Columns that real runs cannot fill yet are listed in ``KNOWN_GAPS`` with the reason; the test fails
when one of them gets a value. ``test_fixture_fields_are_written_by_real_runs`` checks that the
hand-made report fixtures carry no field that no real run writes (per metric definition).
The runner's PNG plots are not drawn here (seconds per tracked run; tested in test_report.py).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import shlex
import shutil
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from edit_runner.config import effective_config
from edit_runner.reporting import tables
from edit_runner.reporting.layouts import Layout, get_layout, layout_names
from edit_runner.runner import Runner
from test_presets import header

PRESET_DIR = Path(str(resources.files("edit_runner.conf") / "experiment"))
PRESETS = sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))
FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "report" / "runs"

NUM_EDITS = 2
#: Edits of the cells whose layout reads forgetting: one of the first two must hold before it can be forgotten.
FORGETTING_EDITS = 3
RECORDS = 4
#: Overrides of the launch commands that pick the paper's model, trial, size or per-model values:
#: the miniature replaces the model and runs one trial, so these are dropped from a cell.
_DROPPED = re.compile(r"^(experiment|model|trial|hydra\..*|(algo|wrapper)\.per_model\..*|data\.num_edits)$")
#: Per-algorithm overrides that shrink the optimisation (the keys differ by algorithm family).
_FINE_TUNES = ("ft", "ft_c")
_PARSER = OverridesParser.create()
#: Columns real runs cannot fill yet, with the reason (none today). The test fails as soon as one
#: gets a value, so the list cannot go stale.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


# ----------------------------------------------------------------------------------------------
# Preset headers: launch and report commands
# ----------------------------------------------------------------------------------------------


def cells_of(preset: str) -> list[tuple[str, ...]]:
    """The miniature cells of a preset: each launch command's ``algo`` × ``wrapper`` product.

    Model, trial, size and per-model overrides are dropped (one model, one trial); every other fixed
    override of the command (``data=zsre data.path=...``, ``algo.mom2_adjustment=true``) is kept. A
    cell that differs from an earlier one only in ``algo.*`` values (a line with another model's
    hyper-parameters) is the earlier cell.
    """
    cells: dict[tuple[str, ...], tuple[str, ...]] = {}
    for line in header(preset):
        if not line.startswith("edit-run "):
            continue
        tokens = [t for t in shlex.split(line)[1:] if not t.startswith("-")]
        fixed: list[str] = []
        sweeps: list[list[str]] = []
        for override in _PARSER.parse_overrides(tokens):
            key = override.key_or_group
            if _DROPPED.match(key):
                continue
            if override.is_sweep_override():
                element = override.get_key_element()
                sweeps.append([f"{element}={value}" for value in override.sweep_string_iterator()])
            else:
                fixed.append(override.input_line)
        for choice in itertools.product(*sweeps):
            cell = tuple(sorted([*fixed, *choice]))
            cells.setdefault(tuple(t for t in cell if not t.startswith("algo.")), cell)
    assert cells, f"{preset}: no edit-run launch command in its header"
    return list(cells.values())


def report_commands(preset: str) -> list[list[str]]:
    """The ``edit-report`` commands of a preset's header that render tables (argument lists)."""
    commands = []
    for line in header(preset):
        if line.startswith("edit-report ") and "--table" in line:
            commands.append(shlex.split(line)[1:])
    return commands


# ----------------------------------------------------------------------------------------------
# Tiny stand-ins of the data files under ${EDIT_RUNNER_DATA}
# ----------------------------------------------------------------------------------------------


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@dataclass(frozen=True)
class MiniData:
    """The stand-in data directory and the record files that replace downloaded datasets."""

    root: Path
    by_format: dict[str, Path]


def _first_records(path: Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` records of a large JSON list, without holding the rest (a streaming decode)."""
    decoder = json.JSONDecoder()
    text = path.read_text(encoding="utf-8")
    records, position = [], text.index("[") + 1
    while len(records) < count:
        while text[position] in " \n\r\t,":
            position += 1
        record, position = decoder.raw_decode(text, position)
        records.append(record)
    return records


def _trim_counterfact(record: dict[str, Any]) -> dict[str, Any]:
    """A CounterFact record with one prompt of each kind (three neighbours, with their aligned subjects)."""
    out = dict(record)
    for key in ("paraphrase_prompts", "attribute_prompts", "generation_prompts"):
        out[key] = record[key][:1]
    out["neighborhood_prompts"] = record["neighborhood_prompts"][:3]
    out["neighborhood_samples"] = record["neighborhood_samples"][:3]
    return out


def build_mini_data(root: Path, shared: Path) -> MiniData:
    """Write every file the presets read from ``${EDIT_RUNNER_DATA}``, shrunk to a few records."""
    data = shared / "data"
    mcf = [_trim_counterfact(r) for r in _first_records(data / "counterfact" / "multi_counterfact.partial19000.json", RECORDS)]
    ids = [record["case_id"] for record in mcf]
    zsre = _read(data / "zsre" / "trial_subsets" / "zsre_subset_1.json")[: RECORDS]
    by_format = {
        "multi_counterfact": _write(root / "records" / "multi_counterfact.json", mcf),
        "counterfact": _write(root / "records" / "counterfact.json", mcf),
        "zsre": _write(root / "records" / "zsre_mem_eval.json", zsre),
    }
    for trial in range(4):
        _write(root / "counterfact" / "trial_subsets" / f"mcf_subset_{trial}.case_ids.json", ids)
        _write(root / "zsre" / "trial_subsets" / f"zsre_subset_{trial}.json", zsre)
        for order in ("seed002_counterfact", "encore_multi_counterfact"):
            _write(root / "counterfact" / "edit_orders" / f"{order}.sample{trial}.case_ids.json", ids)
        _write(root / "zsre" / "edit_orders" / f"encore_zsre.sample{trial}.case_ids.json", list(range(len(zsre))))
    neighbors = [
        {**r, "rephrase_prompt": r["rephrase_prompt"][:1]}
        for r in _read(data / "counterfact" / "neighbor_filtered" / "mcf_739.easyedit.json")[: RECORDS]
    ]
    _write(root / "counterfact" / "neighbor_filtered" / f"mcf_{NUM_EDITS}.easyedit.json", neighbors)
    texts = _read(data / "me-ppl" / "ME-PPL_50.json")
    _write(root / "me-ppl" / "ME-PPL_50.json", [{**t, "Text": " ".join(t["Text"].split()[:6])} for t in texts])
    for task in ("sst2", "mrpc", "cola", "rte", "nli", "mmlu"):
        items = _read(data / "downstream" / f"{task}.json")
        _write(root / "downstream" / f"{task}.json", items[:10] + items[-10:])
    corpus = root / "corpus.txt"
    corpus.write_text((data / "wikitext" / "wiki.test.raw").read_text(encoding="utf-8")[:40000], encoding="utf-8")
    return MiniData(root=root, by_format=by_format)


# ----------------------------------------------------------------------------------------------
# Running the cells
# ----------------------------------------------------------------------------------------------


def shrink(cfg: Any, mini: MiniData, shared: Path, cache: Path) -> list[str]:
    """Overrides that turn a composed paper cell into its miniature (same algorithm, wrappers, protocol, eval).

    Plain ``key=value`` overrides only (the model is replaced field by field), so they can be merged
    into the composed cell without composing it again.
    """
    out = [
        f"model.path={shared / 'models' / 'stories260K'}", "model.name=stories260K", "model.source=auto",
        "model.device=cpu", "stats.corpus=text",
        f"stats.text_path={mini.root / 'corpus.txt'}", "stats.max_length=32", f"cache_dir={cache}",
        "progress=false", "num_threads=1",
    ]  # fmt: skip
    reads_forgetting = any("forgotten" in c.metric for c in get_layout(str(cfg.report.layout)).columns)
    edits = FORGETTING_EDITS if reads_forgetting else NUM_EDITS
    out.append(f"data.num_edits={edits}")
    if cfg.algo.name in _FINE_TUNES:
        out += ["algo.layers=[3]", "algo.ft_num_steps=3"]
    else:  # "forgotten" needs an edit that held before (1 of 3 holds at 15 steps)
        out += ["algo.layers=[3]", f"algo.v_num_grad_steps={15 if reads_forgetting else 3}", "algo.mom2_n_samples=64"]
    if cfg.data.path is None:  # a downloaded dataset: read the stand-in instead
        out.append(f"data.path={mini.by_format[getattr(cfg.data.format, 'value', cfg.data.format)]}")
    if "iterative" in cfg.wrapper:
        out.append("wrapper.iterative.max_iterations=2")
    if cfg.protocol.name == "sequential" and (cfg.protocol.batch_size or 0) > 1:
        out.append("protocol.batch_size=2")
    if cfg.eval.every_n_edits is not None:
        # the trackers at 0 edits and at the end; a collapse threshold the tiny run crosses, so that
        # "catastrophic forgetting at" has a value
        out += [f"eval.every_n_edits={edits}", "eval.me_ppl.alarm_factor=0.5"]
    if cfg.eval.forgetting_sample is not None:
        out.append("eval.forgetting_sample=2")
    if cfg.eval.downstream.tasks:  # the first task, 2 items
        out += [f"eval.downstream.tasks=[{cfg.eval.downstream.tasks[0]}]", "eval.downstream.num_items=2"]
    return out


def compose_cell(preset: str, cell: tuple[str, ...], mini: MiniData, shared: Path, cache: Path) -> tuple[list[str], Any]:
    """A cell composed with its preset, then shrunk: the full override list and the (unresolved) config."""
    overrides = [f"experiment={preset}", *cell]
    cfg = compose("config", overrides=overrides)
    extra = shrink(cfg, mini, shared, cache)
    return [*overrides, *extra], OmegaConf.merge(cfg, OmegaConf.from_dotlist(extra))


@dataclass
class Sweeps:
    """The miniature sweep directories (one per preset) and every run's summary."""

    root: Path
    summaries: dict[str, dict[str, Any]]

    def sweep_dir(self, preset: str) -> Path:
        """Where a preset's runs live, as ``outputs/multirun/<preset>``."""
        return self.root / "outputs" / "multirun" / preset


def run_all(mini: MiniData, shared: Path, root: Path) -> Sweeps:
    """Run every cell of every preset (identical configurations once) into per-preset sweep dirs."""
    cache = root / "cache"
    done: dict[str, Path] = {}
    sweeps = Sweeps(root=root, summaries={})
    for preset in PRESETS:
        for index, cell in enumerate(cells_of(preset)):
            overrides, cfg = compose_cell(preset, cell, mini, shared, cache)
            identity = OmegaConf.to_yaml(
                OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("experiment", "report")])
            )
            target = sweeps.sweep_dir(preset) / str(index)
            if identity in done:
                shutil.copytree(done[identity], target)
                continue
            summary = Runner(effective_config(cfg, overrides), target, overrides).run()
            assert summary["status"] == "complete", f"{preset} {cell}: {summary['status']}"
            sweeps.summaries[str(target)] = summary
            done[identity] = target
    return sweeps


@pytest.fixture(scope="module")
def sweeps(hydra_context, one_thread, shared_dir: Path, tmp_path_factory, monkeypatch_module) -> Sweeps:
    """Every preset's miniature sweep, run once for the module.

    The runner's per-run PNGs of the tracked series are not drawn (matplotlib costs seconds per run;
    plots are tested in test_report.py and test_health_run.py); the series themselves are written.
    """
    root = tmp_path_factory.mktemp("tables_from_runs")
    mini = build_mini_data(root / "data", shared_dir)
    monkeypatch_module.setenv("EDIT_RUNNER_DATA", str(mini.root))
    monkeypatch_module.setattr("edit_runner.reporting.plots.plot_series", lambda rows, out_dir: [])
    return run_all(mini, shared_dir, root)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    """A module-scoped monkeypatch (``EDIT_RUNNER_DATA`` for the module's runs)."""
    with pytest.MonkeyPatch.context() as patch:
        yield patch


# ----------------------------------------------------------------------------------------------
# Rendering and checking
# ----------------------------------------------------------------------------------------------


def miniature_layout(layout: Layout) -> Layout:
    """``layout`` with column filters on the paper's edit counts mapped to the miniature's count.

    Seed 003 Table 2 has one column group per run size (100 / 500 / 1000 edits); the miniature runs
    ``NUM_EDITS`` edits, so each group selects those runs. Nothing else changes: the fields read are
    the layout's own.
    """

    def retarget(where: tuple[tuple[str, tuple[Any, ...]], ...]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        return tuple((f, (NUM_EDITS,)) if f == "num_edits" else (f, v) for f, v in where)

    return replace(layout, columns=tuple(replace(c, where=retarget(c.where)) for c in layout.columns))


def render_csv(argv: list[str], sweeps: Sweeps, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Run one header ``edit-report`` command on the miniature sweeps; return ``{layout: csv text}``."""
    args, names = [], []
    position = 0
    while position < len(argv):
        token = argv[position]
        if token == "--table":
            names.append(argv[position + 1])
            position += 2
            continue
        if token in ("--out", "--format"):
            position += 2
            continue
        if token == "--plots":  # the tables are checked here; plots in test_report.py
            position += 1
            continue
        if not token.startswith("-"):
            match = re.fullmatch(r"outputs/multirun/(\w+)", token)
            assert match and match.group(1) in PRESETS, f"edit-report reads {token}, which no preset writes"
            token = str(sweeps.sweep_dir(match.group(1)))
        args.append(token)
        position += 1
    monkeypatch.setattr(tables, "get_layout", lambda name: miniature_layout(get_layout(name)))
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = tables.report_command([*args, *(f"--table={n}" for n in names), "--format", "csv", "--out", str(out)])
    assert code == 0, f"edit-report {' '.join(argv)} failed ({code}):\n{stderr.getvalue()}"
    return {name: (out / f"{name}.csv").read_text(encoding="utf-8") for name in names}


def empty_columns(layout: Layout, text: str) -> list[str]:
    """The layout's columns without a value in any of our rows of a rendered CSV table."""
    rows = [row for row in csv.DictReader(io.StringIO(text)) if row["source"] == "ours"]
    assert rows, f"{layout.name}: no rows of ours"
    return [c.key for c in layout.columns if not any(row[c.key] not in ("", "nan") for row in rows)]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_column_of_the_preset_tables_comes_from_real_runs(
    preset: str, sweeps: Sweeps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = report_commands(preset)
    assert commands, f"{preset}: its header has no 'edit-report ... --table' line"
    own = get_layout(str(OmegaConf.load(PRESET_DIR / f"{preset}.yaml").report.layout))
    rendered: dict[str, str] = {}
    for index, argv in enumerate(commands):
        rendered.update(render_csv(argv, sweeps, tmp_path / str(index), monkeypatch))
    assert own.name in rendered, f"{preset}: no edit-report line renders its own layout {own.name}"
    for name, text in rendered.items():
        empty = set(empty_columns(get_layout(name), text))
        known = {column for (layout, column) in KNOWN_GAPS if layout == name}
        assert empty == known, (
            f"{preset} → {name}: columns without a value: {sorted(empty - known)}; "
            f"known gaps now filled (remove them from KNOWN_GAPS): {sorted(known - empty)}"
        )


def test_every_layout_is_rendered_by_a_preset_line() -> None:
    named = {argv[i + 1] for p in PRESETS for argv in report_commands(p) for i, t in enumerate(argv) if t == "--table"}
    assert set(layout_names()) <= named, f"layouts no preset's edit-report line renders: {set(layout_names()) - named}"


def test_a_missing_field_empties_its_column(sweeps: Sweeps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: without ``me_ppl_50`` in real summaries, the check reports the ME-PPL column."""
    copy = tmp_path / "outputs" / "multirun" / "seed000_table6"
    shutil.copytree(sweeps.sweep_dir("seed000_table6"), copy)
    for path in copy.rglob("summary.json"):
        summary = _read(path)
        summary["pre"].pop("me_ppl_50")
        for entry in summary["iterations"]:
            if entry["post"]:  # iteration 0 (the unedited model's p̂) has no post metrics
                entry["post"].pop("me_ppl_50")
        _write(path, summary)
    broken = Sweeps(root=tmp_path, summaries={})
    text = render_csv(["outputs/multirun/seed000_table6", "--table", "seed000_table6"], broken, tmp_path / "out", monkeypatch)
    assert empty_columns(get_layout("seed000_table6"), text["seed000_table6"]) == ["me_ppl"]


# ----------------------------------------------------------------------------------------------
# Fixture audit: the hand-made fixtures hold only fields real runs write
# ----------------------------------------------------------------------------------------------


#: Maps keyed by a name the run chooses (module of a layer, task, package): their keys become ``*``.
_NAMED_MAPS = re.compile(
    r"health\.(initial|final)\.(downstream|norms|normalized_distance|relative_distance)|provenance\.versions"
)


def key_paths(obj: Any, prefix: str = "") -> set[str]:
    """Dotted key paths of a JSON value; list items share ``[]``; keys of per-name maps are ``*``."""
    paths = {prefix} if prefix else set()
    if isinstance(obj, dict):
        named = bool(_NAMED_MAPS.fullmatch(prefix))
        for key, value in obj.items():
            name = "*" if named else str(key)
            paths |= key_paths(value, f"{prefix}.{name}" if prefix else name)
    elif isinstance(obj, list):
        for value in obj:
            paths |= key_paths(value, f"{prefix}[]")
    return paths


def written_fields(summaries: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Key paths of real summaries, per metric definition (zsRE runs write other metrics than CounterFact)."""
    fields: dict[str, set[str]] = {}
    for summary in summaries:
        fields.setdefault(summary["protocol"]["metric_definition"], set()).update(key_paths(summary))
    return fields


def test_fixture_fields_are_written_by_real_runs(sweeps: Sweeps) -> None:
    real = written_fields(list(sweeps.summaries.values()))
    assert set(real) == {"memit", "easyedit", "zsre", "easyedit_zsre"}, sorted(real)
    for path in sorted(FIXTURE_RUNS.rglob("summary.json")):
        fixture = _read(path)
        extra = key_paths(fixture) - real[fixture["protocol"]["metric_definition"]]
        assert not extra, f"{path.relative_to(FIXTURE_RUNS)} has fields no real run writes: {sorted(extra)}"


def series_shapes(run_dirs: list[Path]) -> set[tuple[tuple[str, ...], str]]:
    """(field names, metric) of every row of the runs' ``series/health.jsonl``."""
    shapes = set()
    for run_dir in run_dirs:
        path = run_dir / "series" / "health.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                shapes.add((tuple(sorted(row)), str(row["metric"])))
    return shapes


def test_fixture_series_rows_are_written_by_real_runs(sweeps: Sweeps) -> None:
    real = series_shapes([Path(d) for d in sweeps.summaries])
    fixture = series_shapes([p.parent for p in FIXTURE_RUNS.rglob("summary.json")])
    assert fixture, "the fixtures have tracked series (seed002)"
    assert fixture <= real, f"fixture series rows no real run writes: {sorted(fixture - real)}"


def test_the_fixture_audit_catches_a_field_no_run_writes(sweeps: Sweeps) -> None:
    """Negative control of the audit: a zsRE summary with CounterFact's success metric is caught."""
    real = written_fields(list(sweeps.summaries.values()))
    zsre = next(s for s in sweeps.summaries.values() if s["protocol"]["metric_definition"] == "zsre")
    assert not key_paths(zsre) - real["zsre"]
    forged = {**zsre, "post": {**zsre["post"], "efficacy_success": 1.0}}
    assert key_paths(forged) - real["zsre"] == {"post.efficacy_success"}


@pytest.mark.parametrize("preset", ["seed003_table2", "seed003_appD"])
def test_seed003_runs_track_the_l1_norm_of_the_edited_layers(preset: str, sweeps: Sweeps) -> None:
    """The D4S paper plots Σ|W| of the edited layers over the edits (Fig. 5 b/c, Fig. 6): every run tracks it."""
    for run_dir in sorted(sweeps.sweep_dir(preset).iterdir()):
        summary = _read(run_dir / "summary.json")
        rows = [json.loads(line) for line in (run_dir / "series" / "health.jsonl").read_text().splitlines()]
        l1 = {(r["layer"], r["num_edits"]): r["value"] for r in rows if r["metric"] == "l1"}
        final = summary["health"]["final"]["norms"]
        assert {layer for layer, _ in l1} == set(final), run_dir.name
        assert {n for _, n in l1} == {0, NUM_EDITS}, run_dir.name
        for layer, values in final.items():
            assert l1[(layer, NUM_EDITS)] == pytest.approx(values["l1"]), (run_dir.name, layer)
            assert values["delta_fro"] > 0.0, f"{run_dir.name}: {layer} was not edited"

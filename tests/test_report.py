"""edit-report: collecting run trees, the seed-table layouts (golden files), protocol checks, the CLI.

Golden files live in ``tests/fixtures/report/golden/<layout>.{md,tex,csv}``; regenerate them with
``EDIT_RUNNER_UPDATE_GOLDEN=1 pytest tests/test_report.py`` and review the diff before committing.
The fixture run trees are made by ``tests/fixtures/report/make_fixtures.py``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import types
from functools import cache
from pathlib import Path

import pandas as pd
import pytest

from edit_runner.errors import ConfigError
from edit_runner.reporting.collect import collect_runs, collect_runs_with_skipped
from edit_runner.reporting.layouts import RunView, get_layout, layout_names
from edit_runner.reporting.paper_numbers import PAPER_TABLES
from edit_runner.reporting.tables import (
    EXTENSIONS,
    FORMATS,
    AmbiguousCellError,
    ProtocolMixError,
    build_table,
    mean_std,
    render_table,
    report_command,
    stop_iteration,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "report"
RUNS = FIXTURES / "runs"
GOLDEN = FIXTURES / "golden"
UPDATE_GOLDEN = os.environ.get("EDIT_RUNNER_UPDATE_GOLDEN") == "1"

#: Which fixture trees each layout is rendered from.
LAYOUT_RUNS: dict[str, tuple[str, ...]] = {
    "seed000_table1": ("seed000",),
    "seed000_table2": ("seed000_na",),
    "seed000_table3": ("seed000_na",),
    "seed000_table4": ("seed000", "seed000_zsre"),
    "seed000_table6": ("seed000",),
    "seed000_table7": ("seed000_zsre",),
    "seed000_table8": ("seed000_na",),
    "seed000_table9": ("seed000_na",),
    "seed000_table10": ("seed000", "seed000_zsre"),
    "seed002_table3": ("seed002",),
    "seed003_table2": ("seed003",),
    "seed003_appD": ("seed003",),
    "seed004_table1": ("seed004",),
    "seed004_tables2_4": ("seed004",),
    "seed004_tables12_14": ("seed004",),
}


@cache
def _collected(dirs: tuple[str, ...]) -> pd.DataFrame:
    return collect_runs([RUNS / d for d in dirs])


def frame_for(*dirs: str) -> pd.DataFrame:
    """The tidy frame of some fixture trees (cached; callers must not modify it)."""
    return _collected(tuple(dirs))


def _row(markdown: str, *cells: str) -> str:
    """The markdown line whose leading cells are ``cells``."""
    prefix = "| " + " | ".join(cells) + " |"
    lines = [line for line in markdown.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"expected one row starting with {prefix!r}, got {lines}"
    return lines[0]


# ------------------------------------------------------------------------------------------------
# collect
# ------------------------------------------------------------------------------------------------


def test_collect_walks_nested_sweeps_and_skips_incomplete_runs() -> None:
    frame, skipped = collect_runs_with_skipped([RUNS / "seed000"])
    assert frame.attrs["skipped"] == skipped
    assert len(skipped) == 1
    assert skipped[0].path.endswith(os.path.join("12-00-00", "5"))
    assert "running" in skipped[0].reason
    assert frame["run_dir"].nunique() == 6  # 5 complete runs of the sweep + 1 single run
    for column in ("protocol.name", "protocol.batch_size", "protocol.eval_timing", "protocol.evaluated_edits",
                   "protocol.metric_definition", "num_edits", "wrappers", "provenance.git_hash",
                   "provenance.versions.torch", "model_revision", "seed", "trial", "config_hash",
                   "phase", "iteration", "metric", "value"):  # fmt: skip
        assert column in frame.columns, column
    assert set(frame["phase"]) == {"pre", "post", "iteration", "run"}
    row = frame[
        (frame["run_id"] == "memit-iterative-gpt2-xl-multi_counterfact-1000-t1")
        & (frame["phase"] == "iteration")
        & (frame["iteration"] == 1)
        & (frame["metric"] == "efficacy_success")
    ]
    assert row["value"].tolist() == [0.93]
    assert set(frame.loc[frame["phase"] == "run", "metric"]) >= {"timing.seconds_per_edit", "timing.solve"}
    assert (frame["wrappers"] == "iterative").all()


def test_collect_lists_duplicates_and_accepts_a_summary_file(tmp_path: Path) -> None:
    source = RUNS / "seed004" / "zsre" / "memit"
    shutil.copytree(source, tmp_path / "a")
    shutil.copytree(source, tmp_path / "b")
    frame, skipped = collect_runs_with_skipped([tmp_path])
    assert frame["run_dir"].nunique() == 1
    assert [s.reason.split(" (")[0] for s in skipped] == [f"duplicate of {tmp_path / 'a'}"]
    single = collect_runs([source / "summary.json"])
    assert single["run_dir"].nunique() == 1


# ------------------------------------------------------------------------------------------------
# layouts: golden files
# ------------------------------------------------------------------------------------------------


def test_every_layout_has_fixtures() -> None:
    assert sorted(LAYOUT_RUNS) == sorted(layout_names())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", sorted(LAYOUT_RUNS))
def test_layout_matches_golden(layout: str, fmt: str) -> None:
    text = render_table(frame_for(*LAYOUT_RUNS[layout]), layout, fmt)
    path = GOLDEN / f"{layout}.{EXTENSIONS[fmt]}"
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; run with EDIT_RUNNER_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(encoding="utf-8")


def test_paper_numbers_fit_their_layouts() -> None:
    assert sorted(t.layout for t in PAPER_TABLES) == sorted(layout_names())
    for table in PAPER_TABLES:
        layout = get_layout(table.layout)
        column_keys = {c.key for c in layout.columns}
        for row in table.rows:
            assert set(row.key_dict()) <= set(layout.row_fields), (table.layout, row.key)
            unknown = {name for name, _ in row.values} - column_keys
            assert not unknown, (table.layout, row.key, unknown)
            for _, value in row.values:
                assert value.strip(), (table.layout, row.key)
                if table.layout != "seed002_table3":  # the only qualitative table
                    assert "%" not in value and float(value) == float(value), (table.layout, row.key, value)


def test_paper_numbers_spot_checks() -> None:
    """A few cells re-read from the papers by hand."""
    by_layout = {t.layout: t for t in PAPER_TABLES}
    (row,) = by_layout["seed000_table1"].find({"model": "gpt2-xl", "method": "PMET", "role": "stop"})
    assert (row.value("k"), row.value("eff_acc"), row.value("abs_delta_p")) == ("10", "99.33", "0.42")
    (row,) = by_layout["seed000_table6"].find({"model": "gpt2-xl", "method": "ROME", "k": "4"})
    assert row.value("delta_p") == "-1.91E+06"
    (row,) = by_layout["seed003_table2"].find({"model": "gpt-j", "method": "D4S"})
    assert row.value("e1000_avg") == "88.77"  # as printed (its cells average to 85.77)
    (row,) = by_layout["seed004_tables2_4"].find({"model": "llama2-7b", "method": "MEMIT"})
    assert [row.value(k) for k in ("es", "ps", "ns", "score", "ge")] == ["81.04", "64.67", "60.95", "67.859", "442.59"]


def test_mean_and_std_over_three_trials() -> None:
    # efficacy success at k = 1 of the three GPT-2 XL MEMIT trials: 0.90, 0.93, 0.99
    mean, std = mean_std([90.0, 93.0, 99.0])
    assert mean == pytest.approx(94.0)
    assert std == pytest.approx(math.sqrt(((90 - 94) ** 2 + (93 - 94) ** 2 + (99 - 94) ** 2) / 2))  # √21
    built = build_table(frame_for("seed000"), "seed000_table1")
    columns = [c.key for c in built.layout.columns]
    (row,) = [
        r for r in built.rows
        if r.source == "ours" and dict(r.key) == {"model": "gpt2-xl", "method": "MEMIT", "role": "first"}
    ]  # fmt: skip
    cell = row.cells[columns.index("eff_succ")]
    assert (cell.n, cell.mean, cell.std) == (3, pytest.approx(94.0), pytest.approx(4.58257569))
    assert row.cells[columns.index("eff_acc")].std == pytest.approx(1.0)  # 0.78, 0.79, 0.80
    text = render_table(frame_for("seed000"), "seed000_table1", "markdown")
    line = _row(text, "GPT-2 XL (1.5B)", "MEMIT", "first iteration", "ours", "3", "1")
    assert "| 79.00 ± 1.00 | 94.00 ± 4.58 |" in line
    assert mean_std([5.0]) == (5.0, None)


def test_stop_rules() -> None:
    def run(delta: list[float], p_hat: list[float]) -> RunView:
        values = {}
        for k, (d, p) in enumerate(zip(delta, p_hat), start=1):
            values[("iteration", k, "delta_p")] = d
            values[("iteration", k, "p_hat")] = p
        return RunView("r", {"wrappers": "iterative"}, values)

    # the paper's GPT-J PMET COUNTERFACT series (Table 10): monotonic k=1, |Δp| k=3, Δp2 k=4
    paper = run([1.15, 4.23, 0.05, 0.02], [2.24, 5.29, 1.11, 1.08])
    assert stop_iteration([paper], "monotonic") == (1, True)
    assert stop_iteration([paper], "abs_delta") == (3, True)
    assert stop_iteration([paper], "small_change") == (4, True)
    never = run([50.0, 20.0], [60.0, 30.0])
    assert stop_iteration([never], "abs_delta") == (2, False)
    # trial means decide: (0.5 + 1.7) / 2 = 1.1 > 1 at k = 1, (0.4 + 0.2) / 2 ≤ 1 at k = 2
    assert stop_iteration([run([0.5, 0.4], [1, 1]), run([1.7, 0.2], [1, 1])], "abs_delta") == (2, True)
    assert stop_iteration([RunView("r", {}, {})], "abs_delta") is None


def test_stop_marks_of_table10_agree_with_the_rule_rows_of_table4() -> None:
    """Table 10 marks, per dataset, the iteration each rule picks; Table 4 shows that iteration as a row."""
    frame = frame_for("seed000", "seed000_zsre")
    table4, table10 = build_table(frame, "seed000_table4"), build_table(frame, "seed000_table10")
    rule_label = {"abs_delta": "|Δp_k| ≤ 1", "monotonic": "monotonic |Δp_k|", "small_change": "Δp2 ≤ 1"}
    checked = 0
    for row in (r for r in table4.rows if r.source == "ours"):
        key = dict(row.key)
        for prefix in ("cf", "zsre"):
            cell = row.cells[[c.key for c in table4.layout.columns].index(f"{prefix}_k")]
            if cell is None:
                continue
            k = cell.text.rstrip("*")
            (marked,) = [
                r for r in table10.rows
                if r.source == "ours" and dict(r.key) == {"model": key["model"], "method": key["method"], "k": k}
            ]  # fmt: skip
            marks = marked.cells[[c.key for c in table10.layout.columns].index(f"{prefix}_rules")].text
            expected = rule_label[key["role"]] + ("*" if cell.text.endswith("*") else "")
            assert expected in marks.split(", "), (key, prefix, k, marks)
            checked += 1
    assert checked >= 6
    # by hand (make_fixtures.py): GPT-2 XL MEMIT COUNTERFACT meets |Δp_k| ≤ 1 at k = 4 and Δp2 ≤ 1 at k = 5
    (k4,) = [r for r in table10.rows if r.source == "ours" and dict(r.key) == {"model": "gpt2-xl", "method": "MEMIT", "k": "4"}]
    assert k4.cells[0].text == "|Δp_k| ≤ 1"


# ------------------------------------------------------------------------------------------------
# refusals
# ------------------------------------------------------------------------------------------------


def test_mixed_batch_sizes_are_refused() -> None:
    with pytest.raises(ProtocolMixError) as info:
        render_table(frame_for("mixed"), "seed004_tables2_4", "markdown")
    message = str(info.value)
    assert "protocol.batch_size" in message
    assert "memit-gpt2-xl-counterfact-10000-t0" in message and "memit-gpt2-xl-counterfact-10000-t1" in message
    assert "100" in message and "1000" in message


def _copy_run(src: Path, dst: Path, **changes: object) -> None:
    dst.mkdir(parents=True)
    doc = json.loads((src / "summary.json").read_text())
    for dotted, value in changes.items():
        target = doc
        *parents, leaf = dotted.split("__")
        for name in parents:
            target = target[name]
        target[leaf] = value
    (dst / "summary.json").write_text(json.dumps(doc))


def test_mixed_metric_definitions_in_one_column_are_refused(tmp_path: Path) -> None:
    # two different models in one column of seed004 Table 4, evaluated with different definitions
    src = RUNS / "seed004" / "counterfact" / "memit"
    _copy_run(src, tmp_path / "a")
    _copy_run(src, tmp_path / "b", model="llama2-7b", run_id="memit-llama2", protocol__metric_definition="easyedit")
    with pytest.raises(ProtocolMixError, match="protocol.metric_definition"):
        render_table(collect_runs([tmp_path]), "seed004_tables2_4", "csv")


def test_different_configs_claiming_one_trial_are_refused(tmp_path: Path) -> None:
    src = RUNS / "seed004" / "counterfact" / "memit"
    _copy_run(src, tmp_path / "a")
    _copy_run(src, tmp_path / "b", run_id="memit-other-lr", config_hash="ffffffff")
    with pytest.raises(AmbiguousCellError, match="memit-other-lr"):
        render_table(collect_runs([tmp_path]), "seed004_tables2_4", "markdown")


def test_rows_of_different_edit_counts_are_kept_apart() -> None:
    # seed 000 Table 2 keys rows by the number of edits, so 1000-edit and 739-edit runs never mix
    text = render_table(frame_for("seed000", "seed000_na"), "seed000_table2", "markdown")
    assert _row(text, "GPT-2 XL (1.5B)", "739", "MEMIT", "stop (\\|Δp_k\\| ≤ 1)", "ours")
    assert _row(text, "GPT-2 XL (1.5B)", "1000", "MEMIT", "stop (\\|Δp_k\\| ≤ 1)", "ours")


def test_unknown_layout_lists_choices() -> None:
    with pytest.raises(ConfigError, match="seed000_table1"):
        get_layout("seed000_tabel1")


# ------------------------------------------------------------------------------------------------
# edit-report
# ------------------------------------------------------------------------------------------------


def test_report_command_writes_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    code = report_command(
        [str(RUNS / "seed004"), "--table", "seed004_tables2_4", "--format", "all", "--out", str(out)]
    )
    assert code == 0
    frame = frame_for("seed004")
    for fmt in FORMATS:
        path = out / f"seed004_tables2_4.{EXTENSIONS[fmt]}"
        assert path.read_text(encoding="utf-8") == render_table(frame, "seed004_tables2_4", fmt)
    tidy = pd.read_csv(out / "runs_tidy.csv")
    assert tidy["run_dir"].nunique() == frame["run_dir"].nunique()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    assert "wrote" in capsys.readouterr().out


def test_report_command_all_tables_and_experiment_filter(tmp_path: Path) -> None:
    code = report_command([str(RUNS / "seed004"), "--table", "all", "--out", str(tmp_path)])
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("*.md")) == [
        "seed004_table1.md", "seed004_tables12_14.md", "seed004_tables2_4.md",
    ]  # fmt: skip
    code = report_command(
        [str(RUNS / "seed004"), "--experiment", "seed004_table12", "--table", "all", "--out", str(tmp_path / "z")]
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "z").glob("*.md")) == ["seed004_tables12_14.md"]


def test_report_command_default_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_command([str(RUNS / "seed000")]) == 0
    captured = capsys.readouterr()
    assert "memit-iterative-gpt2-xl-multi_counterfact-1000-t2" in captured.out
    assert "skipped" in captured.err and "running" in captured.err
    assert report_command([str(RUNS / "seed003"), "--out", str(tmp_path), "--format", "csv"]) == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 10
    assert set(runs.columns) >= {"run_id", "protocol", "pre.efficacy_success", "post.efficacy_success"}


def test_report_command_refusals_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_command([str(RUNS / "mixed"), "--table", "seed004_tables2_4"]) == 2
    assert "protocol.batch_size" in capsys.readouterr().err
    assert report_command([str(RUNS / "seed004"), "--table", "nope"]) == 2
    assert "Valid choices" in capsys.readouterr().err
    assert report_command([str(RUNS / "seed004"), "--table", "seed000_table1"]) == 1
    assert "no complete run matches" in capsys.readouterr().err
    assert report_command([str(tmp_path)]) == 1
    assert report_command([str(tmp_path / "missing")]) == 2
    assert report_command([]) == 2
    assert report_command([str(RUNS / "seed004"), "--plots"]) == 2


def test_report_command_lists_layouts(capsys: pytest.CaptureFixture[str]) -> None:
    assert report_command(["--list-layouts"]) == 0
    text = capsys.readouterr().out
    for name in layout_names():
        assert name in text
    assert "summary.iterations[k]" in text and "fact_probs.edited" in text


def test_report_command_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[dict], Path]] = []
    fake = types.ModuleType("edit_runner.reporting.plots")
    fake.plot_series = lambda rows, out_dir: calls.append((rows, Path(out_dir)))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edit_runner.reporting.plots", fake)
    assert report_command([str(RUNS / "seed002"), "--out", str(tmp_path), "--plots"]) == 0
    ((rows, out_dir),) = calls  # one call per run that has series
    assert out_dir == tmp_path / "plots" / "memit-gpt2-xl-counterfact-1000-t0"
    assert {r["metric"] for r in rows} == {"gen_f1", "normalized_distance"}
    assert {r["run_id"] for r in rows} == {"memit-gpt2-xl-counterfact-1000-t0"}
    assert all(r["algo"] == "memit" and r["series"] == "health" for r in rows)


def test_report_command_real_plots(tmp_path: Path) -> None:
    pytest.importorskip("edit_runner.reporting.plots")
    assert report_command([str(RUNS / "seed002"), "--out", str(tmp_path), "--plots"]) == 0
    assert list((tmp_path / "plots" / "memit-gpt2-xl-counterfact-1000-t0").glob("*.png"))

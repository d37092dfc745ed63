"""Render collected runs in the seed papers' table layouts (Markdown, LaTeX, CSV) and ``edit-report``.

:func:`render_table` turns the tidy table of :func:`edit_runner.reporting.collect.collect_runs`
into one layout of :mod:`edit_runner.reporting.layouts`: rows labelled like the paper's, each cell
``mean ± std`` over the cell's runs (trials; sample standard deviation, ddof = 1), with the paper's
own numbers (:mod:`edit_runner.reporting.paper_numbers`) in a ``paper`` row under ours.

Numbers of different protocols are never put together: within a column (or within the row
blocks a layout names in ``homogeneous_within``) every contributing run must have the same
``protocol.name``, ``protocol.batch_size``, ``protocol.eval_timing``, ``protocol.evaluated_edits``,
``protocol.metric_definition``, ``num_edits`` and ``dataset``; otherwise :class:`ProtocolMixError`
names the runs and the differing fields. Two runs of different configurations claiming the same
trial in one cell are refused as well (:class:`AmbiguousCellError`).

:func:`report_command` is the ``edit-report`` command line.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from edit_runner.errors import EditRunnerError
from edit_runner.reporting.collect import SkippedRun, collect_runs_with_skipped, collect_series
from edit_runner.reporting.layouts import (
    MODEL_LABELS,
    ROLE_LABELS,
    Column,
    Layout,
    RunView,
    get_layout,
    layout_names,
    plain_method,
)
from edit_runner.reporting.paper_numbers import PaperRow, paper_table

FORMATS: tuple[str, ...] = ("markdown", "latex", "csv")
EXTENSIONS: Mapping[str, str] = MappingProxyType({"markdown": "md", "latex": "tex", "csv": "csv"})
#: Run fields that define "the same protocol"; numbers differing in any of them are never combined.
PROTOCOL_FIELDS: tuple[str, ...] = (
    "protocol.name",
    "protocol.batch_size",
    "protocol.eval_timing",
    "protocol.evaluated_edits",
    "protocol.metric_definition",
    "num_edits",
    "dataset",
)
ROW_FIELD_HEADERS: Mapping[str, str] = MappingProxyType(
    {"model": "Model", "num_edits": "#", "method": "Method", "role": "Row", "k": "k", "dataset": "Dataset"}
)
MISSING = "—"
#: Column kinds whose cells are text (one CSV column, no std).
TEXT_KINDS: tuple[str, ...] = ("k", "meta", "stops")


class ReportError(EditRunnerError):
    """A report that cannot be built as asked (no matching runs, bad option)."""


class ProtocolMixError(ReportError):
    """Runs of different protocols or metric definitions would share a column or cell."""


class AmbiguousCellError(ReportError):
    """Two runs of different configurations claim the same trial of one table cell."""


# ----------------------------------------------------------------------------------------------
# From the tidy frame to run views
# ----------------------------------------------------------------------------------------------

_VALUE_COLUMNS = frozenset({"phase", "iteration", "metric", "value"})


def _clean(value: Any) -> Any:
    """pandas missing values → None; numpy scalars → Python scalars."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value


def runs_from_frame(frame: pd.DataFrame) -> list[RunView]:
    """Regroup a tidy frame (one row per value) into one :class:`RunView` per run directory."""
    if frame.empty:
        return []
    meta_columns = [c for c in frame.columns if c not in _VALUE_COLUMNS]
    runs: list[RunView] = []
    for run_dir, part in frame.groupby("run_dir", sort=True):
        first = part.iloc[0]
        meta = {c: _clean(first[c]) for c in meta_columns}
        values: dict[tuple[str, int | None, str], float] = {}
        for phase, iteration, metric, value in zip(part["phase"], part["iteration"], part["metric"], part["value"]):
            it = _clean(iteration)
            values[(str(phase), None if it is None else int(it), str(metric))] = float(value)
        runs.append(RunView(run_dir=str(run_dir), meta=MappingProxyType(meta), values=MappingProxyType(values)))
    return runs


def _run_name(run: RunView) -> str:
    return str(run.meta.get("run_id") or run.run_dir)


def _num(value: Any) -> Any:
    """Normalise numbers so that 1000 and 1000.0 compare and print alike."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _where_ok(run: RunView, where: Iterable[tuple[str, tuple[Any, ...]]]) -> bool:
    for name, allowed in where:
        if name.startswith("has_wrapper:"):
            value: Any = name.split(":", 1)[1] in run.wrappers
        else:
            value = _num(run.meta.get(name))
        if value not in tuple(_num(a) for a in allowed):
            return False
    return True


def _in_layout(run: RunView, layout: Layout) -> bool:
    return (
        run.meta.get("dataset") in layout.datasets
        and run.meta.get("algo") in layout.algos
        and run.wrappers in layout.wrapper_sets
        and _where_ok(run, layout.where)
    )


def _label(run: RunView, layout: Layout, row_field: str) -> str:
    if row_field == "method":
        return layout.method(str(run.meta.get("algo")), run.wrappers)
    return str(_num(run.meta.get(row_field)))


# ----------------------------------------------------------------------------------------------
# Stop rules and aggregation
# ----------------------------------------------------------------------------------------------


def _mean_at(runs: Sequence[RunView], k: int, metric: str) -> float | None:
    values = [v for r in runs if (v := r.get("iteration", k, metric)) is not None]
    return sum(values) / len(values) if values else None


def stop_iteration(runs: Sequence[RunView], rule: str, epsilon: float = 1.0) -> tuple[int, bool] | None:
    """The iteration a stop rule picks on the trial-mean series of ``runs``, and whether it fired.

    Rules (seed 000 §3.1 and §6.3; SPEC B9): ``abs_delta`` — first k with ``|Δp_k| ≤ ε``;
    ``monotonic`` — first k with ``|Δp_{k+1}| ≥ |Δp_k|`` (θ_k is kept); ``small_change`` — first
    k ≥ 2 with ``|p̂_k − p̂_{k−1}| ≤ ε``. When the rule never fires the last iteration is returned
    with ``False``; ``None`` when the runs have no iterations.
    """
    ks = sorted({k for r in runs for k in r.iterations()})
    if not ks:
        return None
    delta = {k: _mean_at(runs, k, "delta_p") for k in ks}
    p_hat = {k: _mean_at(runs, k, "p_hat") for k in ks}
    for k in ks:
        if rule == "abs_delta":
            if delta[k] is not None and abs(delta[k]) <= epsilon:  # type: ignore[arg-type]
                return k, True
        elif rule == "monotonic":
            now, nxt = delta.get(k), delta.get(k + 1)
            if now is not None and nxt is not None and abs(nxt) >= abs(now):
                return k, True
        elif rule == "small_change":
            now, before = p_hat.get(k), p_hat.get(k - 1)
            if k >= 2 and now is not None and before is not None and abs(now - before) <= epsilon:
                return k, True
        else:
            raise ReportError(f"unknown stop rule {rule!r}; valid: abs_delta, monotonic, small_change")
    return ks[-1], False


def stop_marks(runs: Sequence[RunView], rules: Sequence[str], k: int, epsilon: float = 1.0) -> str:
    """The stop rules of ``rules`` that pick iteration ``k`` on the trial-mean series (``*``: not met, last k)."""
    marks = []
    for rule in rules:
        found = stop_iteration(runs, rule, epsilon)
        if found is not None and found[0] == k:
            marks.append(ROLE_LABELS.get(rule, rule) + ("" if found[1] else "*"))
    return ", ".join(marks)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1; ``None`` for a single value)."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    std = math.sqrt(var)
    # identical values can leave rounding noise (~1e-15); report an exact zero
    return mean, 0.0 if std <= 1e-12 * max(1.0, abs(mean)) else std


@dataclass(frozen=True)
class Cell:
    """One table cell: ``mean ± std`` over ``n`` runs, or a preformatted ``text`` (k, meta fields)."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    text: str | None = None
    runs: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableRow:
    """A rendered row: raw key fields, ``source`` ("ours" or "paper …"), trial count and cells."""

    key: tuple[tuple[str, str], ...]
    source: str
    n: int | None
    cells: tuple[Cell | str | None, ...]


@dataclass(frozen=True)
class BuiltTable:
    """A layout filled with our rows (and the paper's)."""

    layout: Layout
    rows: tuple[TableRow, ...]
    paper_source: str
    paper_notes: str


@dataclass(frozen=True)
class _RowSpec:
    key: tuple[tuple[str, str], ...]
    selector: str
    runs: tuple[RunView, ...]


def _trial_identity(run: RunView) -> tuple[Any, ...] | None:
    seed, trial = _num(run.meta.get("seed")), _num(run.meta.get("trial"))
    if seed is None and trial is None:
        return None
    return (seed, trial)


def _unedited_identity(run: RunView) -> tuple[Any, ...]:
    return (
        run.meta.get("model"),
        run.meta.get("dataset"),
        _num(run.meta.get("num_edits")),
        run.meta.get("protocol.metric_definition"),
        _trial_identity(run) or run.run_dir,
    )


def _row_specs(runs: Sequence[RunView], layout: Layout) -> list[_RowSpec]:
    generated = {"k", "role"}
    base_fields = [f for f in layout.row_fields if f not in generated]
    groups: dict[tuple[str, ...], list[RunView]] = {}
    for run in runs:
        groups.setdefault(tuple(_label(run, layout, f) for f in base_fields), []).append(run)

    def key_of(base: tuple[str, ...], **extra: str) -> tuple[tuple[str, str], ...]:
        values = dict(zip(base_fields, base), **extra)
        return tuple((f, values[f]) for f in layout.row_fields)

    specs: list[_RowSpec] = []
    if layout.unedited:
        unedited: dict[tuple[str, ...], dict[tuple[Any, ...], RunView]] = {}
        for run in runs:
            base = tuple("Unedited" if f == "method" else _label(run, layout, f) for f in base_fields)
            unedited.setdefault(base, {}).setdefault(_unedited_identity(run), run)
        for base, by_trial in unedited.items():
            extra = {"k": "0"} if "k" in layout.row_fields else {"role": "unedited"}
            specs.append(_RowSpec(key_of(base, **extra), "pre", tuple(by_trial.values())))
    for base, members in groups.items():
        if layout.rows == "final":
            specs.append(_RowSpec(key_of(base), "final", tuple(members)))
        elif layout.rows == "iterations":
            for k in sorted({k for r in members for k in r.iterations()}):
                specs.append(_RowSpec(key_of(base, k=str(k)), f"iter:{k}", tuple(members)))
        elif layout.rows == "roles":
            for role, selector in layout.roles:
                specs.append(_RowSpec(key_of(base, role=role), selector, tuple(members)))
        else:
            raise ReportError(f"layout {layout.name}: unknown row mode {layout.rows!r}")
    return specs


def _resolve(selector: str, runs: Sequence[RunView], layout: Layout) -> tuple[str, int | None, str] | None:
    """(phase, iteration, k text) a row selector means for these runs; None when unavailable."""
    if selector == "pre":
        return "pre", 0, "0"
    if selector == "final":
        return "post", None, MISSING
    if selector == "first":
        return ("iteration", 1, "1") if any(1 in r.iterations() for r in runs) else None
    if selector.startswith("iter:"):
        k = int(selector.split(":", 1)[1])
        return "iteration", k, str(k)
    if selector.startswith("stop:"):
        found = stop_iteration(runs, selector.split(":", 1)[1], layout.epsilon)
        if found is None:
            return None
        k, met = found
        return "iteration", k, f"{k}" if met else f"{k}*"
    raise ReportError(f"layout {layout.name}: unknown row selector {selector!r}")


def _column_value(run: RunView, column: Column, phase: str, iteration: int | None) -> float | None:
    if column.phase is not None and column.phase != phase:
        phase, iteration = column.phase, (0 if column.phase == "pre" else None)
    if column.kind == "derived":
        if column.derive is None:
            raise ReportError(f"derived column {column.key!r} has no derive function")
        value = column.derive(run, phase, iteration)
    else:
        value = run.get(phase, iteration, column.metric)
    if value is None:
        return None
    if column.transform == "abs":
        value = abs(value)
    return value * column.scale


def _check_trials(layout: Layout, column: Column, key: Mapping[str, str], runs: Sequence[RunView]) -> None:
    seen: dict[tuple[Any, ...], RunView] = {}
    for run in runs:
        identity = _trial_identity(run)
        if identity is None:
            continue
        other = seen.setdefault(identity, run)
        if other is not run and other.meta.get("config_hash") != run.meta.get("config_hash"):
            raise AmbiguousCellError(
                f"layout {layout.name}, row {dict(key)}, column {column.header()!r}: runs "
                f"{_run_name(other)} and {_run_name(run)} have the same (seed, trial) {identity} but "
                f"different config hashes ({other.meta.get('config_hash')} vs {run.meta.get('config_hash')}); "
                "they are different configurations, not trials. Report them separately "
                "(e.g. --experiment NAME or separate directories)."
            )


def _cell(
    layout: Layout, column: Column, spec: _RowSpec, key: Mapping[str, str]
) -> tuple[Cell | None, tuple[RunView, ...]]:
    runs = tuple(r for r in spec.runs if _where_ok(r, column.where))
    if not runs:
        return None, ()
    resolved = _resolve(spec.selector, runs, layout)
    if resolved is None:
        return None, ()
    phase, iteration, k_text = resolved
    if column.kind == "k":
        return Cell(text=k_text, n=len(runs), runs=tuple(_run_name(r) for r in runs)), runs
    if column.kind == "stops":
        text = stop_marks(runs, layout.marks, iteration, layout.epsilon) if phase == "iteration" and iteration else ""
        return Cell(text=text, n=len(runs), runs=tuple(_run_name(r) for r in runs)), runs
    if column.kind == "meta":
        values = sorted({str(_num(r.meta.get(column.metric))) for r in runs})
        return Cell(text=", ".join(values), n=len(runs), runs=tuple(_run_name(r) for r in runs)), runs
    contributing = [(r, v) for r in runs if (v := _column_value(r, column, phase, iteration)) is not None]
    if not contributing:
        return None, ()
    _check_trials(layout, column, key, [r for r, _ in contributing])
    mean, std = mean_std([v for _, v in contributing])
    return (
        Cell(mean=mean, std=std, n=len(contributing), runs=tuple(_run_name(r) for r, _ in contributing)),
        tuple(r for r, _ in contributing),
    )


def _signature(run: RunView) -> tuple[Any, ...]:
    return tuple(_num(run.meta.get(f)) for f in PROTOCOL_FIELDS)


def check_protocols(
    layout: Layout,
    contributions: Mapping[str, Sequence[tuple[Mapping[str, str], RunView]]],
) -> None:
    """Raise :class:`ProtocolMixError` if a column would combine runs of different protocols.

    ``contributions`` maps a column key to ``(row key, run)`` pairs of every run that gave that
    column a value. Runs are compared within the row blocks named by ``layout.homogeneous_within``
    (the whole column when empty).
    """
    columns = {c.key: c for c in layout.columns}
    for column_key, pairs in contributions.items():
        blocks: dict[tuple[str, ...], dict[str, RunView]] = {}
        for key, run in pairs:
            block = tuple(key.get(f, "") for f in layout.homogeneous_within)
            blocks.setdefault(block, {})[run.run_dir] = run
        for block, members in blocks.items():
            signatures: dict[tuple[Any, ...], list[RunView]] = {}
            for run in members.values():
                signatures.setdefault(_signature(run), []).append(run)
            if len(signatures) <= 1:
                continue
            sigs = list(signatures)
            differing = [f for i, f in enumerate(PROTOCOL_FIELDS) if len({s[i] for s in sigs}) > 1]
            lines = []
            for field_name in differing:
                index = PROTOCOL_FIELDS.index(field_name)
                by_value: dict[Any, list[str]] = {}
                for sig, runs in signatures.items():
                    by_value.setdefault(sig[index], []).extend(_run_name(r) for r in runs)
                parts = "; ".join(f"{v!r}: {', '.join(sorted(set(n)))}" for v, n in by_value.items())
                lines.append(f"  {field_name} differs — {parts}")
            where = ""
            if layout.homogeneous_within:
                where = " within " + ", ".join(f"{f}={v}" for f, v in zip(layout.homogeneous_within, block))
            column = columns[column_key]
            title = f"{column.group} {column.header()}".strip()
            raise ProtocolMixError(
                f"refusing to combine runs of different protocols in column {title!r} of layout "
                f"{layout.name}{where}:\n" + "\n".join(lines) + "\n"
                "Report them separately (e.g. --experiment NAME or separate directories) or fix the presets."
            )


def _sort_key(layout: Layout, key: Mapping[str, str]) -> tuple[Any, ...]:
    parts: list[Any] = []
    for row_field in layout.row_fields:
        value = key.get(row_field, "")
        if row_field == "k":
            parts.append((0, int(value) if value.lstrip("-").isdigit() else 0, ""))
            continue
        if row_field == "role":
            order = ("unedited", *(r for r, _ in layout.roles))
        elif row_field == "method":
            order = ("Unedited", *layout.order_of("method"))
        else:
            order = layout.order_of(row_field)
        rank = order.index(value) if value in order else len(order)
        parts.append((rank, 0, value))
    return tuple(parts)


def build_table(
    frame: pd.DataFrame, layout_name: str, *, include_paper: bool = True, all_paper_rows: bool = False
) -> BuiltTable:
    """Fill a layout from a tidy frame: our rows (checked for protocol mixing) and the paper's rows.

    ``all_paper_rows`` also lists paper rows that have no counterpart among our runs.
    Raises :class:`ReportError` when no run matches the layout.
    """
    layout = get_layout(layout_name)
    runs = [r for r in runs_from_frame(frame) if _in_layout(r, layout)]
    if not runs:
        raise ReportError(
            f"no complete run matches layout {layout.name} (dataset in {list(layout.datasets)}, algo in "
            f"{list(layout.algos)}, wrappers in {[sorted(w) or ['none'] for w in layout.wrapper_sets]}"
            + (f", {dict(layout.where)}" if layout.where else "")
            + ")"
        )
    paper = paper_table(layout.name) if include_paper else None
    contributions: dict[str, list[tuple[Mapping[str, str], RunView]]] = {}
    ours: list[tuple[tuple[Any, ...], TableRow]] = []
    for spec in _row_specs(runs, layout):
        key = dict(spec.key)
        cells: list[Cell | None] = []
        used: set[str] = set()
        for column in layout.columns:
            cell, contributing = _cell(layout, column, spec, key)
            cells.append(cell)
            for run in contributing:
                contributions.setdefault(column.key, []).append((key, run))
                used.add(run.run_dir)
        if not used:
            continue
        trials = max(c.n for c in cells if c is not None)
        ours.append((_sort_key(layout, key), TableRow(spec.key, "ours", trials, tuple(cells))))
    check_protocols(layout, contributions)

    entries: list[tuple[tuple[Any, ...], int, TableRow]] = [(sk, 0, row) for sk, row in ours]
    if paper is not None:
        matched: set[int] = set()
        for sort_key, row in ours:
            for index, paper_row in enumerate(paper.rows):
                if paper_row.matches(dict(row.key)):
                    matched.add(index)
                    entries.append((sort_key, 1 + index, _paper_row(layout, paper_row, dict(row.key))))
        if all_paper_rows:
            for index, paper_row in enumerate(paper.rows):
                if index not in matched:
                    key = paper_row.key_dict()
                    entries.append((_sort_key(layout, key), 1 + index, _paper_row(layout, paper_row, key)))
    entries.sort(key=lambda e: (e[0], e[1]))
    # A paper row matching several of our rows (e.g. keyed by method only) is shown once per row.
    rows = tuple(row for _, _, row in entries)
    return BuiltTable(
        layout=layout,
        rows=rows,
        paper_source=paper.source if paper else "",
        paper_notes=paper.notes if paper else "",
    )


def _paper_row(layout: Layout, row: PaperRow, key: Mapping[str, str]) -> TableRow:
    full_key = tuple((f, key.get(f, row.key_dict().get(f, ""))) for f in layout.row_fields)
    source = f"paper ({row.source})" if row.source else "paper"
    return TableRow(full_key, source, None, tuple(row.value(c.key) for c in layout.columns))


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------


def _format_number(value: float, column: Column, sci: bool | None = None) -> str:
    if sci is None:
        sci = column.style == "sci" or (column.sci_above is not None and abs(value) >= column.sci_above)
    if sci:
        return f"{value:.2E}"
    return f"{value:.{column.digits}f}"


def format_cell(cell: Cell | str | None, column: Column, plus_minus: str = " ± ") -> str:
    """Display text of a cell: ``mean ± std`` (std only with ≥ 2 runs), a text cell, or ``—``."""
    if cell is None:
        return MISSING
    if isinstance(cell, str):
        return cell
    if cell.text is not None:
        return cell.text
    if cell.mean is None:
        return MISSING
    sci = column.style == "sci" or (column.sci_above is not None and abs(cell.mean) >= column.sci_above)
    text = _format_number(cell.mean, column, sci)
    if cell.std is not None:
        text += plus_minus + _format_number(cell.std, column, sci)
    return text


def _display_key(row_field: str, value: str) -> str:
    if row_field == "model":
        return MODEL_LABELS.get(value, value)
    if row_field == "role":
        return ROLE_LABELS.get(value, value)
    return value


def _column_title(column: Column) -> str:
    return f"{column.group} {column.header()}".strip()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _footer_lines(table: BuiltTable) -> list[str]:
    layout = table.layout
    lines = [
        (
            "Ours: mean ± std over the runs (trials) of each cell (sample std, ddof = 1; no ± for one "
            "run); n = the most runs in any cell of the row; k* = the stop rule was not met, last "
            "iteration shown."
        )
    ]
    if layout.notes:
        lines.append(layout.notes)
    if table.paper_source:
        lines.append(f"Paper: {table.paper_source}. {table.paper_notes}".strip())
    return lines


def _render_markdown(table: BuiltTable) -> str:
    layout = table.layout
    headers = [ROW_FIELD_HEADERS.get(f, f) for f in layout.row_fields] + ["Source", "n"]
    headers += [_column_title(c) for c in layout.columns]
    out = [f"### {layout.name}: {layout.title}", "", f"Reproduces: {layout.source}.", ""]
    out.append("| " + " | ".join(_md_escape(h) for h in headers) + " |")
    out.append("|" + "|".join(["---"] * (len(layout.row_fields) + 2) + ["--:"] * len(layout.columns)) + "|")
    for row in table.rows:
        cells = [_display_key(f, v) for f, v in row.key] + [row.source, "" if row.n is None else str(row.n)]
        cells += [format_cell(c, col) for c, col in zip(row.cells, layout.columns)]
        out.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    out.append("")
    out += [f"{line}" for line in _footer_lines(table)]
    return "\n".join(out) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "|": r"\textbar{}",
    "<": r"$<$",
    ">": r"$>$",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
    "—": "--",
    "→": r"$\to$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and map the few non-ASCII symbols used in labels to math mode."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _render_latex(table: BuiltTable) -> str:
    layout = table.layout
    n_keys = len(layout.row_fields) + 2
    spec = "l" * n_keys + "r" * len(layout.columns)
    out = [f"% {layout.name}: {layout.title}", f"% Reproduces: {layout.source}."]
    out += [f"% {line}" for line in _footer_lines(table)]
    out += [f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if any(c.group for c in layout.columns):
        spans: list[tuple[str, int, int]] = []
        for index, column in enumerate(layout.columns):
            position = n_keys + index + 1
            if spans and spans[-1][0] == column.group:
                spans[-1] = (column.group, spans[-1][1], position)
            else:
                spans.append((column.group, position, position))
        cells = [""] * n_keys
        rules = []
        for group, start, end in spans:
            width = end - start + 1
            if group:
                cells.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(group)}}}")
                rules.append(f"\\cmidrule(lr){{{start}-{end}}}")
            else:
                cells += [""] * width
        out.append(" & ".join(cells) + r" \\")
        out.append(" ".join(rules))
    headers = [latex_escape(ROW_FIELD_HEADERS.get(f, f)) for f in layout.row_fields] + ["Source", "$n$"]
    for column in layout.columns:
        label = column.latex if column.latex else latex_escape(column.label)
        if column.unit:
            label += f" ({latex_escape(column.unit)})"
        headers.append(label)
    out.append(" & ".join(headers) + r" \\")
    out.append(r"\midrule")
    for row in table.rows:
        cells = [latex_escape(_display_key(f, v)) for f, v in row.key]
        cells += [latex_escape(row.source), "" if row.n is None else str(row.n)]
        cells += [latex_escape(format_cell(c, col)) for c, col in zip(row.cells, layout.columns)]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.10g}"


def _render_csv(table: BuiltTable) -> str:
    layout = table.layout
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = [*layout.row_fields, "source", "n"]
    for column in layout.columns:
        header += [column.key] if column.kind in TEXT_KINDS else [column.key, f"{column.key}_std"]
    writer.writerow(header)
    for row in table.rows:
        values = [v for _, v in row.key] + [row.source, "" if row.n is None else str(row.n)]
        for cell, column in zip(row.cells, layout.columns):
            text_only = column.kind in TEXT_KINDS
            if isinstance(cell, str):
                values += [cell] if text_only else [cell, ""]
            elif cell is None:
                values += [""] if text_only else ["", ""]
            elif text_only:
                values.append(cell.text or "")
            else:
                values += [_csv_number(cell.mean), _csv_number(cell.std)]
        writer.writerow(values)
    return buffer.getvalue()


_RENDERERS = MappingProxyType({"markdown": _render_markdown, "latex": _render_latex, "csv": _render_csv})


def render_built(table: BuiltTable, fmt: str) -> str:
    """Render an already built table in ``fmt`` (``markdown``, ``latex`` or ``csv``)."""
    if fmt not in _RENDERERS:
        raise ReportError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    return _RENDERERS[fmt](table)


def render_table(df: pd.DataFrame, layout_name: str, fmt: str = "markdown", *, all_paper_rows: bool = False) -> str:
    """Render the runs of a tidy frame (from ``collect_runs``) in a seed table's layout.

    ``fmt`` is ``markdown``, ``latex`` or ``csv``. Raises :class:`ProtocolMixError` when runs of
    different protocols would share a column, :class:`AmbiguousCellError` when two configurations
    claim one trial, and :class:`ReportError` when no run matches the layout.
    """
    return render_built(build_table(df, layout_name, all_paper_rows=all_paper_rows), fmt)


# ----------------------------------------------------------------------------------------------
# Generic per-run summary (the default of edit-report)
# ----------------------------------------------------------------------------------------------

_SUMMARY_METRICS: tuple[tuple[str, str], ...] = (
    ("Eff. S", "efficacy_success"),
    ("Eff. A", "efficacy_accuracy"),
    ("Gen. S", "generalization_success"),
    ("Gen. A", "generalization_accuracy"),
    ("Spe. S", "specificity_success"),
    ("Spe. A", "specificity_accuracy"),
    ("Score S", "score_success"),
    ("Score A", "score_accuracy"),
)


def _protocol_text(run: RunView) -> str:
    parts = [
        str(run.meta.get("protocol.name") or "?"),
        f"bs={_num(run.meta.get('protocol.batch_size'))}",
        str(run.meta.get("protocol.eval_timing") or "?"),
        str(run.meta.get("protocol.evaluated_edits") or "?"),
        str(run.meta.get("protocol.metric_definition") or "?"),
    ]
    return "/".join(parts)


def runs_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: identity, protocol and pre/post metrics (fractions ×100; perplexity as is)."""
    records = []
    for run in runs_from_frame(frame):
        record: dict[str, Any] = {
            "run_id": _run_name(run),
            "method": plain_method(str(run.meta.get("algo")), run.wrappers),
            "model": run.meta.get("model"),
            "dataset": run.meta.get("dataset"),
            "num_edits": _num(run.meta.get("num_edits")),
            "trial": _num(run.meta.get("trial")),
            "seed": _num(run.meta.get("seed")),
            "protocol": _protocol_text(run),
            "experiment": run.meta.get("experiment"),
        }
        for _, metric in _SUMMARY_METRICS:
            for phase in ("pre", "post"):
                value = run.get(phase, 0 if phase == "pre" else None, metric)
                record[f"{phase}.{metric}"] = None if value is None else 100.0 * value
        for phase in ("pre", "post"):
            record[f"{phase}.perplexity"] = run.get(phase, 0 if phase == "pre" else None, "perplexity")
        records.append(record)
    return pd.DataFrame(records)


def _pair(pre: Any, post: Any, digits: int = 1) -> str:
    def one(v: Any) -> str:
        return MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    return f"{one(post)} ({one(pre)})"


def _summary_cells(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = ["Run", "Method", "Model", "Data", "Protocol", "Trial"]
    headers += [label for label, _ in _SUMMARY_METRICS] + ["PPL"]
    rows = []
    for rec in summary.to_dict("records"):
        trial = rec["trial"] if _clean(rec["trial"]) is not None else rec["seed"]
        cells = [
            str(rec["run_id"]),
            str(rec["method"]),
            str(rec["model"]),
            f"{rec['dataset']} ({_clean(rec['num_edits'])})",
            str(rec["protocol"]),
            str(_clean(trial)),
        ]
        cells += [_pair(_clean(rec[f"pre.{m}"]), _clean(rec[f"post.{m}"])) for _, m in _SUMMARY_METRICS]
        cells.append(_pair(_clean(rec["pre.perplexity"]), _clean(rec["post.perplexity"]), 2))
        rows.append(cells)
    return headers, rows


def render_runs(frame: pd.DataFrame, fmt: str = "markdown") -> str:
    """The per-run summary (post (pre) of every metric, in %) as markdown, latex or csv."""
    summary = runs_summary(frame)
    if fmt == "csv":
        return summary.to_csv(index=False, lineterminator="\n", float_format="%.6g")
    headers, rows = _summary_cells(summary)
    if fmt == "markdown":
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
        out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
        note = (
            "Values: post (pre), in % except perplexity; protocol = name/batch size/eval timing/"
            "evaluated edits/metric definition."
        )
        out += ["", note]
        return "\n".join(out) + "\n"
    if fmt == "latex":
        out = [f"\\begin{{tabular}}{{{'l' * 6}{'r' * (len(headers) - 6)}}}", r"\toprule"]
        out.append(" & ".join(latex_escape(h) for h in headers) + r" \\")
        out.append(r"\midrule")
        out += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows]
        out += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(out) + "\n"
    raise ReportError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def print_runs_summary(frame: pd.DataFrame, file: Any = None) -> None:
    """Print the per-run summary as a rich table (to ``file``, default stdout)."""
    from rich.console import Console
    from rich.table import Table

    stream = file if file is not None else sys.stdout
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    console = Console(file=stream, width=None if is_tty else 400, soft_wrap=False)
    headers, rows = _summary_cells(runs_summary(frame))
    table = Table(title="edit-report: runs (post (pre), % except PPL)", show_lines=False)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index < 6 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


# ----------------------------------------------------------------------------------------------
# edit-report
# ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edit-report",
        description=(
            "Collect run directories (recursively, e.g. Hydra multirun trees) and render the seed "
            "papers' tables beside the papers' own numbers. Without --table: a summary of every run."
        ),
    )
    parser.add_argument("paths", nargs="*", metavar="RUN_OR_SWEEP_DIR", help="run or sweep directories")
    parser.add_argument(
        "--table",
        action="append",
        metavar="LAYOUT",
        help=f"layout to render (repeatable; 'all' = every layout with runs): {', '.join(layout_names())}",
    )
    parser.add_argument("--format", choices=[*FORMATS, "all"], default="markdown", help="output format")
    parser.add_argument("--out", metavar="DIR", help="write files here (atomically) instead of printing")
    parser.add_argument("--plots", action="store_true", help="also plot the tracked series (needs --out)")
    parser.add_argument("--experiment", metavar="NAME", help="only runs whose summary.experiment is NAME")
    parser.add_argument(
        "--all-paper-rows", action="store_true", help="also list paper rows without a matching run of ours"
    )
    parser.add_argument(
        "--list-layouts", action="store_true", help="describe every layout and the summary fields it reads"
    )
    return parser


def _write(path: Path, text: str) -> None:
    from edit_runner.io import atomic_write_text

    atomic_write_text(path, text)


def write_plots(run_dirs: Sequence[str], out_dir: Path) -> int:
    """Plot the tracked series of each run into ``out_dir/<run_id>/``; return how many runs had series.

    Each run is plotted on its own (``edit_runner.reporting.plots.plot_series`` draws one line per
    metric/layer/task, so rows of different runs must not share a call).
    """
    from edit_runner.reporting.plots import plot_series

    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in collect_series(run_dirs):
        by_run.setdefault(str(row["run_dir"]), []).append(row)
    for rows in by_run.values():
        name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(rows[0]["run_id"] or "run"))
        plot_series(rows, out_dir / name)
    return len(by_run)


def _warn_skipped(skipped: Sequence[SkippedRun]) -> None:
    for item in skipped:
        print(f"edit-report: skipped {item.path}: {item.reason}", file=sys.stderr)


def report_command(argv: list[str] | None = None) -> int:
    """``edit-report RUN_OR_SWEEP_DIRS... [--table LAYOUT] [--format markdown|latex|csv|all] [--out DIR] [--plots]``.

    Returns 0 on success, 1 when nothing could be reported (no complete runs, no run matching a
    layout), 2 on usage errors and refused tables (mixed protocols, ambiguous cells).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and usage errors
        return int(exc.code or 0)

    if args.list_layouts:
        from edit_runner.reporting.layouts import describe_layout

        print("\n\n".join(describe_layout(get_layout(name)) for name in layout_names()))
        return 0
    if not args.paths:
        parser.print_usage(sys.stderr)
        print("edit-report: error: give at least one run or sweep directory", file=sys.stderr)
        return 2
    if args.plots and not args.out:
        print("edit-report: error: --plots needs --out DIR", file=sys.stderr)
        return 2
    formats = list(FORMATS) if args.format == "all" else [args.format]

    try:
        frame, skipped = collect_runs_with_skipped(args.paths)
    except FileNotFoundError as exc:
        print(f"edit-report: error: {exc}", file=sys.stderr)
        return 2
    _warn_skipped(skipped)
    if args.experiment is not None and not frame.empty:
        frame = frame[frame["experiment"] == args.experiment]
    if frame.empty:
        print("edit-report: no complete runs found", file=sys.stderr)
        return 1
    out_dir = Path(args.out) if args.out else None

    try:
        if not args.table:
            if out_dir is None:
                print_runs_summary(frame)
            else:
                for fmt in formats:
                    _write(out_dir / f"runs.{EXTENSIONS[fmt]}", render_runs(frame, fmt))
                _write(out_dir / "runs_tidy.csv", frame.to_csv(index=False, lineterminator="\n"))
                print(f"edit-report: wrote the run summary to {out_dir}")
        else:
            names = layout_names() if "all" in args.table else list(dict.fromkeys(args.table))
            for name in names:
                get_layout(name)  # unknown names fail here, with the valid choices
            rendered_any = False
            for name in names:
                try:
                    built = build_table(frame, name, all_paper_rows=args.all_paper_rows)
                except ReportError as exc:
                    if "all" in args.table and not isinstance(exc, (ProtocolMixError, AmbiguousCellError)):
                        continue
                    raise
                rendered_any = True
                for fmt in formats:
                    text = render_built(built, fmt)
                    if out_dir is None:
                        print(text)
                    else:
                        path = out_dir / f"{name}.{EXTENSIONS[fmt]}"
                        _write(path, text)
                        print(f"edit-report: wrote {path}")
            if out_dir is not None:
                _write(out_dir / "runs_tidy.csv", frame.to_csv(index=False, lineterminator="\n"))
            if not rendered_any:
                print("edit-report: no run matches any layout", file=sys.stderr)
                return 1
        if args.plots and out_dir is not None:
            written = write_plots(sorted(set(frame["run_dir"])), out_dir / "plots")
            print(f"edit-report: wrote plots of {written} run(s) to {out_dir / 'plots'}")
    except (ProtocolMixError, AmbiguousCellError) as exc:
        print(f"edit-report: error: {exc}", file=sys.stderr)
        return 2
    except EditRunnerError as exc:
        print(f"edit-report: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, ReportError) else 2
    return 0


def main() -> None:  # pragma: no cover - thin wrapper for ``python -m``
    """Run :func:`report_command` on ``sys.argv`` and exit with its status."""
    raise SystemExit(report_command(sys.argv[1:]))


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = [
    "AmbiguousCellError",
    "BuiltTable",
    "Cell",
    "ProtocolMixError",
    "ReportError",
    "TableRow",
    "build_table",
    "check_protocols",
    "format_cell",
    "latex_escape",
    "mean_std",
    "print_runs_summary",
    "render_built",
    "render_runs",
    "render_table",
    "report_command",
    "runs_from_frame",
    "runs_summary",
    "stop_iteration",
    "write_plots",
]


"""Plots of tracked series (issue 5): every metric vs number of edits, per-layer norm growth, forgetting.

Input is tidy rows ``{"num_edits": int, "metric": str, "value": float}`` with optional ``"layer"``,
``"task"`` and ``"family"`` keys (:func:`edit_runner.evaluation.series.series_rows` builds them). Figures are drawn on
``matplotlib.figure.Figure`` objects with the Agg canvas, so no pyplot state or global backend is
touched, and every figure is released after saving.

Which figure a row goes to:

* rows with ``layer``: ``norm_<metric>.png``, one line per layer (norm growth);
* forgetting rows (metric ``retained`` / ``forgotten`` or a ``forgetting/`` prefix, or family
  ``forgetting``): ``forgetting.png``;
* rows with ``task``: ``downstream_<metric>.png``, one line per task;
* all other rows: ``metrics_<family>.png``, one line per metric, where the family is the row's
  ``family`` key, else the part of the metric name before the first ``/``, else the metric itself.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_FORGETTING_METRICS = {"retained", "forgotten"}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "series"


def _is_forgetting(row: Mapping[str, Any]) -> bool:
    metric = str(row["metric"])
    return (
        row.get("family") == "forgetting" or metric in _FORGETTING_METRICS or metric.startswith("forgetting/")
    )


def _figure_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """(file stem, figure title, line label) of one row."""
    metric = str(row["metric"])
    if row.get("layer") is not None:
        return f"norm_{_safe(metric)}", f"{metric} per layer", str(row["layer"])
    if _is_forgetting(row):
        return "forgetting", "forgetting of earlier edits", metric.split("/")[-1]
    if row.get("task") is not None:
        return f"downstream_{_safe(metric)}", f"downstream {metric}", str(row["task"])
    family = row.get("family") or (metric.split("/")[0] if "/" in metric else metric)
    return f"metrics_{_safe(str(family))}", str(family), metric


def plot_series(series_rows: Iterable[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Write one PNG per figure (see the module docstring) into ``out_dir``; return their paths, sorted.

    Rows with a missing/None or non-finite value are skipped; lines are sorted by ``num_edits``. File
    names depend only on the metric/family names, so re-plotting a resumed run overwrites the same files.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figures: dict[str, dict[str, Any]] = {}
    for row in series_rows:
        value = row.get("value")
        if value is None:
            continue
        value = float(value)
        if not math.isfinite(value):
            continue
        stem, title, label = _figure_key(row)
        entry = figures.setdefault(stem, {"title": title, "lines": defaultdict(list)})
        entry["lines"][label].append((int(row["num_edits"]), value))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for stem in sorted(figures):
        entry = figures[stem]
        fig = Figure(figsize=(6.4, 4.0))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for label in sorted(entry["lines"]):
            points = sorted(entry["lines"][label])
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label)
        ax.set_xlabel("number of edits")
        ax.set_ylabel(entry["title"] if len(entry["lines"]) > 1 else next(iter(entry["lines"])))
        ax.set_title(entry["title"])
        ax.grid(True, alpha=0.3)
        if len(entry["lines"]) > 1:
            ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=100)
        fig.clear()
        written.append(path)
    return written

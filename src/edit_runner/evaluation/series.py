"""Tidy series rows of tracked metrics (issue 5): what the health trackers record and the plots read.

One row per metric and evaluation point: ``{"num_edits": int, "metric": str, "value": float}`` with
optional ``"layer"`` (per-layer norm growth), ``"task"`` (downstream / lm-eval tasks) and ``"family"``
(which figure the metric belongs to) keys. :func:`edit_runner.reporting.plots.plot_series` draws them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def series_rows(
    num_edits: int,
    values: Mapping[str, float],
    *,
    layer: str | None = None,
    task: str | None = None,
    family: str | None = None,
) -> list[dict[str, Any]]:
    """Tidy rows for one evaluation point: one row per ``metric -> value`` of ``values``."""
    rows = []
    for metric, value in values.items():
        row: dict[str, Any] = {"num_edits": int(num_edits), "metric": str(metric), "value": float(value)}
        if layer is not None:
            row["layer"] = layer
        if task is not None:
            row["task"] = task
        if family is not None:
            row["family"] = family
        rows.append(row)
    return rows

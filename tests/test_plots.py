"""Plots of tracked series: files are written, names are deterministic, no pyplot state is left."""

from __future__ import annotations

import sys

from edit_runner.evaluation.series import series_rows
from edit_runner.reporting.plots import plot_series


def _rows() -> list[dict]:
    rows: list[dict] = []
    for n in (0, 5, 10, 15):
        rows += series_rows(n, {"edit/efficacy_success": 1.0 - n / 30, "edit/specificity_success": 0.8})
        rows += series_rows(n, {"perplexity": 20.0 + n})
        for layer in ("model.layers.3.mlp.down_proj", "model.layers.4.mlp.down_proj"):
            rows += series_rows(n, {"fro": 10.0 + n, "normalized_distance": n / 100}, layer=layer)
        for task in ("sst2", "mmlu"):
            rows += series_rows(n, {"prob_f1": 0.5 - n / 100}, task=task)
        if n:
            rows += series_rows(n, {"retained": 1 - n / 50, "forgotten": n / 50})
    rows.append({"num_edits": 20, "metric": "perplexity", "value": float("nan")})  # skipped
    rows.append({"num_edits": 20, "metric": "perplexity", "value": None})  # skipped
    return rows


def test_plots_written(tmp_path):
    figures_before = None
    if "matplotlib.pyplot" in sys.modules:
        figures_before = sys.modules["matplotlib.pyplot"].get_fignums()
    paths = plot_series(_rows(), tmp_path / "plots")
    names = [p.name for p in paths]
    assert names == sorted(names)
    assert set(names) == {
        "downstream_prob_f1.png",
        "forgetting.png",
        "metrics_edit.png",
        "metrics_perplexity.png",
        "norm_fro.png",
        "norm_normalized_distance.png",
    }
    for path in paths:
        assert path.is_file() and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = plot_series(_rows(), tmp_path / "plots")
    assert [p.name for p in again] == names
    if figures_before is not None:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == figures_before


def test_plots_empty_rows(tmp_path):
    assert plot_series([], tmp_path) == []

"""A 20-step sequential run on SmolLM2 with the health trackers every 5 edits (issue 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e_helpers import run_job

pytestmark = pytest.mark.slow


def test_sequential_run_tracks_model_health(tmp_path: Path, shared_dir: Path) -> None:
    data = shared_dir / "data"
    summary = run_job(
        [
            "algo=ft_c", "protocol=sequential", "protocol.batch_size=1", "data.num_edits=20", "eval=health",
            "eval.every_n_edits=5", "eval.downstream.tasks=[sst2,rte]", f"eval.downstream.data_dir={data / 'downstream'}",
            "eval.downstream.num_items=20", f"eval.me_ppl.path={data / 'me-ppl' / 'ME-PPL_50.json'}", "eval.fluency=false",
            "progress=false",
        ],
        tmp_path,
    )
    assert summary["protocol"]["num_steps"] == 20 and summary["protocol"]["tracker_every_n_edits"] == 5
    assert summary["pre"]["perplexity_definition"] == "me_ppl_50" and "me_ppl_50" in summary["post"]
    rows = [json.loads(line) for line in (tmp_path / "series" / "health.jsonl").read_text().splitlines()]
    points = sorted({r["num_edits"] for r in rows})
    assert points == [0, 5, 10, 15, 20], "the schedule fires at 0 (baseline) and every 5 edits"
    tasks = {r["task"] for r in rows if "task" in r}
    assert tasks == {"sst2", "rte"}
    layers = {r["layer"] for r in rows if "layer" in r}
    assert layers == {"model.layers.0.mlp.down_proj"}
    distance = {r["num_edits"]: r["value"] for r in rows if r.get("metric") == "normalized_distance"}
    assert distance[0] == 0.0 and distance[20] > distance[5] > 0.0
    assert {r["metric"] for r in rows} >= {"retained", "forgotten", "perplexity", "efficacy_success"}
    assert summary["health"]["initial"]["downstream"]["sst2"]["num_items"] == 20
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert any(p.startswith("norm_") for p in plots) and "forgetting.png" in plots
    assert any(p.startswith("downstream_") for p in plots)

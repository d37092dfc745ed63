"""A Hydra multirun with the basic launcher: ``edit-run -m`` runs every cell once, then skips them (idempotent).

The SLURM sweeps are in ``test_slurm.py``; this one needs nothing but the package (stories260K,
one custom edit, covariance from a wikitext file, a few optimization steps).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECORD = {
    "case_id": "s0", "subject": "Lily", "prompt": "{} liked to eat", "target_new": "cake", "target_true": "apples",
    "paraphrase_prompts": ["Lily was hungry. Lily liked to eat"],
    "neighborhood_prompts": [{"prompt": "Sue liked to eat", "subject": "Sue"}],
}


def edit_run(args: list[str], cwd: Path, outputs: Path) -> subprocess.CompletedProcess:
    """``edit-run ARGS`` in a subprocess writing under ``outputs``."""
    env = {**os.environ, "EDIT_RUNNER_OUTPUTS": str(outputs), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cli = str(Path(sys.executable).with_name("edit-run"))
    return subprocess.run([cli, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture()
def sweep_args(tmp_path: Path, shared_dir: Path) -> list[str]:
    data = tmp_path / "edit.json"
    data.write_text(json.dumps([RECORD]))
    return [
        "-m", "algo=rome", "algo.layers=[2]", "algo.v_num_grad_steps=3", "algo.mom2_n_samples=100", "algo.v_lr=0.5,0.3",
        "model=local", f"model.path={shared_dir / 'models' / 'stories260K'}", "model.name=stories260K", "model.device=cpu",
        "data=custom", f"data.path={data}", "stats.corpus=text", f"stats.text_path={shared_dir / 'data' / 'wikitext' / 'wiki.test.raw'}",
        "stats.max_length=64", "eval.perplexity=false", f"cache_dir={tmp_path / 'cache'}", "progress=false",
    ]


def test_basic_launcher_multirun_runs_each_cell_once(tmp_path: Path, sweep_args: list[str]) -> None:
    outputs = tmp_path / "outputs"
    first = edit_run(sweep_args, tmp_path, outputs)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    summaries = sorted((outputs / "multirun" / "default").glob("*/summary.json"))
    assert len(summaries) == 2
    runs = [json.loads(path.read_text()) for path in summaries]
    assert all(run["status"] == "complete" and run["num_edits"] == 1 for run in runs)
    assert len({run["config_hash"] for run in runs}) == 2
    assert {"algo.v_lr=0.5" in run["provenance"]["command"] for run in runs} == {True, False}
    again = edit_run(sweep_args, tmp_path, outputs)
    assert again.returncode == 0 and again.stdout.count("already complete") == 2, again.stdout[-2000:]

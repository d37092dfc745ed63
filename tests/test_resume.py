"""Issue 3 §7 / issue 4: a sequential run interrupted after step 2 and re-run resumes to the exact
numbers and weights of an uninterrupted run (MEMIT, AlphaEdit with its key history, D4S with its
running sums).

Driven through :class:`~edit_runner.runner.Runner` with a Hydra-composed config on stories260K
(Llama layout, local), covariance from a wikitext file, four single-edit steps. The edit records
come from a ``data=custom`` JSON file written by the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edit_runner.editing.editor import Editor
from edit_runner.run_state import CheckpointStore
from edit_runner.runner import CHECKPOINT_DIR, Runner
from editing_helpers import run_config

# data=custom rows (edit_runner.data.loaders.parse_custom)
RECORDS = [
    {
        "case_id": "r0",
        "subject": "Lily",
        "prompt": "{} liked to eat",
        "target_new": "cake",
        "target_true": "apples",
        "paraphrase_prompts": ["Lily was hungry. Lily liked to eat"],
        "neighborhood_prompts": [{"prompt": "Sue liked to eat", "subject": "Sue"}],
    },
    {
        "case_id": "r1",
        "subject": "the big dog",
        "prompt": "One day, {} saw a",
        "target_new": "bird",
        "target_true": "cat",
        "paraphrase_prompts": ["The big dog ran. One day, the big dog saw a"],
        "neighborhood_prompts": [{"prompt": "One day, the girl saw a", "subject": "the girl"}],
    },
    {
        "case_id": "r2",
        "subject": "Mia",
        "prompt": "{} wanted to play with her",
        "target_new": "ball",
        "target_true": "doll",
        "paraphrase_prompts": ["Mia was happy. Mia wanted to play with her"],
        "neighborhood_prompts": [{"prompt": "Ann wanted to play with her", "subject": "Ann"}],
    },
    {
        "case_id": "r3",
        "subject": "Tom",
        "prompt": "{} went to the",
        "target_new": "forest",
        "target_true": "park",
        "paraphrase_prompts": ["It was sunny. Tom went to the"],
        "neighborhood_prompts": [{"prompt": "Ben went to the", "subject": "Ben"}],
    },
]

CASES = {
    "memit": (
        ["algo=memit", "algo.layers=[1,2]", "algo.mom2_update_weight=100", "eval.every_n_edits=2"],
        None,
    ),
    "alphaedit": (["algo=alphaedit", "algo.layers=[0,1]"], "key_history"),
    "encore": (
        ["algo=memit", "wrapper=encore", "algo.layers=[1,2]", "algo.mom2_update_weight=100"],
        "prev_edit_keys",
    ),
    "d4s": (
        ["algo=memit", "wrapper=d4s", "algo.layers=[1,2]", "algo.mom2_update_weight=100"],
        "running_sums",
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Run this module's tiny-model runs on one thread."""


def overrides_for(case: str, shared_dir: Path, cache_dir: Path, data_file: Path) -> list[str]:
    return [
        *CASES[case][0],
        "data=custom",
        f"data.path={data_file}",
        "model=local",
        f"model.path={shared_dir / 'models' / 'stories260K'}",
        "model.name=stories260K",
        "model.device=cpu",
        "algo.v_num_grad_steps=6",
        "algo.mom2_n_samples=200",
        "stats.corpus=text",
        f"stats.text_path={shared_dir / 'data' / 'wikitext' / 'wiki.test.raw'}",
        "stats.max_length=128",
        "protocol=sequential",
        "protocol.batch_size=1",
        "protocol.checkpoint_every=1",
        f"cache_dir={cache_dir}",
        "progress=false",
    ]


def run(overrides: list[str], run_dir: Path) -> dict:
    return Runner(run_config(overrides), run_dir, overrides).run()


def checkpoint(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON half and the tensors of a run's last checkpoint."""
    return CheckpointStore(run_dir / CHECKPOINT_DIR).load()


def counting_edit(monkeypatch, fail_on: int | None = None) -> dict[str, int]:
    """Count Editor.edit calls; raise on call ``fail_on`` (a crash in the middle of the run)."""
    calls = {"n": 0}
    real = Editor.edit

    def edit(self, records):
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise RuntimeError("simulated interruption")
        return real(self, records)

    monkeypatch.setattr(Editor, "edit", edit)
    return calls


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
        return
    assert isinstance(a, dict) and isinstance(b, dict) and sorted(map(str, a)) == sorted(map(str, b)), where
    for key in a:
        assert_same_tensors(a[key], b[key], f"{where}.{key}")


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_sequential_run_resumes_to_the_uninterrupted_result(
    case, tmp_path, cache_dir, data_file, shared_dir, stories260k, monkeypatch
):
    overrides = overrides_for(case, shared_dir, cache_dir, data_file)
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full = run(overrides, full_dir)
    assert full["status"] == "complete" and full["protocol"]["num_steps"] == 4

    calls = counting_edit(monkeypatch, fail_on=3)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run(overrides, resumed_dir)
    assert calls["n"] == 3
    partial, partial_tensors = checkpoint(resumed_dir)
    assert partial["state"]["completed_steps"] == 2
    assert not (resumed_dir / "summary.json").exists()

    calls = counting_edit(monkeypatch)
    resumed = run(overrides, resumed_dir)
    assert calls["n"] == 2  # only steps 3 and 4 were edited again

    # results: every metric and every per-record row equal exactly
    for key in ("pre", "post", "optimization", "num_edits", "config_hash", "context_templates", "protocol"):
        assert resumed[key] == full[key], key
    assert jsonl(resumed_dir / "records.jsonl") == jsonl(full_dir / "records.jsonl")
    assert without_timing(jsonl(resumed_dir / "steps.jsonl")) == without_timing(
        jsonl(full_dir / "steps.jsonl")
    )
    if (full_dir / "series" / "health.jsonl").exists():
        assert jsonl(resumed_dir / "series" / "health.jsonl") == jsonl(full_dir / "series" / "health.jsonl")
    assert [r["eval"] for r in jsonl(full_dir / "records.jsonl")].count("end") == 4

    # weights of the touched layers and the solver state equal bit for bit
    a_meta, a = checkpoint(full_dir)
    b_meta, b = checkpoint(resumed_dir)
    assert a_meta["state"]["completed_steps"] == b_meta["state"]["completed_steps"] == 4
    assert_same_tensors(a, b, "checkpoint")
    for name, weight in a.items():
        if name.startswith("weights.") and name.endswith(".weight"):
            module = name[len("weights.") : -len(".weight")]
            assert not torch.equal(weight, stories260k.model.get_submodule(module).weight), f"{module} was not edited"
    state_key = CASES[case][1]
    if state_key == "running_sums":
        counts = {k: int(v) for k, v in a.items() if k.startswith("editor.solver.sums.count.")}
        assert counts and all(v == 4 for v in counts.values())
    elif state_key == "key_history":
        assert sorted(k for k in a if k.startswith("editor.solver.key_history.")) == [
            "editor.solver.key_history.0", "editor.solver.key_history.1"
        ]
        assert any(k.startswith("editor.solver.key_history.") for k in partial_tensors)  # saved mid-run
    elif state_key == "prev_edit_keys":
        assert sorted(k for k in a if k.startswith("editor.terms.prev_edit_keys.")) == [
            "editor.terms.prev_edit_keys.kkt.1", "editor.terms.prev_edit_keys.kkt.2"
        ]


def test_a_kill_between_checkpoints_redoes_only_the_steps_after_the_last_one(
    tmp_path, cache_dir, data_file, shared_dir, stories260k, monkeypatch
):
    """checkpoint_every=2: checkpoints after steps 1 and 3; a crash in step 3 redoes steps 2-4."""
    overrides = [o for o in overrides_for("memit", shared_dir, cache_dir, data_file) if "checkpoint_every" not in o]
    overrides.append("protocol.checkpoint_every=2")
    full = run(overrides, tmp_path / "full")
    calls = counting_edit(monkeypatch, fail_on=3)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run(overrides, tmp_path / "resumed")
    meta, _ = checkpoint(tmp_path / "resumed")
    assert meta["state"]["completed_steps"] == 1  # step 2 was done but not yet checkpointed
    assert len(jsonl(tmp_path / "resumed" / "steps.jsonl")) == 2
    calls = counting_edit(monkeypatch)
    resumed = run(overrides, tmp_path / "resumed")
    assert calls["n"] == 3  # steps 2, 3 and 4
    assert resumed["post"] == full["post"] and resumed["pre"] == full["pre"]
    assert jsonl(tmp_path / "resumed" / "records.jsonl") == jsonl(tmp_path / "full" / "records.jsonl")
    assert without_timing(jsonl(tmp_path / "resumed" / "steps.jsonl")) == without_timing(jsonl(tmp_path / "full" / "steps.jsonl"))

"""``protocol=independent``: steps of ``batch_size`` edits, each applied to the unedited model.

The definition checked here (kmeng01 MEMIT ``evaluate.py`` chunks; MQuAKE's k edited instances):
step ``i`` of an independent run must produce exactly what a ``batched`` run of just that step's
records produces from the unedited model — the same edited weights and the same per-record rows —
and after the run the touched weights are the original ones again. Runs go through the Runner on
stories260K (Llama layout, local) with a ``data=custom`` file (the records of ``test_resume``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from e2e_helpers import run_job
from edit_runner.editing.editor import Editor
from edit_runner.errors import ConfigError
from edit_runner.evaluation.edit_metrics import summarize
from edit_runner.run_state import CheckpointStore
from edit_runner.runner import CHECKPOINT_DIR
from test_mquake import STORY_CASES
from test_resume import RECORDS

ROW_KEYS_OF_THE_RUN = ("eval", "step")  # where a row was logged, not what was measured


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Run this module's tiny-model runs on one thread."""


def memit_overrides(shared_dir: Path, cache_dir: Path, data_file: Path, *protocol: str) -> list[str]:
    return [
        "algo=memit", "algo.layers=[1,2]", "algo.mom2_update_weight=100", "algo.v_num_grad_steps=6", "algo.mom2_n_samples=200",
        "data=custom", f"data.path={data_file}", "model=local", f"model.path={shared_dir / 'models' / 'stories260K'}",
        "model.name=stories260K", "model.device=cpu", "stats.corpus=text",
        f"stats.text_path={shared_dir / 'data' / 'wikitext' / 'wiki.test.raw'}", "stats.max_length=128",
        "eval.perplexity=false", f"cache_dir={cache_dir}", "progress=false", *protocol,
    ]


INDEPENDENT = ("protocol=independent", "protocol.batch_size=2", "protocol.checkpoint_every=1", "data.num_edits=4")


def capture_edits(monkeypatch: pytest.MonkeyPatch, fail_on: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Record the touched weights right after every Editor.edit call; raise on call ``fail_on``."""
    edited: list[dict[str, torch.Tensor]] = []
    real = Editor.edit

    def edit(self, records):
        if len(edited) + 1 == fail_on:
            raise RuntimeError("simulated interruption")
        report = real(self, records)
        edited.append({name: self.model.get_submodule(name).weight.detach().clone() for name in self.modules})
        return report

    monkeypatch.setattr(Editor, "edit", edit)
    return edited


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measured(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ROW_KEYS_OF_THE_RUN}


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def independent_run(tmp_path_factory, shared_dir, cache_dir, data_file, stories260k):
    """One uninterrupted independent MEMIT run: 4 edits in 2 steps of 2; its summary, directory and per-step weights."""
    run_dir = tmp_path_factory.mktemp("independent") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        edited = capture_edits(monkeypatch)
        summary = run_job(memit_overrides(shared_dir, cache_dir, data_file, *INDEPENDENT), run_dir)
    return summary, run_dir, edited


def test_each_independent_step_equals_a_batched_run_of_its_records_alone(
    independent_run, tmp_path, shared_dir, cache_dir, data_file, stories260k, monkeypatch
):
    summary, run_dir, edited = independent_run
    assert summary["protocol"]["name"] == "independent" and summary["protocol"]["num_steps"] == 2
    assert summary["protocol"]["post"] == "per_step" and summary["protocol"]["restore_between_steps"] is True
    after_step = [r for r in jsonl(run_dir / "records.jsonl") if r["eval"] == "after_step"]
    assert [r["step"] for r in after_step] == [0, 0, 1, 1]
    assert len(edited) == 2
    for step in range(2):
        alone_dir = tmp_path / f"alone{step}"
        monkeypatch.undo()
        alone_edits = capture_edits(monkeypatch)
        run_job(memit_overrides(shared_dir, cache_dir, data_file, "protocol=batched", f"data.offset={2 * step}", "data.num_edits=2"), alone_dir)
        assert len(alone_edits) == 1
        for name, weight in alone_edits[0].items():
            original = stories260k.model.get_submodule(name).weight
            assert not torch.equal(weight, original), f"{name} was not edited"
            torch.testing.assert_close(edited[step][name], weight, rtol=0, atol=1e-6, msg=f"step {step} {name}")
        alone_rows = [measured(r) for r in jsonl(alone_dir / "records.jsonl") if r["eval"] == "end"]
        assert [r["case_id"] for r in alone_rows] == [RECORDS[2 * step]["case_id"], RECORDS[2 * step + 1]["case_id"]]
        assert [measured(r) for r in after_step if r["step"] == step] == alone_rows


def test_independent_run_ends_on_the_original_weights(independent_run, stories260k):
    _, run_dir, edited = independent_run
    meta, tensors = CheckpointStore(run_dir / CHECKPOINT_DIR).load()
    assert meta["state"]["completed_steps"] == 2
    weights = {k[len("weights."):-len(".weight")]: v for k, v in tensors.items() if k.startswith("weights.") and k.endswith(".weight")}
    assert sorted(weights) == sorted(edited[0])
    for name, weight in weights.items():
        assert torch.equal(weight, stories260k.model.get_submodule(name).weight), name


def test_independent_post_is_the_summary_of_the_after_step_rows(independent_run):
    summary, run_dir, _ = independent_run
    rows = jsonl(run_dir / "records.jsonl")
    assert not any(r["eval"] == "end" for r in rows)  # there is no final edited model to evaluate
    after_step = [r for r in rows if r["eval"] == "after_step"]
    assert summary["post"] == summarize(after_step)
    per_step = [json.loads(line)["metrics"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert summary["post"]["efficacy_success"] == pytest.approx(sum(m["efficacy_success"] for m in per_step) / 2)


def test_interrupted_independent_run_resumes_to_the_uninterrupted_result(
    independent_run, tmp_path, shared_dir, cache_dir, data_file, stories260k, monkeypatch
):
    full, full_dir, _ = independent_run
    overrides = memit_overrides(shared_dir, cache_dir, data_file, *INDEPENDENT)
    resumed_dir = tmp_path / "resumed"
    capture_edits(monkeypatch, fail_on=2)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run_job(overrides, resumed_dir)
    meta, tensors = CheckpointStore(resumed_dir / CHECKPOINT_DIR).load()
    assert meta["state"]["completed_steps"] == 1
    for key, weight in tensors.items():  # checkpointed after the restore: the unedited weights
        if key.startswith("weights.") and key.endswith(".weight"):
            assert torch.equal(weight, stories260k.model.get_submodule(key[len("weights."):-len(".weight")]).weight), key
    monkeypatch.undo()  # the next capture wraps the real Editor.edit
    edits = capture_edits(monkeypatch)
    resumed = run_job(overrides, resumed_dir)
    assert len(edits) == 1  # only step 2 was edited again
    for key in ("pre", "post", "optimization", "num_edits", "config_hash", "context_templates", "protocol"):
        assert resumed[key] == full[key], key
    assert jsonl(resumed_dir / "records.jsonl") == jsonl(full_dir / "records.jsonl")
    assert without_timing(jsonl(resumed_dir / "steps.jsonl")) == without_timing(jsonl(full_dir / "steps.jsonl"))


@pytest.mark.parametrize(
    ("extra", "field"),
    [(["protocol.eval_each_step=false"], "protocol.eval_each_step"), (["eval.every_n_edits=2"], "eval.every_n_edits")],
)
def test_independent_refuses_settings_without_per_step_results_before_loading(
    extra, field, tmp_path, shared_dir, cache_dir, data_file, monkeypatch
):
    from edit_runner import runner

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runner, "load_model", no_load)
    with pytest.raises(ConfigError, match=rf"^{field}: protocol=independent"):
        run_job(memit_overrides(shared_dir, cache_dir, data_file, "protocol=independent", *extra), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def mquake_overrides(data: Path, cache: Path, shared_dir: Path, *protocol: str) -> list[str]:
    return [
        "algo=ft", "algo.layers=[3]", "algo.ft_lr=5e-3", "data=mquake", f"data.path={data}", "data.num_edits=null",
        "model=local", f"model.path={shared_dir / 'models' / 'stories260K'}", "model.name=stories260K", "model.device=cpu",
        "eval.perplexity=false", f"cache_dir={cache}", "progress=false", *protocol,
    ]


#: test_mquake's two story cases, Lily's first; the Mia case also asks the Lily case's edited prompt and
#: accepts its new answer ("mom"): answered while Lily's edit is still in the model, not on a fresh one.
MIA, LILY = STORY_CASES
CASES = [LILY, {**MIA, "questions": [*MIA["questions"], "Lily liked to eat"], "new_answer_alias": ["mom"]}]


def test_mquake_independent_equals_each_case_edited_alone_on_a_fresh_model(tmp_path, shared_dir):
    data = tmp_path / "mquake.json"
    data.write_text(json.dumps(CASES))
    summary = run_job(mquake_overrides(data, tmp_path / "cache", shared_dir, "protocol=independent"), tmp_path / "run")
    steps = jsonl(tmp_path / "run" / "steps.jsonl")
    assert [[row["case_id"] for row in s["cases"]] for s in steps] == [["2500"], ["7"]]
    assert "final" not in summary["post"]  # no final edited model
    alone = {}
    for case in CASES:
        one = tmp_path / f"case{case['case_id']}.json"
        one.write_text(json.dumps([case]))
        alone_summary = run_job(mquake_overrides(one, tmp_path / "cache", shared_dir, "protocol=batched"), tmp_path / f"alone{case['case_id']}")
        (row,) = jsonl(tmp_path / f"alone{case['case_id']}" / "steps.jsonl")[0]["cases"]
        assert alone_summary["post"]["final"]["multi_hop_accuracy"] == float(any(row["question_answered"]))
        alone[row["case_id"]] = row
    for s in steps:
        (row,) = s["cases"]
        assert row == alone[row["case_id"]]
    answered = [any(alone[c]["question_answered"]) for c in ("7", "2500")]
    assert answered[1]  # the Lily edit answers its own prompt: accuracy is not trivially zero
    assert not alone["7"]["question_answered"][-1]  # Lily's edit is not in the Mia case's model
    assert summary["post"]["multi_hop_accuracy"] == pytest.approx(sum(answered) / 2)


def test_independent_grace_starts_every_step_from_an_empty_codebook(tmp_path, shared_dir, cache_dir, data_file):
    """GRACE changes no weight but grows a codebook: the restore must empty it after every step."""
    grace = ["algo=grace", "algo.layers=[3]", "algo.value_steps=5"]
    memit_only = ("algo.layers", "algo.mom2", "algo.v_num_grad_steps", "stats.", "algo=memit")
    base = [o for o in memit_overrides(shared_dir, cache_dir, data_file) if not o.startswith(memit_only)] + grace
    run_job([*base, "data.num_edits=2", "protocol=independent", "protocol.checkpoint_every=1"], tmp_path / "run")
    _, tensors = CheckpointStore(tmp_path / "run" / CHECKPOINT_DIR).load()
    assert tensors["editor.solver.keys"].shape[0] == 0 and tensors["editor.solver.radii"].numel() == 0
    rows = jsonl(tmp_path / "run" / "records.jsonl")
    after_step = [measured(r) for r in rows if r["eval"] == "after_step"]
    pre = [measured(r) for r in rows if r["eval"] == "pre"]
    assert after_step[1] != {**pre[1], "metric_definition": after_step[1]["metric_definition"]}  # the step did edit
    run_job([*base, "protocol=batched", "data.offset=1", "data.num_edits=1"], tmp_path / "alone")
    assert after_step[1] == next(measured(r) for r in jsonl(tmp_path / "alone" / "records.jsonl") if r["eval"] == "end")

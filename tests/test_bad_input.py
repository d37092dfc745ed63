"""Bad input fails with one clear message naming the record or key, before the model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edit_runner.data.record import EditRecord
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.targets import OptimizationSettings, optimize_targets
from edit_runner.errors import ConfigError, DataError, ModelError, OptimizationError
from edit_runner.models.layout import layout_for
from edit_runner.runner import Runner
from editing_helpers import restore_weights, run_config


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if anything tries to load a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was validated")

    monkeypatch.setattr("edit_runner.runner.load_model", refuse)


def _custom(tmp_path: Path, **changes) -> Path:
    row = {"case_id": "c1", "prompt": "The capital of {} is", "subject": "France", "target_new": "Rome", "target_true": "Paris"}
    row.update(changes)
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


def _run(tmp_path: Path, overrides: list[str]) -> None:
    Runner(run_config(["progress=false", *overrides]), tmp_path / "run", overrides).run()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": "The capital of Germany is", "subject": "France"}, "France"),
        ({"target_new": ""}, "target_new"),
        ({"target_new": "Paris"}, "equals target_true"),
    ],
)
def test_bad_records_fail_before_the_model_loads(tmp_path, no_model_load, changes, message) -> None:
    path = _custom(tmp_path, **changes)
    with pytest.raises(DataError) as err:
        _run(tmp_path, ["data=custom", f"data.path={path}"])
    assert "c1" in str(err.value) and message in str(err.value)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_missing_target_field(tmp_path, no_model_load) -> None:
    path = tmp_path / "edits.json"
    path.write_text(json.dumps([{"case_id": 7, "prompt": "{} plays", "subject": "Messi", "target_true": "football"}]))
    with pytest.raises(DataError, match="target_new"):
        _run(tmp_path, ["data=custom", f"data.path={path}"])


def test_missing_covariance_corpus(tmp_path, no_model_load) -> None:
    with pytest.raises(ConfigError, match="stats.text_path"):
        _run(tmp_path, ["stats.corpus=text"])
    with pytest.raises(ConfigError, match="does not exist"):
        _run(tmp_path, ["stats.corpus=text", f"stats.text_path={tmp_path / 'nope.txt'}"])


def test_invalid_combination_fails_before_the_model_loads(tmp_path, no_model_load) -> None:
    with pytest.raises(ConfigError, match="wrapper=iterative cannot wrap algo=ft"):
        _run(tmp_path, ["algo=ft", "wrapper=[iterative]"])
    with pytest.raises(ConfigError, match="ROME edits exactly one layer"):
        _run(tmp_path, ["algo.layers=[3,4]"])


@pytest.mark.parametrize(
    ("overrides", "key", "fix"),
    [
        (["protocol=batched", "protocol.batch_size=0"], "protocol.batch_size", "positive number of edits per step"),
        (["protocol=sequential", "protocol.batch_size=-2"], "protocol.batch_size", "positive number of edits per step"),
        (["data.num_edits=-1"], "data.num_edits", "null for every record"),
        (["data.num_edits=0"], "data.num_edits", "null for every record"),
        (["model=local", "model.path=/no/such/model-dir"], "model.path", "no such directory or file"),
        (["model=local", "model.path=./missing/model.gguf"], "model.path", "no such directory or file"),
    ],
)
def test_bad_protocol_data_and_model_values_fail_before_the_model_loads(tmp_path, no_model_load, overrides, key, fix) -> None:
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, overrides)
    assert str(err.value).startswith(f"{key}:") and fix in str(err.value)


def test_num_edits_null_means_every_record(tmp_path) -> None:
    from edit_runner.plan import plan_run

    path = tmp_path / "edits.jsonl"
    rows = [{"case_id": f"c{i}", "prompt": "The capital of {} is", "subject": s, "target_new": "Rome", "target_true": "Paris"}
            for i, s in enumerate(["France", "Spain", "Chile"])]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = plan_run(run_config(["data=custom", f"data.path={path}", "data.num_edits=null"]), tmp_path)
    assert [r.case_id for r in plan.records] == ["c0", "c1", "c2"]


def test_unknown_model_type() -> None:
    with pytest.raises(ModelError) as err:
        layout_for("bert")
    assert "bert" in str(err.value) and "llama" in str(err.value)


def test_nan_in_target_optimization_names_the_record(stories260k) -> None:
    records = [EditRecord("ok-case", "Tom", "{} went to the", "park", "school"), EditRecord("nan-case", "Lily", "{} went to the", "park", "school")]
    settings = OptimizationSettings(
        sites=(stories260k.layout.layer(2),), num_steps=3, lr=0.5, weight_decay=0.5, clamp_norm_factor=4.0, kl_factor=0.0625
    )
    with restore_weights(stories260k.model) as model:
        # A diverged model: the final norm's weight is NaN, so every logit is NaN.
        model.get_submodule(stories260k.layout.final_norm).weight.data[0] = float("nan")
        with pytest.raises(OptimizationError, match="nan-case") as err:
            optimize_targets(model, stories260k.tokenizer, records, ContextTemplates(groups=(("{}",),)), settings)
    assert "v_lr" in str(err.value)
    assert torch.isfinite(stories260k.model.get_submodule(stories260k.layout.final_norm).weight).all()

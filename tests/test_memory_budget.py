"""Issue 11 §2: the GPU memory budget of a 10,000-edit run on Llama3-8B, and its accounting.

The budget is built from config shapes on the ``meta`` device (no weights). Its resident buffers are
checked against a closed form on Llama3-8B shapes and, exactly, against the tensors a real editor
holds after one edit on a tiny GPT-2.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from edit_runner.data.record import EditRecord
from edit_runner.memory import GPU_80GB, RESIDENT, AllocationTracker, budget, main
from editing_helpers import MEMIT_TEMPLATES, algo_config, covariance, make_editor, wrapper_config

LLAMA3_8B = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 128256, "tie_word_embeddings": False,
}
LAYERS = [4, 5, 6, 7, 8]


def encore_wrappers() -> dict:
    """ENCORE's Llama3-8B wrapper values (conf/wrapper/encore.yaml per_model)."""
    return {
        "mpes": wrapper_config("mpes", prob_cutoff=-2.0),
        "norm_constraint": wrapper_config("norm_constraint", norm_lambda=20.0),
        "prev_edit_keys": wrapper_config("prev_edit_keys"),
    }


def resident(result, name: str) -> int:
    return sum(b.nbytes for b in result.buffers if b.name == name and b.stage == RESIDENT)


def llama3_parameters() -> int:
    """Llama3-8B's parameter count by hand: embeddings, lm head, 32 × (attention + MLP + 2 norms), final norm."""
    h, inner, kv, vocab = 4096, 14336, 1024, 128256
    block = 2 * h * h + 2 * h * kv + 3 * h * inner + 2 * h
    return 2 * vocab * h + 32 * block + h


def test_tracker_counts_new_storages_and_frees_them():
    with AllocationTracker() as tracker:
        a = torch.empty(10, 10, dtype=torch.float64, device="meta")
        b = a + 1
        view = b.T
        assert tracker.current == 2 * 800  # a and b; the transpose shares b's storage
        del b, view
        assert tracker.current == 800
    assert tracker.peak == 1600


@pytest.mark.parametrize("case", ["alphaedit", "encore"])
def test_llama3_8b_10000_edit_run_fits_one_80gb_gpu(case):
    algo = algo_config("alphaedit" if case == "alphaedit" else "memit", layers=LAYERS, v_lr=0.1)
    wrappers = encore_wrappers() if case == "encore" else {}
    result = budget(LlamaConfig(**LLAMA3_8B), algo, wrappers, model_name="llama3-8b", dtype="float16", batch_size=100)

    d_in, d_out = 14336, 4096
    assert llama3_parameters() == 8_030_261_248
    assert resident(result, "model weights and buffers") >= 2 * llama3_parameters()  # + rotary buffers
    assert resident(result, "original") == 5 * d_out * d_in * 2
    memory = "solver.key_history" if case == "alphaedit" else "terms.prev_edit_keys.memory"
    assert resident(result, memory) == 5 * d_in * d_in * 8  # float64 Σ K Kᵀ per layer
    if case == "alphaedit":
        assert resident(result, "solver._projectors") == 5 * d_in * d_in * 4
    host = [b for b in result.buffers if b.device == "host"]
    assert [b.nbytes for b in host] == [5 * d_in * d_in * 4]  # C stays on the host
    # a solve holds at least C's float32 copy and two float64 d_in × d_in matrices
    spread = result.stage_bytes("spread")
    assert spread >= d_in * d_in * (4 + 2 * 4 if case == "alphaedit" else 4 + 2 * 8)
    assert result.peak <= GPU_80GB, result.markdown()


@pytest.mark.parametrize("case", ["alphaedit", "encore", "d4s"])
def test_budget_equals_the_tensors_a_real_editor_holds_after_one_edit(case, tiny_gpt2, cov_dir, shared_dir, one_thread):
    layers = [1, 2]
    algo = algo_config("alphaedit" if case == "alphaedit" else "memit", layers=layers, v_num_grad_steps=2)
    wrappers = {"encore": encore_wrappers(), "d4s": {"d4s": wrapper_config("d4s")}}.get(case, {})
    cov = covariance(tiny_gpt2, layers, cov_dir, shared_dir)
    editor = make_editor(tiny_gpt2, algo, MEMIT_TEMPLATES, cov, wrappers)
    editor.edit([EditRecord("c0", "Danielle Darrieux", "The mother tongue of {} is", "English", "French")])

    state = editor.state_dict()
    real_state = sum(
        t.numel() * t.element_size()
        for part in (state["solver"], *state["terms"].values())
        for key, t in part.items()
        if not key.startswith("sums.count.")  # Python ints in memory, tensors only in checkpoints
    )
    covs = {name: cov.get(name) for name in editor.modules}
    if case == "alphaedit":  # the projector is run state too, rebuilt from C (not checkpointed)
        real_state += sum(t.numel() * t.element_size() for t in (editor.solver.projector(layer, covs[name]) for layer, name in zip(editor.layers, editor.modules)))
    real_original = sum(t.numel() * t.element_size() for t in editor.original.values())
    real_weights = sum(t.numel() * t.element_size() for t in [*tiny_gpt2.model.parameters(), *tiny_gpt2.model.buffers()])

    result = budget(tiny_gpt2.model.config, algo, wrappers, model_name="tiny-gpt2", dtype="float32", batch_size=1)
    state_rows = [b for b in result.buffers if b.stage == RESIDENT and b.name.startswith(("solver.", "terms."))]
    assert real_state > 0
    assert sum(b.nbytes for b in state_rows) == real_state
    assert resident(result, "original") == real_original == 2 * 256 * 64 * 4
    assert resident(result, "model weights and buffers") == real_weights
    assert result.host == sum(t.numel() * t.element_size() for t in covs.values())


def test_entry_point_prints_the_llama3_8b_table(capsys):
    result = main(["--model", "llama3-8b", "--algo", "alphaedit"])
    out = capsys.readouterr().out
    assert result.layers == LAYERS  # conf/algo/alphaedit.yaml per_model llama3-8b
    assert "solver.key_history" in out and "peak" in out and "fits one 80 GB GPU" in out


# ----------------------------------------------------------------------------------------------
# issue 11 §5: model.device_map reaches from_pretrained


@pytest.mark.parametrize("device_map", ["cpu", {"": "cpu"}])
def test_device_map_reaches_from_pretrained_and_keeps_the_outputs(device_map, tmp_path, shared_dir, monkeypatch, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from edit_runner.models.loading import load_model

    tokenizer = AutoTokenizer.from_pretrained(str(shared_dir / "models" / "stories260K"))
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=len(tokenizer))
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    seen = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **kw: seen.append(kw.get("device_map")) or real(*a, **kw))
    plain = load_model(str(tmp_path), device="cpu", cache_dir=tmp_path / "cache")
    mapped = load_model(str(tmp_path), device_map=device_map, cache_dir=tmp_path / "cache")
    assert seen == [None, device_map]
    assert {p.device.type for p in mapped.model.parameters()} == {"cpu"}
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    assert torch.equal(plain.model(ids).logits, mapped.model(ids).logits)


# ----------------------------------------------------------------------------------------------
# issue 11 §4 / §5: the benchmark scripts run end to end on CPU


def run_script(name: str, *args: str, cwd, timeout: int = 300) -> str:
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / name), *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path):
    import json

    out = tmp_path / "rows.json"
    stdout = run_script(
        "bench_gpu.py", "--tiny", "--device", "cpu", "--batch", "2", "--steps", "2", "--opt-steps", "1",
        "--cov-texts", "8", "--cov-length", "16", "--out", str(out), cwd=tmp_path,
    )
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["memit", "alphaedit", "encore"]
    assert rows[2]["wrappers"] == ["mpes", "norm_constraint", "prev_edit_keys"]
    for row in rows:
        assert row["edits"] == 4 and row["seconds_per_edit"] > 0 and row["checkpoint_bytes"] > 0
        assert row["projected_hours_10000"] > 0 and row["peak_gib"] is None  # no CUDA peak on CPU
    # AlphaEdit's and ENCORE's checkpoints carry a float64 128 × 128 matrix per edited layer (2 layers)
    assert rows[1]["checkpoint_bytes"] - rows[0]["checkpoint_bytes"] >= 2 * 128 * 128 * 8
    assert "| memit |" in stdout and "10k edits (h)" in stdout


def test_evaluation_benchmark_runs_on_a_random_shape_and_agrees_with_the_reference(tmp_path):
    """The GPU check's evaluation benchmark (scripts/device_check.sh), tiny on the CPU: it exits
    non-zero if any NLL differs by more than 1e-4 or any accuracy flag differs."""
    stdout = run_script(
        "bench_eval.py", "--random-shape", "llama3-8b", "--tiny", "--device", "cpu", "--num", "6",
        "--rounds", "1", "--skip-loop", "--reference-sample", "3", cwd=tmp_path,
    )
    assert "accuracy flags differing 0" in stdout and "projected" in stdout
    assert "tokens fed to the model" in stdout


def test_scaling_script_keeps_checkpoints_constant(tmp_path):
    import json

    out = tmp_path / "scaling.json"
    stdout = run_script("bench_scaling.py", "--steps", "40", "--opt-steps", "1", "--out", str(out), cwd=tmp_path)
    checkpoints = json.loads(out.read_text())["checkpoints"]
    assert len(checkpoints) == 40
    tensors = [c["tensor_bytes"] for c in checkpoints]
    assert tensors[:10] == tensors[-10:] == [tensors[0]] * 10  # the same tensors every step
    sizes = [c["dir_bytes"] for c in checkpoints]
    assert max(sizes[-10:]) - min(sizes[:10]) <= 16  # state.json only grows by the digits of its counters
    assert "ratio last/first: step time" in stdout

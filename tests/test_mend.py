"""MEND: identity init in closed form, the applied ΔW against a slow per-token loop, training helps on
held-out edits, exact checkpoint round trip and application through the runner, refused wrappers.

Every check runs on stories260K (Llama: gate/up/down projections, two shape groups sharing editors).
"""

from __future__ import annotations

import json

import pytest
import torch

from e2e_helpers import run_job
from edit_runner.data.record import EditRecord, NeighborPrompt, RecordKind
from edit_runner.editing.algorithms import algorithm_spec
from edit_runner.editing.mend_network import NORM_EPS, load_network, save_network
from edit_runner.editing.methods.mend import MendConfig, MendEditor
from edit_runner.editing.wrappers import check_combination, wrapper_registry
from edit_runner.errors import ConfigError
from edit_runner.mend_training import MendTrainingConfig, edited_logprobs, new_network, train_mend
from edit_runner.models.layout import weight_matrix
from edit_runner.models.scoring import encode_texts
from edit_runner.models.tokens import target_token_ids
from edit_runner.run_state import CheckpointStore
from edit_runner.runner import CHECKPOINT_DIR
from editing_helpers import restore_weights

NAMES = ["Lily", "Tom", "Ben", "Sue", "Max", "Anna", "Sam", "Mia", "Tim", "Zoe", "Jack", "Lucy", "Bob", "Kim", "Dan", "Eve",
         "Joe", "Amy", "Ned", "Pam", "Ron", "Liz", "Ted", "Meg"]
OBJECTS = ["moon", "shop", "ball", "tree", "cake", "dog", "car", "boat"]
RECORDS = [
    EditRecord(
        case_id=str(i), subject=name, prompt="{} went to the", target_new=OBJECTS[i % len(OBJECTS)], target_true="park",
        kind=RecordKind.counterfact, paraphrase_prompts=(f"One day {name} went to the",),
        neighborhood=(NeighborPrompt("Once upon a time there was a", "girl"),),
    )
    for i, name in enumerate(NAMES)
]
TRAIN, HELD_OUT = RECORDS[:16], RECORDS[16:]
LAYERS = [3, 4]
TRAINING = MendTrainingConfig(steps=40, batch_size=2, lr=1e-3, lr_lr=1e-3, c_edit=1.0, seed=0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny-model work runs on one thread."""


@pytest.fixture(scope="module")
def trained(stories260k):
    """A MEND network trained on :data:`TRAIN` (rank 32) with its per-step history, and the untouched weights."""
    before = {k: v.clone() for k, v in stories260k.model.state_dict().items()}
    network = new_network(stories260k, LAYERS, rank=32, seed=0)
    history = train_mend(stories260k, network, TRAIN, TRAINING)
    return network, history, before


def untrained_like(loaded, network):
    """The identity-init editor with ``network``'s normalisation statistics (only the learned parts differ)."""
    fresh = new_network(loaded, LAYERS, rank=32, seed=0)
    fresh.load_state_dict({k: v for k, v in network.state_dict().items() if k.rsplit(".", 1)[-1] in {"count", "u_mean", "u_m2", "d_mean", "d_m2"}}, strict=False)
    return fresh


def test_identity_init_gives_the_product_of_the_normalised_factors_and_statistics_merge_exactly(stories260k):
    network = new_network(stories260k, LAYERS, rank=8, seed=0)
    groups = {key: editor.layers[0].mode_scale.shape[0] for key, editor in network.editors.items()}
    assert groups == {"172x64": 4, "64x172": 2}  # gate+up of two layers share one editor, down_proj another
    name = "model.layers.4.mlp.down_proj"
    generator = torch.Generator().manual_seed(1)
    u_all = torch.randn(30, 172, generator=generator) * 3 + 1
    d_all = torch.randn(30, 64, generator=generator) * 0.01 - 0.02
    editor, _ = network.editor_of(name)
    editor.observe(u_all[:7], d_all[:7])
    editor.observe(u_all[7:], d_all[7:])
    assert float(editor.count) == 30
    torch.testing.assert_close(editor.u_mean, u_all.double().mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close((editor.d_m2 / 29).sqrt(), d_all.double().std(0), rtol=1e-10, atol=0)
    u, d = u_all[:5], d_all[:5]
    u_hat = (u.double() - u_all.double().mean(0)) / (u_all.double().std(0) + NORM_EPS)
    d_hat = (d.double() - d_all.double().mean(0)) / (d_all.double().std(0) + NORM_EPS)
    with torch.no_grad():
        got = network.pseudo_gradient(name, u, d)
        torch.testing.assert_close(got.double(), d_hat.T @ u_hat, rtol=1e-5, atol=1e-5)
        delta = network.deltas({name: (u, d)})[name]
        torch.testing.assert_close(delta, -1e-4 * got)
        editor.layers[-1].up.normal_(generator=generator)  # a trained second layer is no longer the identity
        assert (network.pseudo_gradient(name, u, d) - got).abs().max() > 1e-2


def slow_delta(loaded, network, records, name):
    """ΔW of ``name`` by a per-record, per-token loop: factors from retained gradients, the editor's layers by hand."""
    module = loaded.model.get_submodule(name)
    editor, mode = network.editor_of(name)
    alpha = network.edit_lrs[network.architecture.modules.index(name)].detach().double()
    total = torch.zeros(weight_matrix(module).shape, dtype=torch.float64)
    for record in records:
        prompt = encode_texts(loaded.tokenizer, [record.rewrite_prompt])[0]
        target = target_token_ids(loaded.tokenizer, record.target_new)
        seen: dict[str, torch.Tensor] = {}

        def capture(_module, args, out, seen=seen):
            out.retain_grad()
            seen.update(u=args[0].detach(), y=out)

        handle = module.register_forward_hook(capture)
        module.weight.requires_grad_(True)
        try:
            logits = loaded.model(input_ids=torch.tensor([prompt + target])).logits[0]
            positions = range(len(prompt) - 1, len(prompt) - 1 + len(target))
            loss = sum(torch.nn.functional.cross_entropy(logits[p][None], torch.tensor([t])) for p, t in zip(positions, target)) / len(target)
            loss.backward()
            true_grad = module.weight.grad.double().clone()
        finally:
            handle.remove()
            module.weight.grad = None
            module.weight.requires_grad_(False)
        u_rows, d_rows = seen["u"][0].double(), seen["y"].grad[0].double()
        torch.testing.assert_close(d_rows.T @ u_rows, true_grad, rtol=1e-4, atol=1e-7)  # Σ δ uᵀ is the gradient
        u_std = (editor.u_m2 / (float(editor.count) - 1)).sqrt() + NORM_EPS
        d_std = (editor.d_m2 / (float(editor.count) - 1)).sqrt() + NORM_EPS
        for u_i, d_i in zip(u_rows, d_rows):
            if not (u_i.any() and d_i.any()):
                continue
            x = torch.cat([(u_i - editor.u_mean) / u_std, (d_i - editor.d_mean) / d_std])
            for layer in editor.layers:
                h = x * layer.mode_scale[mode].detach().double() + layer.mode_shift[mode].detach().double()
                out = layer.up.detach().double() @ (layer.down.detach().double() @ h) + layer.bias.detach().double()
                x = x + (out.clamp(min=0) if layer.relu else out)
            total -= alpha * torch.outer(x[editor.d_in :], x[: editor.d_in])
    return total


def test_applied_delta_equals_the_slow_per_token_loop_and_batches_sum(stories260k, trained, tmp_path):
    network = trained[0]
    file = save_network(tmp_path / "mend.safetensors", network)
    editor = MendEditor(MendConfig(name="mend", layers=LAYERS, checkpoint=str(file)))
    editor.attach(stories260k.model)
    records = HELD_OUT[:3]
    with torch.no_grad():
        fast = editor.deltas(stories260k.model, stories260k.tokenizer, records)
    assert set(fast) == set(network.architecture.modules) and len(fast) == 6
    for name in ("model.layers.3.mlp.gate_proj", "model.layers.4.mlp.down_proj"):
        slow = slow_delta(stories260k, network, records, name)
        scale = float(slow.abs().max())
        assert scale > 1e-4
        assert float((fast[name].double() - slow).abs().max()) <= 1e-6 * max(1.0, scale), name


def test_training_lowers_the_edit_loss_and_raises_held_out_efficacy(stories260k, trained):
    network, history, before = trained
    edit_losses = [row["edit"] for row in history]
    first, last = sum(edit_losses[:8]) / 8, sum(edit_losses[-8:]) / 8
    assert last < 0.5 * first, (first, last)
    assert all(torch.equal(v, before[k]) for k, v in stories260k.model.state_dict().items()), "training changed the model"
    untrained = untrained_like(stories260k, network)
    pre = edited_logprobs(stories260k, None, HELD_OUT)
    base = edited_logprobs(stories260k, untrained, HELD_OUT)
    post = edited_logprobs(stories260k, network, HELD_OUT)
    assert float(post.mean()) > float(base.mean()) + 1.0, (pre.mean(), base.mean(), post.mean())
    assert float(post.mean()) > float(pre.mean()) + 1.0
    better = float((post > base).double().mean())
    assert better >= 0.75, (base, post)


CUSTOM = [
    {"case_id": f"h{i}", "subject": r.subject, "prompt": r.prompt, "target_new": r.target_new, "target_true": "park",
     "paraphrase_prompts": list(r.paraphrase_prompts), "neighborhood_prompts": [{"prompt": "Ben saw a big", "subject": "Ben"}]}
    for i, r in enumerate(HELD_OUT[:4])
]


def test_checkpoint_round_trip_is_exact_and_the_runner_applies_it(stories260k, trained, shared_dir, tmp_path):
    network = trained[0]
    file = save_network(tmp_path / "ckpt" / "mend.safetensors", network, {"note": "test"})
    loaded_net, training = load_network(tmp_path / "ckpt")
    assert training == {"note": "test"} and loaded_net.architecture == network.architecture
    assert all(torch.equal(v, loaded_net.state_dict()[k]) for k, v in network.state_dict().items())
    records = HELD_OUT[:4]
    applied = []
    for _ in range(2):  # twice on fresh copies: bitwise the same weights
        with restore_weights(stories260k.model):
            editor = MendEditor(MendConfig(name="mend", layers=LAYERS, checkpoint=str(file)))
            editor.attach(stories260k.model)
            editor.edit(stories260k.model, stories260k.tokenizer, records, [])
            applied.append(editor.state_dict())
    assert all(torch.equal(applied[0][k], applied[1][k]) for k in applied[0])
    data = tmp_path / "edits.json"
    data.write_text(json.dumps(CUSTOM))
    summary = run_job(
        [
            "algo=mend", f"algo.checkpoint={tmp_path / 'ckpt'}", "algo.layers=[3,4]", "data=custom", f"data.path={data}",
            "model=local", f"model.path={shared_dir / 'models' / 'stories260K'}", "model.name=stories260K", "model.device=cpu",
            "protocol.checkpoint_every=1", "eval.perplexity=false", f"cache_dir={tmp_path / 'cache'}", "progress=false", "num_threads=1",
        ],
        tmp_path / "run",
    )
    assert summary["num_edits"] == 4 and summary["post"]["efficacy_success"] > summary["pre"]["efficacy_success"]
    _, tensors = CheckpointStore(tmp_path / "run" / CHECKPOINT_DIR).load()
    state = {name[len("editor.solver."):]: t for name, t in tensors.items() if name.startswith("editor.solver.")}
    assert set(state) == set(applied[0])  # every edited projection, not only the MLP output the runner saves
    for name, weight in applied[0].items():
        torch.testing.assert_close(state[name], weight, rtol=0, atol=1e-6)
    with restore_weights(stories260k.model):  # resume: the editor state puts every edited weight back
        editor = MendEditor(MendConfig(name="mend", layers=LAYERS, checkpoint=str(file)))
        editor.attach(stories260k.model)
        editor.load_state_dict(state)
        assert all(torch.equal(weight_matrix(stories260k.model.get_submodule(n)), w) for n, w in state.items())


def test_wrappers_are_refused_and_bad_checkpoints_name_the_field(trained, tmp_path):
    spec = algorithm_spec("mend")
    assert spec.direct_type is MendEditor and not spec.capabilities
    for name in wrapper_registry().names():
        with pytest.raises(ConfigError, match=f"wrapper={name} cannot wrap algo=mend: it has no spread stage"):
            check_combination(spec, [name])
    with pytest.raises(ConfigError, match="algo.checkpoint: MEND needs a trained editor"):
        MendEditor(MendConfig(name="mend"))
    with pytest.raises(ConfigError, match="algo.checkpoint: no MEND checkpoint at"):
        MendEditor(MendConfig(name="mend", checkpoint=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="algo.checkpoint: no MEND checkpoint at"):
        spec.check(MendConfig(name="mend", checkpoint=str(tmp_path / "missing")))  # what plan_run calls first
    file = save_network(tmp_path / "mend.safetensors", trained[0])
    with pytest.raises(ConfigError, match=r"set algo.layers=\[3, 4\]"):
        MendEditor(MendConfig(name="mend", layers=[27, 28, 29], checkpoint=str(file)))


def test_train_entry_writes_checkpoint_and_log_and_refuses_a_missing_data_file(shared_dir, tmp_path, capsys):
    from edit_runner.cli_train_mend import main

    data = tmp_path / "edits.json"
    data.write_text(json.dumps(CUSTOM))
    model = str(shared_dir / "models" / "stories260K")
    common = ["--model", model, "--device", "cpu", "--layers", "3", "4", "--rank", "8", "--out", str(tmp_path / "out")]
    assert main(["--data", "zsre", *common]) == 2
    assert "--data-path: --data zsre needs the dataset file" in capsys.readouterr().err
    args = ["--data", "custom", "--data-path", str(data), "--num-records", "2", "--holdout", "2", "--steps", "3", "--batch-size", "1", "--num-threads", "1"]
    assert main([*args, *common]) == 0
    log = json.loads((tmp_path / "out" / "training.json").read_text())
    assert len(log["history"]) == 3 and log["case_ids"] == ["h0", "h1"] and log["holdout"]["case_ids"] == ["h2", "h3"]
    network, training = load_network(tmp_path / "out")
    assert network.architecture.layers == LAYERS and network.architecture.rank == 8 and training["num_records"] == 2
    assert float(network.editors["172x64"].count) > 2  # statistics of the three steps' factors were saved

"""Stages on models whose modules are placed by a device map (``model.device_map``), on CPU only.

Three checks, each on a tiny random GPT-2 and on stories260K (Llama):

* **dispatched**: accelerate's ``dispatch_model`` over a map with one entry per block (two groups of
  layers), so every block gets the ``AlignDevicesHook`` a multi-GPU map installs; keys, the optimized
  z, covariance, the scorer, ``rewrite_nll`` and full MEMIT and ROME edits through the Editor must equal
  the undispatched model's (≤ 1e-6).
* **first parameter on meta**: the model's first parameter (``next(model.parameters())``, what
  ``model.device`` reports) is a meta tensor, while every real module stays on CPU; run under a
  dispatch mode that fails any op mixing two devices (as CUDA does across GPUs). Any stage that placed
  a tensor by the "model's device" instead of the input embedding's fails; results must still equal.
* **later layers on meta**: the last two blocks live on ``meta`` (their inputs moved there by an
  ``AlignDevicesHook``, as on a second GPU); keys read inside such a block must be built there, with
  index tensors following the hooked tensor's device, under the same strict mode.

What only a real multi-GPU run shows: the numbers of stages whose forward passes cross a real device
boundary (here the values cross no boundary; the meta blocks compute no values) and transfer costs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from accelerate import dispatch_model
from accelerate.hooks import AlignDevicesHook, add_hook_to_module
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from edit_runner.data.record import EditRecord
from edit_runner.editing.covariance import (
    CovarianceCache,
    CovarianceSettings,
    second_moments,
    text_file_corpus,
)
from edit_runner.editing.keys import bare_activations, compute_keys
from edit_runner.editing.methods.memit import block_output
from edit_runner.editing.targets import OptimizationSettings, optimize_targets, rewrite_nll
from edit_runner.models.layout import weight_matrix
from edit_runner.models.loading import LoadedModel
from edit_runner.models.scoring import greedy_next_tokens, score_targets
from edit_runner.models.tokens import target_token_ids
from editing_helpers import MEMIT_TEMPLATES, algo_config, make_editor

GPT2_RECORDS = [
    EditRecord("g0", "Danielle Darrieux", "The mother tongue of {} is", "English", "French"),
    EditRecord("g1", "Toko Yasuda", "{} plays the instrument", "piano", "guitar"),
]
STORY_RECORDS = [
    EditRecord("s0", "Lily", "{} liked to eat", "cake", "apples"),
    EditRecord("s1", "the big dog", "One day, {} saw a", "bird", "cat"),
]
TEXTS = ["Once upon a time there was a little girl.", "The dog ran to the park and saw a bird.", "She liked to play."]
COPY_OPS = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Run this module's tiny-model tests on one thread."""


class SameDeviceOps(TorchDispatchMode):
    """Fails every op whose tensor arguments live on two devices (copies and 0-dim CPU scalars excepted)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in COPY_OPS:
            devices = {
                t.device
                for t in pytree.tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor) and not (t.dim() == 0 and t.device.type == "cpu")
            }
            assert len(devices) <= 1, f"{func} mixes tensors on {sorted(map(str, devices))}"
        return func(*args, **kwargs)


def per_block_map(loaded: LoadedModel) -> dict[str, str]:
    """A device map with one entry per decoder block (two groups of blocks) and per other top-level module."""
    model, layers = loaded.model, loaded.layout.layers
    entries: dict[str, str] = {}
    base_prefix = layers.rsplit(".", 1)[0]
    for name, _ in model.get_submodule(base_prefix).named_children():
        full = f"{base_prefix}.{name}"
        if full == layers:
            entries.update({f"{layers}.{i}": "cpu" for i in range(len(model.get_submodule(layers)))})
        else:
            entries[full] = "cpu"
    for name, _ in model.named_children():
        if name != base_prefix.split(".")[0]:
            entries[name] = "cpu"
    return entries


def variant(loaded: LoadedModel, model: torch.nn.Module) -> LoadedModel:
    """``loaded`` with another model object (same tokenizer, layout and identity)."""
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, layout=loaded.layout, name=loaded.name, revision=loaded.revision)


def dispatched(loaded: LoadedModel) -> LoadedModel:
    """A copy placed by accelerate over :func:`per_block_map` with hooks on every block."""
    return variant(loaded, dispatch_model(copy.deepcopy(loaded.model), per_block_map(loaded), force_hooks=True))


def meta_first_parameter(loaded: LoadedModel) -> LoadedModel:
    """A copy whose first parameter is a meta tensor (registered on the root, so parameters() yields it first)."""
    model = copy.deepcopy(loaded.model)
    model.register_parameter("device_probe", torch.nn.Parameter(torch.empty(0, device="meta"), requires_grad=False))
    assert next(model.parameters()).device.type == "meta"
    return variant(loaded, model)


def stages(loaded: LoadedModel, records: list[EditRecord], cache_dir: Path, corpus: Path) -> dict[str, torch.Tensor]:
    """Every stage's result on ``loaded``: keys, z, covariance, scorer, rewrite NLL, MEMIT and ROME weights."""
    model, tok, layout = loaded.model, loaded.tokenizer, loaded.layout
    blocks = len(model.get_submodule(layout.layers))
    first, last = layout.mlp_out.format(1), layout.mlp_out.format(blocks - 1)
    out: dict[str, torch.Tensor] = {
        "keys": compute_keys(model, tok, records, last, MEMIT_TEMPLATES),
        "bare_out": bare_activations(model, tok, records, block_output(layout, blocks - 1), "output"),
    }
    settings = OptimizationSettings(
        sites=(block_output(layout, blocks - 2),), num_steps=4, lr=0.5, weight_decay=0.5, clamp_norm_factor=4.0, kl_factor=0.0625
    )
    targets = optimize_targets(model, tok, records, MEMIT_TEMPLATES, settings)
    out["z"] = targets.z[settings.sites[0]]
    out["final_nll"] = targets.final_nll
    moments, _ = second_moments(model, tok, [first, last], TEXTS, max_length=32, batch_size=2)
    out |= {f"mom2 {name}": m for name, m in moments.items()}
    scores = score_targets(model, tok, [r.rewrite_prompt for r in records], [target_token_ids(tok, r.target_new) for r in records])
    out["scores"] = torch.tensor([s.token_logprobs[0] for s in scores])
    out["greedy"] = torch.tensor(greedy_next_tokens(model, tok, [r.rewrite_prompt for r in records], 3))
    out["rewrite_nll"] = rewrite_nll(model, tok, records, MEMIT_TEMPLATES)
    cov = CovarianceCache(cache_dir, CovarianceSettings(loaded.name, loaded.revision, 20, 64), lambda: text_file_corpus(corpus, 20))
    layers = [1, blocks - 2]
    cov.ensure(model, tok, [layout.mlp_out.format(i) for i in layers] + [layout.mlp_out.format(blocks - 1)])
    make_editor(loaded, algo_config("memit", layers=layers, v_num_grad_steps=4), MEMIT_TEMPLATES, cov).edit(records)
    out |= {f"memit {i}": weight_matrix(model.get_submodule(layout.mlp_out.format(i))).clone() for i in layers}
    rome = algo_config("rome", layers=[blocks - 1], v_num_grad_steps=4)
    make_editor(loaded, rome, MEMIT_TEMPLATES, cov).edit(records[:1])
    out["rome"] = weight_matrix(model.get_submodule(last)).clone()
    return out


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].device.type == "cpu", name
        diff = float((got[name].double() - value.double()).abs().max())
        assert diff <= 1e-6, f"{name}: max |Δ| = {diff}"


@pytest.fixture(params=["gpt2", "llama"])
def tiny(request, tiny_gpt2, stories260k):
    """A fresh tiny model of each architecture with matching edit records."""
    if request.param == "gpt2":
        return tiny_gpt2, GPT2_RECORDS
    return variant(stories260k, copy.deepcopy(stories260k.model)), STORY_RECORDS


def test_dispatched_model_gives_the_single_device_results(tiny, tmp_path, shared_dir):
    loaded, records = tiny
    corpus = shared_dir / "data" / "wikitext" / "wiki.test.raw"
    placed = dispatched(loaded)
    assert all(hasattr(block, "_hf_hook") for block in placed.model.get_submodule(loaded.layout.layers))
    want = stages(variant(loaded, copy.deepcopy(loaded.model)), records, tmp_path / "plain", corpus)
    assert_same(stages(placed, records, tmp_path / "placed", corpus), want)


def test_no_stage_places_tensors_by_the_first_parameter(tiny, tmp_path, shared_dir):
    loaded, records = tiny
    corpus = shared_dir / "data" / "wikitext" / "wiki.test.raw"
    want = stages(variant(loaded, copy.deepcopy(loaded.model)), records, tmp_path / "plain", corpus)
    probed = meta_first_parameter(loaded)
    with SameDeviceOps():
        got = stages(probed, records, tmp_path / "probed", corpus)
    assert_same(got, want)


def test_keys_inside_a_block_on_another_device_are_built_there(tiny):
    loaded, records = tiny
    model = copy.deepcopy(loaded.model)
    blocks = model.get_submodule(loaded.layout.layers)
    for block in list(blocks)[-2:]:
        block.to("meta")
        add_hook_to_module(block, AlignDevicesHook(execution_device=torch.device("meta"), io_same_device=False))
    split = variant(loaded, model)
    module = loaded.layout.mlp_out.format(len(blocks) - 1)
    with SameDeviceOps():
        keys = compute_keys(split.model, split.tokenizer, records, module, MEMIT_TEMPLATES)
        bare = bare_activations(split.model, split.tokenizer, records, block_output(loaded.layout, len(blocks) - 1), "output")
        front = compute_keys(split.model, split.tokenizer, records, loaded.layout.mlp_out.format(0), MEMIT_TEMPLATES)
    d_in = weight_matrix(loaded.model.get_submodule(module)).shape[1]
    assert keys.device.type == "meta" and keys.shape == (d_in, len(records))
    assert bare.device.type == "meta" and bare.shape == (model.config.hidden_size, len(records))
    want = compute_keys(loaded.model, loaded.tokenizer, records, loaded.layout.mlp_out.format(0), MEMIT_TEMPLATES)
    assert front.device.type == "cpu" and float((front - want).abs().max()) == 0.0

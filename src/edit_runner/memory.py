"""GPU memory budget of an editing run, per buffer, from a model config's shapes alone (issue 11 §2).

The budget is derived from the project's own code paths, not from a hand-kept list of methods:
a ``meta``-device copy of the model (shapes, no weights) gets a real :class:`EditorBuilder` with the
chosen wrappers installed, and two steady-state spread steps are run through the installed solver
and spread terms on ``meta`` tensors under an allocation tracker. That gives

* **resident** buffers: the weights, the editor's copies of the unedited rewrite matrices
  (``EditorBuilder.original``) and every tensor the solver and the spread terms keep between steps
  (found by walking their attributes: AlphaEdit's projector and key history, ENCORE's previous-edit
  key memory, D4S's running sums, …), at their real shapes and dtypes;
* the **spread** stage's transient peak: the most bytes alive at once during a layer's solve and the
  end-of-step state update, above the resident ones (``C``'s copy on the GPU, the float64
  preservation matrix, ``K Kᵀ``, the LU factor, ``ΔW``; library workspace is not counted);
* the **optimization** stage's transient peak, an *estimate* (:func:`optimization_activations`):
  the tensors autograd saves in the blocks after the δ site for one chunk of records × templates,
  plus the float32 logits at the target positions.

Peak = resident + the larger of the two stages (they never overlap). The covariance ``C`` is held
on the host by :class:`~edit_runner.editing.covariance.CovarianceCache` and listed apart. The state
does not grow with the number of edits, so the budget of step 2 is the budget of step 10,000.

``python -m edit_runner.memory --model llama3-8b --algo alphaedit`` prints the table.
"""

from __future__ import annotations

import argparse
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx.experimental._config
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from edit_runner.editing.algorithms import algorithm_spec
from edit_runner.editing.context import MEMIT_SEED_WORDS, ContextTemplates
from edit_runner.editing.editor import Editor, EditorBuilder
from edit_runner.editing.solver import SpreadTerms
from edit_runner.editing.wrappers import build_wrappers, check_combination
from edit_runner.errors import ConfigError
from edit_runner.models.layout import add_to_weight, layout_for, weight_matrix
from edit_runner.models.loading import LoadedModel, resolve_dtype

GiB = 1024**3
#: One 80 GB accelerator (H100 / A100 80GB), in bytes.
GPU_80GB = 80 * 10**9
RESIDENT, OPTIMIZATION, SPREAD = "resident", "optimization", "spread"


@dataclass(frozen=True)
class Buffer:
    """One row of the budget: ``count`` tensors of ``shape`` and ``dtype`` on ``device`` during ``stage``."""

    name: str
    stage: str  # "resident" | "optimization" | "spread"
    device: str  # "gpu" | "host"
    dtype: str
    shape: tuple[int, ...]
    count: int
    nbytes: int
    note: str = ""


@dataclass
class Budget:
    """The per-buffer budget of one model × algorithm × wrappers choice."""

    model: str
    algo: str
    wrappers: list[str]
    layers: list[int]
    buffers: list[Buffer] = field(default_factory=list)

    def stage_bytes(self, stage: str, device: str = "gpu") -> int:
        """Bytes of every buffer of ``stage`` on ``device``."""
        return sum(b.nbytes for b in self.buffers if b.stage == stage and b.device == device)

    @property
    def peak(self) -> int:
        """Peak GPU bytes: resident plus the larger transient stage."""
        return self.stage_bytes(RESIDENT) + max(self.stage_bytes(OPTIMIZATION), self.stage_bytes(SPREAD))

    @property
    def host(self) -> int:
        """Bytes held on the host (the covariance cache)."""
        return sum(b.nbytes for b in self.buffers if b.device == "host")

    def markdown(self) -> str:
        """The budget as a markdown table with the totals."""
        head = f"{self.model} · algo={self.algo} · wrappers={'+'.join(self.wrappers) or 'none'} · layers {self.layers}"
        lines = [
            f"**{head}**", "",
            "| buffer | stage | device | dtype | shape | count | GiB | note |",
            "|---|---|---|---|---|---:|---:|---|",
        ]
        for b in self.buffers:
            shape = "×".join(map(str, b.shape)) or "scalar"
            lines.append(f"| {b.name} | {b.stage} | {b.device} | {b.dtype} | {shape} | {b.count} | {b.nbytes / GiB:.2f} | {b.note} |")
        lines += [
            "",
            (
                f"resident {self.stage_bytes(RESIDENT) / GiB:.2f} GiB + max(optimization {self.stage_bytes(OPTIMIZATION) / GiB:.2f}, "
                f"spread {self.stage_bytes(SPREAD) / GiB:.2f}) = **peak {self.peak / GiB:.2f} GiB ({self.peak / 1e9:.1f} GB)** on the GPU; "
                f"host {self.host / GiB:.2f} GiB"
            ),
        ]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# model shapes


def preset_config(name: str) -> Any:
    """The HF config of a model this project has a ``conf/model`` for, with its published sizes (no download)."""
    from transformers import GPT2Config, GPTJConfig, LlamaConfig

    presets = {
        "llama3-8b": lambda: LlamaConfig(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
            vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=False,
        ),
        "llama2-7b": lambda: LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
            vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False,
        ),
        "gpt2-xl": lambda: GPT2Config(n_layer=48, n_embd=1600, n_head=25, vocab_size=50257),
        "gpt-j": lambda: GPTJConfig(n_layer=28, n_embd=4096, n_head=16, rotary_dim=64, vocab_size=50400, tie_word_embeddings=False),
    }
    if name not in presets:
        raise ConfigError(f"--model {name!r} has no preset shape; choose one of {', '.join(presets)} or pass --config <dir with config.json>")
    return presets[name]()


def meta_model(config: Any, dtype: str) -> nn.Module:
    """The model of ``config`` on the ``meta`` device (shapes and dtypes, no storage)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------
# allocation tracking on meta tensors


class AllocationTracker(TorchDispatchMode):
    """Counts the bytes of every new storage an op creates and frees them when Python drops them.

    Works on ``meta`` tensors (sizes without data); views and in-place results share an input's
    storage and are not counted. ``peak`` is the high-water mark since the last :meth:`mark`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def mark(self) -> int:
        """Start a new high-water mark at the current live bytes; returns them."""
        self.peak = self.current
        return self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run ``func`` and note the storages it created."""
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self.live:
                continue
            self.live[key] = storage.nbytes()
            self.current += self.live[key]
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def _meta(*shape: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


@dataclass
class MetaProbe:
    """Stands in for :class:`~edit_runner.editing.solver.LayerProbe`: keys of ``n`` edits as ``meta`` tensors."""

    d_in: dict[int, int]
    n: int

    def keys(self, layer: int) -> Tensor:
        """``d_in × n`` float64 keys (what :meth:`LayerProbe.keys` returns)."""
        return _meta(self.d_in[layer], self.n)


def spread_peak(editor: Editor, batch_size: int, tracker: AllocationTracker, steps: int = 2) -> int:
    """Most transient bytes of a spread step: the high-water mark above what stays alive after the step.

    Runs the installed solver's and spread terms' hooks in the order :class:`Editor` does, with ``meta``
    keys, residuals and ``C``, for ``steps`` steps: the first creates the run state (and AlphaEdit's
    projector, through an SVD), later ones replace it, as every step of a long run does.
    """
    shapes = {layer: tuple(weight_matrix(editor.model.get_submodule(name)).shape) for layer, name in zip(editor.layers, editor.modules)}
    probe = MetaProbe({layer: shape[1] for layer, shape in shapes.items()}, batch_size)
    solver = editor.solver
    assert solver is not None
    worst = 0
    for _ in range(steps):
        start = tracker.mark()
        for layer, name in zip(editor.layers, editor.modules):
            d_out, d_in = shapes[layer]
            keys, resid = _meta(d_in, batch_size), _meta(d_out, batch_size)
            terms = SpreadTerms()
            for term in editor.spread_terms.values():
                term.contribute(layer, terms)
            cov = _meta(d_in, d_in, dtype=torch.float32) if solver.needs_covariance else None
            delta = solver.delta(layer, keys, resid, cov, terms)
            for term in editor.spread_terms.values():
                term.after_layer(layer, keys)
            add_to_weight(editor.model.get_submodule(name), delta)
            del keys, resid, terms, cov, delta
        solver.after_step(probe, editor.layers)  # type: ignore[arg-type]
        worst = max(worst, tracker.peak - max(start, tracker.current))
    return worst


# ----------------------------------------------------------------------------------------------
# resident run state, found on the objects themselves


def tensors_of(obj: Any, prefix: str, depth: int = 3) -> Iterator[tuple[str, Tensor]]:
    """``(dotted name, tensor)`` for every tensor held by ``obj`` in attributes and dicts (``depth`` levels of objects)."""
    if isinstance(obj, Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from tensors_of(value, f"{prefix}.{key}", depth)
    elif depth and not callable(obj) and not isinstance(obj, nn.Module) and hasattr(obj, "__dict__"):
        for key, value in vars(obj).items():
            yield from tensors_of(value, f"{prefix}.{key}", depth - 1)


def editor_state_tensors(editor: Editor) -> list[tuple[str, Tensor]]:
    """Every tensor the editor keeps between steps: originals, solver state, spread-term state."""
    return [
        *tensors_of(editor.original, "original"),
        *tensors_of(editor.solver if editor.solver is not None else editor.direct, "solver"),
        *tensors_of(editor.spread_terms, "terms"),
    ]


def _group(named: list[tuple[str, Tensor]], stage: str, device: str, notes: dict[str, str]) -> list[Buffer]:
    """One :class:`Buffer` per name stem (the layer index dropped; every original copy is ``original``)."""
    groups: dict[tuple[str, str, tuple[int, ...]], list[Tensor]] = {}
    for name, tensor in named:
        stem = "original" if name.startswith("original.") else name.rsplit(".", 1)[0]
        groups.setdefault((stem, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape)), []).append(tensor)
    return [
        Buffer(stem, stage, device, dtype, shape, len(ts), sum(t.numel() * t.element_size() for t in ts), notes.get(stem, ""))
        for (stem, dtype, shape), ts in groups.items()
    ]


STATE_NOTES = {
    "original": "EditorBuilder.original: unedited rewrite matrices",
    "solver._projectors": "AlphaEdit null-space projector (from C)",
    "solver.key_history": "AlphaEdit Σ K_p K_pᵀ",
    "terms.prev_edit_keys.memory": "ENCORE previous-edit key memory Σ K_p K_pᵀ",
    "solver.sums._s_rk": "D4S Σ R Kᵀ",
    "solver.sums._s_kk": "D4S Σ K Kᵀ",
}


# ----------------------------------------------------------------------------------------------
# optimization stage (estimate)


def template_count(style: str, length_params: list[list[int]]) -> int:
    """Context templates of a run: MEMIT style ``{}`` + one per seed word, ROME style ``{}`` + the sampled ones."""
    return 1 + (len(MEMIT_SEED_WORDS) if style == "memit" else sum(count for _, count in length_params))


def optimization_activations(
    config: Any, model: nn.Module, site_layer: int, rows: int, row_tokens: int, target_tokens: int, dtype: str
) -> list[Buffer]:
    """Estimated saved tensors of one optimization forward/backward (weights frozen, so linears save nothing).

    Per token of every block after the δ site: the two norms' float32 inputs (``2·4h`` bytes), the
    attention's q, k, v and output (``(2h + 2·kv)·b``), the MLP's activation inputs and gate product
    (``3·I·b``); plus the float32 log-softmax over the vocabulary at every target position and KL row.
    An estimate (attention kernels and activation functions differ); ``scripts/bench_gpu.py`` measures
    the real peak.
    """
    b = resolve_dtype(dtype).itemsize
    h = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv = h * int(getattr(config, "num_key_value_heads", heads) or heads) // heads
    inner = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h)
    blocks = int(config.num_hidden_layers) - 1 - site_layer
    tokens = rows * row_tokens
    per_token = 2 * 4 * h + (2 * h + 2 * kv) * b + 3 * inner * b
    vocab = int(config.vocab_size)
    logit_rows = target_tokens
    return [
        Buffer("saved activations of the blocks after the δ site", OPTIMIZATION, "gpu", str(resolve_dtype(dtype)).removeprefix("torch."),
               (tokens, per_token // b), blocks, blocks * tokens * per_token,
               f"estimate: {rows} rows × {row_tokens} tokens, {blocks} blocks"),
        Buffer("logits at target positions (+ float32 log-softmax)", OPTIMIZATION, "gpu", "float32", (logit_rows, vocab), 1,
               logit_rows * vocab * (b + 4 + 4), "estimate"),
    ]


# ----------------------------------------------------------------------------------------------
# the budget


def budget(
    config: Any,
    algo: Any,
    wrappers: dict[str, Any],
    *,
    model_name: str,
    dtype: str,
    batch_size: int = 100,
    row_tokens: int = 32,
    target_tokens_per_row: int = 2,
) -> Budget:
    """The per-buffer GPU budget of editing ``batch_size`` records per step with ``algo`` (a config dataclass) and ``wrappers``.

    ``row_tokens`` is the padded length of an optimization prompt (context prefix + prompt + target);
    ``target_tokens_per_row`` the new object's tokens per rewriting prompt.
    """
    spec = algorithm_spec(algo.name)
    built = build_wrappers(wrappers)
    check_combination(spec, built)
    if not spec.has_spread:
        raise ConfigError(f"algo={algo.name}: the memory budget covers locate-then-edit methods (a spread stage); fine-tuning has none")
    model = meta_model(config, dtype)
    loaded = LoadedModel(model=model, tokenizer=None, layout=layout_for(config.model_type), name=model_name, revision="meta")
    builder = EditorBuilder(loaded, spec, algo, ContextTemplates(groups=(("{}",),)), None)
    for wrapper in built:
        wrapper.install(builder)
    editor = builder.build()
    # Data-dependent ops (AlphaEdit's ``U[:, S < t]``) take their largest size: the budget is an upper bound.
    with torch.fx.experimental._config.patch(meta_nonzero_assume_all_nonzero=True), AllocationTracker() as tracker:
        spread = spread_peak(editor, batch_size, tracker)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    d_in = {name: weight_matrix(model.get_submodule(name)).shape[1] for name in editor.modules}
    rows = min(int(algo.target_chunk), batch_size) * (template_count(spec.template_style, list(algo.context_template_length_params)) + 1)
    out = Budget(model_name, algo.name, [w.name for w in built], list(editor.layers))
    out.buffers = [
        Buffer("model weights and buffers", RESIDENT, "gpu", dtype, (), 1, weights, f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters"),
        *_group(editor_state_tensors(editor), RESIDENT, "gpu", STATE_NOTES),
        Buffer("covariance C per layer (CovarianceCache)", RESIDENT, "host", "float32", (max(d_in.values()),) * 2, len(d_in),
               sum(4 * d * d for d in d_in.values()), "host memory; copied to the GPU per layer solve"),
        Buffer("solve temporaries (one layer + state update)", SPREAD, "gpu", "mixed", (), 1, spread,
               "measured on meta tensors: C copy, preservation, K Kᵀ, LU, ΔW; library workspace not counted"),
        *optimization_activations(config, model, max(editor.layers), rows, row_tokens, rows * target_tokens_per_row, dtype),
    ]
    return out


def composed_budget(model: str, algo: str, wrapper: str, overrides: list[str], **kwargs: Any) -> Budget:
    """:func:`budget` of ``edit-run model=<model> algo=<algo> wrapper=<wrapper> <overrides>`` (per-model values applied)."""
    from hydra import compose, initialize_config_module

    from edit_runner.config import effective_config, register_configs, register_resolvers

    register_configs()
    register_resolvers()
    line = [f"model={model}", f"algo={algo}", f"wrapper={wrapper}", *overrides]
    with initialize_config_module("edit_runner.conf", version_base="1.3"):
        cfg = effective_config(compose("config", overrides=line), line)
    return budget(preset_config(model), cfg.algo, cfg.wrapper, model_name=model, dtype=cfg.model.dtype, **kwargs)


def main(argv: list[str] | None = None) -> Budget:
    """``python -m edit_runner.memory``: print the per-buffer budget table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama3-8b", help="a conf/model name with a preset shape (llama3-8b, llama2-7b, gpt2-xl, gpt-j)")
    parser.add_argument("--algo", default="alphaedit", help="conf/algo name (ENCORE: --algo memit --wrapper encore)")
    parser.add_argument("--wrapper", default="none", help="conf/wrapper name or [a,b] list (encore, d4s, …)")
    parser.add_argument("--batch-size", type=int, default=100, help="edits per step")
    parser.add_argument("--row-tokens", type=int, default=32, help="padded tokens per optimization prompt (estimate)")
    parser.add_argument("overrides", nargs="*", help="further edit-run overrides, e.g. algo.layers=[4,5,6,7,8] model.dtype=bfloat16")
    args = parser.parse_args(argv)
    result = composed_budget(args.model, args.algo, args.wrapper, args.overrides, batch_size=args.batch_size, row_tokens=args.row_tokens)
    print(result.markdown())
    fits = "fits" if result.peak <= GPU_80GB else "does NOT fit"
    print(f"\n{fits} one 80 GB GPU ({math.floor(result.peak / GPU_80GB * 100)}% of 80e9 bytes)")
    return result


if __name__ == "__main__":
    main()

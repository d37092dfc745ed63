#!/usr/bin/env python
"""GPU benchmark (issue 11 §4): MEMIT, AlphaEdit and ENCORE on a Llama3-8B-shaped random model.

For each method: ``--steps`` sequential steps of ``--batch`` synthetic edits through the project's
:class:`~edit_runner.editing.editor.EditorBuilder` (hyper-parameters from ``conf/algo`` + the
shape's ``per_model`` values, ENCORE = ``algo=memit wrapper=encore``), reporting

* seconds per edit of each stage (``StepReport.seconds``: key, target, solve) and of the step,
* peak GPU memory (``torch.cuda.max_memory_allocated``) next to :mod:`edit_runner.memory`'s budget,
* checkpoint overhead per step (``CheckpointStore.save`` of the touched weights + editor state:
  seconds and bytes),
* the projected time of 10,000 edits: per-edit key/solve/checkpoint time × 10,000, plus the target
  time scaled from ``--opt-steps`` to the method's configured ``v_num_grad_steps`` (random weights
  never meet MPES's stop rule, so ENCORE's real early stopping is not represented).

Honest about what is synthetic: random weights (no download), the GPT-2 tokenizer of
``../shared/models`` (ids < 50257 of the 128,256-row embedding), synthetic records, and ``C`` from a
streamed pass over random-token texts (:class:`CovarianceCache`, the real code path, timed apart).

    python scripts/bench_gpu.py                      # Llama3-8B shape, cuda, 100-edit batches, 2 steps
    python scripts/bench_gpu.py --shape gpt2-xl
    python scripts/bench_gpu.py --tiny --device cpu  # smoke test (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module

from edit_runner.config import effective_config, register_configs, register_resolvers
from edit_runner.data.record import EditRecord
from edit_runner.editing.algorithms import algorithm_spec
from edit_runner.editing.context import generate_context_templates
from edit_runner.editing.covariance import Corpus, CovarianceCache, CovarianceSettings
from edit_runner.editing.editor import EditorBuilder
from edit_runner.editing.wrappers import build_wrappers, selected_wrappers
from edit_runner.memory import budget, preset_config
from edit_runner.models.layout import layout_for
from edit_runner.models.loading import LoadedModel, resolve_dtype
from edit_runner.models.tokens import ensure_pad_token
from edit_runner.run_state import CheckpointStore, flatten_tensors

REPO = Path(__file__).resolve().parents[1]
#: benchmark label → (conf/algo, conf/wrapper)
METHODS = {"memit": ("memit", "none"), "alphaedit": ("alphaedit", "none"), "encore": ("memit", "encore")}
PROJECTED_EDITS = 10_000
FACTS = (
    ("{} was born in the city of", "Paris", "Rome"),
    ("{} plays the sport of", "tennis", "football"),
    ("The mother tongue of {} is", "French", "English"),
    ("{} works in the field of", "physics", "music"),
)


def shared_dir() -> Path:
    """``$EDIT_RUNNER_SHARED`` or ``<repo>/../shared``."""
    return Path(os.environ.get("EDIT_RUNNER_SHARED", REPO.parent / "shared")).resolve()


def synthetic_records(num: int) -> list[EditRecord]:
    """``num`` distinct edits: synthetic subjects on a few relation templates."""
    return [
        EditRecord(case_id=f"bench-{i}", subject=f"Person {i}", prompt=FACTS[i % len(FACTS)][0],
                   target_new=FACTS[i % len(FACTS)][1], target_true=FACTS[i % len(FACTS)][2])
        for i in range(num)
    ]


def random_model(shape: str, tiny: bool, dtype: str, device: str, seed: int) -> tuple[LoadedModel, Any]:
    """A random-weight model of the preset ``shape`` (or a 4-layer toy of that family with ``tiny``), built on ``device``."""
    from transformers import AutoModelForCausalLM, GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(str(shared_dir() / "models" / "gpt2-tokenizer"))
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    config = preset_config(shape)
    if tiny:
        config = type(config)(**{**config.to_dict(), **tiny_sizes(config)})
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype))
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    label = f"random-{shape}{'-tiny' if tiny else ''}"
    return LoadedModel(model, tokenizer, layout_for(config.model_type), label, f"random-seed{seed}"), config


def tiny_sizes(config: Any) -> dict[str, int]:
    """Config keys of a 4-layer, 64-wide model of ``config``'s family (both spellings; unknown keys are ignored)."""
    return {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "n_embd": 64, "n_inner": 128, "n_layer": 4, "n_head": 4, "rotary_dim": 8, "vocab_size": 50257,
    }


def method_config(method: str, shape: str, overrides: list[str]) -> tuple[Any, dict[str, Any]]:
    """The algorithm config dataclass and the wrapper configs of ``method`` as ``edit-run`` composes them for ``shape``."""
    algo, wrapper = METHODS[method]
    line = [f"model={shape}", f"algo={algo}", f"wrapper={wrapper}", *overrides]
    with initialize_config_module("edit_runner.conf", version_base="1.3"):
        cfg = effective_config(compose("config", overrides=line), line)
    return cfg.algo, cfg.wrapper


def synthetic_covariance(loaded: LoadedModel, modules: list[str], cache_dir: Path, texts: int, length: int) -> tuple[CovarianceCache, float]:
    """``C`` of ``modules`` from random-token texts through :class:`CovarianceCache`; returns it and the seconds it took."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, loaded.tokenizer.vocab_size, (texts, length), generator=generator)
    corpus = Corpus(ident=f"random-tokens-{texts}x{length}", texts=loaded.tokenizer.batch_decode(ids))
    cache = CovarianceCache(cache_dir, CovarianceSettings(loaded.name, loaded.revision, texts, length), lambda: corpus)
    start = time.perf_counter()
    cache.ensure(loaded.model, loaded.tokenizer, modules)
    return cache, time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (timings on CUDA are asynchronous otherwise)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_method(
    method: str, loaded: LoadedModel, config: Any, args: argparse.Namespace, records: list[EditRecord], templates: Any, work: Path
) -> dict[str, Any]:
    """Run ``args.steps`` sequential steps of ``method``; restore the weights after; return the row of the table."""
    overrides = [f"algo.v_num_grad_steps={args.opt_steps}", *(["algo.layers=[1,2]"] if args.tiny else [])]
    configured_steps = int(method_config(method, args.shape, [])[0].v_num_grad_steps)
    algo, wrappers = method_config(method, args.shape, overrides)
    device = loaded.device
    modules = [loaded.layout.mlp_out.format(int(layer)) for layer in sorted(algo.layers)]
    cov, cov_seconds = synthetic_covariance(loaded, modules, work / "stats", args.cov_texts, args.cov_length)
    spec = algorithm_spec(algo.name)
    builder = EditorBuilder(loaded, spec, algo, templates, cov)
    for wrapper in build_wrappers(wrappers):
        wrapper.install(builder)
    editor = builder.build()
    store = CheckpointStore(work / f"checkpoint-{method}")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = {"key": 0.0, "target": 0.0, "solve": 0.0}
    wall = checkpoint_seconds = 0.0
    checkpoint_bytes: list[int] = []
    try:
        for step in range(args.steps):
            batch = records[step * args.batch : (step + 1) * args.batch]
            synchronize(device)
            start = time.perf_counter()
            report = editor.edit(batch)
            synchronize(device)
            wall += time.perf_counter() - start
            for stage in seconds:
                seconds[stage] += report.seconds.get(stage, 0.0)
            start = time.perf_counter()
            weights = {f"{name}.weight": editor.model.get_submodule(name).weight for name in editor.modules}
            tensors = flatten_tensors({"weights": weights, "editor": editor.state_dict()})
            checkpoint_bytes.append(store.save({"state": {"completed_steps": step + 1}}, tensors))
            checkpoint_seconds += time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    finally:
        builder.reset_to_original()
    edits = args.steps * args.batch
    per_edit = {stage: value / edits for stage, value in seconds.items()}
    estimate = budget(config, algo, wrappers, model_name=loaded.name, dtype=args.dtype, batch_size=args.batch)
    projected = PROJECTED_EDITS * (
        per_edit["key"] + per_edit["solve"] + checkpoint_seconds / edits
        + per_edit["target"] * configured_steps / args.opt_steps
        + max(0.0, wall / edits - sum(per_edit.values()))
    )
    return {
        "method": method, "algo": algo.name, "wrappers": list(selected_wrappers(wrappers)), "layers": sorted(int(x) for x in algo.layers),
        "edits": edits, "batch": args.batch, "steps": args.steps, "opt_steps": args.opt_steps, "configured_opt_steps": configured_steps,
        "seconds_per_edit": wall / edits, **{f"{stage}_per_edit": value for stage, value in per_edit.items()},
        "covariance_seconds": cov_seconds, "checkpoint_seconds_per_step": checkpoint_seconds / args.steps,
        "checkpoint_bytes": checkpoint_bytes[-1], "peak_gib": None if peak is None else peak / 2**30,
        "budget_peak_gib": estimate.peak / 2**30, "projected_hours_10000": projected / 3600,
    }


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The results as a markdown table (the layout of docs/benchmarks.md)."""
    print("| method | s/edit | key | target | solve | ckpt s/step | ckpt MiB | peak GiB | budget GiB | 10k edits (h) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        peak = "—" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        print(
            f"| {r['method']} | {r['seconds_per_edit']:.3f} | {r['key_per_edit']:.3f} | {r['target_per_edit']:.3f} | {r['solve_per_edit']:.3f} "
            f"| {r['checkpoint_seconds_per_step']:.2f} | {r['checkpoint_bytes'] / 2**20:.1f} | {peak} | {r['budget_peak_gib']:.1f} "
            f"| {r['projected_hours_10000']:.2f} |"
        )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse the arguments, build the model once, benchmark each method, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama3-8b", help="preset shape of edit_runner.memory (llama3-8b, gpt2-xl, llama2-7b, gpt-j)")
    parser.add_argument("--tiny", action="store_true", help="a 4-layer, 64-wide model of that family (smoke test)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--methods", default="memit,alphaedit,encore")
    parser.add_argument("--batch", type=int, default=100, help="edits per sequential step")
    parser.add_argument("--steps", type=int, default=2, help="sequential steps per method")
    parser.add_argument("--opt-steps", type=int, default=10, help="Adam steps of the target optimization (projection rescales)")
    parser.add_argument("--cov-texts", type=int, default=256, help="random-token texts for C")
    parser.add_argument("--cov-length", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.dtype = "float32" if args.device == "cpu" else args.dtype
    register_configs()
    register_resolvers()
    loaded, config = random_model(args.shape, args.tiny, args.dtype, args.device, seed=0)
    records = synthetic_records(args.batch * args.steps)
    templates = generate_context_templates(loaded.model, loaded.tokenizer, "memit", 0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        for method in args.methods.split(","):
            rows.append(bench_method(method, loaded, config, args, records, templates, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{loaded.name} on {args.device} ({args.dtype}), {args.batch}-edit batches × {args.steps} steps, {args.opt_steps} Adam steps\n")
    print_rows(rows)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Benchmark: the project's δ optimization vs a straightforward reimplementation of the reference.

The reference (written here from SPEC C §1.5, kmeng01 ``memit/compute_z.py``): per record, one
right-padded batch of its rewriting prompts (every context template, target prefix appended) and
the KL prompt ``"{subject} is a"``; every Adam step runs the full model on it, a forward hook adds δ
at each prompt's subject-last token of the block output in a Python loop, the log-softmax is taken
over every position, and the loss is NLL + KL + weight decay with the ``loss < 5e-2`` and
last-iteration breaks and the norm clamp. The project's :func:`optimize_targets` does the same
optimization for all records in one batch, with the prefix KV cache and the lower blocks run once
(``ours``), and, for comparison, without the lower-block replay and without either (full pass).

Settings are interleaved over ``--rounds`` rounds; the median seconds per edit of each path, the
ratios and the largest ``|z_ours − z_reference| / |z|`` are printed. Prompt tokenization (subject-last
index, target ids appended as tokens) is the project's for both, so z can be compared exactly.

Example::

    python scripts/bench_targets.py --records 4 --rounds 2
    python scripts/bench_targets.py --records 4 --rounds 3 --variants ours "ours (no lower replay)"
    python scripts/bench_targets.py --records 4 --rounds 1 --variants ours --float64-check

``--float64-check`` also runs the reference on a float64 copy of the model and prints how far the
float32 reference and the float32 project path each are from that z: two paths that differ only in
float32 rounding are about equally far from it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time

import torch

from edit_runner.data.loaders import load_records
from edit_runner.data.record import EditRecord
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.targets import KL_PROMPT, LOSS_THRESHOLD, OptimizationSettings, optimize_targets
from edit_runner.models.hooks import hidden_of
from edit_runner.models.loading import load_model
from edit_runner.models.tokens import encode_prompts, fill_template, target_token_ids

# MEMIT-style context templates: the bare prompt and five ~10-token prefixes.
TEMPLATES = ContextTemplates(
    groups=(
        ("{}",),
        (
            "The weather was cold and the streets were empty. {}",
            "He opened the door and looked around the room. {}",
            "In the morning, the children went to school together. {}",
            "I don't know what to say about this. {}",
            "The results of the study were published last year. {}",
        ),
    )
)


def reference_z(model: torch.nn.Module, tokenizer, record: EditRecord, site: str, settings: OptimizationSettings) -> torch.Tensor:
    """``z = h_init + δ`` of one record, computed the way the reference's ``compute_z`` does."""
    target = target_token_ids(tokenizer, record.target_new)
    prompts = [fill_template(t.replace("{}", record.prompt), record.subject) for t in TEMPLATES.flat]
    suffixes = [target[:-1]] * len(prompts) + [[]]
    batch = encode_prompts(tokenizer, prompts + [fill_template(KL_PROMPT, record.subject)], suffixes)
    lookups = batch.subject_last.tolist()
    lengths = batch.lengths.tolist()
    n_rewrite = len(prompts)
    targets = torch.full((n_rewrite, batch.input_ids.shape[1]), -100)
    for i in range(n_rewrite):
        targets[i, lengths[i] - len(target) : lengths[i]] = torch.tensor(target)

    delta = torch.zeros(model.config.hidden_size, dtype=model.get_input_embeddings().weight.dtype, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)
    state: dict[str, torch.Tensor] = {}

    def add_delta(module, args, output):
        hidden = hidden_of(output)
        if "h_init" not in state:
            state["h_init"] = hidden[0, lookups[0]].detach().clone()
        for i, idx in enumerate(lookups):
            hidden[i, idx, :] += delta
        return output

    handle = model.get_submodule(site).register_forward_hook(add_delta)
    try:
        for it in range(settings.num_steps):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            log_probs = torch.log_softmax(logits[:n_rewrite], dim=2)
            # positions len−T … len−1 hold the labels of the T target tokens (the reference's rewriting_targets)
            picked = torch.gather(log_probs, 2, torch.where(targets != -100, targets, 0).unsqueeze(2)).squeeze(2)
            mask = (targets != -100).float()
            nll = (-(picked * mask).sum(1) / len(target)).mean()
            kl_log_probs = torch.log_softmax(logits[n_rewrite, lookups[n_rewrite]][None], dim=1)
            if "kl_init" not in state:
                state["kl_init"] = kl_log_probs.detach().clone()
            kl = settings.kl_factor * torch.nn.functional.kl_div(state["kl_init"], kl_log_probs, log_target=True, reduction="batchmean")
            weight_decay = settings.weight_decay * (torch.norm(delta) / torch.norm(state["h_init"]) ** 2)
            loss = nll + kl + weight_decay
            if loss < LOSS_THRESHOLD or it == settings.num_steps - 1:
                break
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            max_norm = settings.clamp_norm_factor * state["h_init"].norm()
            if delta.norm() > max_norm:
                with torch.no_grad():
                    delta[...] = delta * max_norm / delta.norm()
    finally:
        handle.remove()
    return state["h_init"] + delta.detach()


def timed(run) -> tuple[float, float, object]:
    """Wall seconds and CPU seconds of this process during ``run()``, and its result.

    On one thread the CPU seconds measure the work done, whatever else the machine runs; the wall
    seconds also count the time spent waiting for a core.
    """
    start, cpu = time.perf_counter(), time.process_time()
    out = run()
    return time.perf_counter() - start, time.process_time() - cpu, out


def main() -> None:
    """Parse arguments, run the interleaved rounds, print s/edit, ratios and the z difference."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=4, help="demo facts to edit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--layer", type=int, default=6, help="z layer (δ at this block's output)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["ours", "ours (no lower replay)", "ours (full pass)"],
        help="project paths to time besides the reference (the first is the one the speed-up is of)",
    )
    parser.add_argument("--float64-check", action="store_true", help="compare both float32 z with the reference's z in float64")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    loaded = load_model(source="smollm2", name="smollm2-135m", device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    records = load_records("demo", None)[: args.records]
    site = loaded.layout.layer(args.layer)
    settings = OptimizationSettings(
        sites=(site,), num_steps=args.steps, lr=0.5, weight_decay=0.5, clamp_norm_factor=0.75, kl_factor=0.0625, chunk=len(records)
    )
    variants = {
        "ours": settings,
        "ours (no lower replay)": dataclasses.replace(settings, reuse_lower=False),
        "ours (full pass)": dataclasses.replace(settings, reuse_prefix=False, reuse_lower=False),
    }
    paths = {"reference": lambda: torch.stack([reference_z(model, tok, r, site, settings) for r in records], dim=1)}
    for name in args.variants:
        paths[name] = lambda chosen=variants[name]: optimize_targets(model, tok, records, TEMPLATES, chosen).z[site]
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in paths}
    z: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, run in paths.items():
            elapsed, cpu, z[name] = timed(run)
            seconds[name].append(elapsed / len(records))
            cpu_seconds[name].append(cpu / len(records))
            print(f"  {name}: {elapsed / len(records):.3f} s/edit wall, {cpu / len(records):.3f} s/edit CPU", flush=True)

    per_edit = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"SmolLM2-135M on CPU ({args.threads} thread), {len(records)} edits, {args.steps} steps, δ at {site}, {args.rounds} interleaved rounds")
    for name, value in per_edit.items():
        print(f"{name:<22}{value:>8.3f} s/edit   (rounds: {', '.join(f'{v:.3f}' for v in seconds[name])})")
    main_path = args.variants[0]
    cpu = {name: statistics.median(values) for name, values in cpu_seconds.items()}
    print("CPU s/edit: " + ", ".join(f"{name} {value:.3f}" for name, value in cpu.items()))
    print(f"CPU-time speed-up of {main_path!r} vs reference: {cpu['reference'] / cpu[main_path]:.2f}x")
    for name in args.variants[1:]:
        print(f"CPU time {main_path!r} vs {name!r}: {cpu[name] / cpu[main_path]:.2f}x")
    per_round = statistics.median(r / o for r, o in zip(seconds["reference"], seconds[main_path]))
    print(f"speed-up of {main_path!r} vs reference: {per_edit['reference'] / per_edit[main_path]:.2f}x (median of per-round ratios {per_round:.2f}x)")
    for name in args.variants[1:]:
        print(f"{main_path!r} vs {name!r}: {per_edit[name] / per_edit[main_path]:.2f}x")
    scale = z["reference"].norm(dim=0)
    for name in args.variants:
        worst = float(((z[name] - z["reference"]).norm(dim=0) / scale).max())
        print(f"max |z_{name} − z_reference| / |z|: {worst:.2e}")
    if args.float64_check:
        exact = copy.deepcopy(model).double()
        z64 = torch.stack([reference_z(exact, tok, r, site, settings) for r in records], dim=1)
        for name in ("reference", *args.variants):
            worst = float(((z[name].double() - z64).norm(dim=0) / z64.norm(dim=0)).max())
            print(f"max |z_{name} (float32) − z_reference (float64)| / |z|: {worst:.2e}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Benchmark: the project's one streamed second-moment pass vs the reference's per-layer ``layer_stats``.

The reference (kmeng01 ``rome/layer_stats.py``, as SPEC C §10 describes it) collects one layer at a
time: for every batch it runs the model until that layer's rewrite module (hooked input, pass
stopped there), flattens the non-pad positions and accumulates ``k kᵀ`` in float64; a second layer
means a second pass over the corpus. :func:`second_moments` collects every layer in one pass
(float32 accumulation). Both read the same paragraphs of the same corpus in the same length-sorted
batches; the script prints tokens/s of each (tokens × layers collected), the ratio, and the largest
relative difference of C per layer (``max|ΔC| / max|C|``).

Example::

    python scripts/bench_covariance.py --samples 200 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from edit_runner.editing.covariance import second_moments, text_file_corpus
from edit_runner.models.hooks import run_until_stop, trace
from edit_runner.models.loading import load_model

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext" / "wiki.test.raw"


def padded_batches(tokenizer, texts: list[str], max_length: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Truncated, length-sorted, right-padded batches of ``texts`` (empty encodings dropped)."""
    encoded = sorted((e for e in (tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts) if e), key=len)
    batches = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        ids = torch.zeros((len(chunk), max(map(len, chunk))), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(chunk):
            ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


@torch.no_grad()
def reference_layer_stats(model, batches: list[dict[str, torch.Tensor]], module: str) -> torch.Tensor:
    """``E[k kᵀ]`` of one module's input, one pass over the batches, float64 accumulation."""
    total, count = None, 0
    for batch in batches:
        with trace(model, [module], inputs=True, stop_after=module) as tr:
            run_until_stop(model, **batch)
        feats = tr.inputs[module][batch["attention_mask"].bool()].to(torch.float64)
        total = feats.T @ feats if total is None else total + feats.T @ feats
        count += feats.shape[0]
    return total / count


def main() -> None:
    """Parse arguments, run the interleaved rounds, print tokens/s, the ratio and the difference of C."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 4, 5, 6], help="MEMIT's SmolLM2 layers")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    loaded = load_model(source="smollm2", name="smollm2-135m", device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    modules = [loaded.layout.mlp_out.format(layer) for layer in args.layers]
    texts = text_file_corpus(args.corpus, args.samples).texts
    batches = padded_batches(tok, texts, args.max_length, args.batch_size)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    seconds: dict[str, list[float]] = {"reference (per layer, float64)": [], "ours (one pass, float32)": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        reference = {m: reference_layer_stats(model, batches, m) for m in modules}
        seconds["reference (per layer, float64)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        ours, count = second_moments(model, tok, modules, texts, args.max_length, args.batch_size, torch.float32)
        seconds["ours (one pass, float32)"].append(time.perf_counter() - start)
    assert count == tokens, (count, tokens)

    print(f"SmolLM2-135M on CPU ({args.threads} thread); {len(texts)} paragraphs of {args.corpus.name}, {tokens} tokens, "
          f"max_length {args.max_length}, batch {args.batch_size}; layers {args.layers}; {args.rounds} interleaved rounds")
    median = {name: statistics.median(values) for name, values in seconds.items()}
    for name, value in median.items():
        print(f"{name:<32}{value:>8.2f} s  {tokens * len(modules) / value:>10.0f} tokens·layers/s  (rounds: {', '.join(f'{v:.2f}' for v in seconds[name])})")
    ref_name, our_name = seconds
    print(f"speed-up {median[ref_name] / median[our_name]:.2f}x")
    for m in modules:
        diff = float((ours[m].double() - reference[m]).abs().max() / reference[m].abs().max())
        print(f"{m}: max|C_ours − C_reference| / max|C_reference| = {diff:.2e}")


if __name__ == "__main__":
    main()

"""Benchmark: items/s of the batched downstream probability scorer vs a straightforward per-item loop.

Both scorers see the same prompts (SPEC Part D templates, few-shot prepended while they fit); the
script asserts that they give the same predictions (and NLLs within ``--atol``) before printing the
table. With ``--generation`` the greedy-generation path is benchmarked the same way.

    python scripts/bench_downstream.py                      # stories260K on CPU, sst2/mrpc/mmlu
    python scripts/bench_downstream.py --model /path/to/gpt2-xl --device cuda --num-items 200
    python scripts/bench_downstream.py --random-gpt2 12:768   # GPT-2-small shape, random weights, real BPE
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from edit_runner.evaluation.downstream.prompts import build_prompts, model_max_length, parse_generation
from edit_runner.evaluation.downstream.scoring import (
    generate_continuations,
    generate_continuations_loop,
    predict_from_nll,
    score_label_words,
    score_label_words_loop,
)
from edit_runner.evaluation.downstream.tasks import get_task, load_task_split

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=SHARED / "models" / "stories260K", help="HF model directory"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=SHARED / "data" / "downstream", help="<task>.json files"
    )
    parser.add_argument("--tasks", default="sst2,mrpc,mmlu", help="comma-separated task names")
    parser.add_argument("--num-items", type=int, default=40)
    parser.add_argument("--num-shots", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--atol", type=float, default=1e-4, help="max |NLL difference| allowed")
    parser.add_argument("--generation", action="store_true", help="also benchmark greedy generation")
    parser.add_argument(
        "--random-gpt2",
        metavar="LAYERS:WIDTH",
        default=None,
        help="instead of --model, a randomly initialised GPT-2 of this shape with the --tokenizer BPE (timing only)",
    )
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "models" / "gpt2-tokenizer")
    return parser.parse_args()


def _timed(fn, *args, **kwargs):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    args = _parse()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.random_gpt2:
        from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

        layers, width = (int(x) for x in args.random_gpt2.split(":"))
        tokenizer = GPT2TokenizerFast.from_pretrained(str(args.tokenizer))
        torch.manual_seed(0)
        config = GPT2Config(
            n_layer=layers, n_embd=width, n_head=max(1, width // 64), vocab_size=len(tokenizer)
        )
        model = GPT2LMHeadModel(config).to(device=args.device, dtype=dtype).eval()
        name = f"random-gpt2-{layers}x{width}"
    else:
        model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=dtype).to(args.device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(args.model))
        name = args.model.resolve().name
    max_length = model_max_length(model)
    print(
        f"model {name} ({sum(p.numel() for p in model.parameters()):,} params, "
        f"context {max_length}) on {args.device}/{args.dtype}, threads {torch.get_num_threads()}, "
        f"{args.num_items} items, {args.num_shots} shots, batch {args.batch_size}"
    )
    header = f"{'task':<20}{'mode':<12}{'items':>6}{'loop it/s':>12}{'batched it/s':>14}{'speed-up':>10}{'max|dNLL|':>11}"
    print(header)
    print("-" * len(header))
    totals = {"loop": 0.0, "batched": 0.0, "items": 0}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        split = load_task_split(task, args.data_dir, num_items=args.num_items, num_shots=args.num_shots)
        prompts, _ = build_prompts(task, split.tests, split.shots, tokenizer, max_length)
        words = get_task(task).label_words
        score_label_words(model, tokenizer, prompts[:2], words, batch_size=args.batch_size)  # warm-up
        batched, t_batched = _timed(
            score_label_words, model, tokenizer, prompts, words, batch_size=args.batch_size
        )
        loop, t_loop = _timed(score_label_words_loop, model, tokenizer, prompts, words)
        diff = (batched - loop).abs().max().item()
        assert predict_from_nll(batched) == predict_from_nll(loop), f"{task}: predictions differ"
        assert diff <= args.atol, f"{task}: NLLs differ by {diff}"
        n = len(prompts)
        totals["loop"] += t_loop
        totals["batched"] += t_batched
        totals["items"] += n
        print(
            f"{task:<20}{'probability':<12}{n:>6}{n / t_loop:>12.1f}{n / t_batched:>14.1f}"
            f"{t_loop / t_batched:>9.1f}x{diff:>11.1e}"
        )
        if args.generation:
            gen_b, tg_b = _timed(
                generate_continuations, model, tokenizer, prompts, batch_size=args.batch_size
            )
            gen_l, tg_l = _timed(generate_continuations_loop, model, tokenizer, prompts)
            same = [parse_generation(task, *x) for x in gen_b] == [
                parse_generation(task, *x) for x in gen_l
            ]
            assert same, f"{task}: generation predictions differ"
            print(
                f"{task:<20}{'generation':<12}{n:>6}{n / tg_l:>12.1f}{n / tg_b:>14.1f}{tg_l / tg_b:>9.1f}x{'':>11}"
            )
    if totals["items"]:
        print("-" * len(header))
        print(
            f"{'all (probability)':<32}{totals['items']:>6}{totals['items'] / totals['loop']:>12.1f}"
            f"{totals['items'] / totals['batched']:>14.1f}{totals['loop'] / totals['batched']:>9.1f}x"
        )


if __name__ == "__main__":
    main()

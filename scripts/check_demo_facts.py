#!/usr/bin/env python
"""Check the hand-written demo facts against SmolLM2-135M-Instruct.

For every record, the model's greedy continuation of the rewrite prompt must start with the tokens
of ``" " + target_true`` (teacher-forced: each target token is the argmax given the prompt and the
previous target tokens, which is exactly "greedy decoding produces these tokens first"). The same
check is reported for every neighbourhood prompt and its target. One batched forward pass per chunk
of prompts.

    python scripts/check_demo_facts.py                 # the shipped demo set
    python scripts/check_demo_facts.py --path other.json --format multi_counterfact --show-failures
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from edit_runner.data.loaders import demo_facts_path, load_records
from edit_runner.models.loading import load_model


def greedy_starts_with(
    model, tokenizer, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 128
) -> list[bool]:
    """Whether greedy decoding of each prompt starts with the tokens of ``" " + target`` (batched)."""
    results: list[bool] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        rows, spans = [], []
        for prompt, target in zip(prompts[start : start + batch_size], targets[start : start + batch_size]):
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            target_ids = tokenizer(" " + target, add_special_tokens=False)["input_ids"]
            rows.append(prompt_ids + target_ids)
            spans.append((len(prompt_ids), target_ids))
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.no_grad():
            argmax = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.argmax(-1).cpu()
        for i, (prompt_len, target_ids) in enumerate(spans):
            predicted = argmax[i, prompt_len - 1 : prompt_len - 1 + len(target_ids)].tolist()
            results.append(predicted == target_ids)
    return results


def greedy_text(model, tokenizer, prompt: str, max_new_tokens: int = 6) -> str:
    """The greedy continuation of ``prompt`` (for failure reports)."""
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(out[0, ids.shape[1] :])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check and print per-record failures and the totals; exit 1 below ``--min-pass``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--path", default=str(demo_facts_path()), help="records file (default: the shipped demo set)"
    )
    parser.add_argument("--format", default="demo", help="dataset format of --path")
    parser.add_argument("--min-pass", type=int, default=95, help="records whose rewrite check must pass")
    parser.add_argument(
        "--show-failures", action="store_true", help="print the greedy continuation of failures"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    records = load_records(args.format, args.path)
    loaded = load_model(source="smollm2", name="smollm2-135m", device=args.device)
    model, tokenizer = loaded.model, loaded.tokenizer

    rewrite_ok = greedy_starts_with(
        model, tokenizer, [r.rewrite_prompt for r in records], [r.target_true for r in records]
    )
    neighbor_rows = [(i, n) for i, r in enumerate(records) for n in r.neighborhood]
    neighbor_ok = greedy_starts_with(
        model, tokenizer, [n.prompt for _, n in neighbor_rows], [n.target for _, n in neighbor_rows]
    )
    per_record_neighbors: dict[int, list[bool]] = {}
    for (i, _), ok in zip(neighbor_rows, neighbor_ok):
        per_record_neighbors.setdefault(i, []).append(ok)

    for i, record in enumerate(records):
        flags = per_record_neighbors.get(i, [])
        if not rewrite_ok[i] or not all(flags):
            line = (
                f"case {record.case_id:>4} {'OK  ' if rewrite_ok[i] else 'FAIL'} {record.rewrite_prompt!r} -> "
                f"{record.target_true!r}; neighbours {sum(flags)}/{len(flags)}"
            )
            if args.show_failures and not rewrite_ok[i]:
                line += f"; greedy: {greedy_text(model, tokenizer, record.rewrite_prompt)!r}"
            print(line)
            if args.show_failures:
                for neighbor, ok in zip(record.neighborhood, flags):
                    if not ok:
                        print(
                            f"      neighbour {neighbor.prompt!r} -> {neighbor.target!r}; "
                            f"greedy: {greedy_text(model, tokenizer, neighbor.prompt)!r}"
                        )

    passed = sum(rewrite_ok)
    print(f"records: {len(records)}")
    print(f"rewrite prompts right (greedy starts with target_true): {passed}/{len(records)}")
    print(f"neighbourhood prompts right: {sum(neighbor_ok)}/{len(neighbor_ok)}")
    all_neighbors = sum(all(per_record_neighbors.get(i, [])) for i in range(len(records)))
    print(f"records with every neighbourhood prompt right: {all_neighbors}/{len(records)}")
    return 0 if passed >= args.min_pass else 1


if __name__ == "__main__":
    sys.exit(main())

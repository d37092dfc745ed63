#!/usr/bin/env python
"""Scaling test (issue 11 §5): is the cost of a sequential step constant over a long run?

Runs ``--steps`` single-edit sequential MEMIT steps through the real :class:`~edit_runner.runner.Runner`
(in-process, config composed by Hydra + ``effective_config`` as ``edit-run`` does) on a tiny random
Llama saved to a temporary directory (``model=local``), with synthetic ``data=custom`` records,
``stats.corpus=text`` on ``../shared/data/wikitext`` and ``protocol.checkpoint_every=1`` (a checkpoint
after every step, the worst case). Per step it reads the editor's stage seconds from ``steps.jsonl``,
the wall time between checkpoints, and the bytes of the checkpoint directory after each save.

It prints the median step time and checkpoint bytes of the first and the last window (100 steps, or a
quarter of the run if shorter) and their ratios; ``--check`` exits 1 when a ratio exceeds ``--limit``
(1.2).

    python scripts/bench_scaling.py                 # 1,000 steps
    python scripts/bench_scaling.py --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from rich.console import Console

from edit_runner.config import effective_config, register_configs, register_resolvers
from edit_runner.run_state import CheckpointStore
from edit_runner.runner import Runner

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = ("Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Ann", "Sam")
OBJECTS = ("cake", "ball", "dog", "tree", "park", "bird", "fish", "hat")


class MeasuredStore(CheckpointStore):
    """A :class:`CheckpointStore` that notes, after each save, its seconds, the directory's bytes (all, and the tensor file's) and the time."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.rows: list[dict[str, float]] = []

    def save(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
        """Save, then measure the checkpoint directory."""
        start = time.perf_counter()
        written = super().save(meta, tensors)
        end = time.perf_counter()
        files = [f for f in self.directory.iterdir() if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        tensors = sum(f.stat().st_size for f in files if f.suffix == ".safetensors")
        self.rows.append({"save_seconds": end - start, "dir_bytes": size, "tensor_bytes": tensors, "written": written, "at": end})
        return written


def shared_dir() -> Path:
    """``$EDIT_RUNNER_SHARED`` or ``<repo>/../shared``."""
    return Path(os.environ.get("EDIT_RUNNER_SHARED", REPO.parent / "shared")).resolve()


def save_tiny_llama(directory: Path) -> None:
    """A random 4-layer, 32-wide Llama with the stories260K tokenizer, saved for ``model=local``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(shared_dir() / "models" / "stories260K"))
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, vocab_size=len(tokenizer),
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def synthetic_edits(num: int) -> list[dict[str, str]]:
    """``num`` distinct ``data=custom`` rows."""
    return [
        {
            "case_id": f"s{i}", "subject": f"{SUBJECTS[i % len(SUBJECTS)]} {i}", "prompt": "{} liked the",
            "target_new": OBJECTS[i % len(OBJECTS)], "target_true": OBJECTS[(i + 1) % len(OBJECTS)],
        }
        for i in range(num)
    ]


def overrides(model_dir: Path, data_file: Path, cache_dir: Path, opt_steps: int) -> list[str]:
    """The ``edit-run`` command line of the scaling run."""
    return [
        "model=local", f"model.path={model_dir}", "model.name=tiny-llama", "model.device=cpu",
        "data=custom", f"data.path={data_file}",
        "algo=memit", "algo.layers=[1,2]", f"algo.v_num_grad_steps={opt_steps}", "algo.mom2_n_samples=200", "algo.mom2_update_weight=100",
        "stats.corpus=text", f"stats.text_path={shared_dir() / 'data' / 'wikitext' / 'wiki.test.raw'}", "stats.max_length=64",
        "protocol=sequential", "protocol.batch_size=1", "protocol.checkpoint_every=1", "protocol.eval_each_step=false",
        "eval.pre=false", "eval.perplexity=false", f"cache_dir={cache_dir}", "progress=false", "num_threads=1",
    ]


def window_stats(values: list[float], window: int) -> tuple[float, float, float]:
    """Median of the first and last ``window`` values and last / first."""
    first, last = statistics.median(values[:window]), statistics.median(values[-window:])
    return first, last, last / first if first else float("inf")


def main(argv: list[str] | None = None) -> int:
    """Run the scaling test and print its windows; 1 with ``--check`` when a ratio exceeds ``--limit``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="sequential single-edit steps")
    parser.add_argument("--opt-steps", type=int, default=3, help="Adam steps per edit")
    parser.add_argument("--limit", type=float, default=1.2, help="largest allowed last/first ratio")
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio exceeds --limit")
    parser.add_argument("--out", type=Path, default=None, help="write the per-step rows as JSON here")
    args = parser.parse_args(argv)
    register_configs()
    register_resolvers()
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        root = Path(tmp)
        save_tiny_llama(root / "model")
        data = root / "edits.json"
        data.write_text(json.dumps(synthetic_edits(args.steps)))
        line = overrides(root / "model", data, root / "cache", args.opt_steps)
        with initialize_config_module("edit_runner.conf", version_base="1.3"):
            cfg = effective_config(compose("config", overrides=line), line)
        runner = Runner(cfg, root / "run", line, console=Console(quiet=True))
        store = MeasuredStore(runner.store.directory)
        runner.store = store
        started = time.perf_counter()
        runner.run()
        total = time.perf_counter() - started
        steps = [json.loads(row) for row in (root / "run" / "steps.jsonl").read_text().splitlines() if row.strip()]
    editor_seconds = [sum(row["seconds"].values()) for row in steps]
    wall = [b["at"] - a["at"] for a, b in zip(store.rows, store.rows[1:])]
    window = max(1, min(100, args.steps // 4))
    results = {
        "editor s/step": window_stats(editor_seconds, window),
        "wall s/step (checkpoint to checkpoint)": window_stats(wall, window),
        "checkpoint save s": window_stats([r["save_seconds"] for r in store.rows], window),
        "checkpoint bytes": window_stats([float(r["dir_bytes"]) for r in store.rows], window),
        "checkpoint tensor-file bytes": window_stats([float(r["tensor_bytes"]) for r in store.rows], window),
    }
    print(f"{args.steps} steps in {total:.1f} s; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; window {window} steps")
    print(f"| quantity | first {window} (median) | last {window} (median) | ratio |")
    print("|---|---:|---:|---:|")
    for name, (first, last, ratio) in results.items():
        print(f"| {name} | {first:.6g} | {last:.6g} | {ratio:.3f} |")
    worst = max(results["wall s/step (checkpoint to checkpoint)"][2], results["checkpoint bytes"][2])
    print(f"ratio last/first: step time {results['wall s/step (checkpoint to checkpoint)'][2]:.3f}, "
          f"checkpoint bytes {results['checkpoint bytes'][2]:.3f} (limit {args.limit})")
    if args.out is not None:
        args.out.write_text(json.dumps({"steps": steps, "checkpoints": store.rows}, indent=1))
    return 1 if args.check and worst > args.limit else 0


if __name__ == "__main__":
    sys.exit(main())

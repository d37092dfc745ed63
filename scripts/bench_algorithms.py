#!/usr/bin/env python
"""Benchmark: seconds per edit of every algorithm, split into key, target and solve time.

Runs each algorithm of the two-stage core (ROME, MEMIT, PMET, EMMET, AlphaEdit, FT, FT-C) with its
configured hyper-parameters (``conf/algo`` + the model's ``per_model`` values) on the same edits and
prints a table of seconds per edit: the Editor's own stage timings (``StepReport.seconds``: keys,
target optimization, closed-form solve — FT/FT-C count as solve) and the wall time of the edit call.
Covariance statistics and context templates are computed once before timing and reported apart.

Examples::

    python scripts/bench_algorithms.py                                  # SmolLM2-135M on CPU, 5 edits
    python scripts/bench_algorithms.py --num-edits 1 --steps 2 --algos memit,rome
    python scripts/bench_algorithms.py --random-gpt2xl --device cuda    # gpt2-xl-shaped random weights
    python scripts/bench_algorithms.py --random-gpt2xl --random-shape 4,64,4 --layers 1,2   # smoke test

``--random-gpt2xl`` builds ``GPT2LMHeadModel(GPT2Config(n_layer=48, n_embd=1600, n_head=25))`` with
random weights directly on the device (no download) and the GPT-2 tokenizer of ``../shared/models``;
its covariance comes from a random-token corpus. Hyper-parameters are then the gpt2-xl ones
(layers 13–17 for MEMIT, 17 for ROME, …). On CUDA the stage split is approximate (kernels are
asynchronous); the wall time is synchronised.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from rich.console import Console
from rich.table import Table

from edit_runner.config import effective_config, register_configs, register_resolvers
from edit_runner.data.record import EditRecord
from edit_runner.editing.algorithms import algorithm_spec
from edit_runner.editing.context import ContextTemplates, generate_context_templates
from edit_runner.editing.covariance import Corpus, CovarianceCache, CovarianceSettings, text_file_corpus
from edit_runner.editing.editor import EditorBuilder
from edit_runner.models.loading import LoadedModel, load_model
from edit_runner.paths import default_cache_dir

ALGORITHMS = ("rome", "r_rome", "memit", "pmet", "emmet", "alphaedit", "ft", "ft_c")
REPO = Path(__file__).resolve().parents[1]

# Well-known facts with a counterfactual new object (subject, prompt template, new, true).
FACTS: tuple[tuple[str, str, str, str], ...] = (
    ("Danielle Darrieux", "The mother tongue of {} is", "English", "French"),
    ("Paris", "{} is the capital of", "Italy", "France"),
    ("The Eiffel Tower", "{} is located in the city of", "Rome", "Paris"),
    ("Lionel Messi", "{} plays the sport of", "basketball", "football"),
    ("Toyota", "{} was founded in the country of", "Germany", "Japan"),
    ("Albert Einstein", "{} was a famous", "painter", "physicist"),
    ("The Amazon", "{} is a river in", "Africa", "South America"),
    ("Microsoft", "{} was founded by Bill", "Clinton", "Gates"),
    ("Mount Everest", "{} is located in the", "Alps", "Himalayas"),
    ("William Shakespeare", "{} wrote plays in the language", "German", "English"),
)


def shared_dir() -> Path:
    return Path(os.environ.get("EDIT_RUNNER_SHARED", REPO.parent / "shared")).resolve()


def build_records(num: int) -> list[EditRecord]:
    """``num`` edit records, cycling through :data:`FACTS` (case ids stay unique)."""
    out = []
    for i in range(num):
        subject, prompt, new, true = FACTS[i % len(FACTS)]
        out.append(
            EditRecord(case_id=f"bench-{i}", subject=subject, prompt=prompt, target_new=new, target_true=true)
        )
    return out


def algo_config(algo: str, model_conf: str, steps: int | None, layers: list[int] | None):
    """``conf/algo/<algo>.yaml`` with the model's per-model values, composed by Hydra."""
    overrides = [f"algo={algo}", f"model={model_conf}"]
    with initialize_config_module("edit_runner.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    algo_cfg = effective_config(cfg, overrides).algo
    if steps is not None:
        for name in ("v_num_grad_steps", "ft_num_steps"):
            if hasattr(algo_cfg, name):
                setattr(algo_cfg, name, steps)
    if layers:
        algo_cfg.layers = layers if len(algo_cfg.layers) > 1 else [layers[-1]]
    return algo_cfg


def random_gpt2(shape: tuple[int, int, int], device: str, seed: int) -> LoadedModel:
    """A randomly initialised GPT-2 of the given (n_layer, n_embd, n_head), built on ``device``."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from edit_runner.models.layout import layout_for
    from edit_runner.models.tokens import ensure_pad_token

    tokenizer = GPT2TokenizerFast.from_pretrained(str(shared_dir() / "models" / "gpt2-tokenizer"))
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    n_layer, n_embd, n_head = shape
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    with torch.device(device):
        model = GPT2LMHeadModel(config)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    label = f"random-gpt2-{n_layer}x{n_embd}x{n_head}"
    return LoadedModel(
        model=model, tokenizer=tokenizer, layout=layout_for("gpt2"), name=label, revision=f"random-seed{seed}"
    )


def random_token_corpus(tokenizer, num_texts: int, length: int, seed: int) -> Corpus:
    """Texts decoded from uniformly random token ids (covariance for a random model)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, tokenizer.vocab_size, (num_texts, length), generator=generator)
    return Corpus(ident=f"random-tokens-{num_texts}x{length}-seed{seed}", texts=tokenizer.batch_decode(ids))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_algorithm(
    loaded: LoadedModel,
    algo: str,
    algo_cfg,
    records: list[EditRecord],
    cov: CovarianceCache | None,
    protocol: str,
    templates: ContextTemplates,
) -> dict[str, Any]:
    """Edit ``records`` with one algorithm, restore the touched weights, return the timings per edit."""
    spec = algorithm_spec(algo)
    device = loaded.device
    modules = [loaded.layout.mlp_out.format(int(layer)) for layer in algo_cfg.layers]
    saved = {
        k: v.detach().clone()
        for name in modules
        for k, v in loaded.model.get_submodule(name).state_dict(prefix=name + ".").items()
    }
    editor = EditorBuilder(loaded, spec, algo_cfg, templates, cov if spec.needs_covariance(algo_cfg) else None).build()
    steps = [records] if protocol == "batched" else [[r] for r in records]
    seconds = {"key": 0.0, "target": 0.0, "solve": 0.0}
    opt_steps: list[int] = []
    synchronize(device)
    start = time.perf_counter()
    try:
        for batch in steps:
            report = editor.edit(batch)
            for stage in seconds:
                seconds[stage] += report.seconds.get(stage, 0.0)
            opt_steps += report.steps
    finally:
        synchronize(device)
        wall = time.perf_counter() - start
        loaded.model.load_state_dict(saved, strict=False)
    n = len(records)
    return {
        "algo": algo,
        "layers": [int(layer) for layer in algo_cfg.layers],
        "num_edits": n,
        "protocol": protocol,
        "mean_opt_steps": sum(opt_steps) / len(opt_steps) if opt_steps else None,
        "seconds_per_edit": wall / n,
        **{f"{stage}_per_edit": value / n for stage, value in seconds.items()},
    }


def print_table(console: Console, rows: list[dict[str, Any]], title: str, caption: str) -> None:
    table = Table(title=title, caption=caption)
    for column in ("algo", "layers", "edits", "opt steps", "s/edit", "key", "target", "solve", "other"):
        table.add_column(
            column, justify="left" if column in ("algo", "layers") else "right", no_wrap=column == "algo"
        )
    for row in rows:
        split = row["key_per_edit"] + row["target_per_edit"] + row["solve_per_edit"]
        table.add_row(
            row["algo"],
            ",".join(map(str, row["layers"])),
            str(row["num_edits"]),
            "—" if row["mean_opt_steps"] is None else f"{row['mean_opt_steps']:.1f}",
            f"{row['seconds_per_edit']:.3f}",
            f"{row['key_per_edit']:.3f}",
            f"{row['target_per_edit']:.3f}",
            f"{row['solve_per_edit']:.3f}",
            f"{max(0.0, row['seconds_per_edit'] - split):.3f}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-edits", type=int, default=5, help="edits per algorithm (default 5)")
    parser.add_argument(
        "--steps", type=int, default=None, help="override v_num_grad_steps (and ft_num_steps)"
    )
    parser.add_argument(
        "--algos", default=",".join(ALGORITHMS), help="comma-separated subset of " + ",".join(ALGORITHMS)
    )
    parser.add_argument(
        "--protocol",
        choices=("batched", "sequential"),
        default="batched",
        help="one edit call with all edits, or one per edit",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument(
        "--random-gpt2xl", action="store_true", help="randomly initialised gpt2-xl-shaped model (no download)"
    )
    parser.add_argument(
        "--random-shape",
        default="48,1600,25",
        help="n_layer,n_embd,n_head of the random model (default gpt2-xl)",
    )
    parser.add_argument(
        "--layers",
        default=None,
        help="comma-separated layers for every algorithm (single-layer ones take the last)",
    )
    parser.add_argument(
        "--mom2-samples",
        type=int,
        default=None,
        help="covariance texts (default: 500 wikitext paragraphs / 64 random texts)",
    )
    parser.add_argument(
        "--stats-text",
        default=None,
        help="covariance text file (default ../shared/data/wikitext/wiki.test.raw)",
    )
    parser.add_argument("--stats-max-length", type=int, default=256, help="tokens per covariance text")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="covariance cache root (default $EDIT_RUNNER_CACHE or ~/.cache/edit_runner)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    unknown = sorted(set(algos) - set(ALGORITHMS))
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; choose from {', '.join(ALGORITHMS)}")
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    register_configs()
    register_resolvers()
    console = Console(width=max(Console().width, 120))
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()

    start = time.perf_counter()
    if args.random_gpt2xl:
        device = (
            "cuda"
            if args.device == "auto" and torch.cuda.is_available()
            else ("cpu" if args.device == "auto" else args.device)
        )
        shape = tuple(int(x) for x in args.random_shape.split(","))
        assert len(shape) == 3, "--random-shape takes n_layer,n_embd,n_head"
        loaded = random_gpt2(shape, device, args.seed)  # type: ignore[arg-type]
        model_conf = "gpt2-xl"
        samples = args.mom2_samples or 64
        corpus_factory = lambda: random_token_corpus(
            loaded.tokenizer, samples, args.stats_max_length, args.seed
        )
    else:
        loaded = load_model(source="smollm2", name="smollm2-135m", device=args.device)
        model_conf = "smollm2-135m"
        samples = args.mom2_samples or 500
        text = (
            Path(args.stats_text) if args.stats_text else shared_dir() / "data" / "wikitext" / "wiki.test.raw"
        )
        corpus_factory = lambda: text_file_corpus(text, samples)
    load_seconds = time.perf_counter() - start
    records = build_records(args.num_edits)
    configs = {algo: algo_config(algo, model_conf, args.steps, layers) for algo in algos}

    cov = None
    cov_seconds = 0.0
    needed = sorted(
        {
            int(layer)
            for algo, cfg in configs.items()
            if algorithm_spec(algo).needs_covariance(cfg)
            for layer in cfg.layers
        }
    )
    if needed:
        start = time.perf_counter()
        settings = CovarianceSettings(
            loaded.name, loaded.revision, samples, args.stats_max_length, "float32", 16
        )
        cov = CovarianceCache(cache_dir, settings, corpus_factory)
        cov.ensure(loaded.model, loaded.tokenizer, [loaded.layout.mlp_out.format(layer) for layer in needed])
        synchronize(loaded.device)
        cov_seconds = time.perf_counter() - start

    # context templates once per style (generated from the unedited model, as a run does)
    start = time.perf_counter()
    templates: dict[tuple, ContextTemplates] = {}
    for algo, cfg in configs.items():
        key = (
            algorithm_spec(algo).template_style,
            json.dumps(list(map(list, getattr(cfg, "context_template_length_params", [])))),
        )
        if key not in templates:
            templates[key] = generate_context_templates(
                loaded.model, loaded.tokenizer, key[0], args.seed, json.loads(key[1])
            )
    template_seconds = time.perf_counter() - start

    rows = []
    for algo in algos:
        console.print(f"[bold]{algo}[/bold] …")
        key = (
            algorithm_spec(algo).template_style,
            json.dumps(list(map(list, getattr(configs[algo], "context_template_length_params", [])))),
        )
        row = bench_algorithm(loaded, algo, configs[algo], records, cov, args.protocol, templates[key])
        row.update(model=loaded.name, device=str(loaded.device), steps_override=args.steps)
        rows.append(row)
        console.print(f"  {row['seconds_per_edit']:.3f} s/edit")

    title = f"Seconds per edit — {loaded.name} on {loaded.device} ({args.protocol}, {args.num_edits} edits)"
    caption = (
        f"model load {load_seconds:.1f}s; covariance {cov_seconds:.1f}s ({samples} texts, layers {needed}); "
        f"context templates {template_seconds:.1f}s — not in s/edit"
    )
    print_table(console, rows, title, caption)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()

"""``edit-train-mend``: train a MEND editor on edit records and write ``OUT/mend.safetensors`` (atomically).

Example (SmolLM2, zsRE, CPU)::

    edit-train-mend --model smollm2-135m --data zsre --data-path zsre_mem_eval.json \\
        --num-records 1000 --steps 60 --batch-size 5 --out outputs/mend-smollm2
    edit-run algo=mend algo.checkpoint=outputs/mend-smollm2 data=zsre data.offset=1000 data.num_edits=20

``--model`` is a ``conf/model`` name (``smollm2-135m``, ``gpt2-xl``, …) or a local directory, hub id
or ``.gguf`` file; ``--data`` a dataset format of ``conf/data`` (``zsre``, ``counterfact``, …) read
from ``--data-path``. Besides the checkpoint, ``OUT/training.json`` holds the settings, every
step's losses and, with ``--holdout N``, the mean log-prob of ``target_new`` on the ``N`` records after
the training ones, unedited and edited one at a time.

GPU-scale training (documented, not run in CI): the paper trains for on the order of 10⁵ steps with
an editor learning rate of 1e-6 and 10 edits per step, e.g.
``edit-train-mend --model gpt2-xl --device cuda --data zsre --data-path zsre_train.json
--num-records 100000 --steps 100000 --batch-size 10 --lr 1e-6 --out mend-gpt2xl``
(train on records disjoint from the ones later evaluated with ``edit-run``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from edit_runner.errors import ConfigError, EditRunnerError

CONF_DIR = Path(__file__).parent / "conf"


def parser() -> argparse.ArgumentParser:
    """The entry's command-line options."""
    p = argparse.ArgumentParser(prog="edit-train-mend", description="Train a MEND gradient editor (Mitchell et al., 2022).")
    p.add_argument("--model", default="smollm2-135m", help="conf/model name, local directory, hub id or .gguf file")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default="zsre", help="dataset format: zsre, counterfact, multi_counterfact, easyedit, custom, demo")
    p.add_argument("--data-path", default=None, help="the dataset file (not needed for --data demo)")
    p.add_argument("--offset", type=int, default=0, help="skip this many records first")
    p.add_argument("--num-records", type=int, default=1000, help="training records")
    p.add_argument("--holdout", type=int, default=0, help="records after the training ones to report held-out log-probs on")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="decoder blocks to edit (default: the last 3)")
    p.add_argument("--modules", nargs="+", default=[], help="MLP children to edit (default: every Linear/Conv1D of the MLP)")
    p.add_argument("--rank", type=int, default=1920)
    p.add_argument("--n-hidden", type=int, default=1)
    p.add_argument("--edit-lr", type=float, default=1e-4, help="initial step size α_l")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=5, help="edits per training step (their updates are summed, as in batched editing)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the editor (the paper: 1e-6)")
    p.add_argument("--lr-lr", type=float, default=1e-4, help="Adam learning rate of the step sizes")
    p.add_argument("--c-edit", type=float, default=0.1)
    p.add_argument("--c-loc", type=float, default=1.0)
    p.add_argument("--loc-prompts", type=int, default=1, help="neighbourhood prompts per record in the locality loss")
    p.add_argument("--grad-clip", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", required=True, help="output directory (mend.safetensors, training.json)")
    return p


def model_config(name: str):
    """The ``ModelConfig`` of a ``conf/model`` name, else one for a local path or hub id."""
    from edit_runner.config import ModelConfig

    file = CONF_DIR / "model" / f"{name}.yaml"
    node = OmegaConf.load(file) if file.is_file() else OmegaConf.create({"name": Path(name).name, "path": name})
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), node))


def main(argv: list[str] | None = None) -> int:
    """Run the entry; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        return _train(args)
    except EditRunnerError as err:
        print(f"edit-train-mend: error: {err}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from edit_runner.data.loaders import load_records
    from edit_runner.data.record import validate_records
    from edit_runner.data.selection import select_records
    from edit_runner.editing.mend_network import CHECKPOINT_FILE, save_network
    from edit_runner.io import atomic_write_json
    from edit_runner.mend_training import MendTrainingConfig, edited_logprobs, new_network, train_mend
    from edit_runner.models.layout import num_layers
    from edit_runner.models.loading import load_model
    from edit_runner.threads import configure_threads

    training = MendTrainingConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_lr=args.lr_lr, c_edit=args.c_edit, c_loc=args.c_loc,
        loc_prompts=args.loc_prompts, grad_clip=args.grad_clip, seed=args.seed,
    )
    training.check()
    if args.num_records < 1 or args.holdout < 0:
        raise ConfigError("--num-records must be >= 1 and --holdout >= 0")
    if args.data != "demo" and not args.data_path:
        raise ConfigError(f"--data-path: --data {args.data} needs the dataset file")
    records = select_records(load_records(args.data, args.data_path), num_edits=args.num_records + args.holdout, offset=args.offset)
    validate_records(records)
    train_records, held_out = records[: args.num_records], records[args.num_records :]
    threads = configure_threads(args.num_threads)
    m = model_config(args.model)
    loaded = load_model(
        m.path, gguf_file=m.gguf_file, source=m.source.value, name=m.name, revision=m.revision, dtype=m.dtype,
        device=args.device if args.device != "auto" else m.device, cache_dir=args.cache_dir,
    )
    depth = num_layers(loaded.model, loaded.layout)
    layers = args.layers if args.layers is not None else list(range(max(0, depth - 3), depth))
    if any(not 0 <= layer < depth for layer in layers):
        raise ConfigError(f"--layers: {m.name} has layers 0..{depth - 1}, got {layers}")
    network = new_network(loaded, layers, args.modules, args.rank, args.n_hidden, args.edit_lr, args.seed)
    started = time.perf_counter()

    def show(step: int, steps: int, row: dict[str, float]) -> None:
        if step == 1 or step % 10 == 0 or step == steps:
            print(f"step {step}/{steps}: L_e {row['edit']:.3f}  L_loc {row['loc']:.4f}  mean α {row['edit_lr']:.2e}", file=sys.stderr)

    history = train_mend(loaded, network, train_records, training, show)
    seconds = time.perf_counter() - started
    out = Path(args.out)
    report = {
        "model": m.name, "model_revision": loaded.revision, "data": args.data, "data_path": args.data_path, "offset": args.offset,
        "num_records": len(train_records), "case_ids": [r.case_id for r in train_records], "settings": vars(args) | {"layers": layers},
        "num_threads": threads, "seconds": seconds,
    }
    if held_out:
        report["holdout"] = {
            "case_ids": [r.case_id for r in held_out],
            "unedited_logprob": float(edited_logprobs(loaded, None, held_out).mean()),
            "edited_logprob": float(edited_logprobs(loaded, network, held_out).mean()),
        }
    save_network(out / CHECKPOINT_FILE, network, report)
    atomic_write_json(out / "training.json", {**report, "history": history})
    print(f"wrote {out / CHECKPOINT_FILE} ({len(history)} steps, {seconds:.0f} s)", file=sys.stderr)
    return 0


def train_main() -> None:
    """``edit-train-mend`` console script."""
    raise SystemExit(main(sys.argv[1:]))

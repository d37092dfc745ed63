#!/usr/bin/env python
"""Benchmark: the default job's optimization stage with 1 thread, the default, and more threads than cores.

The default job's time is almost all in the δ optimization (ROME on SmolLM2-135M, the demo facts).
This script times that stage for the first ``--records`` demo facts with torch intra-op threads set to
1, to the runner's default (:func:`edit_runner.threads.default_num_threads`) and to twice the cores,
while ``--burners`` CPU-bound processes run beside it (a loaded machine), and once more idle for
reference. Settings are interleaved over ``--rounds`` rounds; the median per setting is printed with its
ratio to the default, so the oversubscription cost is visible on any machine.

Example::

    python scripts/bench_threads.py --records 2 --rounds 3 --burners 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import torch

from edit_runner.data.loaders import load_records
from edit_runner.editing.algorithms import algorithm_spec
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.targets import OptimizationSettings, optimize_targets
from edit_runner.models.loading import load_model
from edit_runner.threads import default_num_threads, usable_cores

TEMPLATES = ContextTemplates(groups=(("{}", "The day began. {}", "She said that. {}", "In the end, {}", "Yesterday. {}"),))


def burn(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    """A CPU-bound loop (another job on the machine) until ``stop`` is set."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def optimization_seconds(loaded, records, threads: int) -> float:
    """Wall time of the default job's optimization stage on ``records`` with ``threads`` threads."""
    torch.set_num_threads(threads)
    layout, spec = loaded.layout, algorithm_spec("rome")
    settings = OptimizationSettings(
        sites=spec.sites(layout, 4), num_steps=20, lr=0.5, weight_decay=0.5, clamp_norm_factor=2.0, kl_factor=0.0625, chunk=1
    )
    start = time.perf_counter()
    for record in records:  # ROME: one record per pass
        optimize_targets(loaded.model, loaded.tokenizer, [record], TEMPLATES, settings)
    return time.perf_counter() - start


def main() -> None:
    """Parse arguments, run the interleaved settings, print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burners", type=int, default=1, help="CPU-bound processes running beside the loaded settings")
    args = parser.parse_args()

    loaded = load_model(source="smollm2", name="smollm2-135m", device="cpu")
    records = load_records("demo", None)[: args.records]
    cores = usable_cores()
    idle_default, loaded_default = default_num_threads(load=0.0), default_num_threads(load=float(args.burners))
    settings = {"1 thread": 1, f"all cores ({cores})": cores, f"2x cores ({2 * cores})": 2 * cores}
    optimization_seconds(loaded, records[:1], cores)  # warm-up
    times: dict[str, list[float]] = {f"idle, {name}": [] for name in settings} | {f"loaded, {name}": [] for name in settings}
    for _ in range(args.rounds):
        for name, threads in settings.items():
            times[f"idle, {name}"].append(optimization_seconds(loaded, records, threads))
        stop = multiprocessing.Event()
        burners = [multiprocessing.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.burners)]
        for process in burners:
            process.start()
        try:
            for name, threads in settings.items():
                times[f"loaded, {name}"].append(optimization_seconds(loaded, records, threads))
        finally:
            stop.set()
            for process in burners:
                process.join()
    print(f"usable cores: {cores}; runner default threads: {idle_default} idle, {loaded_default} beside {args.burners} "
          f"CPU-bound process(es); {args.records} records x 20 steps; load average now {os.getloadavg()[0]:.2f}")
    for load, default in (("idle", idle_default), ("loaded", loaded_default)):
        reference = statistics.median(times[f"{load}, " + next(n for n, t in settings.items() if t == default)])
        for name, threads in settings.items():
            median = statistics.median(times[f"{load}, {name}"])
            mark = "  <- runner default" if threads == default else ""
            print(f"{load:7s} {name:18s} {median:8.2f} s   x{median / reference:5.2f} of the default{mark}")


if __name__ == "__main__":
    main()

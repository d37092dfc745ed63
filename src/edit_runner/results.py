"""The run's results as data: the ``summary.json`` schema, its protocol block, and the console table.

Every number in the summary carries its protocol (batch size, steps, when evaluation happened,
which metric definition); wrappers add their own sections through ``Wrapper.summarize``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edit_runner.config import RunConfig, config_hash
from edit_runner.plan import RunPlan
from edit_runner.provenance import provenance

STAGES = ("key", "target", "solve", "measure")
SUMMARY_METRICS = (
    "efficacy_success", "efficacy_accuracy", "generalization_success", "generalization_accuracy",
    "specificity_success", "specificity_accuracy", "score_success", "score_accuracy", "perplexity",
)


@dataclass
class RunOutcome:
    """What the runner measured, handed to :func:`build_summary`."""

    revision: str
    metric_definition: str
    pre: dict[str, Any]
    post: dict[str, Any]
    post_rows: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    health_initial: dict[str, Any]
    health_alarms: list[dict[str, Any]]
    has_health: bool
    templates: dict[str, Any]
    seconds: float
    environment: dict[str, Any]


def protocol_block(cfg: RunConfig, plan: RunPlan, metric_definition: str) -> dict[str, Any]:
    """How the numbers were produced (never mix two of these in one table)."""
    return {
        "name": cfg.protocol.name.value,
        "batch_size": plan.batch_size,
        "num_steps": len(plan.steps),
        "eval_timing": "end",
        "step_eval": "after_each_step_on_step_edits" if cfg.protocol.eval_each_step else "none",
        "evaluated_edits": "all",
        "metric_definition": metric_definition if plan.records[0].kind.value == "counterfact" else "zsre",
        "tracker_every_n_edits": cfg.eval.every_n_edits,
    }


def build_summary(cfg: RunConfig, plan: RunPlan, outcome: RunOutcome, overrides: list[str]) -> dict[str, Any]:
    """The ``summary.json`` of a finished run."""
    steps = outcome.steps
    optimization_steps = [s for step in steps for s in step["optimization_steps"]]
    timing = {stage: sum(step["seconds"].get(stage, 0.0) for step in steps) for stage in STAGES}
    edit_seconds = sum(timing.values())
    digest = config_hash(cfg)
    summary: dict[str, Any] = {
        "status": "complete",
        "run_id": f"{plan.spec.name}-{cfg.model.name}-{cfg.data.name}-{digest[:8]}",
        "config_hash": digest,
        "algo": plan.spec.name,
        "wrappers": [cfg.wrapper["preset"]] if cfg.wrapper.get("preset") else plan.wrapper_names,
        "model": cfg.model.name,
        "model_revision": outcome.revision,
        "dataset": cfg.data.name,
        "num_edits": len(plan.records),
        "seed": int(cfg.seed),
        "trial": int(cfg.trial),
        "experiment": cfg.experiment,
        "protocol": protocol_block(cfg, plan, outcome.metric_definition),
        "pre": outcome.pre,
        "post": outcome.post,
        "timing": {**timing, "seconds_per_edit": edit_seconds / max(1, len(plan.records)), "total_seconds": outcome.seconds},
        "environment": outcome.environment,
        "context_templates": outcome.templates,
        "provenance": provenance(overrides),
    }
    if optimization_steps:
        summary["optimization"] = {"mean_steps": float(np.mean(optimization_steps)), "max_steps": int(np.max(optimization_steps))}
    for wrapper in plan.wrappers:
        wrapper.summarize(summary, steps)
    if outcome.has_health:
        summary["health"] = {
            "initial": health_view(outcome.health_initial),
            "final": health_view(steps[-1].get("health", {})),
            "alarms": outcome.health_alarms,
        }
    rows = outcome.post_rows
    if rows and "efficacy_nll_true" in rows[0]:
        summary["fact_probs"] = {
            "edited": float(np.mean([np.exp(-np.asarray(r["efficacy_nll_new"])).mean() for r in rows])),
            "original": float(np.mean([np.exp(-np.asarray(r["efficacy_nll_true"])).mean() for r in rows])),
            "definition": "mean over edits of the per-token geometric-mean probability on the rewrite prompt, after editing",
        }
    return summary


def health_view(point: dict[str, Any]) -> dict[str, Any]:
    """A tracker point with the flat names the report layouts read (forgotten, normalized_distance, f1)."""
    view = dict(point)
    if "forgetting" in point:
        view["forgotten"] = point["forgetting"]["forgotten"]
    if "norms" in point:
        view["normalized_distance"] = {layer: v["normalized_distance"] for layer, v in point["norms"].items()}
    if "downstream" in point:
        view["downstream"] = {
            task: {**m, "f1": m.get("gen_f1", m.get("prob_f1")), "accuracy": m.get("gen_accuracy", m.get("prob_accuracy"))}
            for task, m in point["downstream"].items()
        }
    return view


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """A rich table of pre/post metrics."""
    protocol = summary["protocol"]
    table = Table(
        title=f"{summary['algo']} {summary['wrappers']} on {summary['model']} — {summary['num_edits']} edits "
        f"({protocol['name']}, batch {protocol['batch_size']})"
    )
    table.add_column("metric")
    table.add_column("pre", justify="right")
    table.add_column("post", justify="right")
    for key in SUMMARY_METRICS:
        pre, post = summary["pre"].get(key), summary["post"].get(key)
        if pre is None and post is None:
            continue
        table.add_row(key, _format(key, pre), _format(key, post))
    console.print(table)


def _format(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if key == "perplexity" else f"{100 * value:.1f}%"

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

from edit_runner.config import ProtocolName, RunConfig, config_hash
from edit_runner.evaluation.health import CATASTROPHIC_FORGETTING_RULE, catastrophic_forgetting_point
from edit_runner.plan import RunPlan
from edit_runner.provenance import provenance

STAGES = ("key", "target", "solve", "measure")
SUMMARY_METRICS = (
    "efficacy_success", "efficacy_accuracy", "generalization_success", "generalization_accuracy",
    "specificity_success", "specificity_accuracy", "score_success", "score_accuracy", "perplexity", "multi_hop_accuracy",
)


@dataclass
class RunOutcome:
    """What the runner measured, handed to :func:`build_summary`: the per-record rows of the unedited
    model (``pre_rows``, empty without ``eval.pre``), right after each record's own step
    (``after_step_rows``, empty without ``protocol.eval_each_step``) and at the end (``post_rows``)."""

    revision: str
    metric_definition: str
    pre: dict[str, Any]
    post: dict[str, Any]
    post_rows: list[dict[str, Any]]
    pre_rows: list[dict[str, Any]]
    after_step_rows: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    health_initial: dict[str, Any]
    health_alarms: list[dict[str, Any]]
    has_health: bool
    templates: dict[str, Any]
    seconds: float
    environment: dict[str, Any]


def metric_definition_label(metric_definition: str, record_kind: str) -> str:
    """The protocol's metric definition: ``memit`` / ``easyedit`` for CounterFact records; for zsRE
    ``zsre`` (kmeng01's token accuracies, no success) or ``easyedit_zsre`` (RUOE's, with success)."""
    if record_kind == "counterfact":
        return metric_definition
    return "easyedit_zsre" if metric_definition == "easyedit" else "zsre"


def protocol_block(cfg: RunConfig, plan: RunPlan, metric_definition: str) -> dict[str, Any]:
    """How the numbers were produced (never mix two of these in one table). ``independent`` runs have
    no final edited model: their ``post`` is each record evaluated right after its own step, on the
    unedited model plus that step's edits (``eval_timing: after_own_step``, ``post: per_step``)."""
    independent = cfg.protocol.name is ProtocolName.independent
    return {
        "name": cfg.protocol.name.value,
        "batch_size": plan.batch_size,
        "num_steps": len(plan.steps),
        "eval_timing": "after_own_step" if independent else "end",
        "post": "per_step" if independent else "final_model",
        "restore_between_steps": independent,
        "step_eval": "after_each_step_on_step_edits" if cfg.protocol.eval_each_step else "none",
        "evaluated_edits": "all",
        "metric_definition": metric_definition_label(metric_definition, plan.records[0].kind.value),
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
        points = [step["health"] for step in steps if "health" in step]
        summary["health"] = {
            "initial": health_view(outcome.health_initial),
            "final": health_view(steps[-1].get("health", {})),
            "alarms": outcome.health_alarms,
            "catastrophic_forgetting_at": catastrophic_forgetting_point(outcome.health_initial, points, cfg.eval.me_ppl.alarm_factor),
            "catastrophic_forgetting_rule": CATASTROPHIC_FORGETTING_RULE,
        }
    fact_probs = fact_probabilities(outcome)
    if fact_probs:
        summary["fact_probs"] = fact_probs
    return summary


def _mean_probability(rows: list[dict[str, Any]], key: str) -> float:
    """Mean over records of the mean over prompts of exp(−NLL) (NLL per token: a geometric-mean probability)."""
    return float(np.mean([np.exp(-np.asarray(r[key], dtype=float)).mean() for r in rows]))


def fact_probabilities(outcome: RunOutcome) -> dict[str, Any]:
    """Seed 004 Table 1's fact probabilities on the rewrite prompt, per token geometric means.

    ``original`` = p(o | prompt) of the unedited model (the pre rows), ``edited`` = p(o* | prompt)
    right after that fact's own edit (the after-step rows; a one-step run's end rows are the same
    model). Each is left out when its rows were not measured; empty for zsRE rows (no o).
    """
    pre = [r for r in outcome.pre_rows if "efficacy_nll_true" in r]
    after = [r for r in outcome.after_step_rows if "efficacy_nll_new" in r]
    if not after and len(outcome.steps) == 1:
        after = [r for r in outcome.post_rows if "efficacy_nll_new" in r]
    probs: dict[str, Any] = {}
    if pre:
        probs["original"] = _mean_probability(pre, "efficacy_nll_true")
    if after:
        probs["edited"] = _mean_probability(after, "efficacy_nll_new")
    if probs:
        probs["definition"] = (
            "mean over edits of the per-token geometric-mean probability on the rewrite prompt: original = p(o) on the "
            "unedited model, edited = p(o*) right after the fact's own editing step"
        )
    return probs


def health_view(point: dict[str, Any]) -> dict[str, Any]:
    """A tracker point with the flat names the report layouts read (forgotten, normalized_distance = ‖ΔW‖_F / numel(W),
    relative_distance = ‖ΔW‖_F / ‖W₀‖_F, f1)."""
    view = dict(point)
    if "forgetting" in point:
        view["forgotten"] = point["forgetting"]["forgotten"]
    if "norms" in point:
        view["normalized_distance"] = {layer: v["normalized_distance"] for layer, v in point["norms"].items()}
        view["relative_distance"] = {layer: v["relative_distance"] for layer, v in point["norms"].items()}
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

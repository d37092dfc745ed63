"""The single runner: protocol loop, evaluation schedule, checkpoint/resume and results.

A sequential run checkpoints after every step (touched weights, solver and tracker state, RNG,
metrics so far); running the same command again continues after the last completed step and
ends with the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edit_runner.config import apply_paper_hyperparameters, config_hash, slug
from edit_runner.data.record import EditRecord
from edit_runner.editing.context import ContextTemplates, generate_context_templates, load_context_templates
from edit_runner.editing.covariance import (
    CovarianceCache,
    CovarianceSettings,
    cached_corpus,
    hf_corpus,
    hf_ident,
    hub_reachable,
    model_sample_corpus,
    model_samples_ident,
    text_file_corpus,
    text_file_ident,
)
from edit_runner.editing.editor import Editor, IterativeOptions, SpreadOptions
from edit_runner.editing.neighbors import select_train_neighbors
from edit_runner.editing.wrappers import MPESRule, NeighborRows
from edit_runner.errors import ConfigError
from edit_runner.evaluation.edit_metrics import evaluate_records, summarize
from edit_runner.evaluation.perplexity import evaluate_perplexity
from edit_runner.evaluation.trackers import HealthTracker, fluency
from edit_runner.io import atomic_torch_save, atomic_write_json, atomic_write_jsonl
from edit_runner.models.layout import num_layers
from edit_runner.models.loading import LoadedModel, default_cache_dir, load_model
from edit_runner.plan import RunPlan, plan_run
from edit_runner.provenance import provenance

CHECKPOINT = "checkpoint/state.pt"


def _log() -> logging.Logger:
    return logging.getLogger("edit_runner.runner")


def _value(x: Any) -> Any:
    return x.value if hasattr(x, "value") else x


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (at run start, never at import)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def progress_bar(console: Console, enabled: bool) -> Progress:
    """A rich progress display (disabled → a no-op display)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=not enabled, transient=True,
    )


def build_covariance(cfg: DictConfig, loaded: LoadedModel, cache_dir: Path) -> CovarianceCache:
    """The run's covariance provider with its corpus chosen from ``stats.corpus``."""
    stats = cfg.stats
    corpus = _value(stats.corpus)
    n_samples = int(cfg.algo.mom2_n_samples)
    if corpus == "auto":
        corpus = "text" if stats.text_path else ("hf" if hub_reachable() else "model_samples")
    if corpus == "text" and not stats.text_path:
        raise ConfigError("stats.text_path: stats.corpus=text needs a text file (e.g. wikitext's wiki.test.raw)")

    if corpus == "text":
        ident = text_file_ident(stats.text_path)
    elif corpus == "hf":
        ident = hf_ident(stats.hf_dataset, stats.hf_config, stats.hf_split)
    else:
        ident = model_samples_ident(int(stats.fallback_texts), int(stats.fallback_length), 1)

    def factory():
        if corpus == "text":
            return text_file_corpus(stats.text_path, n_samples)
        if corpus == "hf":
            return hf_corpus(stats.hf_dataset, stats.hf_config, stats.hf_split, n_samples)
        return cached_corpus(
            cache_dir / "corpora" / f"{slug(loaded.name)}-{hashlib.sha1(loaded.revision.encode()).hexdigest()[:8]}-{ident}.json",
            lambda: model_sample_corpus(loaded.model, loaded.tokenizer, int(stats.fallback_texts), int(stats.fallback_length), seed=1),
        )

    max_length = int(stats.max_length or cfg.model.max_length or 1024)
    effective = n_samples if corpus != "model_samples" else int(stats.fallback_texts)
    settings = CovarianceSettings(loaded.name, loaded.revision, effective, max_length, str(cfg.algo.mom2_dtype), int(stats.batch_size))
    return CovarianceCache(cache_dir, settings, factory, ident)


def build_editor(cfg: DictConfig, plan: RunPlan, loaded: LoadedModel, templates: ContextTemplates, covariance: CovarianceCache | None) -> Editor:
    """The editor with the enabled wrappers plugged into its stages."""
    w = cfg.wrapper
    extra_rows, stop_rules = [], []
    neighbor = w.na or w.nap
    if neighbor is not None:
        extra_rows.append(NeighborRows(with_prefix=w.nap is not None, pooled=_value(neighbor.weighting) == "pooled"))
    if w.mpes is not None:
        stop_rules.append(MPESRule(float(w.mpes.prob_cutoff)))
    spread = SpreadOptions(
        norm_lambda=float(w.norm_constraint.norm_lambda) if w.norm_constraint is not None else 0.0,
        prev_edit_keys=bool(w.prev_edit_keys is not None and w.prev_edit_keys.enabled),
        d4s=_value(w.d4s.residual) if w.d4s is not None else None,
    )
    iterative = None
    if w.iterative is not None:
        iterative = IterativeOptions(int(w.iterative.max_iterations), _value(w.iterative.stop_rule), float(w.iterative.epsilon))
    return Editor(
        loaded, plan.spec, cfg.algo, templates, covariance, spread=spread, iterative=iterative,
        extra_rows=tuple(extra_rows), stop_rules=tuple(stop_rules),
        pooled_neighbors=neighbor is not None and _value(neighbor.weighting) == "pooled",
        neighbor_weight=float(neighbor.neighbor_weight) if neighbor is not None else 1.0,
    )


class Runner:
    """One edit-run job in one run directory."""

    def __init__(self, cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None, console: Console | None = None) -> None:
        self.overrides = list(overrides or [])
        apply_paper_hyperparameters(cfg, self.overrides)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.console = console or Console()
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        self.metric_definition = str(_value(cfg.eval.metrics))

    # ------------------------------------------------------------------ entry point
    def run(self) -> dict[str, Any]:
        """Validate, edit, evaluate and write results; returns the summary."""
        cfg = self.cfg
        plan = plan_run(cfg, self.cache_dir)
        summary_path = self.run_dir / "summary.json"
        if cfg.resume and summary_path.exists():
            summary = json.loads(summary_path.read_text())
            if summary.get("status") == "complete" and summary.get("config_hash") == config_hash(cfg):
                self.console.print(f"[green]already complete:[/green] {self.run_dir} (config hash {summary['config_hash']})")
                self.print_summary(summary)
                return summary
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text_yaml(self.run_dir / "resolved_config.yaml", cfg)
        seed_everything(int(cfg.seed))
        started = time.perf_counter()
        loaded = load_model(
            cfg.model.path, gguf_file=cfg.model.gguf_file, source=_value(cfg.model.source), name=cfg.model.name,
            revision=cfg.model.revision, dtype=cfg.model.dtype, device=cfg.model.device, cache_dir=self.cache_dir,
        )
        depth = num_layers(loaded.model, loaded.layout)
        bad = [layer for layer in cfg.algo.layers if not 0 <= int(layer) < depth]
        if bad:
            raise ConfigError(f"algo.layers: layers {bad} do not exist; {cfg.model.name} has layers 0..{depth - 1}")
        _log().info("model %s loaded (%s); %d edits in %d steps", cfg.model.name, loaded.revision, len(plan.records), len(plan.steps))
        checkpoint = self._load_checkpoint()
        templates = self._templates(loaded, plan, checkpoint)
        covariance = None
        if plan.spec.needs_covariance:
            covariance = build_covariance(cfg, loaded, self.cache_dir)
            with progress_bar(self.console, cfg.progress) as progress:
                task = progress.add_task("covariance statistics", total=None)
                covariance.ensure(loaded.model, loaded.tokenizer, [loaded.layout.mlp_out.format(int(l)) for l in sorted(cfg.algo.layers)],
                                  progress=lambda items: progress.track(items, task_id=task))
        _log().info("context templates and covariance ready")
        dropped: list[str] = []
        needs_selection = not all(r.train_neighbors for r in plan.records)
        if ("na" in plan.wrappers or "nap" in plan.wrappers) and needs_selection:
            neighbor_cfg = cfg.wrapper.na or cfg.wrapper.nap
            records, dropped = select_train_neighbors(
                loaded.model, loaded.tokenizer, plan.records, int(neighbor_cfg.num_train_neighbors), int(neighbor_cfg.min_qualifying), cfg.eval.batch_size
            )
            if not records:
                raise ConfigError(f"wrapper: every record was dropped by neighbor selection ({len(dropped)} had < {neighbor_cfg.min_qualifying} qualifying neighbors)")
            size = plan.batch_size if len(plan.steps) > 1 else len(records)
            plan = RunPlan(plan.spec, plan.wrappers, records, [records[i : i + size] for i in range(0, len(records), size)])
            self.console.print(f"neighbor selection: kept {len(records)} records, dropped {len(dropped)} with fewer than {neighbor_cfg.min_qualifying} qualifying neighbors")
        editor = build_editor(cfg, plan, loaded, templates, covariance)
        state = checkpoint or self._fresh_state(loaded, plan)
        tracker = HealthTracker(cfg, editor.modules, editor.original, state["pre"].get("perplexity"))
        if checkpoint is None and cfg.eval.every_n_edits:
            state["health_initial"] = tracker.measure(loaded.model, loaded.tokenizer, 0, [])
        if checkpoint is not None:
            self._restore(loaded, editor, tracker, checkpoint)
            self.console.print(f"[yellow]resuming[/yellow] after step {checkpoint['completed_steps']} of {len(plan.steps)}")
        if plan.spec.solver != "finetune" and "iterative" in plan.wrappers and cfg.wrapper.iterative.full_metrics:
            editor.on_iteration = lambda it: self._iteration_metrics(loaded, self._current_records, state.get("pre_rows_easyedit"))
        self._loop(plan, loaded, editor, tracker, state)
        post_rows = evaluate_records(loaded.model, loaded.tokenizer, plan.records, self.metric_definition, cfg.eval.batch_size, state.get("pre_rows_easyedit"))
        post = self._with_perplexity(loaded, summarize(post_rows, self.metric_definition))
        if cfg.eval.fluency:
            post["fluency"] = fluency(loaded.model, loaded.tokenizer, plan.records)
        summary = self._summary(cfg, plan, loaded, templates, state, post, post_rows, tracker, dropped, time.perf_counter() - started)
        self.print_summary(summary)
        return summary

    # ------------------------------------------------------------------ pieces
    def _templates(self, loaded: LoadedModel, plan: RunPlan, checkpoint: dict | None) -> ContextTemplates:
        if checkpoint is not None:
            return ContextTemplates.from_json(checkpoint["templates"])
        if self.cfg.context_templates_file:
            return load_context_templates(self.cfg.context_templates_file)
        return generate_context_templates(
            loaded.model, loaded.tokenizer, plan.spec.template_style, int(self.cfg.seed), [list(x) for x in self.cfg.algo.context_template_length_params]
        )

    def _me_ppl_path(self) -> str | None:
        me_ppl = self.cfg.eval.me_ppl
        if me_ppl.path or not me_ppl.url:
            return me_ppl.path
        from edit_runner.data.download import resolve_dataset_file

        return str(resolve_dataset_file("ME-PPL", None, me_ppl.url, None, self.cache_dir))

    def _with_perplexity(self, loaded: LoadedModel, metrics: dict[str, Any]) -> dict[str, Any]:
        metrics = dict(metrics)
        if self.cfg.eval.perplexity:
            ppl = evaluate_perplexity(loaded.model, loaded.tokenizer, self._me_ppl_path(), max_length=self.cfg.eval.me_ppl.max_length)
            metrics["perplexity"] = ppl["perplexity"]
            metrics["perplexity_definition"] = ppl["perplexity_definition"]
            if ppl["perplexity_definition"] == "me_ppl_50":
                metrics["me_ppl_50"] = ppl["perplexity"]
        return metrics

    def _fresh_state(self, loaded: LoadedModel, plan: RunPlan) -> dict[str, Any]:
        state: dict[str, Any] = {"completed_steps": 0, "step_rows": [], "step_reports": [], "pre": {}, "pre_rows_easyedit": None}
        if self.cfg.eval.pre:
            pre_rows = evaluate_records(loaded.model, loaded.tokenizer, plan.records, self.metric_definition, self.cfg.eval.batch_size)
            state["pre"] = self._with_perplexity(loaded, summarize(pre_rows, self.metric_definition))
            state["pre_record_rows"] = pre_rows
            if self.metric_definition == "easyedit":
                state["pre_rows_easyedit"] = pre_rows
        return state

    def _loop(self, plan: RunPlan, loaded: LoadedModel, editor: Editor, tracker: HealthTracker, state: dict[str, Any]) -> None:
        cfg = self.cfg
        every = cfg.eval.every_n_edits
        done_edits = sum(len(s) for s in plan.steps[: state["completed_steps"]])
        with progress_bar(self.console, cfg.progress) as progress:
            task = progress.add_task(f"{plan.spec.name} steps", total=len(plan.steps), completed=state["completed_steps"])
            for index in range(state["completed_steps"], len(plan.steps)):
                batch = plan.steps[index]
                self._current_records = batch
                report = editor.edit(batch)
                previous = done_edits
                done_edits += len(batch)
                step_row: dict[str, Any] = {
                    "step": index, "num_edits": done_edits, "case_ids": [r.case_id for r in batch],
                    "optimization_steps": report.steps, "seconds": dict(report.seconds), **report.extra,
                    "iterations": [vars(it) for it in report.iterations],
                }
                if cfg.protocol.eval_each_step:
                    rows = evaluate_records(
                        loaded.model, loaded.tokenizer, batch, self.metric_definition, cfg.eval.batch_size, state.get("pre_rows_easyedit")
                    )
                    step_row["metrics"] = summarize(rows, self.metric_definition)
                    tracker.note_step_rows(rows)
                    state["step_rows"] += [{**r, "step": index, "eval": "after_step"} for r in rows]
                if every and (done_edits // every > previous // every or index == len(plan.steps) - 1):
                    edited = [r for s in plan.steps[: index + 1] for r in s]
                    step_row["health"] = tracker.measure(loaded.model, loaded.tokenizer, done_edits, edited)
                state["step_reports"].append(step_row)
                state["completed_steps"] = index + 1
                _log().info("step %d/%d done (%d edits so far): %s", index + 1, len(plan.steps), done_edits, dict(report.seconds))
                self._save_checkpoint(loaded, editor, tracker, state)
                progress.advance(task)

    def _iteration_metrics(self, loaded: LoadedModel, records: list[EditRecord], pre_rows: list | None) -> dict[str, Any]:
        rows = evaluate_records(loaded.model, loaded.tokenizer, records, self.metric_definition, self.cfg.eval.batch_size, pre_rows)
        return self._with_perplexity(loaded, summarize(rows, self.metric_definition))

    # ------------------------------------------------------------------ checkpoint
    def _checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def _load_checkpoint(self) -> dict[str, Any] | None:
        path = self._checkpoint_path()
        if not self.cfg.resume or not path.exists():
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("config_hash") != config_hash(self.cfg):
            raise ConfigError(
                f"{self.run_dir} holds a checkpoint of a different config; pass resume=false to start over "
                "or use another output directory"
            )
        return state

    def _save_checkpoint(self, loaded: LoadedModel, editor: Editor, tracker: HealthTracker, state: dict[str, Any]) -> None:
        touched = {}
        for name in editor.modules:
            module = loaded.model.get_submodule(name)
            touched[name + ".weight"] = module.weight.detach().cpu().clone()
            if getattr(module, "bias", None) is not None:
                touched[name + ".bias"] = module.bias.detach().cpu().clone()
        payload = {
            **state, "config_hash": config_hash(self.cfg), "templates": editor.templates.to_json(), "touched": touched,
            "editor": editor.state_dict(), "tracker": tracker.state_dict(), "rng": _rng_state(),
        }
        atomic_torch_save(self._checkpoint_path(), payload)

    def _restore(self, loaded: LoadedModel, editor: Editor, tracker: HealthTracker, checkpoint: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, tensor in checkpoint["touched"].items():
                module_name, attr = name.rsplit(".", 1)
                getattr(loaded.model.get_submodule(module_name), attr).copy_(tensor)
        editor.load_state_dict(checkpoint["editor"])
        tracker.load_state_dict(checkpoint["tracker"])
        _set_rng_state(checkpoint["rng"])

    # ------------------------------------------------------------------ results
    def _summary(self, cfg, plan, loaded, templates, state, post, post_rows, tracker, dropped, seconds) -> dict[str, Any]:
        protocol_name = str(_value(cfg.protocol.name))
        reports = state["step_reports"]
        optimization_steps = [s for r in reports for s in r["optimization_steps"]]
        timing = {stage: sum(r["seconds"].get(stage, 0.0) for r in reports) for stage in ("key", "target", "solve", "measure")}
        edit_seconds = sum(timing.values())
        summary: dict[str, Any] = {
            "status": "complete",
            "run_id": f"{plan.spec.name}-{cfg.model.name}-{cfg.data.name}-{config_hash(cfg)[:8]}",
            "config_hash": config_hash(cfg),
            "algo": plan.spec.name,
            "wrappers": self._wrapper_label(plan),
            "model": cfg.model.name,
            "model_revision": loaded.revision,
            "dataset": cfg.data.name,
            "num_edits": len(plan.records),
            "seed": int(cfg.seed),
            "trial": int(cfg.trial),
            "experiment": cfg.experiment,
            "protocol": {
                "name": protocol_name,
                "batch_size": plan.batch_size,
                "num_steps": len(plan.steps),
                "eval_timing": "end",
                "step_eval": "after_each_step_on_step_edits" if cfg.protocol.eval_each_step else "none",
                "evaluated_edits": "all",
                "metric_definition": self.metric_definition if plan.records[0].kind.value == "counterfact" else "zsre",
                "tracker_every_n_edits": cfg.eval.every_n_edits,
            },
            "pre": state["pre"],
            "post": post,
            "timing": {**timing, "seconds_per_edit": edit_seconds / max(1, len(plan.records)), "total_seconds": seconds},
            "context_templates": templates.to_json(),
            "provenance": provenance(self.overrides),
        }
        if optimization_steps:
            summary["optimization"] = {"mean_steps": float(np.mean(optimization_steps)), "max_steps": int(np.max(optimization_steps))}
            if "mpes" in plan.wrappers:
                summary["mpes"] = {"mean_steps": float(np.mean(optimization_steps)), "seconds_per_edit": summary["timing"]["seconds_per_edit"]}
        iterations = [it for r in reports for it in r["iterations"]]
        if iterations and len(plan.steps) == 1:
            summary["iterations"] = [
                {"iteration": it["iteration"], "p_bar": it["p_bar"], "p_hat": it["p_hat"], "delta_p": it["delta_p"], "post": it["metrics"]}
                for it in iterations
            ]
        if dropped:
            summary["neighbor_selection"] = {"dropped": len(dropped), "dropped_case_ids": dropped, "kept": len(plan.records)}
        if tracker.rows:
            summary["health"] = {
                "initial": health_view(state.get("health_initial", {})),
                "final": health_view(reports[-1].get("health", {})),
                "alarms": tracker.alarms,
            }
        if post_rows and "efficacy_nll_true" in post_rows[0]:
            summary["fact_probs"] = {
                "edited": float(np.mean([np.exp(-np.asarray(r["efficacy_nll_new"])).mean() for r in post_rows])),
                "original": float(np.mean([np.exp(-np.asarray(r["efficacy_nll_true"])).mean() for r in post_rows])),
                "definition": "mean over edits of the per-token geometric-mean probability on the rewrite prompt, after editing",
            }
        self._write_results(summary, post_rows, state, tracker)
        return summary

    def _wrapper_label(self, plan: RunPlan) -> list[str]:
        preset = self.cfg.wrapper.preset
        return [preset] if preset else list(plan.wrappers)

    def _write_results(self, summary: dict[str, Any], post_rows: list[dict], state: dict[str, Any], tracker: HealthTracker) -> None:
        rows = [{**r, "eval": "pre"} for r in state.get("pre_record_rows", [])]
        rows += state["step_rows"]
        rows += [{**r, "eval": "end"} for r in post_rows]
        atomic_write_jsonl(self.run_dir / "records.jsonl", rows)
        atomic_write_jsonl(self.run_dir / "steps.jsonl", state["step_reports"])
        if tracker.rows:
            atomic_write_jsonl(self.run_dir / "series" / "health.jsonl", tracker.rows)
            from edit_runner.reporting.plots import plot_series

            plot_series(tracker.rows, self.run_dir / "plots")
        atomic_write_json(self.run_dir / "summary.json", summary)

    def print_summary(self, summary: dict[str, Any]) -> None:
        """A rich table of pre/post metrics."""
        table = Table(title=f"{summary['algo']} {summary['wrappers']} on {summary['model']} — {summary['num_edits']} edits ({summary['protocol']['name']}, batch {summary['protocol']['batch_size']})")
        table.add_column("metric")
        table.add_column("pre", justify="right")
        table.add_column("post", justify="right")
        for key in ("efficacy_success", "efficacy_accuracy", "generalization_success", "generalization_accuracy",
                    "specificity_success", "specificity_accuracy", "score_success", "score_accuracy", "perplexity"):
            pre, post = summary["pre"].get(key), summary["post"].get(key)
            if pre is None and post is None:
                continue
            fmt = (lambda v: "—" if v is None else f"{v:.2f}") if key == "perplexity" else (lambda v: "—" if v is None else f"{100 * v:.1f}%")
            table.add_row(key, fmt(pre), fmt(post))
        self.console.print(table)


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


def atomic_write_text_yaml(path: Path, cfg: DictConfig) -> None:
    """Write the resolved config as YAML atomically."""
    from edit_runner.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))

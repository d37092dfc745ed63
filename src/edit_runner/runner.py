"""The single runner: the protocol loop and resume.

Everything a run decides before a model loads is in :mod:`edit_runner.plan`, what it writes in
:mod:`edit_runner.results`, and how it survives an interruption in :mod:`edit_runner.run_state`.
Wrappers act only through their hooks: the runner loops over ``plan.wrappers`` and never names one.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from edit_runner.config import ProtocolName, RunConfig, config_hash, config_yaml
from edit_runner.data.record import EditRecord
from edit_runner.editing.context import ContextTemplates, generate_context_templates, load_context_templates
from edit_runner.editing.corpora import build_covariance
from edit_runner.editing.covariance import CovarianceCache
from edit_runner.editing.editor import Editor, EditorBuilder, Snapshot
from edit_runner.editing.wrappers import PrepareContext
from edit_runner.errors import ConfigError
from edit_runner.evaluation.edit_metrics import evaluate_records, summarize
from edit_runner.evaluation.health import Schedule
from edit_runner.evaluation.perplexity import evaluate_perplexity
from edit_runner.evaluation.trackers import HealthTracker, fluency
from edit_runner.io import atomic_write_json, atomic_write_text
from edit_runner.models.layout import num_layers
from edit_runner.models.loading import LoadedModel, load_model
from edit_runner.paths import default_cache_dir
from edit_runner.plan import RunPlan, plan_run
from edit_runner.progress import RunProgress, throttled
from edit_runner.results import RunOutcome, build_summary, print_summary
from edit_runner.run_state import (
    CheckpointPolicy,
    CheckpointStore,
    PreemptionGuard,
    RowLog,
    RunState,
    flatten_tensors,
    rng_state,
    set_rng_state,
    unflatten_tensors,
)
from edit_runner.threads import configure_threads

CHECKPOINT_DIR = "checkpoint"


def _log() -> logging.Logger:
    return logging.getLogger("edit_runner.runner")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (at run start, never at import)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RunLogs:
    """The run's append-only row logs: per-record rows, per-step rows, tracker series."""

    def __init__(self, run_dir: Path) -> None:
        self.records = RowLog(run_dir / "records.jsonl")
        self.steps = RowLog(run_dir / "steps.jsonl")
        self.health = RowLog(run_dir / "series" / "health.jsonl")

    def offsets(self) -> dict[str, int]:
        """Lines of each log (what a checkpoint records)."""
        return {"records": self.records.lines, "steps": self.steps.lines, "health": self.health.lines}

    def reset(self, offsets: dict[str, int] | None = None) -> None:
        """Start the logs afresh, or cut them back to a checkpoint's ``offsets``."""
        offsets = offsets or {}
        self.records.reset(offsets.get("records", 0))
        self.steps.reset(offsets.get("steps", 0))
        self.health.reset(offsets.get("health", 0))


class Runner:
    """One edit-run job in one run directory."""

    def __init__(self, cfg: RunConfig, run_dir: Path, overrides: list[str] | None = None, console: Console | None = None) -> None:
        self.cfg = cfg
        self.overrides = list(overrides or [])
        self.run_dir = Path(run_dir)
        self.console = console or Console()
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        self.metric_definition = cfg.eval.metrics.value
        self.config_digest = config_hash(cfg)  # the config does not change during a run
        self.store = CheckpointStore(self.run_dir / CHECKPOINT_DIR)
        self.logs = RunLogs(self.run_dir)

    # ------------------------------------------------------------------ entry point
    def run(self) -> dict[str, Any]:
        """Validate, edit, evaluate and write results; returns the summary."""
        cfg = self.cfg
        plan = plan_run(cfg, self.cache_dir)
        finished = self._finished_summary()
        if finished is not None:
            return finished
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "resolved_config.yaml", config_yaml(cfg))
        threads = configure_threads(cfg.num_threads)
        seed_everything(int(cfg.seed))
        started = time.perf_counter()
        with RunProgress(self.console, cfg.progress) as progress:
            summary = self._run(plan, threads, started, progress)
        print_summary(self.console, summary)
        return summary

    def _run(self, plan: RunPlan, threads: int, started: float, progress: RunProgress) -> dict[str, Any]:
        cfg = self.cfg
        with progress.stage(f"loading {cfg.model.name}"):
            loaded = self._load_model()
        meta, tensors = self._checkpoint()
        with progress.stage("context templates"):
            templates = self._templates(loaded, plan, meta)
        covariance = self._covariance(loaded, plan, progress)
        self.console.print(f"[dim]{len(plan.records)} edits in {len(plan.steps)} step(s); {threads} torch thread(s)[/dim]")
        plan = self._prepare(loaded, plan)
        pre_rows: list[dict] | None = None
        builder = EditorBuilder(loaded, plan.spec, plan.config, templates, covariance, evaluate=lambda records: self._metrics(loaded, records, pre_rows))
        for wrapper in plan.wrappers:
            wrapper.install(builder)
        editor = builder.build()
        independent = ProtocolName(cfg.protocol.name) is ProtocolName.independent
        pristine = editor.snapshot() if independent else None  # the unedited weights and run state (resume: the same)
        if meta is None:
            self.logs.reset()
            with progress.stage("pre-edit evaluation"):
                state, pre_rows = self._fresh_state(loaded, plan)
        else:
            state = RunState.from_json(meta["state"])
            self.logs.reset(state.offsets)
            pre_rows = [r for r in self.logs.records.read() if r["eval"] == "pre"] or None
        easyedit_pre = pre_rows if self.metric_definition == "easyedit" else None
        tracker = HealthTracker(cfg.eval, int(cfg.seed), editor.modules, editor.original, state.pre.get("perplexity"), self.logs.health.append)
        if meta is None:
            if cfg.eval.every_n_edits:
                with progress.stage("health before editing"):
                    state.health_initial = tracker.measure(loaded.model, loaded.tokenizer, 0, [])
        else:
            self._restore(loaded, editor, tracker, state, meta, tensors)
            self.console.print(f"[yellow]resuming[/yellow] after step {state.completed_steps} of {len(plan.steps)}")
        self._loop(plan, loaded, editor, tracker, state, easyedit_pre, progress, pristine)
        if pristine is None:
            post_rows, post = self._post(loaded, plan, easyedit_pre, progress)
        else:
            post_rows, post = self._post_per_step(plan)
        steps = self.logs.steps.read()
        iteration_rows = [{"step": s["step"], "iteration": it["iteration"], **r} for s in steps for it in s["iterations"] for r in it.get("records", [])]
        if iteration_rows:  # per record and outer-loop pass (seed 000 §6.1)
            iteration_log = RowLog(self.run_dir / "iterations.jsonl")
            iteration_log.reset()
            iteration_log.append(iteration_rows)
        outcome = RunOutcome(
            revision=loaded.revision, metric_definition=self.metric_definition, pre=state.pre, post=post, post_rows=post_rows,
            pre_rows=pre_rows or [], after_step_rows=[r for r in self.logs.records.read() if r["eval"] == "after_step"],
            steps=steps, health_initial=state.health_initial, health_alarms=tracker.alarms,
            has_health=self.logs.health.lines > 0, templates=templates.to_json(), seconds=time.perf_counter() - started,
            environment={"num_threads": threads, "device": str(loaded.device)},
        )
        summary = build_summary(cfg, plan, outcome, self.overrides)
        self._write_plots()
        atomic_write_json(self.run_dir / "summary.json", summary)
        return summary

    # ------------------------------------------------------------------ pieces
    def _post(
        self, loaded: LoadedModel, plan: RunPlan, easyedit_pre: list | None, progress: RunProgress
    ) -> tuple[list[dict], dict[str, Any]]:
        """Every record evaluated on the final edited model (logged as ``end`` rows)."""
        cfg = self.cfg
        with progress.stage("post-edit evaluation"):
            post_rows = evaluate_records(loaded.model, loaded.tokenizer, plan.records, self.metric_definition, cfg.eval.batch_size, easyedit_pre)
            post = self._with_perplexity(loaded, summarize(post_rows, self.metric_definition))
            if plan.cases is not None:
                post |= self._case_metrics(loaded, plan)
            if cfg.eval.fluency:
                post["fluency"] = fluency(loaded.model, loaded.tokenizer, plan.records)
        self.logs.records.append([{**r, "eval": "end"} for r in post_rows])
        return post_rows, post

    def _post_per_step(self, plan: RunPlan) -> tuple[list[dict], dict[str, Any]]:
        """``protocol=independent``: there is no final edited model; ``post`` summarizes each record (and
        case) evaluated on its own step's model, i.e. the after-step rows."""
        rows = [r for r in self.logs.records.read() if r["eval"] == "after_step"]
        post = summarize(rows, self.metric_definition)
        if plan.cases is not None:
            after = [row for step in self.logs.steps.read() for row in step.get("cases", [])]
            post |= {**plan.cases.summarize(after), "case_metric_definition": plan.cases.definition}
        return rows, post

    def _finished_summary(self) -> dict[str, Any] | None:
        path = self.run_dir / "summary.json"
        if not self.cfg.resume or not path.exists():
            return None
        summary = json.loads(path.read_text())
        if summary.get("status") != "complete" or summary.get("config_hash") != self.config_digest:
            return None
        self.console.print(f"[green]already complete:[/green] {self.run_dir} (config hash {summary['config_hash']})")
        print_summary(self.console, summary)
        return summary

    def _load_model(self) -> LoadedModel:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the run's own display shows the stage
        m = self.cfg.model
        loaded = load_model(
            m.path, gguf_file=m.gguf_file, source=m.source.value, name=m.name, revision=m.revision, dtype=m.dtype, device=m.device,
            cache_dir=self.cache_dir, device_map=m.device_map,
        )
        depth = num_layers(loaded.model, loaded.layout)
        bad = [layer for layer in self.cfg.algo.layers if not 0 <= int(layer) < depth]
        if bad:
            raise ConfigError(f"algo.layers: layers {bad} do not exist; {m.name} has layers 0..{depth - 1}")
        _log().debug("model %s loaded (%s)", m.name, loaded.revision)
        return loaded

    def _checkpoint(self) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
        if not self.cfg.resume or not self.store.exists():
            return None, {}
        meta, tensors = self.store.load()
        if meta.get("config_hash") != self.config_digest:
            raise ConfigError(
                f"{self.run_dir} holds a checkpoint of a different config; pass resume=false to start over "
                "or use another output directory"
            )
        return meta, tensors

    def _templates(self, loaded: LoadedModel, plan: RunPlan, meta: dict[str, Any] | None) -> ContextTemplates:
        if meta is not None:
            return ContextTemplates.from_json(meta["templates"])
        if self.cfg.context_templates_file:
            return load_context_templates(self.cfg.context_templates_file)
        if not plan.spec.has_optimization:
            return ContextTemplates(groups=(("{}",),))
        return generate_context_templates(
            loaded.model, loaded.tokenizer, plan.spec.template_style, int(self.cfg.seed),
            [list(x) for x in plan.config.context_template_length_params],
        )

    def _covariance(self, loaded: LoadedModel, plan: RunPlan, progress: RunProgress) -> CovarianceCache | None:
        if not plan.spec.needs_covariance(plan.config):
            return None
        cfg = self.cfg
        covariance = build_covariance(
            cfg.stats, int(plan.config.mom2_n_samples), str(plan.config.mom2_dtype), cfg.model.max_length, loaded, self.cache_dir
        )
        modules = [loaded.layout.mlp_out.format(int(layer)) for layer in sorted(plan.config.layers)]
        with progress.stage("covariance statistics") as task:
            covariance.ensure(
                loaded.model, loaded.tokenizer, modules,
                progress=lambda batches: task.track(batches, "samples", int(cfg.stats.batch_size)),
            )
        return covariance

    def _prepare(self, loaded: LoadedModel, plan: RunPlan) -> RunPlan:
        records = plan.records
        for wrapper in plan.wrappers:
            context = PrepareContext(loaded.model, loaded.tokenizer, records, self.cfg.eval.batch_size, self.console.print)
            records = wrapper.prepare(context)
        return plan if records is plan.records else plan.with_records(records)

    def _metrics(self, loaded: LoadedModel, records: list[EditRecord], pre_rows: list[dict] | None) -> dict[str, Any]:
        easyedit_pre = pre_rows if self.metric_definition == "easyedit" else None
        rows = evaluate_records(loaded.model, loaded.tokenizer, records, self.metric_definition, self.cfg.eval.batch_size, easyedit_pre)
        return self._with_perplexity(loaded, summarize(rows, self.metric_definition))

    def _case_metrics(self, loaded: LoadedModel, plan: RunPlan) -> dict[str, Any]:
        """Case-level metrics: each case right after its own step (rows of the step log) and, under
        ``final``, every case on the final model; with the suite's definition."""
        assert plan.cases is not None
        after = [row for step in self.logs.steps.read() for row in step.get("cases", [])]
        final = plan.cases.evaluate(loaded.model, loaded.tokenizer, plan.records, self.cfg.eval.batch_size)
        return {**plan.cases.summarize(after), "final": plan.cases.summarize(final), "case_metric_definition": plan.cases.definition}

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

    def _fresh_state(self, loaded: LoadedModel, plan: RunPlan) -> tuple[RunState, list[dict] | None]:
        state = RunState()
        if not self.cfg.eval.pre:
            return state, None
        pre_rows = evaluate_records(loaded.model, loaded.tokenizer, plan.records, self.metric_definition, self.cfg.eval.batch_size)
        state.pre = self._with_perplexity(loaded, summarize(pre_rows, self.metric_definition))
        if plan.cases is not None:
            state.pre |= plan.cases.summarize(plan.cases.evaluate(loaded.model, loaded.tokenizer, plan.records, self.cfg.eval.batch_size))
        self.logs.records.append([{**r, "eval": "pre"} for r in pre_rows])
        return state, pre_rows

    def _loop(
        self, plan: RunPlan, loaded: LoadedModel, editor: Editor, tracker: HealthTracker, state: RunState, easyedit_pre: list | None,
        progress: RunProgress, pristine: Snapshot | None = None,
    ) -> None:
        """Edit step by step from ``state.completed_steps`` on; with ``pristine`` (``protocol=independent``)
        the weights and run state are put back to it after each step's evaluation, before any checkpoint."""
        cfg = self.cfg
        every = cfg.eval.every_n_edits
        schedule = Schedule(int(every), len(plan.records)) if every else None
        done_edits = sum(len(s) for s in plan.steps[: state.completed_steps])
        policy = CheckpointPolicy(cfg.protocol.checkpoint_every, cfg.protocol.checkpoint_minutes, cfg.protocol.checkpoint_max_overhead)
        with progress.stage(f"{plan.spec.name} steps", total=len(plan.steps)) as steps, PreemptionGuard() as guard:
            steps.update(completed=state.completed_steps)
            for index in range(state.completed_steps, len(plan.steps)):
                batch = plan.steps[index]
                with progress.stage("optimization (records)", total=len(batch)) as optimizing:
                    editor.progress = throttled(
                        lambda done, total, step, num_steps, loss, task=optimizing: task.update(
                            completed=done, status=f"step {step + 1}/{num_steps} loss {float(loss.mean()):.3f}"
                        )
                    )
                    report = editor.edit(batch)
                previous = done_edits
                done_edits += len(batch)
                step_row: dict[str, Any] = {
                    "step": index, "num_edits": done_edits, "case_ids": [r.case_id for r in batch],
                    "optimization_steps": report.steps, "seconds": dict(report.seconds), **report.extra,
                    "iterations": report.iterations,
                }
                if cfg.protocol.eval_each_step:
                    with progress.stage("after-step evaluation"):
                        rows = evaluate_records(loaded.model, loaded.tokenizer, batch, self.metric_definition, cfg.eval.batch_size, easyedit_pre)
                    step_row["metrics"] = summarize(rows, self.metric_definition)
                    tracker.note_step_rows(rows)
                    self.logs.records.append([{**r, "step": index, "eval": "after_step"} for r in rows])
                if plan.cases is not None:  # the step's cases, right after their edits
                    with progress.stage("case evaluation"):
                        step_row["cases"] = plan.cases.evaluate(loaded.model, loaded.tokenizer, batch, cfg.eval.batch_size)
                if schedule is not None and schedule.fires(done_edits, previous):
                    edited = [r for s in plan.steps[: index + 1] for r in s]
                    with progress.stage(f"health at {done_edits} edits"):
                        step_row["health"] = tracker.measure(loaded.model, loaded.tokenizer, done_edits, edited)
                if pristine is not None:
                    editor.restore(pristine)
                self.logs.steps.append([step_row])
                state.completed_steps = index + 1
                progress.note("step %d/%d done (%d edits so far): %s", index + 1, len(plan.steps), done_edits, dict(report.seconds))
                if guard.pending is not None or policy.due(index, len(plan.steps)):
                    start = time.perf_counter()
                    self._save_checkpoint(editor, tracker, state)
                    policy.written(time.perf_counter() - start)
                    if guard.pending is not None:
                        self.console.print(f"[yellow]checkpointed after step {index + 1}; handing on signal {guard.pending}[/yellow]")
                        guard.forward()
                steps.update(completed=index + 1)

    # ------------------------------------------------------------------ checkpoint
    def _save_checkpoint(self, editor: Editor, tracker: HealthTracker, state: RunState) -> None:
        state.offsets = self.logs.offsets()
        state.tracker = tracker.state_dict()
        python_rng, torch_rng = rng_state()
        weights = {}
        for name in editor.modules:
            module = editor.model.get_submodule(name)
            weights[name + ".weight"] = module.weight
            if getattr(module, "bias", None) is not None:
                weights[name + ".bias"] = module.bias
        editor_state = editor.state_dict()
        tensors = flatten_tensors({"weights": weights, "editor": editor_state, "rng": {"torch": torch_rng}})
        meta = {
            "config_hash": self.config_digest, "state": state.to_json(), "templates": editor.templates.to_json(), "rng": python_rng,
            "editor_shape": {"solver": {}, "terms": {name: {} for name in editor_state["terms"]}},
        }
        self.store.save(meta, tensors)

    def _restore(
        self, loaded: LoadedModel, editor: Editor, tracker: HealthTracker, state: RunState, meta: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> None:
        weights = unflatten_tensors(tensors, "", {"weights": {}})["weights"]
        with torch.no_grad():
            for name, tensor in weights.items():
                module_name, attr = name.rsplit(".", 1)
                getattr(loaded.model.get_submodule(module_name), attr).copy_(tensor)
        editor.load_state_dict(unflatten_tensors(tensors, "editor.", meta["editor_shape"]))
        tracker.load_state_dict(state.tracker, [r for r in self.logs.records.read() if r["eval"] == "after_step"])
        set_rng_state(meta["rng"], tensors["rng.torch"])

    def _write_plots(self) -> None:
        if self.logs.health.lines:
            from edit_runner.reporting.plots import plot_series

            plot_series(self.logs.health.read(), self.run_dir / "plots")

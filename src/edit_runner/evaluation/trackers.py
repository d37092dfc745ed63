"""Model health during long sequential runs, on the ``eval.every_n_edits`` schedule (issue 5).

Collects, at each scheduled point: edit metrics of the edits so far, fact forgetting, per-layer
norm growth, the collapse check (ME-PPL with an alarm), downstream few-shot tasks, optional
lm-eval tasks and generation fluency. All series are tidy rows that survive resume.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from typing import Any

import torch

from edit_runner.config import EvalConfig
from edit_runner.data.record import EditRecord
from edit_runner.evaluation.edit_metrics import evaluate_records, summarize
from edit_runner.evaluation.health import forgetting_stats, layer_norm_stats, ngram_entropy, perplexity_alarm
from edit_runner.evaluation.perplexity import evaluate_perplexity
from edit_runner.evaluation.series import series_rows
from edit_runner.models.layout import weight_matrix
from edit_runner.models.sampling import sample_continuations


def record_success(row: dict[str, Any]) -> bool:
    """Whether a record's edit holds, by argmax correctness on the rewrite prompt (seed 002's
    ``rewrite_prompts_correct[0]``): every target token is the teacher-forced argmax. Reads
    ``efficacy_correct`` (MEMIT-definition CounterFact rows) or else ``efficacy_accuracy`` = 1
    (EasyEdit-definition token accuracy, zsRE token accuracy; one efficacy prompt per record)."""
    if row.get("efficacy_correct"):
        return bool(row["efficacy_correct"][0])
    return float(row.get("efficacy_accuracy") or 0.0) >= 1.0


FLUENCY_MAX_OUT_LEN = 100
"""``generate_fast``'s ``max_out_len``: prompt plus sampled tokens."""

TRACKER_FLUENCY_RECORDS = 25
"""Records whose generations a scheduled tracker point samples (the first edits: the same ones every time)."""


def fluency(model: torch.nn.Module, tokenizer, records: list[EditRecord], seed: int = 0) -> float:
    """N-gram entropy as kmeng01 / ENCORE ``eval_utils_counterfact.test_generation`` computes it.

    For every record, one top-5 sample per generation prompt (the rewrite prompt when it has none) of
    up to :data:`FLUENCY_MAX_OUT_LEN` tokens, prompt included (``generate_fast``); each text NFKD-
    normalised with blank lines joined, as ``generate_fast`` returns it; the record's value is
    :func:`~edit_runner.evaluation.health.ngram_entropy` of its texts and the result the mean over
    records (the reference's summarised ``ngram_entropy``). ``seed`` seeds the sampling.
    """
    generator = torch.Generator().manual_seed(seed)
    values = []
    for record in records:
        prompts = list(record.generation_prompts) or [record.rewrite_prompt]
        texts = sample_continuations(model, tokenizer, prompts, FLUENCY_MAX_OUT_LEN, generator, top_k=5)
        values.append(ngram_entropy(unicodedata.normalize("NFKD", t).replace("\n\n", " ") for t in texts))
    return sum(values) / len(values) if values else math.nan


class HealthTracker:
    """Measures model health after scheduled steps; each point's series rows go to ``sink`` (an append-only log).

    Its state: the alarms so far and the case ids counted as forgotten (forgetting is cumulative,
    :func:`~edit_runner.evaluation.health.forgetting_stats`). The forgetting baseline (each edit's
    success right after its own step) is rebuilt on resume from the after-step rows
    (:meth:`load_state_dict`).
    """

    def __init__(
        self,
        cfg: EvalConfig,
        seed: int,
        modules: list[str],
        original: dict[str, torch.Tensor],
        baseline_ppl: float | None,
        sink: Callable[[list[dict[str, Any]]], None],
    ) -> None:
        self.cfg = cfg
        self.seed = seed
        self.modules = modules
        self.original = original
        self.baseline_ppl = baseline_ppl
        self.sink = sink
        self.first_eval: dict[str, bool] = {}
        self.alarms: list[dict[str, Any]] = []
        self.forgotten: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (JSON)."""
        return {"alarms": list(self.alarms), "forgotten": sorted(self.forgotten)}

    def load_state_dict(self, state: dict[str, Any], after_step_rows: list[dict[str, Any]]) -> None:
        """Restore :meth:`state_dict`; replay the after-step rows written before the checkpoint."""
        self.alarms = list(state["alarms"])
        self.forgotten = set(state.get("forgotten", []))
        self.first_eval = {}
        self.note_step_rows(after_step_rows)

    def note_step_rows(self, rows: list[dict[str, Any]]) -> None:
        """Remember each edit's success right after its own step (the forgetting baseline)."""
        for row in rows:
            self.first_eval.setdefault(str(row["case_id"]), record_success(row))

    def measure(self, model: torch.nn.Module, tokenizer, num_edits: int, edited: list[EditRecord]) -> dict[str, Any]:
        """Run every enabled tracker now and append their rows; returns this point's values."""
        cfg = self.cfg
        point: dict[str, Any] = {"num_edits": num_edits}
        rows: list[dict[str, Any]] = []
        if edited:
            point.update(self._edit_metrics(model, tokenizer, num_edits, edited, rows))
        if cfg.norms:
            current_w = {name: weight_matrix(model.get_submodule(name)).detach() for name in self.modules}
            norms = layer_norm_stats(current_w, self.original)
            for name, values in norms.items():
                rows += series_rows(num_edits, values, layer=name)
            point["norms"] = norms
        if cfg.perplexity:
            ppl = evaluate_perplexity(model, tokenizer, cfg.me_ppl.path, max_length=cfg.me_ppl.max_length)
            rows += series_rows(num_edits, {"perplexity": ppl["perplexity"]}, family="collapse")
            point["perplexity"] = ppl["perplexity"]
            if self.baseline_ppl is not None and perplexity_alarm(ppl["perplexity"], self.baseline_ppl, cfg.me_ppl.alarm_factor):
                self.alarms.append({"num_edits": num_edits, "perplexity": ppl["perplexity"], "baseline": self.baseline_ppl})
        if cfg.downstream.tasks:
            from edit_runner.evaluation.downstream.evaluate import evaluate_downstream

            results = evaluate_downstream(
                model, tokenizer, list(cfg.downstream.tasks), cfg.downstream.data_dir, num_items=cfg.downstream.num_items,
                num_shots=cfg.downstream.num_shots, mode=cfg.downstream.mode, selection=cfg.downstream.selection,
            )
            for task, metrics in results.items():
                rows += series_rows(num_edits, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, task=task)
            point["downstream"] = results
        if cfg.lm_eval.tasks:
            from edit_runner.evaluation.lm_eval_adapter import run_lm_eval

            results = run_lm_eval(model, tokenizer, list(cfg.lm_eval.tasks), limit=cfg.lm_eval.limit)
            for task, metrics in results.items():
                rows += series_rows(num_edits, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, task=f"lm_eval:{task}")
            point["lm_eval"] = results
        if cfg.fluency and edited:
            entropy = fluency(model, tokenizer, edited[:TRACKER_FLUENCY_RECORDS], self.seed)
            rows += series_rows(num_edits, {"ngram_entropy": entropy}, family="fluency")
            point["fluency"] = entropy
        self.sink(rows)
        return point

    def _edit_metrics(
        self, model: torch.nn.Module, tokenizer, num_edits: int, edited: list[EditRecord], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        cfg = self.cfg
        point: dict[str, Any] = {}
        sample = edited
        if cfg.forgetting_sample and len(edited) > cfg.forgetting_sample:
            generator = torch.Generator().manual_seed(self.seed + num_edits)
            sample = [edited[i] for i in torch.randperm(len(edited), generator=generator)[: cfg.forgetting_sample].tolist()]
        scored = evaluate_records(model, tokenizer, sample, cfg.metrics.value, cfg.batch_size)
        summary = {k: v for k, v in summarize(scored).items() if v is not None}
        rows += series_rows(num_edits, summary, family="edits")
        point["edits"] = summary
        if cfg.forgetting and self.first_eval:
            current = {str(r["case_id"]): record_success(r) for r in scored}
            stats = forgetting_stats(self.first_eval, current, self.forgotten)
            self.forgotten = stats.pop("forgotten_ids")
            rows += series_rows(
                num_edits, {"retained": stats["retained"], "forgotten": stats["forgotten"], "currently_failing": stats["currently_failing"]}
            )
            point["forgetting"] = stats
        return point

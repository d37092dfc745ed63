"""Iterative editing (seed 000 §3.1, SPEC B §9): repeat optimize→spread until a stop rule on |Δp_k| holds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

from edit_runner.data.record import EditRecord
from edit_runner.editing.algorithms import OPTIMIZATION
from edit_runner.editing.wrappers import WRAPPERS, Wrapper, WrapperEntry

if TYPE_CHECKING:
    from edit_runner.editing.editor import EditorBuilder, PassControl


class IterationStop(str, Enum):
    """Iterative-editing stop rules (SPEC Part B §9)."""

    abs_delta = "abs_delta"
    monotonic = "monotonic"
    small_change = "small_change"
    none = "none"


@dataclass
class IterativeConfig:
    """Iterative editing: at most ``max_iterations`` passes; ``full_metrics`` evaluates after each pass."""

    max_iterations: int = 10
    stop_rule: IterationStop = IterationStop.abs_delta
    epsilon: float = 1.0
    full_metrics: bool = False


@dataclass
class IterationRecord:
    """Seed 000 Table 6 columns of one iteration: p̄_k, p̂_k and the signed Δp_k = p̂_k − p̄_k (means over
    the edits of exp(NLL)); ``records`` holds the same three per edit, in the step's record order."""

    iteration: int
    p_bar: float
    p_hat: float
    delta_p: float
    metrics: dict | None = None
    records: list[dict[str, float]] | None = None


def _per_record(p_bar: torch.Tensor, p_hat: torch.Tensor) -> list[dict[str, float]]:
    return [{"p_bar": float(b), "p_hat": float(h), "delta_p": float(h - b)} for b, h in zip(p_bar.tolist(), p_hat.tolist())]


def iterate(
    single_pass: Callable[[], torch.Tensor],
    measure_after: Callable[[], torch.Tensor],
    snapshot: Callable[[], object],
    restore: Callable[[object], None],
    max_iterations: int,
    stop_rule: str,
    epsilon: float,
    on_iteration: Callable[[IterationRecord], dict | None] | None = None,
) -> list[IterationRecord]:
    """Repeat optimize→spread until the stop rule holds (SPEC B §9).

    ``single_pass`` runs one optimize→spread and returns the per-edit final NLLs (δ = δ*);
    ``measure_after`` returns the per-edit NLLs on the updated weights with δ = 0. p̄ and p̂ are
    means of ``exp(NLL)`` (target perplexities); Δp_k = p̂_k − p̄_k keeps its sign (seed 000 Table 6
    shows negative values) and the rules compare |Δp_k|. ``monotonic`` rolls back to θ_k when |Δp| grows.
    """
    history: list[IterationRecord] = []
    for k in range(1, max_iterations + 1):
        before = snapshot() if stop_rule == "monotonic" else None
        final_nll = single_pass()
        after_nll = measure_after()
        bar, hat = torch.exp(final_nll.detach().double().cpu()), torch.exp(after_nll.detach().double().cpu())
        p_bar, p_hat = float(bar.mean()), float(hat.mean())
        record = IterationRecord(k, p_bar, p_hat, p_hat - p_bar, records=_per_record(bar, hat))
        if on_iteration is not None:
            record.metrics = on_iteration(record)
        if stop_rule == "monotonic" and history and abs(record.delta_p) >= abs(history[-1].delta_p):
            restore(before)
            history.append(record)
            break
        history.append(record)
        if stop_rule == "abs_delta" and abs(record.delta_p) <= epsilon:
            break
        if stop_rule == "small_change" and len(history) > 1 and abs(history[-1].p_hat - history[-2].p_hat) <= epsilon:
            break
        if not math.isfinite(record.p_hat):
            break
    return history


class Iterative(Wrapper):
    """The outer loop of iterative editing; ``full_metrics`` adds the metrics after every pass."""

    name = "iterative"
    needs = frozenset({OPTIMIZATION})
    conflicts = frozenset({"d4s"})

    def __init__(self, config: IterativeConfig) -> None:
        self.config = config
        self.evaluate: Callable[[list[EditRecord]], dict[str, Any]] | None = None

    def install(self, builder: EditorBuilder) -> None:
        """Loop optimize→spread around each step."""
        self.evaluate = builder.evaluate if self.config.full_metrics else None
        builder.outer = self

    def run(self, records: list[EditRecord], passes: PassControl) -> list[dict[str, Any]]:
        """Iterate on one step's records; one row per pass. Every row also carries ``p_hat_0``, p̂ of the
        weights before the step (δ = 0), and ``records``: per edit its case id, p̄, p̂, Δp and p̂_0."""
        evaluate = self.evaluate
        unedited = torch.exp(passes.measure_after().detach().double().cpu()).tolist()
        history = iterate(
            single_pass=passes.single_pass,
            measure_after=passes.measure_after,
            snapshot=passes.snapshot,
            restore=passes.restore,
            max_iterations=int(self.config.max_iterations),
            stop_rule=IterationStop(self.config.stop_rule).value,
            epsilon=float(self.config.epsilon),
            on_iteration=None if evaluate is None else (lambda _: evaluate(records)),
        )
        rows = [vars(record) for record in history]
        for row in rows:
            row["p_hat_0"] = sum(unedited) / len(unedited)
            row["records"] = [
                {"case_id": r.case_id, **values, "p_hat_0": p0} for r, values, p0 in zip(records, row["records"], unedited)
            ]
        return rows

    def summarize(self, summary: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        """Seed 000 Table 6 (one-step runs): p̄, p̂, the signed Δp and the metrics of each iteration, from
        iteration 0 (the unedited weights: p̂ only; its metrics are ``summary.pre``)."""
        iterations = [it for step in steps for it in step["iterations"]]
        if iterations and len(steps) == 1:
            summary["iterations"] = [
                {"iteration": 0, "p_bar": None, "p_hat": iterations[0]["p_hat_0"], "delta_p": None, "post": None},
                *(
                    {"iteration": it["iteration"], "p_bar": it["p_bar"], "p_hat": it["p_hat"], "delta_p": it["delta_p"], "post": it["metrics"]}
                    for it in iterations
                ),
            ]


WRAPPERS.register("iterative", WrapperEntry("iterative", IterativeConfig, Iterative, order=10))

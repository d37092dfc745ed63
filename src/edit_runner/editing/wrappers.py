"""The source papers' wrappers as hooks on the two-stage core (DESIGN.md table).

* optimization-stage hooks: :class:`NeighborRows` (NA/NAP extra loss rows), :class:`MPESRule` (stop rule);
* spread-stage options: norm constraint (+λ_n I), previous-edit key memory, D4S running sums —
  read by :mod:`edit_runner.editing.editor` when it builds the normal equations;
* outer loop: :func:`iterate` (iterative editing).

Each wrapper declares which stage it needs; invalid combinations fail before a model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from edit_runner.data.record import EditRecord
from edit_runner.editing.algorithms import AlgorithmSpec
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.targets import LossRow, StepStats
from edit_runner.errors import ConfigError
from edit_runner.models.tokens import FilledPrompt, find_subject, target_token_ids
from edit_runner.registry import Registry


@dataclass(frozen=True)
class WrapperSpec:
    """What a wrapper hooks into and which algorithms it can wrap."""

    name: str
    stage: str  # "optimization" | "spread" | "outer"
    solvers: tuple[str, ...]
    conflicts: tuple[str, ...] = ()


_ALL_LOCATE_THEN_EDIT = ("rome", "memit", "emmet", "alphaedit")
WRAPPERS: Registry[WrapperSpec] = Registry("wrapper")
for _w in (
    WrapperSpec("iterative", "outer", _ALL_LOCATE_THEN_EDIT, conflicts=("d4s",)),
    WrapperSpec("na", "optimization", _ALL_LOCATE_THEN_EDIT, conflicts=("nap",)),
    WrapperSpec("nap", "optimization", _ALL_LOCATE_THEN_EDIT, conflicts=("na",)),
    WrapperSpec("mpes", "optimization", _ALL_LOCATE_THEN_EDIT),
    WrapperSpec("norm_constraint", "spread", ("memit", "emmet", "alphaedit")),
    WrapperSpec("prev_edit_keys", "spread", ("memit", "emmet")),
    WrapperSpec("d4s", "spread", ("memit",), conflicts=("iterative",)),
):
    WRAPPERS.register(_w.name, _w)


def check_combination(algo: AlgorithmSpec, wrappers: list[str]) -> None:
    """Raise a ConfigError when a wrapper cannot wrap ``algo`` or two wrappers conflict."""
    for name in wrappers:
        spec = WRAPPERS.get(name)
        if algo.solver not in spec.solvers:
            valid = sorted(a for a in ("rome", "memit", "pmet", "emmet", "alphaedit", "ft", "ft_c") if _solver_of(a) in spec.solvers)
            why = "it has no spread stage" if not algo.has_spread else f"its {spec.stage} stage does not apply"
            raise ConfigError(
                f"wrapper={name} cannot wrap algo={algo.name}: {why}. Algorithms it supports: {', '.join(valid)}"
            )
        for other in spec.conflicts:
            if other in wrappers:
                raise ConfigError(f"wrapper={name} and wrapper={other} cannot be combined; choose one")


def _solver_of(algo_name: str) -> str:
    from edit_runner.editing.algorithms import algorithm_spec

    return algorithm_spec(algo_name).solver


class MPESRule:
    """Most-probable early stopping (SPEC C §7.1).

    ``prob_cutoff < 0``: count the passes at which every target token is the argmax in every
    prefixed prompt; stop at the ``|prob_cutoff|``-th. ``0 < prob_cutoff < 1``: stop once the mean
    per-token geometric-mean probability over the rewriting prompts exceeds it.
    """

    def __init__(self, prob_cutoff: float) -> None:
        if prob_cutoff == 0:
            raise ConfigError("wrapper.mpes.prob_cutoff=0 disables MPES; drop the wrapper instead")
        self.prob_cutoff = prob_cutoff
        self.counter = torch.zeros(0, dtype=torch.long)

    def reset(self, num_records: int) -> None:
        """New chunk: counters start at zero."""
        self.counter = torch.zeros(num_records, dtype=torch.long)

    def should_stop(self, stats: StepStats) -> torch.Tensor:
        """Stop records whose new object is top-1 often enough (or probable enough)."""
        if self.prob_cutoff < 0:
            self.counter += stats.prefixed_all_argmax.cpu().long()
            return self.counter >= round(abs(self.prob_cutoff))
        return torch.exp(-stats.rewrite_nll.cpu()) > self.prob_cutoff


def _prefixed(prompt: FilledPrompt, template: str) -> FilledPrompt:
    head = template[: template.index("{}")]
    tail = template[template.index("{}") + 2 :]
    return FilledPrompt(head + prompt.text + tail, prompt.subject_start + len(head), prompt.subject_end + len(head))


class NeighborRows:
    """NA / NAP loss rows (seed 000 §3.2, SPEC B §10): −ln p(o | neighbor prompt, δ at the neighbor subject).

    NA uses the neighbor prompts as they are; NAP adds the random prefixes (with ``pooled`` the
    first prefix only, as the reference code). Rows of the paper weighting are normalised by the
    true object's length; pooled rows by the new object's length (reference).
    """

    def __init__(self, with_prefix: bool, pooled: bool) -> None:
        self.with_prefix = with_prefix
        self.pooled = pooled

    def rows(self, records: list[EditRecord], templates: ContextTemplates, tokenizer) -> list[LossRow]:
        """Neighbor rows for every record's training neighbors."""
        rows = []
        if self.with_prefix:
            chosen = templates.flat[1:2] if self.pooled else templates.flat[1:]
        else:
            chosen = ["{}"]
        for r, record in enumerate(records):
            if not record.train_neighbors:
                raise ConfigError(
                    f"record case_id={record.case_id}: neighbor-assisted editing needs training neighbors; "
                    "use a dataset with neighborhood subjects (multi_counterfact / easyedit / demo)"
                )
            norm_new = len(target_token_ids(tokenizer, record.target_new))
            for neighbor in record.train_neighbors:
                assert neighbor.subject is not None
                base = find_subject(neighbor.prompt, neighbor.subject, record.case_id)
                target = tuple(target_token_ids(tokenizer, neighbor.target))
                for template in chosen:
                    rows.append(LossRow(r, _prefixed(base, template), target, "neighbor", 0, norm_new if self.pooled else len(target)))
        return rows


@dataclass
class IterationRecord:
    """Seed 000 Table 6 columns of one iteration: p̄_k, p̂_k, |Δp_k| (per-edit means of exp(NLL))."""

    iteration: int
    p_bar: float
    p_hat: float
    delta_p: float
    metrics: dict | None = None


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
    means of ``exp(NLL)`` (target perplexities). ``monotonic`` rolls back to θ_k when |Δp| grows.
    """
    history: list[IterationRecord] = []
    for k in range(1, max_iterations + 1):
        before = snapshot() if stop_rule == "monotonic" else None
        final_nll = single_pass()
        after_nll = measure_after()
        p_bar = float(torch.exp(final_nll).mean())
        p_hat = float(torch.exp(after_nll).mean())
        record = IterationRecord(k, p_bar, p_hat, abs(p_hat - p_bar))
        if on_iteration is not None:
            record.metrics = on_iteration(record)
        if stop_rule == "monotonic" and history and record.delta_p >= history[-1].delta_p:
            restore(before)
            history.append(record)
            break
        history.append(record)
        if stop_rule == "abs_delta" and record.delta_p <= epsilon:
            break
        if stop_rule == "small_change" and len(history) > 1 and abs(history[-1].p_hat - history[-2].p_hat) <= epsilon:
            break
        if not math.isfinite(record.p_hat):
            break
    return history

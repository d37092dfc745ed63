"""Declarative layouts of the seed papers' tables: which runs, which rows, which columns, which units.

A :class:`Layout` says which runs belong to a table (dataset, algorithm, wrapper sets), how a run
is labelled (``model``, ``method`` from algorithm + wrappers), which rows are made per label
(the final numbers, every iteration, or named *roles* such as "first iteration" or "the iteration
where |Δp_k| ≤ 1"), and which columns are read from the collected results — each with the
summary field it reads (``phase`` + ``metric`` of :mod:`edit_runner.reporting.collect`), its
scale (×100 for fractions) and its display format. The rendering engine is in
:mod:`edit_runner.reporting.tables`.

Layouts are registered by name in a fresh :class:`~edit_runner.registry.Registry` built by
:func:`layout_registry` (no module-level mutable state).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from edit_runner.registry import Registry

# ----------------------------------------------------------------------------------------------
# Run views and derived metrics
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    """One collected run: its identity/protocol fields and its metric values.

    ``values`` maps ``(phase, iteration, metric)`` to a float; ``iteration`` is ``0`` for ``pre``,
    ``k`` for ``iteration`` and ``None`` for ``post`` and ``run`` (see the collect module).
    """

    run_dir: str
    meta: Mapping[str, Any]
    values: Mapping[tuple[str, int | None, str], float]

    def get(self, phase: str, iteration: int | None, metric: str) -> float | None:
        """The value of ``metric`` in ``phase``/``iteration``, or ``None`` when missing or NaN."""
        value = self.values.get((phase, iteration, metric))
        if value is None or math.isnan(value):
            return None
        return value

    def iterations(self) -> tuple[int, ...]:
        """The iteration numbers present in the run, ascending."""
        return tuple(sorted({it for (phase, it, _) in self.values if phase == "iteration" and it is not None}))

    def metrics_with_prefix(self, phase: str, iteration: int | None, prefix: str) -> dict[str, float]:
        """All ``metric -> value`` of ``phase``/``iteration`` whose name starts with ``prefix``."""
        return {
            metric: value
            for (p, it, metric), value in self.values.items()
            if p == phase and it == iteration and metric.startswith(prefix) and not math.isnan(value)
        }

    @property
    def wrappers(self) -> frozenset[str]:
        """The run's wrappers as a set (``"none"`` is the empty set)."""
        label = str(self.meta.get("wrappers") or "none")
        return frozenset() if label == "none" else frozenset(label.split("+"))


#: A derived column: ``fn(run, phase, iteration) -> value`` (before scaling), ``None`` if unavailable.
Derive = Callable[[RunView, str, "int | None"], "float | None"]


def mean_of_three_accuracies(run: RunView, phase: str, iteration: int | None) -> float | None:
    """Arithmetic mean of efficacy, generalization and specificity accuracy (seed 003's "Avg.")."""
    parts = [run.get(phase, iteration, f"{m}_accuracy") for m in ("efficacy", "generalization", "specificity")]
    if any(p is None for p in parts):
        return None
    return sum(parts) / 3.0  # type: ignore[arg-type]


def delta_p2(run: RunView, phase: str, iteration: int | None) -> float | None:
    """Seed 000's Δp2 at iteration k: ``|p̂_k − p̂_{k−1}|`` (needs k ≥ 2)."""
    if phase != "iteration" or iteration is None or iteration < 2:
        return None
    now = run.get("iteration", iteration, "p_hat")
    before = run.get("iteration", iteration - 1, "p_hat")
    if now is None or before is None:
        return None
    return abs(now - before)


def downstream_f1_drop(run: RunView, phase: str, iteration: int | None) -> float | None:
    """Mean over downstream tasks of ``health.initial…f1 − health.final…f1`` (positive = loss)."""
    final = run.metrics_with_prefix("run", None, "health.final.downstream.")
    drops = []
    for metric, value in final.items():
        if not metric.endswith(".f1"):
            continue
        initial = run.get("run", None, metric.replace("health.final.", "health.initial.", 1))
        if initial is not None:
            drops.append(initial - value)
    return sum(drops) / len(drops) if drops else None


def max_normalized_distance(run: RunView, phase: str, iteration: int | None) -> float | None:
    """The largest ``health.final.normalized_distance.<layer>`` of the run."""
    values = run.metrics_with_prefix("run", None, "health.final.normalized_distance")
    return max(values.values()) if values else None


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------

MODEL_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "gpt2-xl": "GPT-2 XL (1.5B)",
        "gpt-j": "GPT-J (6B)",
        "llama2-7b": "Llama-2 (7B)",
        "llama3-8b": "Llama-3 (8B)",
        "smollm2-135m": "SmolLM2 (135M)",
    }
)
ALGO_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "rome": "ROME",
        "memit": "MEMIT",
        "pmet": "PMET",
        "emmet": "EMMET",
        "alphaedit": "AlphaEdit",
        "ft": "FT",
        "ft_c": "FT-C",
    }
)
WRAPPER_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "iterative": "Iterative",
        "na": "NA",
        "nap": "NAP",
        "mpes": "MPES",
        "norm_constraint": "Norm-Const",
        "d4s": "D4S",
        "encore": "ENCORE",
    }
)
ROLE_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "unedited": "unedited",
        "first": "first iteration",
        "stop": "stop (|Δp_k| ≤ 1)",
        "abs_delta": "|Δp_k| ≤ 1",
        "monotonic": "monotonic |Δp_k|",
        "small_change": "Δp2 ≤ 1",
    }
)


def algo_label(algo: str) -> str:
    """Display name of an algorithm (``memit`` → ``MEMIT``; unknown names unchanged)."""
    return ALGO_LABELS.get(algo, algo)


def _extras(wrappers: frozenset[str], handled: frozenset[str]) -> str:
    rest = sorted(wrappers - handled)
    return "".join(f" + {WRAPPER_LABELS.get(w, w)}" for w in rest)


def plain_method(algo: str, wrappers: frozenset[str]) -> str:
    """``MEMIT``, ``MEMIT + MPES + Norm-Const`` … (every wrapper appended, sorted)."""
    return algo_label(algo) + _extras(wrappers, frozenset())


def seed000_method(algo: str, wrappers: frozenset[str]) -> str:
    """Seed 000 names: ``MEMIT`` (iterative), ``NA_MEMIT``, ``NAP_MEMIT``."""
    prefix = "NAP_" if "nap" in wrappers else "NA_" if "na" in wrappers else ""
    return prefix + algo_label(algo) + _extras(wrappers, frozenset({"iterative", "na", "nap"}))


def seed003_method(algo: str, wrappers: frozenset[str]) -> str:
    """Seed 003 names: ``FT``, ``ROME``, ``MEMIT``, ``PMET``; MEMIT + the D4S wrapper is ``D4S``."""
    if "d4s" in wrappers:
        base = "D4S" if algo == "memit" else f"D4S ({algo_label(algo)})"
        return base + _extras(wrappers, frozenset({"d4s"}))
    return plain_method(algo, wrappers)


def seed004_method(algo: str, wrappers: frozenset[str]) -> str:
    """Seed 004 names: ``MEMIT``, ``MEMIT + MPES``, ``MEMIT + Norm-Const``, ``ENCORE`` (= MEMIT + encore).

    The previous-edit key memory is part of every seed-004 baseline (the reference runs them with
    ``add_prev_edits``), so it does not change the row name.
    """
    if "encore" in wrappers:
        base = "ENCORE" if algo == "memit" else f"ENCORE ({algo_label(algo)})"
        return base + _extras(wrappers, frozenset({"encore"}))
    name = algo_label(algo)
    if "mpes" in wrappers:
        name += " + MPES"
    if "norm_constraint" in wrappers:
        name += " + Norm-Const"
    return name + _extras(wrappers, frozenset({"mpes", "norm_constraint", "prev_edit_keys"}))


def seed004_table1_method(algo: str, wrappers: frozenset[str]) -> str:
    """Seed 004 Table 1 rows are per algorithm; MPES splits the columns, not the rows."""
    return algo_label(algo) + _extras(wrappers, frozenset({"mpes", "prev_edit_keys"}))


# ----------------------------------------------------------------------------------------------
# Columns and layouts
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of a table.

    ``kind``:
      * ``"metric"`` — ``metric`` read from ``phase`` (``None`` = the row's phase: ``pre`` for
        unedited rows, ``iteration`` k for iteration rows, ``post`` otherwise); ``transform="abs"``
        takes the absolute value;
      * ``"derived"`` — ``derive(run, phase, iteration)``;
      * ``"k"`` — the iteration the row shows (stop rules are resolved per cell);
      * ``"meta"`` — a run field (e.g. ``num_edits``), which must be equal across the cell;
      * ``"stops"`` — on iteration rows, the stop rules of the layout's ``marks`` that pick the
        row's iteration on the trial-mean series (``*``: the rule is not met, last iteration).

    Numbers are multiplied by ``scale``, averaged over the cell's runs (trials) and shown as
    ``mean ± std`` with ``digits`` decimals (``%.2E`` when ``|mean| ≥ sci_above`` or ``style="sci"``).
    ``where`` restricts the runs of this column: ``(field, allowed values)`` pairs, where
    ``field`` is a run field (``dataset``, ``num_edits`` …) or ``has_wrapper:<name>``.
    """

    key: str
    label: str
    group: str = ""
    kind: str = "metric"
    metric: str = ""
    phase: str | None = None
    scale: float = 1.0
    unit: str = ""
    digits: int = 2
    style: str = "fixed"
    sci_above: float | None = None
    transform: str | None = None
    derive: Derive | None = None
    where: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    latex: str | None = None

    def header(self) -> str:
        """Plain-text header: label plus unit, e.g. ``Acc. (%)``."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def reads(self, rows: str = "final") -> str:
        """Human-readable description of the summary field this column reads (for a layout's ``rows``)."""
        if self.kind == "k":
            return "iteration k of the row (stop rule resolved on the trial-mean series)"
        if self.kind == "stops":
            return "the stop rules that pick iteration k (from summary.iterations[k].{delta_p, p_hat})"
        if self.kind == "meta":
            return f"summary.{self.metric}"
        if self.kind == "derived":
            doc = (self.derive.__doc__ or "").strip().splitlines()[0] if self.derive else ""
            return f"derived: {doc}"
        if self.phase == "run":
            text = f"summary.{self.metric}"
        elif self.phase in ("pre", "post") or rows == "final":
            text = f"summary.{self.phase or 'post'}.{self.metric}"
        elif self.metric in ("p_bar", "p_hat", "delta_p"):
            text = f"summary.iterations[k].{self.metric}"
        else:
            text = f"summary.iterations[k].post.{self.metric} (unedited row: summary.pre.{self.metric})"
        if self.transform:
            text = f"{self.transform}({text})"
        if self.scale != 1.0:
            text += f" × {self.scale:g}"
        return text


@dataclass(frozen=True)
class Layout:
    """A seed table: which runs, how rows are labelled and made, and which columns are shown.

    ``rows``:
      * ``"final"`` — one row per label, from the ``post`` phase;
      * ``"iterations"`` — one row per label and iteration k (``row_fields`` end with ``"k"``);
      * ``"roles"`` — one row per label and role in ``roles`` (``(name, selector)`` pairs where the
        selector is ``"first"``, ``"final"`` or ``"stop:<rule>"`` with rule ``abs_delta``,
        ``monotonic`` or ``small_change``; ``row_fields`` end with ``"role"``).

    ``marks`` are the stop rules a ``"stops"`` column marks on iteration rows.

    ``where`` restricts the runs further (``(field, allowed values)`` pairs on run fields such as
    ``protocol.name``). ``unedited`` adds one ``Unedited`` row per model (from the ``pre`` phase, each trial counted
    once). ``homogeneous_within`` names the row fields inside which each column must hold a
    single protocol (default: the whole column); see :func:`edit_runner.reporting.tables.render_table`.
    """

    name: str
    title: str
    source: str
    columns: tuple[Column, ...]
    datasets: tuple[str, ...]
    algos: tuple[str, ...]
    wrapper_sets: tuple[frozenset[str], ...]
    method: Callable[[str, frozenset[str]], str] = plain_method
    row_fields: tuple[str, ...] = ("model", "method")
    rows: str = "final"
    roles: tuple[tuple[str, str], ...] = ()
    marks: tuple[str, ...] = ()
    unedited: bool = False
    homogeneous_within: tuple[str, ...] = ()
    order: tuple[tuple[str, tuple[str, ...]], ...] = ()
    epsilon: float = 1.0
    notes: str = ""
    requires: tuple[str, ...] = ()
    where: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def order_of(self, row_field: str) -> tuple[str, ...]:
        """The preferred order of a row field's values (values not listed come after, sorted)."""
        for name, values in self.order:
            if name == row_field:
                return values
        return ()


# --- shared column sets ------------------------------------------------------------------------

_COUNTERFACT = ("counterfact", "multi_counterfact")
_MODEL_ORDER = ("model", ("gpt2-xl", "gpt-j", "llama2-7b", "llama3-8b"))


def _pct(key: str, label: str, metric: str, group: str = "", phase: str | None = None, **kw: Any) -> Column:
    return Column(key=key, label=label, group=group, metric=metric, phase=phase, scale=100.0, unit="%", **kw)


_SEED000_METRICS: tuple[Column, ...] = (
    _pct("eff_acc", "Acc.", "efficacy_accuracy", "Efficacy"),
    _pct("eff_succ", "Succ.", "efficacy_success", "Efficacy"),
    _pct("gen_acc", "Acc.", "generalization_accuracy", "Generalization"),
    _pct("gen_succ", "Succ.", "generalization_success", "Generalization"),
    _pct("spe_acc", "Acc.", "specificity_accuracy", "Specificity"),
    _pct("spe_succ", "Succ.", "specificity_success", "Specificity"),
    _pct("score_acc", "Acc.", "score_accuracy", "Score"),
    _pct("score_succ", "Succ.", "score_success", "Score"),
    Column("me_ppl", "ME-PPL-50", group="Perplexity", metric="me_ppl_50", sci_above=1e4),
)
_K = Column("k", "k", kind="k", digits=0)
_ABS_DP = Column(
    "abs_delta_p", "|Δp_k|", metric="delta_p", transform="abs", sci_above=1e6, latex=r"$|\Delta p_k|$"
)
_SEED000_ALGOS = ("rome", "memit", "pmet")
_SEED000_METHOD_ORDER = (
    "method",
    ("Unedited", "ROME", "MEMIT", "NA_MEMIT", "NAP_MEMIT", "PMET", "NA_PMET", "NAP_PMET"),
)
_ITERATIVE = (frozenset({"iterative"}),)
_SEED000_REQUIRES = (
    "summary.pre.{efficacy,generalization,specificity,score}_{accuracy,success}, summary.pre.me_ppl_50",
    "summary.iterations[k] = {iteration, p_bar, p_hat, delta_p, post: {same metric keys, me_ppl_50}}",
    "protocol.metric_definition = easyedit for the paper's definitions (SPEC B8)",
)


_ITER_NOTES = (
    "One row per iteration k (k = 0: unedited model). p̄_k: mean target perplexity after the "
    "optimisation stage; p̂_k: after the spread stage; Δp_k = p̂_k − p̄_k (signed; the paper "
    "heads this column |Δp_k| but prints signed values)."
)


def _seed000_iter_layout(
    name: str,
    dataset: tuple[str, ...],
    title: str,
    source: str,
    wrapper_sets: tuple[frozenset[str], ...] = _ITERATIVE,
    algos: tuple[str, ...] = _SEED000_ALGOS,
    with_num_edits: bool = False,
    notes: str = "",
) -> Layout:
    fields = ("model", "num_edits", "method", "k") if with_num_edits else ("model", "method", "k")
    return Layout(
        name=name,
        title=title,
        source=source,
        columns=(
            *_SEED000_METRICS,
            Column("p_bar", "p̄_k", group="Perplexity", metric="p_bar", sci_above=1e5, latex=r"$\bar p_k$"),
            Column("p_hat", "p̂_k", group="Perplexity", metric="p_hat", sci_above=1e5, latex=r"$\hat p_k$"),
            Column("delta_p", "Δp_k", metric="delta_p", sci_above=1e5, latex=r"$\Delta p_k$"),
        ),
        datasets=dataset,
        algos=algos,
        wrapper_sets=wrapper_sets,
        method=seed000_method,
        row_fields=fields,
        rows="iterations",
        unedited=True,
        homogeneous_within=("model", "num_edits") if with_num_edits else (),
        order=(_MODEL_ORDER, _SEED000_METHOD_ORDER),
        notes=" ".join(n for n in (_ITER_NOTES, notes) if n),
        requires=_SEED000_REQUIRES,
    )


def _seed000_stop_layout(
    name: str,
    title: str,
    source: str,
    columns: tuple[Column, ...],
    wrapper_sets: tuple[frozenset[str], ...],
    roles: tuple[tuple[str, str], ...],
    algos: tuple[str, ...] = _SEED000_ALGOS,
    with_num_edits: bool = False,
    notes: str = "",
) -> Layout:
    fields = ("model", "num_edits", "method", "role") if with_num_edits else ("model", "method", "role")
    return Layout(
        name=name,
        title=title,
        source=source,
        columns=columns,
        datasets=_COUNTERFACT,
        algos=algos,
        wrapper_sets=wrapper_sets,
        method=seed000_method,
        row_fields=fields,
        rows="roles",
        roles=roles,
        unedited=True,
        homogeneous_within=("model", "num_edits") if with_num_edits else (),
        order=(_MODEL_ORDER, _SEED000_METHOD_ORDER),
        notes=notes,
        requires=_SEED000_REQUIRES,
    )


_STOP_RULES = ("abs_delta", "monotonic", "small_change")
_STOP_RULE_NOTES = (
    "|Δp_k| ≤ 1; monotonic: stop at k when |Δp_{k+1}| ≥ |Δp_k|; small change: first k ≥ 2 with "
    "Δp2 = |p̂_k − p̂_{k−1}| ≤ 1."
)


def _stop_rule_columns(every_iteration: bool) -> tuple[Column, ...]:
    """Seed 000 Tables 4 / 10: per dataset, k (or the rules marking k), Score, |Δp_k| and Δp2."""
    columns: list[Column] = []
    for dataset, group in ((_COUNTERFACT, "COUNTERFACT"), (("zsre",), "ZsRE")):
        prefix = "cf" if group == "COUNTERFACT" else "zsre"
        where = (("dataset", dataset),)
        if every_iteration:
            columns.append(Column(f"{prefix}_rules", "Stop rules", group=group, kind="stops", where=where))
        else:
            columns.append(Column(f"{prefix}_k", "k", group=group, kind="k", digits=0, where=where))
        columns.append(_pct(f"{prefix}_score_acc", "Score Acc.", "score_accuracy", group, where=where))
        if every_iteration:
            columns.append(_pct(f"{prefix}_score_succ", "Score Succ.", "score_success", group, where=where))
        columns += [
            Column(f"{prefix}_abs_dp", "|Δp_k|", group=group, metric="delta_p", transform="abs",
                   where=where, latex=r"$|\Delta p_k|$"),
            Column(f"{prefix}_dp2", "Δp2", group=group, kind="derived", derive=delta_p2, where=where,
                   latex=r"$\Delta_{p2}$"),
        ]  # fmt: skip
    return tuple(columns)


def _seed000_table10() -> Layout:
    return Layout(
        name="seed000_table10",
        title="Stop rules of iterative editing, every iteration (COUNTERFACT and ZsRE)",
        source="seed 000, Appendix D, Table 10",
        columns=_stop_rule_columns(every_iteration=True),
        datasets=(*_COUNTERFACT, "zsre"),
        algos=("memit", "pmet"),
        wrapper_sets=_ITERATIVE,
        method=seed000_method,
        row_fields=("model", "method", "k"),
        rows="iterations",
        marks=_STOP_RULES,
        unedited=True,
        order=(_MODEL_ORDER, _SEED000_METHOD_ORDER),
        notes=(
            "One row per iteration k (k = 0: unedited model). Stop rules: the rules that pick iteration "
            "k on the trial-mean series of each dataset (the paper colours these rows; * = the rule is "
            "not met, last iteration shown). Rules: " + _STOP_RULE_NOTES
        ),
        requires=_SEED000_REQUIRES,
    )


def _seed000_table4() -> Layout:
    return Layout(
        name="seed000_table4",
        title="Comparing stop rules of iterative editing (COUNTERFACT and ZsRE)",
        source="seed 000, §6.3, Table 4 (all iterations in Table 10)",
        columns=_stop_rule_columns(every_iteration=False),
        datasets=(*_COUNTERFACT, "zsre"),
        algos=("memit", "pmet"),
        wrapper_sets=_ITERATIVE,
        method=seed000_method,
        row_fields=("model", "method", "role"),
        rows="roles",
        roles=tuple((rule, f"stop:{rule}") for rule in _STOP_RULES),
        order=(_MODEL_ORDER, _SEED000_METHOD_ORDER),
        notes=(
            "The three rules are applied after the fact to the iterations of the same runs (run "
            "with the rule disabled, i.e. all iterations): " + _STOP_RULE_NOTES
        ),
        requires=_SEED000_REQUIRES,
    )


# --- seed 002 ------------------------------------------------------------------------------------

_SEED002 = Layout(
    name="seed002_table3",
    title="ROME vs MEMIT (and FT-C) at scale: sequential single edits",
    source="seed 002, §4, Table 3 (qualitative; figures 1–4 for the curves)",
    columns=(
        Column("n_edits", "Edits", kind="meta", metric="num_edits", digits=0),
        _pct("eff", "Efficacy ES", "efficacy_success", phase="post"),
        _pct("spe", "Locality NS", "specificity_success", phase="post"),
        Column("cf_at", "CF at (edits)", metric="health.catastrophic_forgetting_at", phase="run", digits=0),
        Column("downstream_drop", "Downstream F1 loss", kind="derived", derive=downstream_f1_drop,
               scale=100.0, unit="pts"),
        _pct("forgotten", "Forgotten", "health.final.forgotten", phase="run"),
        Column("norm_dist", "Max norm. distance", kind="derived", derive=max_normalized_distance, style="sci"),
    ),
    datasets=_COUNTERFACT,
    algos=("ft_c", "rome", "memit"),
    wrapper_sets=(frozenset(),),
    row_fields=("model", "method"),
    where=(("protocol.name", ("sequential",)), ("protocol.batch_size", (1,))),
    order=(_MODEL_ORDER, ("method", ("FT-C", "ROME", "MEMIT"))),
    notes=(
        "The paper's Table 3 is qualitative; these columns are the measured counterparts "
        "(sequential protocol, batch size 1, evaluation after each edit; 4 samples of 1,000)."
    ),
    requires=(
        "summary.post.{efficacy,specificity}_success",
        "summary.health.final.forgotten (fraction of earlier successful edits now failed)",
        "summary.health.initial.downstream.<task>.f1 and summary.health.final.downstream.<task>.f1",
        "summary.health.final.normalized_distance.<layer>",
        "summary.health.catastrophic_forgetting_at (edits; omit or null when not observed)",
    ),
)

# --- seed 003 ------------------------------------------------------------------------------------


def _d4s_columns(groups: tuple[int, ...] | None) -> tuple[Column, ...]:
    columns: list[Column] = []
    for n in groups or (None,):
        group = f"Edits={n}" if n else ""
        prefix = f"e{n}_" if n else ""
        where = (("num_edits", (n,)),) if n else ()
        columns += [
            _pct(f"{prefix}eff", "Eff.", "efficacy_accuracy", group, where=where),
            _pct(f"{prefix}par", "Par.", "generalization_accuracy", group, where=where),
            _pct(f"{prefix}spe", "Spe.", "specificity_accuracy", group, where=where),
            Column(f"{prefix}avg", "Avg.", group=group, kind="derived", derive=mean_of_three_accuracies,
                   scale=100.0, unit="%", where=where),
        ]
    return tuple(columns)


def _seed003_layout(
    name: str, title: str, source: str, columns: tuple[Column, ...], datasets: tuple[str, ...], notes: str
) -> Layout:
    return Layout(
        name=name,
        title=title,
        source=source,
        columns=columns,
        datasets=datasets,
        algos=("ft", "rome", "memit", "pmet"),
        wrapper_sets=(frozenset(), frozenset({"d4s"})),
        method=seed003_method,
        row_fields=("model", "method"),
        where=(("protocol.name", ("sequential",)), ("protocol.batch_size", (1,))),
        order=(
            ("model", ("llama2-7b", "gpt-j")),
            ("method", ("FT", "ROME", "MEMIT", "PMET", "GRACE", "D4S")),
        ),
        notes=notes,
        requires=(
            "summary.post.{efficacy,generalization,specificity}_accuracy",
            "one run per edit count (num_edits = 100 / 500 / 1000), sequential protocol",
        ),
    )


# --- seed 004 ------------------------------------------------------------------------------------

_SEED004_ALGOS = ("memit", "alphaedit", "emmet")
_SEED004_METHOD_ORDER = (
    "method",
    (
        "MEMIT", "MEMIT + MPES", "AlphaEdit", "AlphaEdit + MPES", "EMMET", "EMMET + MPES",
        "MEMIT + Norm-Const", "ENCORE",
    ),
)  # fmt: skip
_SEED004_WRAPPERS = (
    frozenset(),
    frozenset({"mpes"}),
    frozenset({"norm_constraint"}),
    frozenset({"mpes", "norm_constraint"}),
    frozenset({"prev_edit_keys"}),
    frozenset({"mpes", "prev_edit_keys"}),
    frozenset({"norm_constraint", "prev_edit_keys"}),
    frozenset({"encore"}),
)
_SEED004_MODEL_ORDER = ("model", ("gpt2-xl", "llama2-7b", "llama3-8b"))
_SEQUENTIAL = (("protocol.name", ("sequential",)),)
_NO_MPES = (("has_wrapper:mpes", (False,)),)
_MPES = (("has_wrapper:mpes", (True,)),)

_SEED004_TABLE1 = Layout(
    name="seed004_table1",
    title="Probabilities of edited facts and time per edit, with and without MPES",
    source="seed 004, Table 1",
    columns=(
        Column("orig_prob", "Original fact prob.", metric="fact_probs.original", phase="run", where=_NO_MPES),
        Column("edited_prob", "Edited fact prob. w/o MPES", metric="fact_probs.edited", phase="run",
               where=_NO_MPES),
        Column("edited_prob_mpes", "Edited fact prob. w/ MPES", metric="fact_probs.edited", phase="run",
               where=_MPES),
        Column("time", "Time/edit w/o MPES", metric="timing.seconds_per_edit", phase="run", unit="s",
               where=_NO_MPES),
        Column("time_mpes", "Time/edit w/ MPES", metric="timing.seconds_per_edit", phase="run", unit="s",
               where=_MPES),
    ),
    datasets=_COUNTERFACT,
    algos=_SEED004_ALGOS,
    wrapper_sets=(frozenset(), frozenset({"mpes"}), frozenset({"prev_edit_keys"}), frozenset({"mpes", "prev_edit_keys"})),
    method=seed004_table1_method,
    row_fields=("method", "model"),
    where=_SEQUENTIAL,
    order=(("method", ("EMMET", "MEMIT", "AlphaEdit")), _SEED004_MODEL_ORDER),
    notes="Each row pairs a run without MPES and one with MPES (same algorithm, model and protocol).",
    requires=(
        "summary.fact_probs.original: mean p(o | prompt) of the unedited model over the edited facts",
        "summary.fact_probs.edited: mean p(o* | prompt) of the edited fact when its edit is made",
        "summary.timing.seconds_per_edit",
    ),
)

_SEED004_TABLES2_4 = Layout(
    name="seed004_tables2_4",
    title="10,000 sequential edits (batches of 100) on COUNTERFACT",
    source="seed 004, Tables 2, 3 and 4",
    columns=(
        _pct("es", "Edit Score", "efficacy_success"),
        _pct("ps", "Paraphrase Score", "generalization_success"),
        _pct("ns", "Neighborhood Score", "specificity_success"),
        _pct("score", "Overall Score", "score_success"),
        Column("ge", "Generation Entropy", metric="fluency", scale=100.0),
    ),
    datasets=_COUNTERFACT,
    algos=_SEED004_ALGOS,
    wrapper_sets=_SEED004_WRAPPERS,
    method=seed004_method,
    where=_SEQUENTIAL,
    order=(_SEED004_MODEL_ORDER, _SEED004_METHOD_ORDER),
    notes="MEMIT-style metrics (SPEC B8, eval.metrics=memit); Generation Entropy = n-gram entropy × 100.",
    requires=(
        "summary.post.{efficacy,generalization,specificity,score}_success",
        "summary.post.fluency (raw n-gram entropy, ≈ 5–6.5; rendered × 100)",
    ),
)

_SEED004_TABLES12_14 = Layout(
    name="seed004_tables12_14",
    title="10,000 sequential edits (batches of 100) on zsRE",
    source="seed 004, Tables 12, 13 and 14",
    columns=(
        _pct("es", "Edit Score", "efficacy_accuracy"),
        _pct("ps", "Paraphrase Score", "generalization_accuracy"),
        _pct("ns", "Neighborhood Score", "specificity_accuracy"),
    ),
    datasets=("zsre",),
    algos=_SEED004_ALGOS,
    wrapper_sets=_SEED004_WRAPPERS,
    method=seed004_method,
    where=_SEQUENTIAL,
    order=(_SEED004_MODEL_ORDER, _SEED004_METHOD_ORDER),
    notes="zsRE scores are token-level accuracies (SPEC C §11.2).",
    requires=("summary.post.{efficacy,generalization,specificity}_accuracy",),
)


def _all_layouts() -> tuple[Layout, ...]:
    stop_columns = (_K, *_SEED000_METRICS, _ABS_DP)
    return (
        _seed000_stop_layout(
            "seed000_table1",
            "Iterative model editing on COUNTERFACT: first iteration vs the stop iteration",
            "seed 000, §3, Table 1 (all iterations: Table 6)",
            stop_columns,
            _ITERATIVE,
            (("first", "first"), ("stop", "stop:abs_delta")),
            notes="Stop iteration: first k with |Δp_k| ≤ 1 on the trial-mean series (k* = not met, last k).",
        ),
        _seed000_stop_layout(
            "seed000_table2",
            "Neighbour-assisted (NA_) vs plain iterative editing on COUNTERFACT",
            "seed 000, §5.2, Table 2 (all iterations: Table 8)",
            stop_columns,
            (frozenset({"iterative"}), frozenset({"iterative", "na"})),
            (("stop", "stop:abs_delta"),),
            algos=("memit", "pmet"),
            with_num_edits=True,
            notes=(
                "# = number of edits (the neighbour-eligible COUNTERFACT subset of each model); rows "
                "with different # are different experiments and are never averaged together."
            ),
        ),
        _seed000_stop_layout(
            "seed000_table3",
            "Prefix-free (NA_) vs prefixed (NAP_) neighbour-assisted editing (GPT-2 XL)",
            "seed 000, §6.2, Table 3 (all iterations: Table 9)",
            (_K, *(c for c in _SEED000_METRICS if c.key in ("eff_acc", "gen_acc", "spe_acc", "score_acc"))),
            (frozenset({"iterative"}), frozenset({"iterative", "na"}), frozenset({"iterative", "nap"})),
            (("stop", "stop:abs_delta"),),
            algos=("memit", "pmet"),
            with_num_edits=True,
        ),
        _seed000_table4(),
        _seed000_iter_layout(
            "seed000_table6",
            _COUNTERFACT,
            "Iterative model editing on COUNTERFACT, every iteration",
            "seed 000, Appendix D, Table 6",
        ),
        _seed000_iter_layout(
            "seed000_table7",
            ("zsre",),
            "Iterative model editing on ZsRE, every iteration",
            "seed 000, Appendix D, Table 7",
        ),
        _seed000_iter_layout(
            "seed000_table8",
            _COUNTERFACT,
            "Neighbour-assisted (NA_) vs plain iterative editing on COUNTERFACT, every iteration",
            "seed 000, Appendix D, Table 8",
            (frozenset({"iterative"}), frozenset({"iterative", "na"})),
            algos=("memit", "pmet"),
            with_num_edits=True,
            notes="# = number of edits (the neighbour-eligible COUNTERFACT subset of each model).",
        ),
        _seed000_iter_layout(
            "seed000_table9",
            _COUNTERFACT,
            "Prefix-free (NA_) vs prefixed (NAP_) neighbour-assisted editing (GPT-2 XL), every iteration",
            "seed 000, Appendix D, Table 9",
            (frozenset({"iterative"}), frozenset({"iterative", "na"}), frozenset({"iterative", "nap"})),
            algos=("memit", "pmet"),
            with_num_edits=True,
            notes="# = number of edits (GPT-2 XL's neighbour-eligible COUNTERFACT subset, 739).",
        ),
        _seed000_table10(),
        _SEED002,
        _seed003_layout(
            "seed003_table2",
            "Sequential editing on ZsRE after 100 / 500 / 1000 edits",
            "seed 003, §5.1, Table 2",
            _d4s_columns((100, 500, 1000)),
            ("zsre",),
            "Avg. = arithmetic mean of Eff., Par. and Spe. (token-level accuracies on ZsRE).",
        ),
        _seed003_layout(
            "seed003_appD",
            "Sequential editing on COUNTERFACT",
            "seed 003, Appendix D, Table 3 (COUNTERFACT half)",
            _d4s_columns(None),
            _COUNTERFACT,
            "Avg. = arithmetic mean of Eff., Par. and Spe. (EasyEdit token accuracies).",
        ),
        _SEED004_TABLE1,
        _SEED004_TABLES2_4,
        _SEED004_TABLES12_14,
    )


def layout_registry() -> Registry[Layout]:
    """A fresh registry of every seed-table layout, by name (lookups list the valid choices)."""
    registry: Registry[Layout] = Registry("report layout")
    for layout in _all_layouts():
        registry.register(layout.name, layout)
    return registry


def get_layout(name: str) -> Layout:
    """The layout called ``name`` (a ConfigError with did-you-mean for unknown names)."""
    return layout_registry().get(name)


def layout_names() -> list[str]:
    """Names of every layout, in registration order."""
    return layout_registry().names()


def describe_layout(layout: Layout) -> str:
    """A plain-text description of a layout's runs, rows and the summary field of every column."""
    lines = [
        f"{layout.name}: {layout.title}",
        f"  source: {layout.source}",
        (
            f"  runs: dataset in {list(layout.datasets)}, algo in {list(layout.algos)}, "
            f"wrappers in {[sorted(w) or ['none'] for w in layout.wrapper_sets]}"
        ),
        *([f"  runs where {dict(layout.where)}"] if layout.where else []),
        f"  rows: {layout.rows} by {list(layout.row_fields)}"
        + (f", roles {[r for r, _ in layout.roles]}" if layout.roles else "")
        + (" + Unedited (pre)" if layout.unedited else ""),
        "  columns:",
    ]
    for column in layout.columns:
        where = f"  [runs where {dict(column.where)}]" if column.where else ""
        group = f"{column.group} / " if column.group else ""
        lines.append(f"    {group}{column.header()}: {column.reads(layout.rows)}{where}")
    if layout.requires:
        lines.append("  requires: " + "; ".join(layout.requires))
    return "\n".join(lines)

"""The one two-stage editor: optimization (targets) then spread (closed-form solve per layer).

An :class:`EditorBuilder` is made once per run; each wrapper's ``install`` adds its hooks to it
(loss rows, stop rules, spread terms, a solver decorator, an outer loop), and :meth:`EditorBuilder.build`
returns the :class:`Editor`. :meth:`Editor.edit` applies one step's records to the model in place.
Run state (the solver's and the spread terms') round-trips through :meth:`Editor.state_dict`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from edit_runner.data.record import EditRecord
from edit_runner.editing import solvers
from edit_runner.editing.algorithms import AlgorithmSpec
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.covariance import CovarianceCache
from edit_runner.editing.solver import DirectEditor, LayerProbe, Solver, SpreadTerm, SpreadTerms
from edit_runner.editing.targets import (
    ExtraRows,
    OptimizationSettings,
    StopRule,
    TargetResult,
    optimize_targets,
    rewrite_nll,
)
from edit_runner.models.layout import add_to_weight, weight_matrix
from edit_runner.models.loading import LoadedModel

Snapshot = dict[str, Any]
#: ``progress(records_done, records_total, step, num_steps, loss)`` during the optimization stage.
EditProgress = Callable[[int, int, int, int, torch.Tensor], None]


@dataclass
class StepReport:
    """What one :meth:`Editor.edit` call did: optimization steps per edit, timings, iterations.

    ``targets`` holds every optimization-stage result of the call in order (one per pass, per
    record for one-edit-per-pass methods): the ``z`` the spread stage received.
    """

    steps: list[int] = field(default_factory=list)
    init_nll: list[float] = field(default_factory=list)
    final_nll: list[float] = field(default_factory=list)
    iterations: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    extra: dict[str, float] = field(default_factory=dict)
    targets: list[TargetResult] = field(default_factory=list)


class OuterLoop(Protocol):
    """A loop around optimize→spread (iterative editing)."""

    def run(self, records: list[EditRecord], passes: PassControl) -> list[dict[str, Any]]:
        """Run passes until the loop's stop rule holds; returns one row per pass."""


@dataclass
class PassControl:
    """What an :class:`OuterLoop` may do with the editor for one step's records."""

    single_pass: Callable[[], torch.Tensor]  # one optimize→spread; per-edit final NLLs (δ = δ*)
    measure_after: Callable[[], torch.Tensor]  # per-edit NLLs on the updated weights (δ = 0)
    snapshot: Callable[[], Snapshot]
    restore: Callable[[Snapshot], None]


class EditorBuilder:
    """The editor under construction: what wrappers may read and the hooks they may install.

    Read: ``loaded``, ``spec``, ``config``, ``modules`` (the rewrite modules), ``original`` (their
    unedited weights), ``evaluate`` (metrics of the current model on records, from the runner).
    Install: ``extra_rows``, ``stop_rules``, ``spread_terms`` (by name), ``solver`` (may be
    decorated), ``before_pass``, ``residual_once``, ``outer`` and ``optimization`` (overrides of
    :class:`OptimizationSettings` fields).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        spec: AlgorithmSpec,
        config: Any,
        templates: ContextTemplates,
        covariance: CovarianceCache | None,
        evaluate: Callable[[list[EditRecord]], dict[str, Any]] | None = None,
    ) -> None:
        self.loaded = loaded
        self.spec = spec
        self.config = config
        self.templates = templates
        self.covariance = covariance
        self.evaluate = evaluate
        self.layers = sorted(int(layer) for layer in config.layers)
        self.modules = [loaded.layout.mlp_out.format(layer) for layer in self.layers]
        self.original = {name: weight_matrix(loaded.model.get_submodule(name)).detach().clone() for name in self.modules}
        self.solver: Solver | None = spec.build_solver(config) if spec.has_spread else None
        self.direct: DirectEditor | None = spec.direct_type(config) if spec.direct_type is not None else None
        self.extra_rows: list[ExtraRows] = []
        self.stop_rules: list[StopRule] = []
        self.spread_terms: dict[str, SpreadTerm] = {}
        self.before_pass: list[Callable[[], None]] = []
        self.residual_once = False
        self.outer: OuterLoop | None = None
        self.optimization: dict[str, Any] = {}
        self.progress: EditProgress | None = None

    def weight_offset(self, layer: int) -> torch.Tensor:
        """``W − W₀`` of ``layer``'s rewrite module (float64, math layout)."""
        name = self.loaded.layout.mlp_out.format(layer)
        weight = weight_matrix(self.loaded.model.get_submodule(name)).detach().double()
        return weight - self.original[name].to(weight.device).double()

    def reset_to_original(self) -> None:
        """Copy the unedited weights back into every rewrite module."""
        with torch.no_grad():
            for name in self.modules:
                weight_matrix(self.loaded.model.get_submodule(name)).copy_(self.original[name])

    def build(self) -> Editor:
        """The editor with every installed hook."""
        return Editor(self)


class Editor:
    """Applies an algorithm (with its wrappers' hooks) to a model, step by step."""

    def __init__(self, builder: EditorBuilder) -> None:
        loaded = builder.loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.layout = loaded.layout
        self.spec = builder.spec
        self.config = builder.config
        self.templates = builder.templates
        self.covariance = builder.covariance
        self.layers = builder.layers
        self.modules = builder.modules
        self.original = builder.original
        self.solver = builder.solver
        self.direct = builder.direct
        self.extra_rows = tuple(builder.extra_rows)
        self.stop_rules = tuple(builder.stop_rules)
        self.spread_terms = dict(builder.spread_terms)
        self.before_pass = tuple(builder.before_pass)
        self.residual_once = builder.residual_once
        self.outer = builder.outer
        self.optimization = dict(builder.optimization)
        self.progress = builder.progress
        if self.direct is not None:
            self.direct.attach(self.model)

    # ----- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Checkpointable run state: the solver's (or direct editor's) and each spread term's (tensors only)."""
        method = self.solver if self.solver is not None else self.direct
        return {
            "solver": method.state_dict() if method is not None else {},
            "terms": {name: term.state_dict() for name, term in self.spread_terms.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        method = self.solver if self.solver is not None else self.direct
        if method is not None:
            method.load_state_dict(state["solver"])
        for name, term in self.spread_terms.items():
            term.load_state_dict(state["terms"][name])

    # ----- public ----------------------------------------------------------------------------
    def edit(self, records: list[EditRecord]) -> StepReport:
        """Edit the model in place with ``records`` (one protocol step)."""
        report = StepReport()
        if self.direct is not None:
            start = time.perf_counter()
            report.extra.update(self.direct.edit(self.model, self.tokenizer, records, self._direct_params()))
            report.seconds["solve"] += time.perf_counter() - start
            return report
        if self.outer is None:
            self._single_pass(records, report)
            return report
        report.iterations = self.outer.run(
            records,
            PassControl(
                single_pass=lambda: self._single_pass(records, report),
                measure_after=lambda: self._measure(records, report),
                snapshot=self.snapshot,
                restore=self.restore,
            ),
        )
        return report

    # ----- stages ----------------------------------------------------------------------------
    def _settings(self, sites: tuple[str, ...]) -> OptimizationSettings:
        a = self.config
        settings = OptimizationSettings(
            sites=sites,
            num_steps=int(a.v_num_grad_steps),
            lr=float(a.v_lr),
            weight_decay=float(a.v_weight_decay),
            clamp_norm_factor=float(a.clamp_norm_factor),
            kl_factor=float(a.kl_factor),
            nll_loss_factor=float(a.nll_loss_factor),
            pmet_rule=self.spec.pmet_rule,
            chunk=int(a.target_chunk),
        )
        return dataclasses.replace(settings, **self.optimization)

    def _optimize(self, records: list[EditRecord], sites: tuple[str, ...], report: StepReport, offset: int, total: int) -> TargetResult:
        start = time.perf_counter()
        settings = self._settings(sites)
        shown = self.progress
        progress = None if shown is None else (lambda done, step, loss: shown(offset + done, total, step, settings.num_steps, loss))
        result = optimize_targets(self.model, self.tokenizer, records, self.templates, settings, self.extra_rows, self.stop_rules, progress)
        report.seconds["target"] += time.perf_counter() - start
        report.steps += result.steps.tolist()
        report.init_nll += result.init_nll.tolist()
        report.final_nll += result.final_nll.tolist()
        report.targets.append(result)
        return result

    def _single_pass(self, records: list[EditRecord], report: StepReport) -> torch.Tensor:
        for hook in self.before_pass:
            hook()
        size = 1 if self.spec.one_edit_per_pass else len(records)
        return torch.cat(
            [self._optimize_and_spread(records[i : i + size], report, i, len(records)) for i in range(0, len(records), size)]
        )

    def _measure(self, records: list[EditRecord], report: StepReport) -> torch.Tensor:
        start = time.perf_counter()
        pooled = self.extra_rows if self.optimization.get("pooled_neighbors", False) else ()
        nll = rewrite_nll(self.model, self.tokenizer, records, self.templates, pooled)
        report.seconds["measure"] += time.perf_counter() - start
        return nll

    def _optimize_and_spread(self, records: list[EditRecord], report: StepReport, offset: int, total: int) -> torch.Tensor:
        assert self.solver is not None
        solver = self.solver
        z_layer = self.layers[-1]
        sites = self.spec.sites(self.layout, z_layer)
        targets = self._optimize(records, sites, report, offset, total)
        z = targets.z[sites[0]]
        probe = LayerProbe(self.model, self.tokenizer, self.layout, self.templates, records)
        fixed = z - solver.current(probe, z_layer, None) if self.residual_once else None
        total = len(self.layers)
        for i, (layer, name) in enumerate(zip(self.layers, self.modules)):
            module = self.model.get_submodule(name)
            start = time.perf_counter()
            keys = probe.keys(layer)
            base = fixed if fixed is not None else z - solver.current(probe, z_layer, keys)
            terms = SpreadTerms(bare_keys=probe.bare_inputs(name) if solver.needs_bare_keys else None)
            report.seconds["key"] += time.perf_counter() - start
            start = time.perf_counter()
            resid = base.double() / solvers.spread_divisor(self.spec.spread, total - i)
            for term in self.spread_terms.values():
                term.contribute(layer, terms)
            cov = self.covariance.get(name).to(keys.device) if solver.needs_covariance else None
            delta = solver.delta(layer, keys, resid, cov, terms)
            for term in self.spread_terms.values():
                term.after_layer(layer, keys)
            add_to_weight(module, delta)
            report.seconds["solve"] += time.perf_counter() - start
        start = time.perf_counter()
        solver.after_step(probe, self.layers)
        report.seconds["key"] += time.perf_counter() - start
        return targets.final_nll

    def _direct_params(self) -> list[torch.nn.Parameter]:
        params = []
        for name in self.modules:
            module = self.model.get_submodule(name)
            params += [p for p in (module.weight, getattr(module, "bias", None)) if p is not None]
        return params

    # ----- weights ---------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The touched modules' weights and biases and the run state (:meth:`state_dict`), cloned."""
        params = {}
        for name in self.modules:
            module = self.model.get_submodule(name)
            for attr in ("weight", "bias"):
                if getattr(module, attr, None) is not None:
                    params[f"{name}.{attr}"] = getattr(module, attr).detach().clone()
        return {"params": params, "state": _cloned(self.state_dict())}

    def restore(self, snapshot: Snapshot) -> None:
        """Put back what :meth:`snapshot` took; the snapshot itself stays unchanged (reusable)."""
        with torch.no_grad():
            for key, value in snapshot["params"].items():
                name, attr = key.rsplit(".", 1)
                getattr(self.model.get_submodule(name), attr).copy_(value)
        self.load_state_dict(_cloned(snapshot["state"]))


def _cloned(state: Any) -> Any:
    """A copy of nested dicts of tensors whose tensors share no storage with ``state``'s."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {key: _cloned(value) for key, value in state.items()}
    return state

"""The one two-stage editor: optimization (targets) then spread (closed-form solve per layer).

An :class:`Editor` is built once per run; :meth:`Editor.edit` applies one step's records to the
model in place. Per-run solver state (AlphaEdit's projector and key history, ENCORE's previous-edit
keys, D4S running sums) lives on the editor and round-trips through :meth:`state_dict`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from edit_runner.data.record import EditRecord
from edit_runner.editing import solvers
from edit_runner.editing.algorithms import AlgorithmSpec
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.covariance import CovarianceCache
from edit_runner.editing.finetune import FinetuneSettings, finetune
from edit_runner.editing.keys import bare_activations, compute_keys
from edit_runner.editing.targets import (
    ExtraRows,
    OptimizationSettings,
    StopRule,
    TargetResult,
    optimize_targets,
    rewrite_nll,
)
from edit_runner.editing.wrappers import IterationRecord, iterate
from edit_runner.models.layout import add_to_weight, weight_matrix
from edit_runner.models.loading import LoadedModel


@dataclass
class SpreadOptions:
    """Spread-stage wrapper switches (norm constraint, previous-edit keys, D4S)."""

    norm_lambda: float = 0.0
    prev_edit_keys: bool = False
    d4s: str | None = None  # None | "reference" | "remeasured"


@dataclass
class IterativeOptions:
    """Outer-loop settings of iterative editing."""

    max_iterations: int
    stop_rule: str
    epsilon: float


@dataclass
class StepReport:
    """What one :meth:`Editor.edit` call did: optimization steps per edit, timings, iterations."""

    steps: list[int] = field(default_factory=list)
    init_nll: list[float] = field(default_factory=list)
    final_nll: list[float] = field(default_factory=list)
    iterations: list[IterationRecord] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    extra: dict[str, float] = field(default_factory=dict)


class Editor:
    """Applies an algorithm (with its wrappers) to a model, step by step."""

    def __init__(
        self,
        loaded: LoadedModel,
        spec: AlgorithmSpec,
        algo: Any,
        templates: ContextTemplates,
        covariance: CovarianceCache | None,
        *,
        spread: SpreadOptions | None = None,
        iterative: IterativeOptions | None = None,
        extra_rows: tuple[ExtraRows, ...] = (),
        stop_rules: tuple[StopRule, ...] = (),
        pooled_neighbors: bool = False,
        neighbor_weight: float = 1.0,
    ) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.layout = loaded.layout
        self.spec = spec
        self.algo = algo
        self.templates = templates
        self.covariance = covariance
        self.spread_options = spread or SpreadOptions()
        self.iterative = iterative
        self.extra_rows = extra_rows
        self.stop_rules = stop_rules
        self.pooled_neighbors = pooled_neighbors
        self.neighbor_weight = neighbor_weight
        self.layers = sorted(int(layer) for layer in algo.layers)
        self.modules = [self.layout.mlp_out.format(layer) for layer in self.layers]
        self.original = {name: weight_matrix(self.model.get_submodule(name)).detach().clone() for name in self.modules}
        self.key_history: dict[int, torch.Tensor] = {}
        self.prev_kkt: dict[int, torch.Tensor] = {}
        self.running_sums = solvers.RunningSums()
        self._projectors: dict[int, torch.Tensor] = {}

    # ----- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Checkpointable solver state (AlphaEdit key history, ENCORE memory, D4S sums)."""
        return {
            "key_history": {k: v.clone() for k, v in self.key_history.items()},
            "prev_kkt": {k: v.clone() for k, v in self.prev_kkt.items()},
            "running_sums": self.running_sums.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.key_history = dict(state["key_history"])
        self.prev_kkt = dict(state["prev_kkt"])
        self.running_sums.load_state_dict(state["running_sums"])

    # ----- public ----------------------------------------------------------------------------
    def edit(self, records: list[EditRecord]) -> StepReport:
        """Edit the model in place with ``records`` (one protocol step)."""
        report = StepReport()
        if not self.spec.has_optimization:
            start = time.perf_counter()
            report.extra.update(self._finetune(records))
            report.seconds["solve"] += time.perf_counter() - start
            return report
        if self.iterative is None:
            self._single_pass(records, report)
            return report
        report.iterations = iterate(
            single_pass=lambda: self._single_pass(records, report),
            measure_after=lambda: self._measure(records, report),
            snapshot=self._snapshot,
            restore=self._restore,
            max_iterations=self.iterative.max_iterations,
            stop_rule=self.iterative.stop_rule,
            epsilon=self.iterative.epsilon,
            on_iteration=getattr(self, "on_iteration", None),
        )
        return report

    # ----- stages ----------------------------------------------------------------------------
    def _settings(self, sites: tuple[str, ...]) -> OptimizationSettings:
        a = self.algo
        return OptimizationSettings(
            sites=sites,
            num_steps=int(a.v_num_grad_steps),
            lr=float(a.v_lr),
            weight_decay=float(a.v_weight_decay),
            clamp_norm_factor=float(a.clamp_norm_factor),
            kl_factor=float(a.kl_factor),
            nll_loss_factor=float(a.nll_loss_factor),
            pmet_rule=self.spec.pmet_rule,
            neighbor_weight=self.neighbor_weight,
            pooled_neighbors=self.pooled_neighbors,
            chunk=int(a.target_chunk),
        )

    def _sites(self, layer: int) -> tuple[str, ...]:
        site = self.spec.delta_site
        if site == "mlp":
            return (self.layout.mlp.format(layer),)
        if site == "pmet":
            return (self.layout.mlp_out.format(layer), self.layout.attn_out.format(layer))
        return (self.layout.layer(layer),)

    def _optimize(self, records: list[EditRecord], layer: int, report: StepReport) -> TargetResult:
        start = time.perf_counter()
        result = optimize_targets(
            self.model, self.tokenizer, records, self.templates, self._settings(self._sites(layer)), self.extra_rows, self.stop_rules
        )
        report.seconds["target"] += time.perf_counter() - start
        report.steps += result.steps.tolist()
        report.init_nll += result.init_nll.tolist()
        report.final_nll += result.final_nll.tolist()
        return result

    def _single_pass(self, records: list[EditRecord], report: StepReport) -> torch.Tensor:
        if self.spec.solver == "rome":
            finals = [self._rome_one(record, report) for record in records]
            return torch.cat(finals)
        if self.spread_options.d4s == "reference":
            self._set_layers_to_original()
        z_layer = self.layers[-1]
        targets = self._optimize(records, z_layer, report)
        self._spread(records, targets, report)
        return targets.final_nll

    def _measure(self, records: list[EditRecord], report: StepReport) -> torch.Tensor:
        start = time.perf_counter()
        nll = rewrite_nll(self.model, self.tokenizer, records, self.templates)
        report.seconds["measure"] += time.perf_counter() - start
        return nll

    def _rome_one(self, record: EditRecord, report: StepReport) -> torch.Tensor:
        layer = self.layers[0]
        module_name = self.layout.mlp_out.format(layer)
        targets = self._optimize([record], layer, report)
        start = time.perf_counter()
        z = targets.z[self._sites(layer)[0]][:, 0]
        k_star = compute_keys(self.model, self.tokenizer, [record], module_name, self.templates)[:, 0]
        k_bare = bare_activations(self.model, self.tokenizer, [record], module_name, "input")[:, 0]
        if self.algo.consistent_keys:
            # r-ROME (SPEC B §6): the residual is measured at k* as well, v* − (W k* + b)
            module = self.model.get_submodule(module_name)
            with torch.no_grad():
                cur = module(k_star.to(module.weight.dtype)[None])[0].float()
        else:
            cur = bare_activations(self.model, self.tokenizer, [record], module_name, "output")[:, 0]
        report.seconds["key"] += time.perf_counter() - start
        start = time.perf_counter()
        cov = self.covariance.get(module_name).to(z.device) if self.algo.mom2_adjustment else None
        delta = solvers.rome_delta(
            k_star, k_bare, z - cur, cov, mom2_adjustment=bool(self.algo.mom2_adjustment), consistent_keys=bool(self.algo.consistent_keys)
        )
        add_to_weight(self.model.get_submodule(module_name), delta)
        report.seconds["solve"] += time.perf_counter() - start
        return targets.final_nll

    def _current(self, records: list[EditRecord], z_layer: int) -> torch.Tensor:
        if self.spec.residual_site == "mlp_out":
            return bare_activations(self.model, self.tokenizer, records, self.layout.mlp_out.format(z_layer), "output")
        return bare_activations(self.model, self.tokenizer, records, self.layout.layer(z_layer), "output")

    def _spread(self, records: list[EditRecord], targets: TargetResult, report: StepReport) -> None:
        z_layer = self.layers[-1]
        z = targets.z[self._sites(z_layer)[0]]
        d4s = self.spread_options.d4s
        residual = z - self._current(records, z_layer) if d4s == "reference" else None
        total = len(self.layers)
        for i, layer in enumerate(self.layers):
            name = self.layout.mlp_out.format(layer)
            module = self.model.get_submodule(name)
            start = time.perf_counter()
            keys = compute_keys(self.model, self.tokenizer, records, name, self.templates).double()
            base = residual if residual is not None else z - self._current(records, z_layer)
            report.seconds["key"] += time.perf_counter() - start
            start = time.perf_counter()
            resid = base.double() / solvers.spread_divisor(self.spec.spread, total - i)
            delta = self._solve(layer, name, keys, resid, module)
            add_to_weight(module, delta)
            report.seconds["solve"] += time.perf_counter() - start
        if self.spec.solver == "alphaedit":
            start = time.perf_counter()
            for layer, name in zip(self.layers, self.modules):
                keys = compute_keys(self.model, self.tokenizer, records, name, self.templates).double()
                self.key_history[layer] = self.key_history.get(layer, 0) + (keys @ keys.T).cpu()
            report.seconds["key"] += time.perf_counter() - start

    def _solve(self, layer: int, name: str, keys: torch.Tensor, resid: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
        options = self.spread_options
        device = keys.device
        cov = self.covariance.get(name).to(device)
        if self.spec.solver == "alphaedit":
            projector = self._projector(layer, cov)
            history = self.key_history.get(layer)
            dtype = torch.float64 if self.algo.alphaedit_float64 else torch.float32
            return solvers.alphaedit_delta(
                keys, resid, projector, None if history is None else history.to(device), float(self.algo.l2) + options.norm_lambda, dtype=dtype
            )
        prev = self.prev_kkt.get(layer)
        preservation = solvers.preservation_matrix(
            cov.double(), float(self.algo.mom2_update_weight), norm_lambda=options.norm_lambda,
            prev_kkt=None if (prev is None or not options.prev_edit_keys) else prev.to(device),
        )
        if options.prev_edit_keys:
            self.prev_kkt[layer] = (0 if prev is None else prev) + (keys @ keys.T).cpu()
        if self.spec.solver == "emmet":
            return solvers.emmet_delta(keys, resid, preservation, float(self.algo.emmet_lambda))
        if options.d4s is not None:
            self.running_sums.add(layer, keys.cpu(), resid.cpu())
            cumulative = self.running_sums.delta(layer, preservation.cpu()).to(device)
            current = weight_matrix(module).detach().double() - self.original[name].to(device).double()
            return cumulative - current
        return solvers.memit_delta(keys, resid, preservation)

    def _projector(self, layer: int, cov: torch.Tensor) -> torch.Tensor:
        if layer not in self._projectors:
            dtype = torch.float64 if self.algo.alphaedit_float64 else torch.float32
            self._projectors[layer] = solvers.null_space_projector(cov, float(self.algo.nullspace_threshold), dtype=dtype)
        return self._projectors[layer].to(cov.device)

    def _finetune(self, records: list[EditRecord]) -> dict[str, float]:
        params = []
        for name in self.modules:
            module = self.model.get_submodule(name)
            params += [p for p in (module.weight, getattr(module, "bias", None)) if p is not None]
        a = self.algo
        settings = FinetuneSettings(
            lr=float(a.ft_lr), num_steps=int(a.ft_num_steps),
            norm_constraint=None if a.ft_norm_constraint is None else float(a.ft_norm_constraint),
            weight_decay=float(a.ft_weight_decay), batch_size=int(a.ft_batch_size),
        )
        return finetune(self.model, self.tokenizer, records, params, settings)

    # ----- weights ---------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        weights = {name: self.model.get_submodule(name).weight.detach().clone() for name in self.modules}
        return {"weights": weights, "state": self.state_dict()}

    def _restore(self, snapshot: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, weight in snapshot["weights"].items():
                self.model.get_submodule(name).weight.copy_(weight)
        self.load_state_dict(snapshot["state"])

    def _set_layers_to_original(self) -> None:
        with torch.no_grad():
            for name in self.modules:
                weight_matrix(self.model.get_submodule(name)).copy_(self.original[name])

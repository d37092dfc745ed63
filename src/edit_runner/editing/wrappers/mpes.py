"""Most-probable early stopping (seed 004, SPEC C §7.1): a stop rule of the optimization stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edit_runner.editing.algorithms import OPTIMIZATION
from edit_runner.editing.targets import StepStats
from edit_runner.editing.wrappers import WRAPPERS, Wrapper, WrapperEntry
from edit_runner.errors import ConfigError

if TYPE_CHECKING:
    from edit_runner.editing.editor import EditorBuilder
    from edit_runner.plan import RunPlan


@dataclass
class MPESConfig:
    """``prob_cutoff=-c`` stops at the c-th all-argmax pass; ``0 < prob_cutoff < 1`` at that probability."""

    prob_cutoff: float = -1.0


class MPESRule:
    """Most-probable early stopping (SPEC C §7.1).

    ``prob_cutoff < 0``: count the passes at which every target token is the argmax in every
    prefixed prompt; stop at the ``|prob_cutoff|``-th. ``0 < prob_cutoff < 1``: stop once the mean
    over the rewriting prompts of ``exp(−NLL_i)`` (``NLL_i`` per-token, ENCORE's ``compute_z.py``) exceeds it.
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
        """Stop records whose new object is top-1 often enough (or probable enough); stays on the stats' device."""
        if self.prob_cutoff < 0:
            self.counter = self.counter.to(stats.prefixed_all_argmax.device) + stats.prefixed_all_argmax.long()
            return self.counter >= round(abs(self.prob_cutoff))
        return stats.rewrite_prob > self.prob_cutoff


class MPES(Wrapper):
    """Adds :class:`MPESRule` to the optimization stage and reports the steps it saved."""

    name = "mpes"
    needs = frozenset({OPTIMIZATION})
    conflicts: frozenset[str] = frozenset()

    def __init__(self, config: MPESConfig) -> None:
        self.prob_cutoff = float(config.prob_cutoff)

    def check(self, plan: RunPlan) -> None:
        """``prob_cutoff`` must be non-zero."""
        if self.prob_cutoff == 0:
            raise ConfigError("wrapper.mpes.prob_cutoff: 0 disables MPES; drop the wrapper or give e.g. -1")

    def install(self, builder: EditorBuilder) -> None:
        """Add the stop rule."""
        builder.stop_rules.append(MPESRule(self.prob_cutoff))

    def summarize(self, summary: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        """Mean optimization steps and seconds per edit (seed 004 Table 1)."""
        optimization_steps = [s for step in steps for s in step["optimization_steps"]]
        if optimization_steps:
            summary["mpes"] = {"mean_steps": float(np.mean(optimization_steps)), "seconds_per_edit": summary["timing"]["seconds_per_edit"]}


WRAPPERS.register("mpes", WrapperEntry("mpes", MPESConfig, MPES, order=40))

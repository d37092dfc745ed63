"""Every algorithm as a small declarative variant of the one two-stage core (DESIGN.md).

ROME, MEMIT, PMET, EMMET and AlphaEdit differ only in where δ is added, how templates are
averaged, how the residual is spread over layers and which normal equations are solved.
"""

from __future__ import annotations

from dataclasses import dataclass

from edit_runner.registry import Registry


@dataclass(frozen=True)
class AlgorithmSpec:
    """What an algorithm is made of and what it supports."""

    name: str
    template_style: str  # "rome" (21 flat templates) | "memit" (bare + 5 prefixes)
    delta_site: str  # "mlp" (ROME: MLP output of the edited layer) | "block" (block output at the last layer) | "pmet"
    residual_site: str  # where ``cur`` is read for R = z − cur: "block" | "mlp_out" | "rank_one"
    spread: str  # "divide" 1/(L−i) | "sqrt" 1/sqrt(L−i) | "none"
    solver: str  # "rome" | "memit" | "emmet" | "alphaedit" | "finetune"
    supports_batched: bool = True
    supports_sequential: bool = True
    needs_covariance: bool = True
    has_spread: bool = True
    has_optimization: bool = True
    pmet_rule: bool = False


ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm")

for _spec in (
    AlgorithmSpec("rome", "rome", "mlp", "rank_one", "none", "rome"),
    AlgorithmSpec("memit", "memit", "block", "block", "divide", "memit"),
    AlgorithmSpec("pmet", "memit", "pmet", "mlp_out", "sqrt", "memit", pmet_rule=True),
    AlgorithmSpec("emmet", "memit", "block", "block", "divide", "emmet"),
    AlgorithmSpec("alphaedit", "memit", "block", "block", "divide", "alphaedit"),
    AlgorithmSpec("ft", "memit", "block", "block", "none", "finetune", needs_covariance=False, has_spread=False, has_optimization=False),
    AlgorithmSpec("ft_c", "memit", "block", "block", "none", "finetune", needs_covariance=False, has_spread=False, has_optimization=False),
):
    ALGORITHMS.register(_spec.name, _spec)


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The spec of a registered algorithm (did-you-mean error for unknown names)."""
    return ALGORITHMS.get(name)

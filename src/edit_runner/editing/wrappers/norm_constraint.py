"""The norm constraint (seed 004): ``+ λ_n‖Ŵ − W‖²``, i.e. ``+ λ_n I`` in the spread's normal equations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from edit_runner.editing.solver import SpreadTerms, stateless
from edit_runner.editing.wrappers import WRAPPERS, Wrapper, WrapperEntry

if TYPE_CHECKING:
    from edit_runner.editing.editor import EditorBuilder


@dataclass
class NormConstraintConfig:
    """``norm_lambda`` is λ_n."""

    norm_lambda: float = 10.0


class IdentityTerm:
    """``+ λ_n I`` on every layer (no state)."""

    term = "identity"

    def __init__(self, norm_lambda: float) -> None:
        self.norm_lambda = norm_lambda

    def contribute(self, layer: int, terms: SpreadTerms) -> None:
        """Add λ_n to the identity coefficient."""
        terms.identity += self.norm_lambda

    def after_layer(self, layer: int, K: Tensor) -> None:
        """No memory."""

    def state_dict(self) -> dict[str, Tensor]:
        """No state."""
        return stateless()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """No state."""


class NormConstraint(Wrapper):
    """Installs :class:`IdentityTerm`."""

    name = "norm_constraint"
    needs = frozenset({"spread:identity"})
    conflicts: frozenset[str] = frozenset()

    def __init__(self, config: NormConstraintConfig) -> None:
        self.norm_lambda = float(config.norm_lambda)

    def install(self, builder: EditorBuilder) -> None:
        """Add the identity term."""
        builder.spread_terms[self.name] = IdentityTerm(self.norm_lambda)


WRAPPERS.register("norm_constraint", WrapperEntry("norm_constraint", NormConstraintConfig, NormConstraint, order=50))

"""ENCORE's previous-edit key memory (SPEC C §7.2): ``+ Σ_p K_p K_pᵀ`` of earlier steps in the preservation term.

The keys are those the spread stage solved for, measured inside the layer loop (lower layers
already edited, before the layer itself), as the ENCORE repository's ``SEQ_CACHE``. Its MEMIT and
EMMET add the memory to the preservation term; its AlphaEdit fork uses the same in-loop memory as
the key history of the projected solve (instead of AlphaEdit's own post-step re-measured keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from edit_runner.editing.solver import SpreadTerms
from edit_runner.editing.wrappers import WRAPPERS, Wrapper, WrapperEntry

if TYPE_CHECKING:
    from edit_runner.editing.editor import EditorBuilder


@dataclass
class PrevEditKeysConfig:
    """``enabled: false`` keeps the wrapper listed but inactive."""

    enabled: bool = True


class KeyMemoryTerm:
    """Per layer ``Σ_p K_p K_pᵀ`` of the keys solved for so far (float64, kept on the keys' device)."""

    term = "kkt"

    def __init__(self) -> None:
        self.memory: dict[int, Tensor] = {}

    def contribute(self, layer: int, terms: SpreadTerms) -> None:
        """Add the memory of ``layer`` (nothing before the first step) and flag that a memory is installed."""
        terms.key_memory = True
        if layer in self.memory:
            terms.add_kkt(self.memory[layer])

    def after_layer(self, layer: int, K: Tensor) -> None:
        """Remember this step's keys."""
        kkt = K @ K.T
        self.memory[layer] = self.memory[layer].to(kkt.device) + kkt if layer in self.memory else kkt

    def state_dict(self) -> dict[str, Tensor]:
        """``kkt.<layer>`` copies."""
        return {f"kkt.{layer}": value.clone() for layer, value in self.memory.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        self.memory = {int(key.split(".")[1]): value.clone() for key, value in state.items()}


class PrevEditKeys(Wrapper):
    """Installs :class:`KeyMemoryTerm` (when enabled)."""

    name = "prev_edit_keys"
    needs = frozenset({"spread:kkt"})
    conflicts: frozenset[str] = frozenset()

    def __init__(self, config: PrevEditKeysConfig) -> None:
        self.enabled = bool(config.enabled)

    def install(self, builder: EditorBuilder) -> None:
        """Add the key memory."""
        if self.enabled:
            builder.spread_terms[self.name] = KeyMemoryTerm()


WRAPPERS.register("prev_edit_keys", WrapperEntry("prev_edit_keys", PrevEditKeysConfig, PrevEditKeys, order=60))

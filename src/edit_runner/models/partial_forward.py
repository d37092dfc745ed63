"""Replaying the lower decoder blocks of a repeated forward pass from a cache (exact).

When a vector is added at the output of block ``l``, or at a module inside block ``l + 1``, the
outputs of blocks ``0..l`` do not depend on it (apart from the edit of block ``l``'s own output). A loop that runs the same inputs
many times (the Adam steps of the optimization stage) can run those blocks once, keep the output
of the last of them, and from then on put in their place modules that return the kept output:
the embedding still runs (it is cheap and builds the masks and positions the upper blocks need),
every upper block runs as usual, and forward hooks on the replaced block still see (and may edit)
its output. Only families with a registered :class:`~edit_runner.models.layout.ModelLayout` are cut;
for any other model :func:`lower_block_cache` returns ``None`` and the full pass is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from edit_runner.models.hooks import StopForward, hidden_of, with_hidden
from edit_runner.models.layout import LAYOUTS


def cut_block(sites: Sequence[str], layers: str) -> int | None:
    """The last block whose output does not depend on what is added at ``sites``, except through
    an edit of its own output: ``l`` for a site that is block ``l`` itself, ``l − 1`` for a module
    inside block ``l``; the lowest over the sites. ``None`` when nothing can be cut (a site outside
    the blocks, or inside block 0)."""
    cuts: list[int] = []
    for site in sites:
        if not site.startswith(layers + "."):
            return None
        index, _, inner = site[len(layers) + 1 :].partition(".")
        if not index.isdigit():
            return None
        cuts.append(int(index) - 1 if inner else int(index))
    low = min(cuts, default=-1)
    return low if low >= 0 else None


class _Replay(nn.Module):
    """Stands in for a lower block: returns the kept output of the cut block, whatever its input."""

    def __init__(self, cache: LowerBlockCache) -> None:
        super().__init__()
        self._cache = [cache]  # a list, so that the cache is not registered as a submodule

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The kept output of the cut block, in the form the block returns."""
        cache = self._cache[0]
        return with_hidden(cache.template, cache.hidden)


class LowerBlockCache:
    """The kept output of blocks ``0..cut`` of one batch, and the replay of it (see the module docstring)."""

    def __init__(self, model: nn.Module, layers: str, cut: int) -> None:
        self.model = model
        self.layers = layers
        self.cut = cut
        self.hidden: torch.Tensor | None = None
        self.template: Any = None

    def capture(self, run: Callable[[], object]) -> None:
        """Run ``run()`` (the pass to repeat, without any edit) up to the cut block and keep its output."""

        def keep(module: nn.Module, args: tuple, output: Any) -> Any:
            self.template, self.hidden = output, hidden_of(output).detach()
            raise StopForward

        handle = self.model.get_submodule(f"{self.layers}.{self.cut}").register_forward_hook(keep)
        try:
            with torch.no_grad():
                run()
        except StopForward:
            pass
        finally:
            handle.remove()
        if self.hidden is None:
            raise RuntimeError(f"the forward pass never reached {self.layers}.{self.cut}")

    def select(self, where: torch.Tensor) -> None:
        """Keep only the batch rows ``where``."""
        if self.hidden is not None:
            self.hidden = self.hidden[where.to(self.hidden.device)]

    @contextmanager
    def replaying(self) -> Iterator[None]:
        """Blocks ``0..cut`` replaced by the kept output while inside (register edit hooks inside, too)."""
        blocks = self.model.get_submodule(self.layers)
        originals = [blocks[i] for i in range(self.cut + 1)]
        replay = _Replay(self)
        try:
            for i in range(self.cut + 1):
                blocks[i] = replay
            yield
        finally:
            for i, block in enumerate(originals):
                blocks[i] = block


def lower_block_cache(model: nn.Module, sites: Sequence[str]) -> LowerBlockCache | None:
    """A :class:`LowerBlockCache` for edits at ``sites`` of ``model``, or ``None`` where nothing can be cut."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        return None
    layers = LAYOUTS.get(model_type).layers
    cut = cut_block(sites, layers)
    return None if cut is None else LowerBlockCache(model, layers, cut)


def replaying(cache: LowerBlockCache | None) -> Any:
    """``cache.replaying()``, or a no-op context without a cache."""
    return nullcontext() if cache is None else cache.replaying()

"""One activation-hook helper used everywhere (keys, targets, covariance, PMET, NA).

Handles both forms a block can return: a tuple ``(hidden, ...)`` or, in transformers 5, a bare
tensor (SPEC Part B §7). Inputs are read from the first positional argument or, when a module is
called with keyword arguments only, from ``hidden_states``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

OutputEdit = Callable[[str, torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early once everything needed was captured."""


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (first element of a tuple, or the tensor itself)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """Rebuild a module output with its hidden-state tensor replaced."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


def input_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The main input tensor of a module call (first positional arg, else ``hidden_states``)."""
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise RuntimeError("module was called without a tensor input")


@dataclass
class Trace:
    """What was captured for each traced module during the last forward pass."""

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


@contextmanager
def trace(
    model: nn.Module,
    names: Iterable[str],
    *,
    inputs: bool = False,
    outputs: bool = False,
    edit_output: OutputEdit | None = None,
    stop_after: str | None = None,
    detach: bool = True,
) -> Iterator[Trace]:
    """Trace (and optionally edit) named modules for the forward passes run inside the ``with`` block.

    ``edit_output(name, hidden)`` returns the hidden state that replaces the module's output.
    ``stop_after`` names a module after which the forward pass is aborted (catch with
    :func:`run_until_stop`). Captured tensors are detached unless ``detach=False``.
    """
    names = list(dict.fromkeys(names))
    captured = Trace()
    handles = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach() if detach else tensor

    for name in names:
        module = model.get_submodule(name)

        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any, name: str = name) -> Any:
            if inputs:
                captured.inputs[name] = keep(input_of(args, kwargs))
            new_output = output
            if edit_output is not None:
                new_output = with_hidden(output, edit_output(name, hidden_of(output)))
            if outputs:
                captured.outputs[name] = keep(hidden_of(new_output))
            if stop_after == name:
                raise StopForward
            return new_output

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def run_until_stop(model: nn.Module, **batch: torch.Tensor) -> Any:
    """Run ``model(**batch)``; a :class:`StopForward` raised by a hook ends the pass and returns None."""
    try:
        return model(**batch)
    except StopForward:
        return None

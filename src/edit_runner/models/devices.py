"""Where tensors go when a model's modules live on several devices (``model.device_map``).

The rule every stage follows: token ids and masks go to the device of the input embedding (accelerate's
hooks then move hidden states from layer to layer); an index or mask tensor goes to the device of the
tensor it indexes; a layer's keys and targets stay on that layer's device; a weight update is solved on
the device of its keys and added on the weight's device. Nothing uses the model's "first parameter".
"""

from __future__ import annotations

import torch
from torch import nn


def module_device(module: nn.Module) -> torch.device:
    """Device of ``module``'s first parameter (or buffer); CPU for a module that holds neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def input_device(model: nn.Module) -> torch.device:
    """Device that token ids, attention masks and position ids of ``model``'s inputs go to: its input
    embedding's (a model without ``get_input_embeddings``, e.g. a test double, uses its own first parameter's)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return module_device(embeddings if embeddings is not None else model)

"""MEND's gradient editor network (Mitchell et al., 2022, "Fast Model Editing at Scale") and its checkpoint.

For an edited weight ``W`` (``d_out × d_in``, math layout) the fine-tuning gradient of one edit is
a sum of rank-1 terms ``∇W = Σ_i δ_i u_iᵀ`` over token positions ``i`` (``u`` the layer's input,
``δ`` the gradient of the loss with respect to its output). MEND maps every pair through a small
network ``g`` and edits with the transformed sum::

    (ũ_i, δ̃_i) = g_m(û_i, δ̂_i),   û = (u − μ_u)/(σ_u + 1e-7),   δ̂ = (δ − μ_δ)/(σ_δ + 1e-7)
    ∇̃W = Σ_i δ̃_i ũ_iᵀ,            W ← W − α_l ∇̃W

* Normalisation: ``μ, σ`` are running per-coordinate statistics of every ``u`` and ``δ`` the editor
  has seen during training (Welford/Chan updates, ``σ² = M₂ / (k − 1)``); they are frozen at
  application time.
* ``g`` acts on the concatenation ``x = [û; δ̂]`` (``D = d_in + d_out``) as ``n_hidden + 1`` residual
  low-rank layers ``x ← x + a(U V (x ⊙ s_m + t_m) + b)`` with ``V`` (``r × D``, uniform
  ``±1/√D``), ``U = 0`` and ``b = 0`` at init (so ``g`` starts as the identity), ``a`` = ReLU for
  all but the last layer (linear); its output is split back into ``(ũ, δ̃)``.
* Sharing: weights of the same shape share one ``g`` (and one set of statistics); the layer
  conditioning is a per-weight scale ``s_m`` (init 1) and shift ``t_m`` (init 0) of each layer's
  input, ``m`` the weight's index within its shape group.
* ``α_l`` is one learned step size per edited weight (init ``edit_lr``).

A trained network is stored as one safetensors file: the tensors, and the JSON
:class:`MendArchitecture` plus the training record in the file's metadata (no pickle).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from edit_runner.errors import ConfigError

#: Added to the running standard deviation before dividing (the paper's code uses the same).
NORM_EPS = 1e-7
CHECKPOINT_FILE = "mend.safetensors"
ARCHITECTURE_KEY = "mend_architecture"
TRAINING_KEY = "mend_training"


@dataclass
class MendArchitecture:
    """What a trained editor is for and how it is shaped (JSON-serialisable).

    ``modules`` are the edited modules' full names and ``shapes`` their ``[d_out, d_in]`` (math
    layout); ``layers`` the decoder blocks they sit in; ``model`` the model the editor was trained on.
    """

    model: str
    layers: list[int]
    modules: list[str]
    shapes: list[list[int]]
    rank: int = 1920
    n_hidden: int = 1
    edit_lr: float = 1e-4
    seed: int = 0

    def to_json(self) -> str:
        """The architecture as a JSON string."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MendArchitecture:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))

    def group_of(self, index: int) -> str:
        """The shape-group key of edited weight ``index`` (``"<d_out>x<d_in>"``)."""
        d_out, d_in = self.shapes[index]
        return f"{d_out}x{d_in}"


class LowRankResidual(nn.Module):
    """One residual low-rank layer ``x + a(U V (x ⊙ s_m + t_m) + b)`` with per-mode scale and shift."""

    def __init__(self, dim: int, rank: int, n_modes: int, relu: bool, generator: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)  # kaiming-uniform with a = √5, as torch's Linear default
        self.down = nn.Parameter((torch.rand(rank, dim, generator=generator) * 2 - 1) * bound)
        self.up = nn.Parameter(torch.zeros(dim, rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.relu = relu

    def forward(self, x: Tensor, mode: int) -> Tensor:
        """Apply the layer to rows ``x`` (``n × dim``) of mode ``mode``."""
        hidden = x * self.mode_scale[mode] + self.mode_shift[mode]
        out = (hidden @ self.down.T) @ self.up.T + self.bias
        return x + (out.clamp(min=0) if self.relu else out)


class FactorEditor(nn.Module):
    """``g`` of one shape group: running statistics of ``u`` and ``δ`` plus the residual low-rank MLP."""

    def __init__(self, d_in: int, d_out: int, rank: int, n_hidden: int, n_modes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        dim = d_in + d_out
        self.layers = nn.ModuleList([LowRankResidual(dim, rank, n_modes, i < n_hidden, generator) for i in range(n_hidden + 1)])
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("u_mean", torch.zeros(d_in, dtype=torch.float64))
        self.register_buffer("u_m2", torch.zeros(d_in, dtype=torch.float64))
        self.register_buffer("d_mean", torch.zeros(d_out, dtype=torch.float64))
        self.register_buffer("d_m2", torch.zeros(d_out, dtype=torch.float64))

    @torch.no_grad()
    def observe(self, u: Tensor, d: Tensor) -> None:
        """Merge the rows of ``u`` (``n × d_in``) and ``d`` (``n × d_out``) into the running statistics (Chan's update)."""
        n_b = u.shape[0]
        if n_b == 0:
            return
        n_a = float(self.count)
        total = n_a + n_b
        for rows, mean, m2 in ((u, self.u_mean, self.u_m2), (d, self.d_mean, self.d_m2)):
            rows = rows.double()
            mean_b = rows.mean(dim=0)
            m2_b = ((rows - mean_b) ** 2).sum(dim=0)
            shift = mean_b - mean
            m2.add_(m2_b + shift**2 * (n_a * n_b / total))
            mean.add_(shift * (n_b / total))
        self.count.fill_(total)

    def normalize(self, u: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """``(û, δ̂)``: each coordinate standardised with the running mean and standard deviation."""
        if float(self.count) < 2:
            raise RuntimeError(f"MEND normalisation needs statistics of at least 2 token positions, has {int(self.count)}")
        scale = float(self.count) - 1
        u_std = (self.u_m2 / scale).sqrt()
        d_std = (self.d_m2 / scale).sqrt()
        u_hat = (u.double() - self.u_mean) / (u_std + NORM_EPS)
        d_hat = (d.double() - self.d_mean) / (d_std + NORM_EPS)
        return u_hat.float(), d_hat.float()

    def forward(self, u: Tensor, d: Tensor, mode: int) -> tuple[Tensor, Tensor]:
        """Transformed factors ``(ũ, δ̃)`` of the rows ``u``, ``d`` of weight ``mode`` of this group."""
        u_hat, d_hat = self.normalize(u, d)
        x = torch.cat([u_hat, d_hat], dim=-1)
        for layer in self.layers:
            x = layer(x, mode)
        return x[..., : self.d_in], x[..., self.d_in :]


class MendNetwork(nn.Module):
    """Every shape group's :class:`FactorEditor` and the per-weight step sizes ``α_l``."""

    def __init__(self, architecture: MendArchitecture) -> None:
        super().__init__()
        a = architecture
        if len(a.modules) != len(a.shapes) or not a.modules:
            raise ConfigError("MEND architecture: give one [d_out, d_in] shape per edited module (and at least one module)")
        self.architecture = a
        generator = torch.Generator().manual_seed(int(a.seed))
        groups: dict[str, list[int]] = {}
        for index in range(len(a.modules)):
            groups.setdefault(a.group_of(index), []).append(index)
        self.modes = {a.modules[i]: (key, members.index(i)) for key, members in groups.items() for i in members}
        self.editors = nn.ModuleDict(
            {
                key: FactorEditor(a.shapes[members[0]][1], a.shapes[members[0]][0], int(a.rank), int(a.n_hidden), len(members), generator)
                for key, members in groups.items()
            }
        )
        self.edit_lrs = nn.Parameter(torch.full((len(a.modules),), float(a.edit_lr)))

    def editor_of(self, module: str) -> tuple[FactorEditor, int]:
        """The shared editor of ``module`` and the module's mode index in it."""
        key, mode = self.modes[module]
        editor = self.editors[key]
        assert isinstance(editor, FactorEditor)
        return editor, mode

    def observe(self, factors: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Add every module's raw factors to its group's running statistics (training only)."""
        for module, (u, d) in factors.items():
            self.editor_of(module)[0].observe(u, d)

    def pseudo_gradient(self, module: str, u: Tensor, d: Tensor) -> Tensor:
        """``∇̃W = Σ_i δ̃_i ũ_iᵀ`` (``d_out × d_in``) of the rows ``u``, ``d`` of ``module``."""
        editor, mode = self.editor_of(module)
        u_tilde, d_tilde = editor(u, d, mode)
        return d_tilde.T @ u_tilde

    def deltas(self, factors: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """``ΔW = −α_l ∇̃W`` of every module in ``factors`` (math layout)."""
        index = {name: i for i, name in enumerate(self.architecture.modules)}
        return {module: -self.edit_lrs[index[module]] * self.pseudo_gradient(module, u, d) for module, (u, d) in factors.items()}


def checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """The checkpoint file of ``path``: the file itself, or ``<dir>/mend.safetensors`` for a directory."""
    given = Path(path).expanduser()
    return given / CHECKPOINT_FILE if given.is_dir() else given


def save_network(path: str | os.PathLike[str], network: MendNetwork, training: dict[str, Any] | None = None) -> Path:
    """Write ``network`` (tensors + architecture + ``training`` record) to ``path`` atomically; returns the file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().contiguous() for name, value in network.state_dict().items()}
    metadata = {ARCHITECTURE_KEY: network.architecture.to_json(), TRAINING_KEY: json.dumps(training or {}, default=str)}
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_network(path: str | os.PathLike[str], key: str = "algo.checkpoint") -> tuple[MendNetwork, dict[str, Any]]:
    """The trained network stored at ``path`` and its training record; a ConfigError naming ``key`` if unusable."""
    file = checkpoint_file(path)
    if not file.is_file():
        raise ConfigError(f"{key}: no MEND checkpoint at {file}; train one with `edit-train-mend --out DIR` and pass DIR or DIR/{CHECKPOINT_FILE}")
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if ARCHITECTURE_KEY not in metadata:
            raise ConfigError(f"{key}: {file} is not a MEND checkpoint (no {ARCHITECTURE_KEY!r} metadata); give a file written by edit-train-mend")
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
    network = MendNetwork(MendArchitecture.from_json(metadata[ARCHITECTURE_KEY]))
    network.load_state_dict(tensors)
    return network, json.loads(metadata.get(TRAINING_KEY, "{}"))

"""GRACE (Hartvigsen et al., 2023, "Aging with GRACE"): a discrete key–value codebook at one MLP output.

The adaptor sits at the rewrite module ``layout.mlp_out`` of one layer. Its keys live in the
module's input space (the MLP hidden activation ``h``), its values in the output space. At every
position of every forward pass, the position's ``h`` is compared with the codebook by Euclidean
distance; if the nearest entry ``i`` has ``‖h − k_i‖ ≤ ε_i`` the module's output there is replaced
by ``v_i``, otherwise it is left exactly as it was. The model's weights never change.

An edit (prompt ``x``, new object ``y``) takes the key ``h`` at the last prompt token and updates the
codebook with the paper's rules (distance ``d`` to the nearest entry ``i``):

* ``d > ε_init + ε_i`` (the balls do not overlap): a new entry ``(h, v, ε_init, y)``;
* overlap, same label ``y_i = y``: expand, ``ε_i ← max(ε_i, d)`` (the entry now covers ``h``);
* overlap, different label: split, a new entry with ``ε = d/2`` and ``ε_i ← d/2 − 10⁻⁵``.

The value of the entry that now covers ``h`` (the new one, or the expanded one) is then trained
with Adam to minimise the teacher-forced NLL of ``y`` after ``x``, with the value substituted at
the key position (EasyEdit's ``replace_last``); a new value starts from the module's current
output there (``warm``) or from ``U[0, 1)`` (``cold``, EasyEdit's default). Labels are the token ids
of ``y``. Records of one step are inserted one after the other: GRACE is sequential by nature.

The codebook is the editor's whole state (``keys``, ``values``, ``radii``, ``labels`` as tensors),
so a checkpoint restores it exactly; the forward hook is registered once per model by
:meth:`GraceEditor.attach` and reads the state on every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from edit_runner.data.record import EditRecord
from edit_runner.editing.algorithms import ALGORITHMS, AlgorithmSpec
from edit_runner.errors import ConfigError
from edit_runner.models.devices import input_device
from edit_runner.models.layout import layout_for
from edit_runner.models.padding import pad_id_of, right_padded
from edit_runner.models.scoring import encode_texts
from edit_runner.models.tokens import target_token_ids

#: How much below ``d/2`` the older radius of a split pair is cut (the paper's tie-break, as EasyEdit).
SPLIT_MARGIN = 1e-5
VALUE_INITS = ("warm", "cold")


@dataclass
class GraceConfig:
    """GRACE hyper-parameters (one layer; ``eps_init`` is the paper's initial deferral radius ε)."""

    name: str = "?"
    layers: list[int] = field(default_factory=lambda: [4])
    eps_init: float = 1.0
    value_lr: float = 1.0
    value_steps: int = 100
    value_init: str = "warm"
    early_stop_loss: float = 0.01
    per_model: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Training:
    """The entry being trained: substitute ``value`` at ``(row, position)`` of the current batch."""

    row: int
    position: int
    value: Tensor


class GraceEditor:
    """The GRACE codebook as a :class:`~edit_runner.editing.solver.DirectEditor` with a forward hook."""

    def __init__(self, config: GraceConfig) -> None:
        if config.value_init not in VALUE_INITS:
            raise ConfigError(f"algo.value_init={config.value_init!r} is not a GRACE value init; choose one of: {', '.join(VALUE_INITS)}")
        if float(config.eps_init) <= 0:
            raise ConfigError(f"algo.eps_init must be a positive radius, got {config.eps_init}")
        self.layer = int(config.layers[0])
        self.eps_init = float(config.eps_init)
        self.value_lr = float(config.value_lr)
        self.value_steps = int(config.value_steps)
        self.value_init = config.value_init
        self.early_stop_loss = float(config.early_stop_loss)
        self.keys = torch.zeros(0, 0)
        self.values = torch.zeros(0, 0)
        self.radii = torch.zeros(0)
        self.labels = torch.zeros(0, 0, dtype=torch.long)
        self.training: _Training | None = None
        self.captured: tuple[Tensor, Tensor] | None = None  # (input, unreplaced output) of the last forward
        self.module: torch.nn.Module | None = None
        self.handle: torch.utils.hooks.RemovableHandle | None = None

    # ----- hook ------------------------------------------------------------------------------
    def attach(self, model: torch.nn.Module) -> None:
        """Register the codebook hook on ``model``'s rewrite module of :attr:`layer` (once)."""
        module = model.get_submodule(layout_for(model.config.model_type).mlp_out.format(self.layer))
        if self.module is module:
            return
        if self.handle is not None:
            raise RuntimeError("this GRACE editor is already attached to another model; call detach() first")
        self.module = module
        self.handle = module.register_forward_hook(self._hook)

    def detach(self) -> None:
        """Remove the hook (the model behaves as unedited again)."""
        if self.handle is not None:
            self.handle.remove()
        self.handle = None
        self.module = None

    def _hook(self, module: torch.nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        query = inputs[0]
        self.captured = (query.detach(), output.detach())
        replaced = output
        if len(self.radii):
            flat = query.detach().reshape(-1, query.shape[-1]).float()
            keys = self.keys.to(flat.device)
            dist = torch.cdist(flat, keys, compute_mode="donot_use_mm_for_euclid_dist")
            nearest_dist, nearest = dist.min(dim=1)
            inside = nearest_dist <= self.radii.to(flat.device)[nearest]
            if bool(inside.any()):
                replaced = output.clone()
                rows = replaced.view(-1, output.shape[-1])
                rows[inside] = self.values.to(device=output.device, dtype=output.dtype)[nearest[inside]]
        if self.training is not None:
            replaced = replaced.clone() if replaced is output else replaced
            replaced[self.training.row, self.training.position] = self.training.value.to(output.dtype)
        return replaced

    # ----- editing ---------------------------------------------------------------------------
    def edit(self, model: torch.nn.Module, tokenizer: Any, records: list[EditRecord], params: list[torch.nn.Parameter]) -> dict[str, float]:
        """Insert each record into the codebook in turn and train its value; weights stay untouched."""
        self.attach(model)
        losses, steps = [], 0
        for record in records:
            loss, taken = self._insert(model, tokenizer, record)
            losses.append(loss)
            steps += taken
        return {"grace_entries": float(len(self.radii)), "grace_steps": float(steps), "grace_final_loss": sum(losses) / len(losses)}

    def _insert(self, model: torch.nn.Module, tokenizer: Any, record: EditRecord) -> tuple[float, int]:
        prompt = encode_texts(tokenizer, [record.rewrite_prompt])[0]
        target = target_token_ids(tokenizer, record.target_new)
        device = input_device(model)
        input_ids, mask, positions = right_padded([prompt + target], pad_id_of(tokenizer), device)
        inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
        where = len(prompt) - 1
        with torch.no_grad():
            model(**inputs)
        assert self.captured is not None
        key = self.captured[0][0, where].float().cpu()
        current = self.captured[1][0, where].float().cpu()
        entry = self.update_codebook(key, current, torch.tensor(target, dtype=torch.long))
        value = self.values[entry].clone().to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([value], lr=self.value_lr)
        wanted = torch.tensor(target, device=device)
        self.training = _Training(0, where, value)
        loss_value, taken = float("nan"), 0
        try:
            for _ in range(self.value_steps):
                logits = model(**inputs).logits[0, where : where + len(target)].float()
                loss = torch.nn.functional.cross_entropy(logits, wanted)
                loss_value = loss.item()
                if loss_value < self.early_stop_loss:
                    break
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                taken += 1
        finally:
            self.training = None
        self.values[entry] = value.detach().float().cpu()
        return loss_value, taken

    def update_codebook(self, key: Tensor, current: Tensor, label: Tensor) -> int:
        """Apply the add / expand / split rule for ``key``; returns the entry whose value is to be trained."""
        if len(self.radii):
            dist = torch.linalg.vector_norm(self.keys - key, dim=1)
            nearest = int(dist.argmin())
            d = float(dist[nearest])
            if d <= self.eps_init + float(self.radii[nearest]):
                if self._label(nearest) == label.tolist():
                    self.radii[nearest] = max(float(self.radii[nearest]), d)
                    return nearest
                self.radii[nearest] = d / 2 - SPLIT_MARGIN
                return self._append(key, current, d / 2, label)
        return self._append(key, current, self.eps_init, label)

    def _append(self, key: Tensor, current: Tensor, radius: float, label: Tensor) -> int:
        value = current.clone() if self.value_init == "warm" else torch.rand(current.shape)
        if not len(self.radii):
            self.keys = torch.zeros(0, key.numel())
            self.values = torch.zeros(0, value.numel())
        width = max(self.labels.shape[1], label.numel())
        labels = torch.full((len(self.radii) + 1, width), -1, dtype=torch.long)
        labels[:-1, : self.labels.shape[1]] = self.labels
        labels[-1, : label.numel()] = label
        self.keys = torch.cat([self.keys, key[None]])
        self.values = torch.cat([self.values, value[None]])
        self.radii = torch.cat([self.radii, torch.tensor([radius])])
        self.labels = labels
        return len(self.radii) - 1

    def _label(self, entry: int) -> list[int]:
        row = self.labels[entry]
        return row[row >= 0].tolist()

    # ----- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """The codebook: keys ``E × d_in``, values ``E × d_out``, radii ``E``, labels ``E × L`` (−1 padded)."""
        return {"keys": self.keys.clone(), "values": self.values.clone(), "radii": self.radii.clone(), "labels": self.labels.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict` (the hook, once attached, uses it from the next forward on)."""
        self.keys = state["keys"].float().cpu().clone()
        self.values = state["values"].float().cpu().clone()
        self.radii = state["radii"].float().cpu().clone()
        self.labels = state["labels"].long().cpu().clone()


ALGORITHMS.register("grace", AlgorithmSpec("grace", GraceConfig, direct_type=GraceEditor, max_layers=1))

"""Run state that survives an interruption: append-only row logs, a safe checkpoint, its policy, preemption.

Cost per step is constant in the length of the run:

* result rows (``records.jsonl``, ``steps.jsonl``, ``series/health.jsonl``) are appended and
  flushed once per step; a checkpoint stores only how many lines each log had;
* a checkpoint is one small JSON (``checkpoint/state.json``: step index, offsets, pre-edit metrics,
  RNG, templates) and one safetensors file of the touched modules' weights (in their own dtype)
  and the solver/wrapper state; no pickle is ever loaded;
* :class:`CheckpointPolicy` decides when to write one (every N steps, every M minutes, or, by
  default, whenever the checkpoint cost stays under 5% of the time since the last one), and
  :class:`PreemptionGuard` forces one on SIGTERM / SIGUSR2 before handing the signal on.

On resume the logs are cut back to the checkpoint's offsets, so the steps after the last
checkpoint are redone exactly once and the results equal an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from edit_runner.errors import ConfigError
from edit_runner.io import atomic_write_json

if TYPE_CHECKING:
    from typing_extensions import Self

STATE_FILE = "state.json"


@dataclass
class RunState:
    """Everything of a run that is not a tensor or a row log, as checkpointed."""

    completed_steps: int = 0
    pre: dict[str, Any] = field(default_factory=dict)
    health_initial: dict[str, Any] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    tracker: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        """Inverse of :meth:`to_json`."""
        return cls(**data)


class RowLog:
    """An append-only JSON-lines file, flushed and synced after every append."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0

    def reset(self, lines: int = 0) -> None:
        """Keep only the first ``lines`` lines (a fresh run: none)."""
        kept = self.read()[:lines] if lines and self.path.exists() else []
        if len(kept) < lines:
            raise ConfigError(f"{self.path} has {len(kept)} rows but the checkpoint expects {lines}; pass resume=false")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, default=str) + "\n" for row in kept)
            handle.flush()
            os.fsync(handle.fileno())
        self.lines = lines

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` durably."""
        if not rows:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, default=str) + "\n" for row in rows)
            handle.flush()
            os.fsync(handle.fileno())
        self.lines += len(rows)

    def read(self) -> list[dict[str, Any]]:
        """Every row (empty when the file does not exist)."""
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


def rng_state() -> tuple[dict[str, Any], torch.Tensor]:
    """Python and NumPy RNG states as JSON, torch's as a tensor."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    return state, torch.get_rng_state()


def set_rng_state(state: dict[str, Any], torch_state: torch.Tensor) -> None:
    """Restore :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch_state)


def flatten_tensors(tree: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """``{"a": {"b": t}}`` → ``{"a.b": t}`` (contiguous CPU copies, as safetensors wants)."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_tensors(value, f"{name}."))
        else:
            flat[name] = value.detach().cpu().contiguous()
    return flat


def unflatten_tensors(flat: dict[str, torch.Tensor], prefix: str, shape: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_tensors` for the keys under ``prefix``, following the nesting of ``shape``.

    ``shape`` maps each sub-dict name to a nested ``shape`` (``{}`` for a leaf dict of tensors).
    """
    out: dict[str, Any] = {}
    for key, sub in shape.items():
        if sub:
            out[key] = unflatten_tensors(flat, f"{prefix}{key}.", sub)
        else:
            start = f"{prefix}{key}."
            out[key] = {name[len(start):]: value for name, value in flat.items() if name.startswith(start)}
    return out


class CheckpointStore:
    """``checkpoint/state.json`` plus the safetensors file it names; written tensors first, JSON last.

    Each checkpoint's tensors go to a new file named after its step, and ``state.json`` is replaced
    atomically to point at it; an interruption at any moment leaves the previous checkpoint intact.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def state_path(self) -> Path:
        """The JSON half of the checkpoint."""
        return self.directory / STATE_FILE

    def exists(self) -> bool:
        """Whether a checkpoint has been written."""
        return self.state_path.exists()

    def save(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
        """Write one checkpoint; returns the bytes written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"tensors-{meta['state']['completed_steps']:08d}.safetensors"
        tmp = self.directory / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.directory / name)
        atomic_write_json(self.state_path, {**meta, "tensors": name})
        for old in self.directory.glob("tensors-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return (self.directory / name).stat().st_size + self.state_path.stat().st_size

    def load(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The JSON metadata and the tensors of the last checkpoint (safe loading: JSON + safetensors)."""
        meta = json.loads(self.state_path.read_text())
        return meta, load_file(str(self.directory / meta["tensors"]))


@dataclass
class CheckpointPolicy:
    """When a sequential run checkpoints.

    ``every`` steps and/or every ``minutes``; with neither set, whenever the last checkpoint's
    write time is at most ``max_overhead`` of the time since it (so checkpoint I/O stays under
    that share of the run). The first and the last step always checkpoint.
    """

    every: int | None = None
    minutes: float | None = None
    max_overhead: float = 0.05
    _last_time: float = field(default_factory=time.monotonic)
    _last_cost: float = 0.0
    _since: int = 0

    def due(self, step_index: int, num_steps: int) -> bool:
        """Whether to checkpoint after step ``step_index`` (0-based) of ``num_steps``."""
        self._since += 1
        if step_index in (0, num_steps - 1):
            return True
        elapsed = time.monotonic() - self._last_time
        if self.every is not None and self._since >= self.every:
            return True
        if self.minutes is not None and elapsed >= 60.0 * self.minutes:
            return True
        if self.every is None and self.minutes is None:
            return self._last_cost <= self.max_overhead * elapsed
        return False

    def written(self, seconds: float) -> None:
        """Note a checkpoint that took ``seconds``."""
        self._last_time = time.monotonic()
        self._last_cost = seconds
        self._since = 0


class PreemptionGuard:
    """Defers SIGTERM / SIGUSR2 to the end of the current step: checkpoint, then hand the signal on.

    The previous handler (submitit's requeue on USR2, or the default action) runs after
    :meth:`forward`, so a preempted job saves its last finished step before it goes.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __init__(self) -> None:
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.pending = signum

    def forward(self) -> None:
        """Restore the previous handlers and deliver the pending signal to them."""
        signum = self.pending
        previous = self._previous.get(signum) if signum is not None else None
        self.__exit__()
        if signum is None:
            return
        if callable(previous):
            previous(signum, None)
        else:
            os.kill(os.getpid(), signum)

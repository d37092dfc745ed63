"""Second-moment statistics C = E[k kᵀ] of the rewrite modules' inputs (SPEC C §10, B §5).

One streamed pass over a corpus collects every requested layer at once, always on the unedited
model (published statistics are imported instead; the sources are in :mod:`edit_runner.editing.corpora`).
Results are cached on disk keyed by model, revision, layer, corpus, sample count, max length and
dtype; a file lock keeps two jobs from computing the same file and writes are atomic.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from filelock import FileLock

from edit_runner.errors import ConfigError
from edit_runner.io import atomic_torch_save
from edit_runner.models.devices import input_device
from edit_runner.models.hooks import run_until_stop, trace
from edit_runner.models.sampling import sample_top_k

#: Wraps the batch list of a statistics pass (e.g. a progress bar's ``track``).
Progress = Callable[[list], Iterable]


@dataclass(frozen=True)
class LayerMoment:
    """One module's uncentered second moment ``E[k kᵀ]`` and the number of tokens behind it."""

    moment: torch.Tensor
    count: int


class MomentSource(Protocol):
    """A built covariance corpus: where its statistics come from and how to get them per module."""

    ident: str

    def moments(
        self, model: torch.nn.Module, tokenizer: Any, modules: list[str], settings: CovarianceSettings, progress: Progress | None = None
    ) -> dict[str, LayerMoment]:
        """Second moments of ``modules`` (computed on ``model`` or read from elsewhere)."""
        ...


@dataclass(frozen=True)
class Corpus:
    """A list of texts and a stable identifier of where they came from."""

    ident: str
    texts: list[str]

    def moments(
        self, model: torch.nn.Module, tokenizer: Any, modules: list[str], settings: CovarianceSettings, progress: Progress | None = None
    ) -> dict[str, LayerMoment]:
        """Second moments of ``modules``' inputs over these texts, in one streamed pass of ``model``."""
        means, count = second_moments(
            model, tokenizer, modules, self.texts, settings.max_length, settings.batch_size, getattr(torch, settings.dtype), progress
        )
        return {name: LayerMoment(mean, count) for name, mean in means.items()}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (False when offline mode is set)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def fixed_random_subset(count: int, sample_size: int) -> list[int]:
    """``FixedRandomSubsetSampler(seed=1)``: Python's ``random.Random(1)`` shuffle, first ``sample_size``."""
    order = list(range(count))
    random.Random(1).shuffle(order)
    return order[:sample_size]


def text_file_ident(path: str | Path) -> str:
    """Identity of a local text corpus: its name and content hash."""
    file = Path(path)
    return f"text-{file.stem}-{hashlib.sha256(file.read_bytes()).hexdigest()[:12]}"


def model_samples_ident(num_texts: int, length: int, seed: int = 1) -> str:
    """Identity of the model-sample fallback corpus."""
    return f"model-samples-{num_texts}x{length}-seed{seed}"


def hf_ident(dataset: str, config: str | None, split: str) -> str:
    """Identity of a Hugging Face corpus."""
    return f"hf-{dataset}-{config}-{split}"


def existing_text_file(path: str | Path) -> Path:
    """``path`` as a Path; a ConfigError on ``stats.text_path`` when it is not a file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"stats.text_path: covariance corpus file {file} does not exist; give an existing text file")
    return file


def text_file_corpus(path: str | Path, n_samples: int) -> Corpus:
    """Paragraphs of a local text file (blank-line or heading separated), sampled like the reference."""
    file = existing_text_file(path)
    paragraphs = [p.strip() for p in file.read_text(encoding="utf-8").split("\n") if len(p.strip()) > 20 and not p.strip().startswith("=")]
    if not paragraphs:
        raise ConfigError(f"stats.text_path: {file} holds no usable text")
    chosen = [paragraphs[i] for i in fixed_random_subset(len(paragraphs), n_samples)]
    return Corpus(ident=text_file_ident(file), texts=chosen)


def load_hf_split(dataset: str, config: str | None, split: str, source: str = "hf") -> Any:
    """One split of a Hugging Face dataset; a ConfigError naming ``stats.corpus=<source>`` and the offline choices if it fails."""
    from datasets import load_dataset

    try:
        return load_dataset(dataset, config, split=split)
    except Exception as err:
        raise ConfigError(
            f"stats.corpus={source}: cannot load {dataset}/{config} ({err}). Offline? Use stats.corpus=text "
            "stats.text_path=<a text file>, stats.corpus=npz stats.import_dir=<published statistics> or stats.corpus=model_samples"
        ) from err


def hf_corpus(dataset: str, config: str | None, split: str, n_samples: int) -> Corpus:
    """Texts of a Hugging Face dataset (field ``text``), sampled like the reference."""
    data = load_hf_split(dataset, config, split)
    indices = fixed_random_subset(len(data), n_samples * 2)
    texts = [t for t in (data[i]["text"] for i in indices) if t and t.strip()][:n_samples]
    return Corpus(ident=hf_ident(dataset, config, split), texts=texts)


def model_sample_corpus(model: torch.nn.Module, tokenizer, num_texts: int, length: int, seed: int = 1) -> Corpus:
    """Offline fallback that needs nothing: top-k (5) samples of the unedited model from its start token."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    generator = torch.Generator(device="cpu").manual_seed(seed)
    texts: list[str] = []
    for offset in range(0, num_texts, 64):
        rows = min(64, num_texts - offset)
        sequence = sample_top_k(model, torch.full((rows, 1), start), length, generator)
        texts += tokenizer.batch_decode(sequence[:, 1:], skip_special_tokens=True)
    return Corpus(ident=model_samples_ident(num_texts, length, seed), texts=texts)


def cached_corpus(path: Path, build) -> Corpus:
    """Load a generated corpus from ``path`` or build it once and store it there (atomic write)."""
    import json

    from edit_runner.io import atomic_write_json

    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        return Corpus(ident=data["ident"], texts=data["texts"])
    corpus = build()
    atomic_write_json(path, {"ident": corpus.ident, "texts": corpus.texts})
    return corpus


def _batches(tokenizer, texts: list[str], max_length: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    encoded = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    encoded = sorted((e for e in encoded if e), key=len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(e) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(chunk):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        yield {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def second_moments(
    model: torch.nn.Module,
    tokenizer,
    modules: list[str],
    texts: list[str],
    max_length: int,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    progress=None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Uncentered ``E[k kᵀ]`` of each module's input over every non-pad token (one pass for all modules)."""
    device = input_device(model)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    deepest = modules[-1]
    batches = list(_batches(tokenizer, texts, max_length, batch_size))
    for batch in progress(batches) if progress else batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with trace(model, modules, inputs=True, stop_after=deepest) as tr:
            run_until_stop(model, **batch)
        keep = batch["attention_mask"].bool()
        for name in modules:
            captured = tr.inputs[name]  # on the module's device, the mask goes there
            feats = captured[keep.to(captured.device)].to(dtype)
            sums[name] = sums[name] + feats.T @ feats if name in sums else feats.T @ feats
        count += int(keep.sum())
    return {name: (s / count).cpu() for name, s in sums.items()}, count


@dataclass
class CovarianceSettings:
    """Which statistics to compute (model identity, corpus, sample count, length, dtype)."""

    model_name: str
    revision: str
    n_samples: int
    max_length: int
    dtype: str = "float32"
    batch_size: int = 16


class CovarianceCache:
    """Run-owned covariance provider: loads or computes C per rewrite module, never from an edited model."""

    def __init__(
        self, cache_dir: Path, settings: CovarianceSettings, corpus_factory: Callable[[], MomentSource], corpus_ident: str | None = None
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.settings = settings
        self.corpus_factory = corpus_factory
        self._ident = corpus_ident
        self._corpus: MomentSource | None = None
        self._loaded: dict[str, torch.Tensor] = {}

    def corpus(self) -> MomentSource:
        """The corpus (texts or imported statistics), built on first use."""
        if self._corpus is None:
            self._corpus = self.corpus_factory()
        return self._corpus

    @property
    def corpus_ident(self) -> str:
        """The corpus identity that keys the cache files (builds the corpus only when none was given)."""
        return self._ident if self._ident is not None else self.corpus().ident

    def path_for(self, module: str, corpus_ident: str) -> Path:
        """Cache file of one module's statistics."""
        s = self.settings
        model_dir = f"{s.model_name.replace('/', '_')}-{hashlib.sha1(s.revision.encode()).hexdigest()[:8]}"
        return self.cache_dir / "stats" / model_dir / corpus_ident / f"{module}_{s.dtype}_mom2_{s.n_samples}_len{s.max_length}.pt"

    def ensure(self, model: torch.nn.Module, tokenizer: Any, modules: list[str], progress: Progress | None = None) -> None:
        """Load cached statistics of ``modules``; get the missing ones from the corpus (one streamed pass, or an import).

        Must be called on the unedited model (the runner calls it before the first edit).
        """
        wanted = [m for m in modules if m not in self._loaded]
        if not wanted:
            return
        paths = {m: self.path_for(m, self.corpus_ident) for m in wanted}
        lock_path = paths[wanted[0]].parent / "compute.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_path)):
            missing = [m for m in wanted if not paths[m].exists()]
            if missing:
                corpus = self.corpus()
                for name, stat in corpus.moments(model, tokenizer, missing, self.settings, progress).items():
                    atomic_torch_save(
                        paths[name], {"mom2": stat.moment, "count": stat.count, "sample_size": self.settings.n_samples, "corpus": corpus.ident}
                    )
            for m in wanted:
                self._loaded[m] = torch.load(paths[m], map_location="cpu")["mom2"].float()

    def get(self, module: str) -> torch.Tensor:
        """``E[k kᵀ]`` of ``module``'s input (float32, CPU); :meth:`ensure` must have run."""
        try:
            return self._loaded[module]
        except KeyError:
            raise RuntimeError(f"covariance of {module} requested before CovarianceCache.ensure") from None

"""Covariance corpora by ``stats.corpus`` name (SPEC Part C §10): one class per source, in a registry.

A source knows, without being built, the identity that keys the statistics cache (``ident()``) and
the sample count and token length that go into the cache key; ``build()`` turns it into a
:class:`~edit_runner.editing.covariance.MomentSource` — texts whose second moments are computed on
the unedited model, or published MEMIT/ROME statistics read from ``.npz`` files.

Sources: ``hf`` (a Hugging Face dataset), ``text`` (a local file), ``model_samples`` (offline),
``wikipedia`` (the reference ``layer_stats`` sample), ``npz`` (import of published statistics) and
``auto`` (the text file if given, else ``hf`` when the Hub answers, else ``model_samples``).
:func:`build_covariance` is the run's entry point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edit_runner.config import StatsConfig, slug
from edit_runner.editing.covariance import (
    Corpus,
    CovarianceCache,
    CovarianceSettings,
    LayerMoment,
    MomentSource,
    Progress,
    cached_corpus,
    existing_text_file,
    fixed_random_subset,
    hf_corpus,
    hf_ident,
    hub_reachable,
    load_hf_split,
    model_sample_corpus,
    model_samples_ident,
    text_file_corpus,
    text_file_ident,
)
from edit_runner.errors import ConfigError
from edit_runner.models.loading import LoadedModel
from edit_runner.registry import Registry

#: Token length of the project's own corpora when neither ``stats.max_length`` nor ``model.max_length`` is set.
DEFAULT_MAX_LENGTH = 1024
#: Longest article length of the reference-style corpora: ``layer_stats`` uses ``n_positions``
#: (1024 GPT-2, 2048 GPT-J); forks for long-context models cap it at 4096 (SPEC Part C §10).
REFERENCE_MAX_LENGTH_CAP = 4096

#: Loads one split of a dataset: ``(dataset, config, split, stats.corpus name) -> rows with a "text" field``.
SplitLoader = Callable[[str, str | None, str, str], Sequence[Mapping[str, Any]]]


def model_context_length(model: torch.nn.Module) -> int:
    """The reference ``maxlen``: ``config.n_positions``, else ``max_position_embeddings``, at most 4096."""
    config = model.config
    length = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if length is None:
        raise ConfigError("stats.max_length: the model config names no context length; set stats.max_length")
    return min(int(length), REFERENCE_MAX_LENGTH_CAP)


@dataclass(frozen=True)
class CorpusRequest:
    """Everything a corpus source may need, as plain values (``stats`` is read by attribute only)."""

    stats: StatsConfig
    n_samples: int
    model_max_length: int | None
    loaded: LoadedModel
    cache_dir: Path

    def max_length(self) -> int:
        """Tokens per text of the project's corpora: ``stats.max_length``, else ``model.max_length``, else 1024."""
        return int(self.stats.max_length or self.model_max_length or DEFAULT_MAX_LENGTH)

    def reference_max_length(self) -> int:
        """Tokens per article of the reference-style corpora: as :meth:`max_length`, else the model's context."""
        return int(self.stats.max_length or self.model_max_length or model_context_length(self.loaded.model))


class CovarianceCorpus(Protocol):
    """A covariance corpus before it is built: its cache identity and key, and how to build it."""

    @property
    def sample_size(self) -> int:
        """The sample count in the cache key."""
        ...

    @property
    def max_length(self) -> int:
        """Tokens per text, in the cache key."""
        ...

    def ident(self) -> str:
        """The identity that keys the statistics cache, computed without building the corpus."""
        ...

    def build(self) -> MomentSource:
        """The texts (or imported statistics) the second moments come from."""
        ...


CorpusFactory = Callable[[CorpusRequest], CovarianceCorpus]


@dataclass(frozen=True)
class CorpusKey:
    """What a corpus contributes to the statistics cache key besides its identity."""

    sample_size: int
    max_length: int


@dataclass(frozen=True)
class HFCorpus(CorpusKey):
    """``stats.corpus=hf``: the ``text`` field of a Hugging Face dataset split (wikitext-103 by default)."""

    dataset: str
    config: str | None
    split: str

    @classmethod
    def from_request(cls, request: CorpusRequest) -> HFCorpus:
        """The dataset named by ``stats.hf_dataset``/``hf_config``/``hf_split``."""
        stats = request.stats
        return cls(request.n_samples, request.max_length(), stats.hf_dataset, stats.hf_config, stats.hf_split)

    def ident(self) -> str:
        """``hf-<dataset>-<config>-<split>``."""
        return hf_ident(self.dataset, self.config, self.split)

    def build(self) -> Corpus:
        """Download (or read the datasets cache) and sample the texts."""
        return hf_corpus(self.dataset, self.config, self.split, self.sample_size)


@dataclass(frozen=True)
class TextFileCorpus(CorpusKey):
    """``stats.corpus=text``: paragraphs of a local text file (e.g. wikitext's ``wiki.test.raw``)."""

    path: Path

    @classmethod
    def from_request(cls, request: CorpusRequest) -> TextFileCorpus:
        """The file ``stats.text_path``, which must exist."""
        if not request.stats.text_path:
            raise ConfigError("stats.text_path: stats.corpus=text needs a text file (e.g. wikitext's wiki.test.raw)")
        return cls(request.n_samples, request.max_length(), existing_text_file(request.stats.text_path))

    def ident(self) -> str:
        """``text-<file stem>-<content hash>``."""
        return text_file_ident(self.path)

    def build(self) -> Corpus:
        """Read and sample the paragraphs."""
        return text_file_corpus(self.path, self.sample_size)


@dataclass(frozen=True)
class ModelSampleCorpus(CorpusKey):
    """``stats.corpus=model_samples``: top-k samples of the unedited model, generated once and cached."""

    loaded: LoadedModel
    length: int
    cache_dir: Path

    @classmethod
    def from_request(cls, request: CorpusRequest) -> ModelSampleCorpus:
        """``stats.fallback_texts`` samples of ``stats.fallback_length`` tokens (the sample count keys the cache)."""
        stats = request.stats
        return cls(int(stats.fallback_texts), request.max_length(), request.loaded, int(stats.fallback_length), request.cache_dir)

    def ident(self) -> str:
        """``model-samples-<texts>x<length>-seed1``."""
        return model_samples_ident(self.sample_size, self.length, 1)

    def cache_path(self) -> Path:
        """Where the generated texts are stored (per model name and revision)."""
        revision = hashlib.sha1(self.loaded.revision.encode()).hexdigest()[:8]
        return self.cache_dir / "corpora" / f"{slug(self.loaded.name)}-{revision}-{self.ident()}.json"

    def build(self) -> Corpus:
        """The cached samples, generated from the unedited model on first use."""
        loaded = self.loaded
        return cached_corpus(
            self.cache_path(), lambda: model_sample_corpus(loaded.model, loaded.tokenizer, self.sample_size, self.length, seed=1)
        )


@dataclass(frozen=True)
class WikipediaCorpus(CorpusKey):
    """``stats.corpus=wikipedia``: the MEMIT/ROME ``layer_stats`` sample (SPEC Part C §10).

    ``mom2_n_samples`` whole articles of the ``train`` split of ``stats.wikipedia_dataset`` /
    ``stats.wikipedia_dump`` (``wikipedia``/``20200501.en`` as in kmeng01/memit), chosen by
    ``FixedRandomSubsetSampler(seed=1)`` and tokenised with ``truncation=True`` at the model's
    context length. Newer ``datasets`` releases cannot run the old ``wikipedia`` script; use e.g.
    ``stats.wikipedia_dataset=wikimedia/wikipedia stats.wikipedia_dump=20231101.en`` (another dump,
    another cache identity) or import the published statistics with ``stats.corpus=npz``.
    """

    dataset: str
    dump: str
    loader: SplitLoader = load_hf_split

    @classmethod
    def from_request(cls, request: CorpusRequest) -> WikipediaCorpus:
        """The dump named by ``stats.wikipedia_dataset``/``wikipedia_dump``."""
        stats = request.stats
        return cls(request.n_samples, request.reference_max_length(), stats.wikipedia_dataset, stats.wikipedia_dump)

    def ident(self) -> str:
        """``<dataset>-<dump>``, e.g. ``wikipedia-20200501.en`` (the dump is part of it, unlike the reference's file names)."""
        return f"{slug(self.dataset)}-{self.dump}"

    def build(self) -> Corpus:
        """Load the ``train`` split and take the reference's article subset."""
        data = self.loader(self.dataset, self.dump, "train", "wikipedia")
        texts = [data[i]["text"] for i in fixed_random_subset(len(data), self.sample_size)]
        return Corpus(ident=self.ident(), texts=texts)


def published_stats_filename(module: str, dtype: str, sample_size: int) -> str:
    """The reference cache file name of one module's ``mom2`` statistics, e.g. ``transformer.h.5.mlp.fc_out_float32_mom2_100000.npz``."""
    return f"{module}_{dtype}_mom2_{sample_size}.npz"


@dataclass(frozen=True)
class PublishedStatistics:
    """Built ``npz`` source: the reference's per-layer files ``mom2.mom2`` (a sum) and ``mom2.count`` in one directory."""

    ident: str
    directory: Path

    def moments(
        self, model: torch.nn.Module, tokenizer: Any, modules: list[str], settings: CovarianceSettings, progress: Progress | None = None
    ) -> dict[str, LayerMoment]:
        """``mom2 / count`` of each module in the file's dtype, as ``SecondMoment.moment()`` (the model is not run)."""
        names = {m: published_stats_filename(m, settings.dtype, settings.n_samples) for m in modules}
        missing = [m for m in modules if not (self.directory / names[m]).is_file()]
        if missing:
            present = sorted(p.name for p in self.directory.glob("*.npz"))
            raise ConfigError(
                f"stats.import_dir: no published statistics for {', '.join(missing)} in {self.directory}: expected "
                f"{', '.join(names[m] for m in missing)} (<module>_<algo.mom2_dtype>_mom2_<algo.mom2_n_samples>.npz); "
                f"found {', '.join(present[:8]) if present else 'no .npz files'}"
            )
        return {m: self._load(self.directory / names[m], settings.n_samples) for m in modules}

    @staticmethod
    def _load(file: Path, sample_size: int) -> LayerMoment:
        with np.load(file) as data:
            if "sample_size" in data and int(data["sample_size"]) != sample_size:
                raise ConfigError(
                    f"stats.import_dir: {file} holds statistics of {int(data['sample_size'])} samples, not algo.mom2_n_samples={sample_size}"
                )
            count = int(data["mom2.count"])
            return LayerMoment(torch.from_numpy(data["mom2.mom2"]) / count, count)


@dataclass(frozen=True)
class NpzImport(CorpusKey):
    """``stats.corpus=npz``: import published MEMIT/ROME statistics from ``stats.import_dir`` into the cache."""

    directory: Path

    @classmethod
    def from_request(cls, request: CorpusRequest) -> NpzImport:
        """The existing directory ``stats.import_dir`` (e.g. ``data/stats/gpt2-xl/wikipedia_stats``)."""
        path = request.stats.import_dir
        if not path:
            raise ConfigError("stats.import_dir: stats.corpus=npz needs the directory of the published .npz statistics")
        directory = Path(path)
        if not directory.is_dir():
            raise ConfigError(f"stats.import_dir: {directory} is not a directory; give the folder holding the .npz statistics")
        return cls(request.n_samples, request.reference_max_length(), directory)

    def ident(self) -> str:
        """``npz-<resolved directory>`` (the import is keyed by where the files are)."""
        return f"npz-{slug(str(self.directory.resolve()))}"

    def build(self) -> PublishedStatistics:
        """The directory as a statistics source."""
        return PublishedStatistics(self.ident(), self.directory)


def auto_corpus(request: CorpusRequest) -> CovarianceCorpus:
    """``stats.corpus=auto``: ``text`` when ``stats.text_path`` is set, else ``hf`` if the Hub answers, else ``model_samples``."""
    name = "text" if request.stats.text_path else ("hf" if hub_reachable() else "model_samples")
    return corpus_registry().get(name)(request)


def corpus_registry() -> Registry[CorpusFactory]:
    """A fresh registry of the covariance corpus sources by ``stats.corpus`` value."""
    registry: Registry[CorpusFactory] = Registry("covariance corpus (stats.corpus)")
    registry.register("auto", auto_corpus)
    registry.register("hf", HFCorpus.from_request)
    registry.register("text", TextFileCorpus.from_request)
    registry.register("model_samples", ModelSampleCorpus.from_request)
    registry.register("wikipedia", WikipediaCorpus.from_request)
    registry.register("npz", NpzImport.from_request)
    return registry


def covariance_corpus(request: CorpusRequest) -> CovarianceCorpus:
    """The source named by ``request.stats.corpus`` (an enum member or its string value)."""
    corpus = request.stats.corpus
    return corpus_registry().get(str(getattr(corpus, "value", corpus)))(request)


def build_covariance(
    stats: StatsConfig, n_samples: int, mom2_dtype: str, model_max_length: int | None, loaded: LoadedModel, cache_dir: Path
) -> CovarianceCache:
    """The run's covariance provider, its corpus chosen by ``stats.corpus`` from :func:`corpus_registry`.

    ``stats`` is the StatsConfig (or a DictConfig of it), ``n_samples`` is ``algo.mom2_n_samples``,
    ``mom2_dtype`` is ``algo.mom2_dtype`` and ``model_max_length`` is ``model.max_length``. Nothing is
    built or computed here; :meth:`CovarianceCache.ensure` does that on the unedited model.
    """
    corpus = covariance_corpus(CorpusRequest(stats, int(n_samples), model_max_length, loaded, Path(cache_dir)))
    settings = CovarianceSettings(loaded.name, loaded.revision, corpus.sample_size, corpus.max_length, str(mom2_dtype), int(stats.batch_size))
    return CovarianceCache(Path(cache_dir), settings, corpus.build, corpus.ident())

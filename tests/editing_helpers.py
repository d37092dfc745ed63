"""Helpers shared by the algorithm and wrapper tests: algorithm configs and a small covariance cache."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import edit_runner
from edit_runner.config import AlgoConfig
from edit_runner.editing.covariance import CovarianceCache, CovarianceSettings, text_file_corpus

ALGO_CONF = Path(edit_runner.__file__).parent / "conf" / "algo"


def algo_config(name: str, **overrides) -> DictConfig:
    """``AlgoConfig`` merged with ``conf/algo/<name>.yaml`` and test overrides."""
    cfg = OmegaConf.merge(OmegaConf.structured(AlgoConfig), OmegaConf.load(ALGO_CONF / f"{name}.yaml"))
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def covariance(loaded, layers: list[int], cache_dir: Path, shared_dir: Path) -> CovarianceCache:
    """Second moments of the given layers from 200 wikitext paragraphs, cached in ``cache_dir``."""
    corpus = shared_dir / "data" / "wikitext" / "wiki.test.raw"
    cache = CovarianceCache(
        cache_dir, CovarianceSettings(loaded.name, loaded.revision, 200, 128), lambda: text_file_corpus(corpus, 200)
    )
    cache.ensure(loaded.model, loaded.tokenizer, [loaded.layout.mlp_out.format(layer) for layer in layers])
    return cache

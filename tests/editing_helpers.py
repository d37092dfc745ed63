"""Helpers shared by the algorithm and wrapper tests: algorithm configs and a small covariance cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

import edit_runner
from edit_runner.config import AlgoConfig
from edit_runner.editing.context import ContextTemplates
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


#: The bare template plus five fixed prefixes (the MEMIT-family shape), for reproducible tests.
MEMIT_TEMPLATES = ContextTemplates(
    groups=(
        ("{}",),
        (
            "The cat sat. {}",
            "Therefore, it was. {}",
            "Because she was sad. {}",
            "I like it. {}",
            "You can play. {}",
        ),
    )
)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls are badly slowed by OMP oversubscription on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cov_dir(tmp_path_factory) -> Path:
    """A module-wide covariance cache directory."""
    return tmp_path_factory.mktemp("covariance")

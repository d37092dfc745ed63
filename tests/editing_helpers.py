"""Helpers shared by the editing tests: typed configs, a small covariance cache, weight restore, editors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import edit_runner
from edit_runner.config import RunConfig, effective_config, register_configs, register_resolvers
from edit_runner.editing.algorithms import algorithm_spec
from edit_runner.editing.context import ContextTemplates
from edit_runner.editing.covariance import CovarianceCache, CovarianceSettings, text_file_corpus
from edit_runner.editing.editor import Editor, EditorBuilder
from edit_runner.editing.wrappers import build_wrappers, wrapper_registry

ALGO_CONF = Path(edit_runner.__file__).parent / "conf" / "algo"


def algo_config(name: str, **overrides) -> Any:
    """The algorithm's config dataclass from ``conf/algo/<name>.yaml`` and test overrides."""
    node = OmegaConf.load(ALGO_CONF / f"{name}.yaml")
    node.pop("defaults", None)
    cfg = OmegaConf.merge(OmegaConf.structured(algorithm_spec(name).config_type), node)
    for key, value in overrides.items():
        cfg[key] = value
    return OmegaConf.to_object(cfg)


def wrapper_config(name: str, **values) -> Any:
    """A wrapper's config dataclass (its defaults, then ``values``)."""
    return wrapper_registry().get(name).config_type(**values)


def make_editor(loaded, algo: Any, templates: ContextTemplates, cov: CovarianceCache | None, wrappers: dict[str, Any] | None = None, evaluate=None) -> Editor:
    """An editor for ``algo`` (a config dataclass) with ``wrappers`` (name → config) installed."""
    builder = EditorBuilder(loaded, algorithm_spec(algo.name), algo, templates, cov, evaluate=evaluate)
    for wrapper in build_wrappers(wrappers or {}):
        wrapper.install(builder)
    return builder.build()


def run_config(overrides: list[str]) -> RunConfig:
    """The typed job config ``edit-run`` builds for ``overrides``."""
    register_configs()
    register_resolvers()
    with initialize_config_module("edit_runner.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return effective_config(cfg, overrides)


class restore_weights:
    """Context manager that snapshots a model's state and restores it on exit."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.saved = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def __enter__(self) -> torch.nn.Module:
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.load_state_dict(self.saved)


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

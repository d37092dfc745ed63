"""Compose edit-run configs in tests (the Hydra compose API over the packaged config tree)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from edit_runner.config import register_configs, register_resolvers


def compose_run(overrides: list[str]) -> DictConfig:
    """The composed job config for ``overrides`` (as ``edit-run`` would build it)."""
    register_configs()
    register_resolvers()
    with initialize_config_module("edit_runner.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def run_job(overrides: list[str], run_dir: Path) -> dict:
    """Run one job in-process in ``run_dir`` and return its summary."""
    from edit_runner.runner import Runner

    cfg = compose_run(overrides)
    return Runner(cfg, run_dir, overrides).run()

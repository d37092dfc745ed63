"""Thin entry points: ``edit-run`` (the Hydra app) and ``edit-report`` (tables and plots)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from edit_runner.config import register_configs, register_resolvers
from edit_runner.errors import EditRunnerError


def _run(cfg: DictConfig) -> None:
    from edit_runner.runner import Runner

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    try:
        Runner(cfg, run_dir, overrides).run()
    except EditRunnerError as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # launchers (submitit) must see the job fail, not a clean exit
        print(f"edit-run: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_main() -> None:
    """``edit-run``: compose the config from the packaged ``conf/`` tree and run one job (or a sweep with -m)."""
    register_configs()
    register_resolvers()
    hydra.main(config_path="pkg://edit_runner.conf", config_name="config", version_base="1.3")(_run)()


def report_main() -> None:
    """``edit-report RUN_OR_SWEEP_DIRS...``: tables in the papers' layouts, CSV/LaTeX/Markdown, plots."""
    from edit_runner.reporting.tables import report_command

    raise SystemExit(report_command(sys.argv[1:]))

"""Thin entry points: ``edit-run`` (the Hydra app) and ``edit-report`` (tables and plots)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from edit_runner.config import (
    check_override_keys,
    config_yaml,
    effective_config,
    finalize_config,
    register_configs,
    register_resolvers,
)
from edit_runner.errors import EditRunnerError

CONF_DIR = Path(__file__).parent / "conf"


def _run(cfg: DictConfig) -> None:
    from edit_runner.runner import Runner

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    try:
        Runner(effective_config(cfg, overrides), run_dir, overrides).run()
    except EditRunnerError as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # launchers (submitit) must see the job fail, not a clean exit
        print(f"edit-run: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _job_config_request(args: list[str]) -> list[str] | None:
    """The overrides of ``edit-run --cfg job [overrides]`` (a single job), else None."""
    for flag in ("--cfg", "-c"):
        if flag in args and args.index(flag) + 1 < len(args) and args[args.index(flag) + 1] == "job":
            if "-m" in args or "--multirun" in args:
                return None
            at = args.index(flag)
            rest = args[:at] + args[at + 2 :]
            return [a for a in rest if not a.startswith("-")]
    return None


def print_job_config(overrides: list[str]) -> None:
    """Print the job config as the run will see it: composed, with the per-model paper values merged."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="edit_runner.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    finalize_config(cfg, overrides)
    print(config_yaml(cfg), end="")


def run_main() -> None:
    """``edit-run``: compose the config from the packaged ``conf/`` tree and run one job (or a sweep with -m)."""
    register_configs()
    register_resolvers()
    args = sys.argv[1:]
    try:
        check_override_keys(args, CONF_DIR)
        job_overrides = _job_config_request(args)
        if job_overrides is not None:
            print_job_config(job_overrides)
            return
    except EditRunnerError as err:
        print(f"edit-run: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    hydra.main(config_path="pkg://edit_runner.conf", config_name="config", version_base="1.3")(_run)()


def report_main() -> None:
    """``edit-report RUN_OR_SWEEP_DIRS...``: tables in the papers' layouts, CSV/LaTeX/Markdown, plots."""
    from edit_runner.reporting.tables import report_command

    raise SystemExit(report_command(sys.argv[1:]))

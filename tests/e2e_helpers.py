"""Run edit-run jobs in-process in tests (the typed config ``edit-run`` builds, then the Runner)."""

from __future__ import annotations

from pathlib import Path

from editing_helpers import run_config


def run_job(overrides: list[str], run_dir: Path) -> dict:
    """Run one job in-process in ``run_dir`` and return its summary."""
    from edit_runner.runner import Runner

    return Runner(run_config(overrides), run_dir, overrides).run()

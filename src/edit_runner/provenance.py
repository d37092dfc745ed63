"""What every result records about where it came from: git hash, package versions, command."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("edit-runner", "torch", "transformers", "hydra-core", "omegaconf", "datasets", "numpy", "pandas")


def git_hash() -> str:
    """The commit of the source tree edit_runner is imported from (``+dirty`` with local changes)."""
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the numbers."""
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(overrides: list[str]) -> dict[str, object]:
    """Git hash, versions and the launch command (with its Hydra overrides)."""
    return {
        "git_hash": git_hash(),
        "versions": package_versions(),
        "command": " ".join(["edit-run", *overrides]),
        "argv": sys.argv,
    }

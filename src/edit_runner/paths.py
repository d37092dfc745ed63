"""Where edit-runner keeps files between runs: the cache root shared by models, data and statistics."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EDIT_RUNNER_CACHE"


def default_cache_dir() -> Path:
    """Cache root: ``$EDIT_RUNNER_CACHE`` or ``~/.cache/edit_runner``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "edit_runner"))

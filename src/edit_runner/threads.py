"""How many CPU threads torch may use: the cores this process may really run on, not the host's."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> int | None:
    """Cores allowed by a cgroup-v2 CPU quota (``cpu.max`` = ``quota period``), rounded up; None without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def default_num_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else the cores in this process's affinity mask, capped by a cgroup quota."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    return max(1, min(cores, quota) if quota else cores)


def configure_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to ``requested`` (None: :func:`default_num_threads`); returns the number set."""
    threads = int(requested) if requested else default_num_threads()
    torch.set_num_threads(threads)
    return threads

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


def usable_cores() -> int:
    """Cores in this process's affinity mask, capped by a cgroup CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    return max(1, min(cores, quota) if quota else cores)


def default_num_threads(load: float | None = None) -> int:
    """``OMP_NUM_THREADS`` when set, else the usable cores not already busy with other work.

    An OpenMP team larger than the free cores waits at every barrier for a thread that is not
    scheduled (measured by ``scripts/bench_threads.py``: 2 threads on 2 cores beside one CPU-bound
    process took 2.7x as long as 1 thread), so the 1-minute load average (``load``, default
    ``os.getloadavg()``) is taken off the usable cores, keeping at least one thread.
    """
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    cores = usable_cores()
    busy = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else (load or 0.0)
    return max(1, min(cores, cores - math.floor(busy + 0.5)))


def configure_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to ``requested`` (None: :func:`default_num_threads`); returns the number set."""
    threads = int(requested) if requested else default_num_threads()
    torch.set_num_threads(threads)
    return threads

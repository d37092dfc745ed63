"""The default torch thread count: OMP_NUM_THREADS, else the usable cores not busy with other work."""

from __future__ import annotations

from pathlib import Path

from edit_runner.threads import cgroup_cpu_limit, default_num_threads, usable_cores


def test_omp_num_threads_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_num_threads(load=10.0) == 3


def test_load_is_taken_off_the_usable_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = usable_cores()
    assert default_num_threads(load=0.0) == cores
    assert default_num_threads(load=0.4) == cores
    assert default_num_threads(load=1.0) == max(1, cores - 1)
    assert default_num_threads(load=100.0) == 1


def test_cgroup_quota(tmp_path: Path):
    path = tmp_path / "cpu.max"
    path.write_text("150000 100000\n")
    assert cgroup_cpu_limit(path) == 2
    path.write_text("max 100000\n")
    assert cgroup_cpu_limit(path) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None

"""SLURM integration: real `edit-run` sweeps through hydra-submitit-launcher on a local one-node cluster.

The cluster is the one of ``scripts/slurm_local.sh`` (slurm-wlm + munge on localhost). ``.ci/run`` starts
it before pytest and stops it afterwards; run locally, the session fixture starts it when ``sinfo`` does
not answer (and stops it again at the end unless ``EDIT_RUNNER_KEEP_SLURM=1``).  With ``CI`` set, a
cluster that cannot start is a failure; locally the tests skip only when the script cannot run here.

    pytest -m slurm tests/test_slurm.py

What is shown:
* a 2x2 sweep (algo x data.num_edits) of tiny runs goes through ``hydra/launcher=slurm`` as one job
  array, every run directory gets a complete ``summary.json``, ``edit-report`` tabulates the four runs,
  and re-launching the same sweep skips the finished runs (their summaries are not rewritten);
* a sequential run is preempted mid-way -- (a) the way SLURM/submitit do it: USR2 -> submitit pickles
  the same call (``BaseSubmititLauncher.checkpoint``) and runs ``scontrol requeue``; (b) the hard way:
  ``scontrol requeue`` + SIGKILL, no chance to save anything -- and the requeued job resumes from the
  run's last per-step checkpoint and finishes with the same numbers as an uninterrupted run.
To catch the job mid-way deterministically, its Python process is frozen (SIGSTOP) as soon as the
first step checkpoint appears, the preemption is delivered, and the process is thawed (SIGCONT).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "slurm_local.sh"
IN_CI = bool(os.environ.get("CI"))


def _shared() -> Path:
    return Path(os.environ.get("EDIT_RUNNER_SHARED", REPO_ROOT.parent / "shared")).resolve()


TINY_MODEL_DIR = _shared() / "models" / "stories260K"
#: the tiny runs every SLURM job does: karpathy's stories260K (Llama architecture, 5 layers) on CPU.
#: `algo.layers=[3]` because the algorithms' default layers are those of real models (MEMIT: 3..6).
TINY = [
    "model=local",
    f"model.path={TINY_MODEL_DIR}",
    "model.device=cpu",
    "algo.layers=[3]",
    "data=demo",
    "progress=false",
]
#: resources of one job on the local test cluster (CPU only; 2 cores -> 2 jobs at a time)
SLURM_TEST = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    # > 10 min, so that submitit counts a USR2 as a preemption, not as a timeout
    "hydra.launcher.timeout_min=30",
    "hydra.launcher.max_num_timeout=2",
    "hydra.launcher.signal_delay_s=60",
]
POST_KEYS = ("efficacy_success", "generalization_success", "specificity_success", "score_success")
SWEEP_TIMEOUT_S = 240
PREEMPT_TIMEOUT_S = 240


# ------------------------------------------------------------------------------------------------
# the cluster
# ------------------------------------------------------------------------------------------------


def _sinfo_ok() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], check=False, capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = proc.stdout.split()
    return proc.returncode == 0 and any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states)


def _script_unusable() -> str | None:
    """Why scripts/slurm_local.sh cannot run on this machine (None: it can)."""
    if shutil.which("bash") is None:
        return "bash is missing"
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if (
            sudo is None
            or subprocess.run([sudo, "-n", "true"], check=False, capture_output=True).returncode != 0
        ):
            return "not root and no password-less sudo"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "slurm is not installed and there is no apt-get to install it"
    return None


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI: the local SLURM cluster is required but unavailable: {reason}", pytrace=False)
    pytest.skip(f"no local SLURM cluster: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A responding one-node SLURM cluster (started with scripts/slurm_local.sh when needed)."""
    if _sinfo_ok():
        yield
        return
    reason = _script_unusable()
    if reason:
        _unavailable(reason)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "start"], check=False, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0 or not _sinfo_ok():
        _unavailable(f"`{SCRIPT.name} start` failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    yield
    if not os.environ.get("EDIT_RUNNER_KEEP_SLURM"):
        subprocess.run(["bash", str(SCRIPT), "stop"], check=False, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def cli() -> dict[str, str]:
    """Absolute paths of the project's console scripts (the venv's bin first)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = {name: shutil.which(name, path=path) for name in ("edit-run", "edit-report")}
    missing = [name for name, where in found.items() if where is None]
    assert not missing, f"console scripts not installed: {missing} (pip install -e .)"
    assert TINY_MODEL_DIR.is_dir(), f"{TINY_MODEL_DIR} not found; set EDIT_RUNNER_SHARED"
    return found  # type: ignore[return-value]


def _env(outputs: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        EDIT_RUNNER_OUTPUTS=str(outputs),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",  # same threading in the jobs and in the local reference run
        PYTHONUNBUFFERED="1",
        HYDRA_FULL_ERROR="1",
    )
    return env


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _job_logs(sweep_dir: Path) -> str:
    """Everything the jobs wrote (submitit's per-job logs), for assertion messages."""
    parts = []
    for log in sorted((sweep_dir / ".submitit").glob("*/*.out")) + sorted(
        (sweep_dir / ".submitit").glob("*/*.err")
    ):
        parts.append(f"==> {log} <==\n{log.read_text(errors='replace')}")
    return "\n".join(parts) or f"(no job logs under {sweep_dir / '.submitit'})"


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float, logs_of: Path | None = None):
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=cwd, check=False, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        extra = _job_logs(logs_of) if logs_of else ""
        raise AssertionError(
            f"timed out after {timeout}s: {' '.join(cmd)}\n{exc.stdout}\n{exc.stderr}\n{extra}"
        )
    if proc.returncode != 0:
        extra = _job_logs(logs_of) if logs_of else ""
        raise AssertionError(
            f"rc {proc.returncode}: {' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n"
            f"--- stderr\n{proc.stderr[-6000:]}\n{extra}"
        )
    return proc


class Launch:
    """A command in the background (output to files); ``wait`` also watches its SLURM jobs.

    Without accounting (no ``sacct``) submitit learns that a job ended only from the job's result
    pickle: a job that dies without one (killed, or exited through ``SystemExit``) would leave the
    submitting ``edit-run -m`` waiting forever.  ``wait`` fails fast instead when the named jobs have
    left the queue for ``QUEUE_GRACE_S`` while the submitter still waits.
    """

    QUEUE_GRACE_S = 20.0

    def __init__(
        self, cmd: list[str], env: dict[str, str], cwd: Path, stem: str, job_name: str | None = None
    ):
        self.cmd, self.job_name = cmd, job_name
        self.out_path, self.err_path = cwd / f"{stem}.stdout", cwd / f"{stem}.stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True
            )

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        out = self.out_path.read_text(errors="replace")[-4000:]
        err = self.err_path.read_text(errors="replace")[-6000:]
        return f"$ {' '.join(self.cmd)}\n--- stdout\n{out}\n--- stderr\n{err}"

    def kill(self) -> None:
        if self.running():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def _queued(self) -> bool:
        proc = subprocess.run(
            ["squeue", "-h", f"--name={self.job_name}", "-o", "%i"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return proc.returncode != 0 or bool(proc.stdout.strip())

    def wait(self, deadline: float, logs_of: Path | None = None) -> None:
        """Wait for a zero exit status before ``deadline`` (time.monotonic())."""
        started, gone_since = time.monotonic(), None
        while self.running():
            now = time.monotonic()
            extra = _job_logs(logs_of) if logs_of else ""
            if now > deadline:
                self.kill()
                raise AssertionError(f"timed out after {now - started:.0f}s\n{self.output()}\n{extra}")
            if self.job_name:
                gone_since = None if self._queued() else (gone_since or now)
                if gone_since is not None and now - gone_since > self.QUEUE_GRACE_S:
                    self.kill()
                    raise AssertionError(
                        f"the jobs left the queue without results (the submitter would wait forever)\n"
                        f"{self.output()}\n{extra}"
                    )
            time.sleep(1.0)
        if self.proc.returncode != 0:
            extra = _job_logs(logs_of) if logs_of else ""
            raise AssertionError(f"rc {self.proc.returncode}\n{self.output()}\n{extra}")


def _summaries(sweep_dir: Path) -> dict[Path, dict]:
    """summary.json of every run directory under a sweep dir (not descending into hidden dirs)."""
    found = {}
    for path in sweep_dir.rglob("summary.json"):
        if any(part.startswith(".") for part in path.relative_to(sweep_dir).parts):
            continue
        found[path.parent] = json.loads(path.read_text())
    return found


def _assert_complete(summary: dict, where: Path) -> None:
    assert summary.get("status") == "complete", f"{where}: status {summary.get('status')!r}"
    post = summary.get("post")
    assert isinstance(post, dict), f"{where}: no post metrics"
    for key in POST_KEYS:
        value = post.get(key)
        assert isinstance(value, (int, float)) and math.isfinite(value), f"{where}: post.{key} = {value!r}"
        assert 0.0 <= value <= 1.0, f"{where}: post.{key} = {value!r} not a fraction"


def _cancel_jobs(name: str) -> None:
    subprocess.run(["scancel", f"--name={name}"], check=False, capture_output=True, timeout=30)


def _close(a, b, where: str) -> None:
    """Same numbers: equal up to float32 round-off."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ------------------------------------------------------------------------------------------------
# presets (no cluster needed)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "target", "expected"),
    [
        ("slurm", "SlurmLauncher", {"max_num_timeout": 3, "gpus_per_node": 1, "array_parallelism": 16}),
        ("local", "LocalLauncher", {"gpus_per_node": 1}),
    ],
)
def test_launcher_preset_composes(cli, tmp_path, preset, target, expected):
    """Preflight: `edit-run -m hydra/launcher=<preset> ... --cfg hydra -p hydra.launcher` submits nothing."""
    proc = _run(
        [cli["edit-run"], f"hydra/launcher={preset}", *TINY, "--cfg", "hydra", "-p", "hydra.launcher"],
        _env(tmp_path),
        tmp_path,
        120,
    )
    import yaml

    launcher = yaml.safe_load(proc.stdout)
    assert launcher["_target_"].endswith(f"submitit_launcher.{target}")
    for key, value in expected.items():
        assert launcher[key] == value, (key, launcher[key])
    assert not (tmp_path / "outputs").exists() and not list(tmp_path.rglob("summary.json"))


# ------------------------------------------------------------------------------------------------
# a 2x2 sweep on the cluster
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(slurm_cluster, cli, tmp_path_factory):
    """Run `edit-run -m hydra/launcher=slurm algo=rome,memit data.num_edits=2,3 ...` once."""
    root = tmp_path_factory.mktemp("slurm_sweep")
    sweep_dir = root / "sweep"
    name = f"er-sweep-{os.getpid()}"
    cmd = [
        cli["edit-run"],
        "-m",
        *SLURM_TEST,
        f"hydra.launcher.name={name}",
        f"hydra.sweep.dir={sweep_dir}",
        "algo=rome,memit",
        "data.num_edits=2,3",
        *TINY,
    ]
    t0 = time.monotonic()
    launch = Launch(cmd, _env(root), root, "sweep", job_name=name)
    try:
        launch.wait(t0 + SWEEP_TIMEOUT_S, logs_of=sweep_dir)
    finally:
        launch.kill()
        _cancel_jobs(name)
    return {"root": root, "dir": sweep_dir, "cmd": cmd, "name": name, "seconds": time.monotonic() - t0}


@pytest.mark.slurm
def test_sweep_2x2_through_slurm(sweep):
    sweep_dir = sweep["dir"]
    # one job array of 4 tasks, submitted through sbatch by submitit
    scripts = list((sweep_dir / ".submitit").glob("*/*_submission.sh"))
    assert scripts, _job_logs(sweep_dir)
    assert "#SBATCH --array=0-3" in scripts[0].read_text()
    summaries = _summaries(sweep_dir)
    assert len(summaries) == 4, f"{sorted(map(str, summaries))}\n{_job_logs(sweep_dir)}"
    for run_dir, summary in summaries.items():
        _assert_complete(summary, run_dir)
    points = {(s["algo"], int(s["num_edits"])) for s in summaries.values()}
    assert points == {("rome", 2), ("rome", 3), ("memit", 2), ("memit", 3)}, points
    assert len({s.get("config_hash") for s in summaries.values()}) == 4


@pytest.mark.slurm
def test_edit_report_tabulates_the_sweep(sweep, cli):
    out = sweep["root"] / "report"
    _run(
        [cli["edit-report"], str(sweep["dir"]), "--format", "all", "--out", str(out)],
        _env(sweep["root"]),
        sweep["root"],
        120,
    )
    for name in ("runs.md", "runs.tex", "runs.csv", "runs_tidy.csv"):
        assert (out / name).is_file(), sorted(p.name for p in out.iterdir())
    import pandas as pd

    tidy = pd.read_csv(out / "runs_tidy.csv")
    assert tidy["run_dir"].nunique() == 4
    assert set(tidy["algo"]) == {"rome", "memit"}
    assert set(tidy["num_edits"].astype(int)) == {2, 3}
    markdown = (out / "runs.md").read_text().lower()
    assert "rome" in markdown and "memit" in markdown


@pytest.mark.slurm
def test_relaunched_sweep_skips_finished_runs(sweep):
    """Idempotence: the same command again finishes without recomputing (summaries untouched)."""
    before = {p: (p / "summary.json").stat().st_mtime_ns for p in _summaries(sweep["dir"])}
    launch = Launch(sweep["cmd"], _env(sweep["root"]), sweep["root"], "relaunch", job_name=sweep["name"])
    try:
        launch.wait(time.monotonic() + SWEEP_TIMEOUT_S, logs_of=sweep["dir"])
    finally:
        launch.kill()
        _cancel_jobs(sweep["name"])
    after = _summaries(sweep["dir"])
    assert set(after) == set(before), "the relaunch must reuse the same (deterministic) run directories"
    for run_dir, summary in after.items():
        _assert_complete(summary, run_dir)
        assert (run_dir / "summary.json").stat().st_mtime_ns == before[run_dir], f"{run_dir} was recomputed"


# ------------------------------------------------------------------------------------------------
# preemption / requeue of a sequential run
# ------------------------------------------------------------------------------------------------

SEQUENTIAL = ["algo=rome", "protocol=sequential", "protocol.batch_size=1", "data.num_edits=4", "seed=0"]


def _job_id(sweep_dir: Path) -> str | None:
    """The SLURM id of the single job of a one-point sweep (submitit's folder name: 123 or 123_0)."""
    folder = sweep_dir / ".submitit"
    if not folder.is_dir():
        return None
    ids = sorted(p.name for p in folder.iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name))
    return ids[-1] if ids else None


def _step_pids(job_id: str) -> list[int]:
    """PIDs of the job's step processes (the Python task; not the batch shell or srun)."""
    if "_" in job_id:  # an array task (123_0): listpids wants the task's own job id
        raw = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%A"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        job_id = (raw.stdout.split() or [job_id])[0]
    proc = subprocess.run(
        ["scontrol", "listpids", job_id], check=False, capture_output=True, text=True, timeout=30
    )
    pids = []
    for line in proc.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2] not in ("batch", "extern"):
            pids.append(int(fields[0]))
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _checkpoints(run_dir: Path) -> list[str]:
    ckpt = run_dir / "checkpoint"
    return sorted(p.name for p in ckpt.iterdir() if not p.name.startswith(".")) if ckpt.is_dir() else []


def _wait_for_first_checkpoint(sweep_dir: Path, job: Launch, deadline: float) -> Path:
    while time.monotonic() < deadline and job.running():
        for ckpt in sweep_dir.glob("*/checkpoint"):
            # a complete checkpoint file (atomic writes go through hidden temporary siblings)
            if not ckpt.parent.name.startswith(".") and _checkpoints(ckpt.parent):
                return ckpt.parent
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint appeared\n{job.output()}\n{_job_logs(sweep_dir)}")


@pytest.mark.slurm
@pytest.mark.parametrize("how", ["usr2", "requeue-kill"])
def test_preempted_sequential_run_resumes(slurm_cluster, cli, tmp_path, how):
    env = _env(tmp_path)
    sweep_dir = tmp_path / "preempted"
    name = f"er-preempt-{os.getpid()}-{how}"
    job_cmd = [
        cli["edit-run"],
        "-m",
        *SLURM_TEST,
        f"hydra.launcher.name={name}",
        f"hydra.sweep.dir={sweep_dir}",
        *SEQUENTIAL,
        *TINY,
    ]
    ref_cmd = [cli["edit-run"], f"hydra.run.dir={tmp_path / 'reference'}", *SEQUENTIAL, *TINY]
    deadline = time.monotonic() + PREEMPT_TIMEOUT_S
    job = Launch(job_cmd, env, tmp_path, "preempted", job_name=name)
    # the uninterrupted reference runs locally meanwhile (the cluster job takes the other core)
    reference = Launch(ref_cmd, env, tmp_path, "reference")
    try:
        run_dir = _wait_for_first_checkpoint(sweep_dir, job, deadline)
        job_id = _job_id(sweep_dir)
        assert job_id, _job_logs(sweep_dir)
        pids = _step_pids(job_id)
        assert pids, f"no step processes for job {job_id}"
        _signal_all(pids, signal.SIGSTOP)  # freeze it mid-way: it cannot finish before the preemption
        at_preemption = _checkpoints(run_dir)
        summary_path = run_dir / "summary.json"
        assert not (
            summary_path.exists() and json.loads(summary_path.read_text()).get("status") == "complete"
        )
        if how == "usr2":
            # what SLURM sends at --signal=USR2@delay before the time limit, and what submitit's
            # SlurmJob._interrupt sends for a preemption: submitit checkpoints and `scontrol requeue`s
            subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
            time.sleep(0.5)
            _signal_all(pids, signal.SIGCONT)
        else:
            # an abrupt requeue: SLURM requeues the job and the process dies without any warning
            subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
            _signal_all(pids, signal.SIGKILL)
        job.wait(deadline, logs_of=sweep_dir)
        reference.wait(deadline)
    finally:
        job.kill()
        reference.kill()
        _cancel_jobs(name)

    logs = _job_logs(sweep_dir)
    # the job really ran twice: preempted, requeued by SLURM, started again from the same pickle
    assert logs.count("Starting with JobEnvironment") >= 2, logs
    if how == "usr2":
        assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs, logs
    assert re.search(r"resum", logs, re.IGNORECASE), f"the requeued job did not report resuming\n{logs}"

    summaries = _summaries(sweep_dir)
    assert list(summaries) == [run_dir], sorted(map(str, summaries))
    resumed = summaries[run_dir]
    _assert_complete(resumed, run_dir)
    # the checkpoints written before the preemption were resumed from, not recomputed
    # a checkpoint (state.json + the tensors file it names) existed at the preemption and one is there at the end
    # (each checkpoint writes tensors-<step>.safetensors and removes the older one)
    assert "state.json" in at_preemption and any(n.startswith("tensors-") for n in at_preemption)
    final = _checkpoints(run_dir)
    assert "state.json" in final and any(n.startswith("tensors-") for n in final)
    uninterrupted = json.loads((tmp_path / "reference" / "summary.json").read_text())
    _assert_complete(uninterrupted, tmp_path / "reference")
    assert resumed.get("config_hash") == uninterrupted.get("config_hash")
    _close(uninterrupted["pre"], resumed["pre"], "pre")
    _close(uninterrupted["post"], resumed["post"], "post")

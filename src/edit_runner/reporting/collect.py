"""Collect run directories (``summary.json`` + ``series/*.jsonl``) into one tidy pandas table.

Every complete run found recursively under the given paths becomes many rows, one per
``(phase, iteration, metric)``:

* ``phase="pre"`` (iteration 0) and ``phase="post"`` (iteration missing): the ``pre``/``post`` blocks;
* ``phase="iteration"`` (iteration k): each entry of ``iterations`` — its ``post`` metrics plus the
  entry's own numbers (``p_bar``, ``p_hat``, ``delta_p``, ...);
* ``phase="run"``: every other numeric leaf of the summary, by dotted path
  (``health.final.me_ppl_50``, ``timing.seconds_per_edit``, ``fact_probs.edited``, ...).

Each row carries the run's identity and protocol (``protocol.*`` columns flattened), so that
reports can check that only numbers of one protocol are ever aggregated together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

SUMMARY_FILE = "summary.json"
SERIES_DIR = "series"

#: Top-level summary keys that describe the run (copied to every row), never metrics.
META_FIELDS: tuple[str, ...] = (
    "run_id",
    "config_hash",
    "algo",
    "model",
    "model_revision",
    "dataset",
    "num_edits",
    "seed",
    "trial",
    "experiment",
    "status",
)
#: Provenance fields copied to every row (``provenance.<name>``).
PROVENANCE_FIELDS: tuple[str, ...] = ("git_hash", "command")
#: Summary keys handled explicitly (not flattened into ``phase="run"`` metrics).
_STRUCTURED = frozenset({"pre", "post", "iterations", "protocol", "provenance", "wrappers", *META_FIELDS})

#: Column order of the tidy table (protocol columns are inserted where they occur).
BASE_COLUMNS: tuple[str, ...] = (
    "run_dir",
    *META_FIELDS,
    "wrappers",
    "provenance.git_hash",
    "provenance.command",
)
VALUE_COLUMNS: tuple[str, ...] = ("phase", "iteration", "metric", "value")


@dataclass(frozen=True)
class SkippedRun:
    """A run directory that was found but not reported, with the reason."""

    path: str
    reason: str


def find_run_dirs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every directory holding a ``summary.json`` under ``paths`` (recursively; sorted, no duplicates).

    A path may itself be a run directory, a sweep/multirun tree, or a ``summary.json`` file.
    Hidden directories (``.hydra``, ``.submitit``) are not descended into.
    """
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.name == SUMMARY_FILE:
            found.add(path.parent.resolve())
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"no such run or sweep directory: {path}")
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if SUMMARY_FILE in files:
                found.add(Path(root).resolve())
    return sorted(found)


def load_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``<run_dir>/summary.json``."""
    with open(Path(run_dir) / SUMMARY_FILE, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise TypeError(f"{run_dir}/{SUMMARY_FILE} is not a JSON object")
    return data


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (bools and strings are not metrics)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _flatten_numbers(obj: Any, prefix: str) -> Iterable[tuple[str, float]]:
    """Yield ``(dotted.path, value)`` for every numeric leaf of nested dicts (lists are skipped)."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _flatten_numbers(value, f"{prefix}.{key}" if prefix else str(key))
        return
    number = _number(obj)
    if number is not None:
        yield prefix, number


def _flatten_scalars(obj: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Flatten a nested mapping of scalars into ``{prefix.key: value}`` (lists become tuples)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_scalars(value, name))
        elif isinstance(value, list):
            out[name] = tuple(value)
        else:
            out[name] = value
    return out


def _wrappers_label(wrappers: Any) -> str:
    """The wrapper list as one string: ``"iterative+na"``; ``"none"`` when empty."""
    if not wrappers:
        return "none"
    if isinstance(wrappers, str):
        return wrappers
    return "+".join(str(w) for w in wrappers)


def summary_rows(summary: Mapping[str, Any], run_dir: str) -> list[dict[str, Any]]:
    """Tidy rows of one run's summary (see the module docstring for the phases)."""
    meta: dict[str, Any] = {"run_dir": run_dir}
    for name in META_FIELDS:
        meta[name] = summary.get(name)
    meta["wrappers"] = _wrappers_label(summary.get("wrappers"))
    provenance = summary.get("provenance") or {}
    for name in PROVENANCE_FIELDS:
        meta[f"provenance.{name}"] = provenance.get(name)
    meta.update(_flatten_scalars(provenance, "provenance"))  # + provenance.versions.<package>, ...
    meta.update(_flatten_scalars(summary.get("protocol") or {}, "protocol"))

    rows: list[dict[str, Any]] = []

    def add(phase: str, iteration: int | None, metric: str, value: float) -> None:
        rows.append({**meta, "phase": phase, "iteration": iteration, "metric": metric, "value": value})

    for phase in ("pre", "post"):
        for metric, value in _flatten_numbers(summary.get(phase) or {}, ""):
            add(phase, 0 if phase == "pre" else None, metric, value)
    for position, entry in enumerate(summary.get("iterations") or [], start=1):
        k = int(entry.get("iteration", position))
        for metric, value in _flatten_numbers(entry.get("post") or {}, ""):
            add("iteration", k, metric, value)
        for key, value in entry.items():
            if key in ("iteration", "post"):
                continue
            for metric, number in _flatten_numbers(value, key):
                add("iteration", k, metric, number)
    for key, value in summary.items():
        if key in _STRUCTURED:
            continue
        for metric, number in _flatten_numbers(value, key):
            add("run", None, metric, number)
    return rows


def collect_runs_with_skipped(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[pd.DataFrame, list[SkippedRun]]:
    """Collect every complete run under ``paths``; return the tidy table and the skipped runs.

    Runs whose ``status`` is not ``"complete"``, unreadable summaries, and duplicates (the same
    ``run_id`` found twice, e.g. a copied directory) are skipped and listed with the reason.
    """
    rows: list[dict[str, Any]] = []
    skipped: list[SkippedRun] = []
    seen: dict[str, str] = {}
    for run_dir in find_run_dirs(paths):
        where = str(run_dir)
        try:
            summary = load_summary(run_dir)
        except (OSError, ValueError, TypeError) as exc:
            skipped.append(SkippedRun(where, f"unreadable {SUMMARY_FILE}: {exc}"))
            continue
        status = summary.get("status")
        if status != "complete":
            skipped.append(SkippedRun(where, f"status is {status!r}, not 'complete'"))
            continue
        identity = str(summary.get("run_id") or summary.get("config_hash") or where)
        if identity in seen:
            skipped.append(SkippedRun(where, f"duplicate of {seen[identity]} (run_id {identity})"))
            continue
        seen[identity] = where
        rows.extend(summary_rows(summary, where))
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=[*BASE_COLUMNS, *VALUE_COLUMNS])
    else:
        protocol_cols = sorted(c for c in frame.columns if c.startswith("protocol."))
        provenance_cols = sorted(c for c in frame.columns if c.startswith("provenance.") and c not in BASE_COLUMNS)
        order = [*BASE_COLUMNS, *protocol_cols, *provenance_cols, *VALUE_COLUMNS]
        frame = frame[order + [c for c in frame.columns if c not in order]]
        frame["value"] = frame["value"].astype(float)
        frame["iteration"] = frame["iteration"].astype("Int64")
    frame.attrs["skipped"] = skipped
    return frame, skipped


def collect_runs(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Tidy table of every complete run under ``paths`` (one row per run × phase × iteration × metric).

    The skipped runs (incomplete, unreadable, duplicates) are listed in ``frame.attrs["skipped"]``
    as :class:`SkippedRun` items.
    """
    frame, _ = collect_runs_with_skipped(paths)
    return frame


def collect_series(run_dirs: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """All tidy series rows (``series/*.jsonl``) of the given run directories, tagged with run identity.

    Each row gains ``run_id``, ``run_dir``, ``algo``, ``wrappers``, ``model``, ``dataset``, ``seed``,
    ``trial`` and ``series`` (the file stem), so plots can group by method and average over trials.
    """
    rows: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        series_dir = path / SERIES_DIR
        if not series_dir.is_dir():
            continue
        summary = load_summary(path)
        tag = {
            "run_id": summary.get("run_id"),
            "run_dir": str(path),
            "algo": summary.get("algo"),
            "wrappers": _wrappers_label(summary.get("wrappers")),
            "model": summary.get("model"),
            "dataset": summary.get("dataset"),
            "seed": summary.get("seed"),
            "trial": summary.get("trial"),
        }
        for file in sorted(series_dir.glob("*.jsonl")):
            with open(file, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        rows.append({**tag, "series": file.stem, **json.loads(line)})
    return rows

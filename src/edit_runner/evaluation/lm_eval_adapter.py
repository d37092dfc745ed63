"""Run lm-evaluation-harness tasks on the in-memory (edited) model (optional extra ``[lm-eval]``).

``lm_eval`` is imported lazily, so the package works without it; calling :func:`run_lm_eval` without
it raises one clear error naming the install command.
"""

from __future__ import annotations

import inspect
import math
import os
import random
from collections.abc import Iterable
from typing import Any

from edit_runner.errors import ConfigError, DataError, EditRunnerError

INSTALL_HINT = 'pip install "edit-runner[lm-eval]"'


class MissingDependencyError(EditRunnerError):
    """An optional dependency needed for the requested feature is not installed."""


def _import_lm_eval() -> tuple[Any, Any]:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise MissingDependencyError(
            f"the lm-evaluation-harness adapter needs the `lm_eval` package ({exc}); install it with "
            f'{INSTALL_HINT} (recent lm-eval versions also need their HF backend: pip install "lm_eval[hf]")'
        ) from exc
    return lm_eval, HFLM


def _looks_offline(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    text = " ".join(str(e) for e in _chain(exc)).lower()
    return bool(
        names
        & {
            "ConnectionError",
            "OfflineModeIsEnabled",
            "LocalEntryNotFoundError",
            "DatasetNotFoundError",
            "HfHubHTTPError",
            "FileNotFoundError",
            "MaxRetryError",
            "Timeout",
            "ReadTimeout",
        }
        or "offline" in text
        or "couldn't reach" in text
        or "connection" in text
    )


def _chain(exc: BaseException | None) -> list[BaseException]:
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _save_rng() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy is a core dependency
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: Iterable[str],
    limit: float | None = None,
    batch_size: int = 8,
    *,
    num_fewshot: int | None = None,
    seed: int = 0,
    include_path: str | os.PathLike[str] | None = None,
    include_default_tasks: bool = True,
    bootstrap_iters: int | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate lm-eval ``tasks`` on ``model`` as it is now; ``{task: {metric: value}}``.

    Wraps the model with ``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tokenizer,
    batch_size=batch_size)`` and calls ``lm_eval.simple_evaluate(model=..., tasks=..., limit=...,
    num_fewshot=...)``. ``limit`` is lm-eval's (an int = items per task, a float < 1 = fraction).
    Metric keys are lm-eval's (e.g. ``"acc,none"``, ``"acc_stderr,none"``); non-numeric entries
    (aliases) are dropped. ``simple_evaluate`` reseeds the global ``random`` / numpy / torch generators;
    their states are saved and restored around the call so the run's own RNG stream is unaffected
    (resumed runs stay identical). The model's training flag is restored afterwards.

    ``include_path``: a folder (or YAML file) of extra task configs, e.g. a task on local JSON data
    (``dataset_path: json``, ``dataset_kwargs: {data_files: ...}``) that needs no network; with
    ``include_default_tasks=False`` lm-eval's built-in task tree is not indexed (much faster start).
    ``bootstrap_iters``: lm-eval's resampling count for the ``*_stderr`` values (its default when
    ``None``; ``0`` skips them, they come back as NaN).
    """
    task_list = [str(t) for t in tasks]
    if not task_list:
        raise ConfigError("run_lm_eval needs at least one lm-eval task name")
    lm_eval, hflm_cls = _import_lm_eval()
    was_training = bool(getattr(model, "training", False))
    kwargs: dict[str, Any] = {"limit": limit, "num_fewshot": num_fewshot, "log_samples": False}
    if bootstrap_iters is not None:
        kwargs["bootstrap_iters"] = bootstrap_iters
    accepted = inspect.signature(lm_eval.simple_evaluate).parameters
    for name in ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed"):
        if name in accepted:  # seeds are arguments since lm-eval 0.4.1; older versions hard-code them
            kwargs[name] = seed
    if include_path is not None or not include_default_tasks:
        from lm_eval.tasks import TaskManager

        kwargs["task_manager"] = TaskManager(
            include_path=None if include_path is None else str(include_path), include_defaults=include_default_tasks
        )
    rng_state = _save_rng()
    try:
        lm = hflm_cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = lm_eval.simple_evaluate(model=lm, tasks=task_list, **kwargs)
    except Exception as exc:
        if _looks_offline(exc):
            raise DataError(
                f"lm-eval could not load the data of tasks {task_list} ({type(exc).__name__}: {exc}). "
                "lm-eval downloads task data from the Hugging Face hub: run once online to fill the datasets "
                "cache (HF_DATASETS_CACHE), or unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE."
            ) from exc
        raise
    finally:
        _restore_rng(rng_state)
        if was_training:
            model.train()
    if results is None:  # non-zero ranks in distributed runs
        return {}
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.get("results", {}).items():
        numeric = {}
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numeric[key] = float(value)
            elif isinstance(value, str) and value == "N/A":
                numeric[key] = math.nan
        out[task] = numeric
    return out

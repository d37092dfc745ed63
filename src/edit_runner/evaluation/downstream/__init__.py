"""Downstream few-shot probes (SPEC Part D): :mod:`.tasks` (registry, data, test-item selection),
:mod:`.prompts` (few-shot prompts, answer parsing), :mod:`.scoring` (label-word scores and greedy
generations through :mod:`edit_runner.models`), :mod:`.metrics` (F1, accuracy, MCC) and
:mod:`.evaluate` (the entry point, :func:`~edit_runner.evaluation.downstream.evaluate.evaluate_downstream`)."""

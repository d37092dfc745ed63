"""Downstream metrics without sklearn: accuracy, weighted F1 and MCC of class predictions (-1 = invalid).

They match ``sklearn.metrics.accuracy_score``, ``f1_score(average="weighted")`` and
``matthews_corrcoef`` (zero-division and undefined cases give 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _classes(labels: Sequence[int], predictions: Sequence[int]) -> list[int]:
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    return sorted(set(labels) | set(predictions))


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Correct / total (invalid predictions count as wrong); NaN for no items."""
    _classes(labels, predictions)
    if not labels:
        return math.nan
    return sum(int(y == p) for y, p in zip(labels, predictions)) / len(labels)


def weighted_f1(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """``sklearn.metrics.f1_score(labels, predictions, average="weighted")`` (zero-division -> 0).

    Per class ``c`` of ``labels ∪ predictions``: ``F1_c = 2TP / (2TP + FP + FN)``; the result is the
    support-weighted mean over the true labels (a predicted-only class such as -1 has weight 0 but
    its predictions are false positives of nothing and false negatives of the true class).
    """
    classes = _classes(labels, predictions)
    if not labels:
        return math.nan
    total = 0.0
    for c in classes:
        tp = sum(1 for y, p in zip(labels, predictions) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, predictions) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, predictions) if y == c and p != c)
        support = tp + fn
        denominator = 2 * tp + fp + fn
        f1 = 2 * tp / denominator if denominator else 0.0
        total += support * f1
    return total / len(labels)


def matthews_corrcoef(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Multi-class MCC as ``sklearn.metrics.matthews_corrcoef`` (0 when undefined)."""
    classes = _classes(labels, predictions)
    if not labels:
        return math.nan
    n = len(labels)
    correct = sum(int(y == p) for y, p in zip(labels, predictions))
    t = {c: sum(1 for y in labels if y == c) for c in classes}
    p = {c: sum(1 for y in predictions if y == c) for c in classes}
    cov_ytyp = correct * n - sum(t[c] * p[c] for c in classes)
    cov_ypyp = n * n - sum(p[c] ** 2 for c in classes)
    cov_ytyt = n * n - sum(t[c] ** 2 for c in classes)
    if cov_ypyp == 0 or cov_ytyt == 0:
        return 0.0
    return cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp)


def classification_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """``{"f1", "accuracy", "mcc", "invalid"}`` for one prediction set (-1 = invalid)."""
    return {
        "f1": weighted_f1(labels, predictions),
        "accuracy": accuracy(labels, predictions),
        "mcc": matthews_corrcoef(labels, predictions),
        "invalid": float(sum(1 for p in predictions if p == -1)),
    }

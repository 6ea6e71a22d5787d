"""Image-level (detection) metrics: one anomaly score and one 0/1 label per image.

All functions take NumPy arrays or torch tensors (any device) of the same shape, usually (N,), and return a
python float. Ties are handled exactly as in scikit-learn. With no anomalous (label 1) or no normal (label 0)
image the metrics are undefined and NaN is returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from oadbench.metrics._ranking import (
    RankedScores,
    as_binary,
    as_scores,
    check_names,
    check_same_shape,
    rank_scores,
)

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")


def _rank(scores: Any, labels: Any) -> RankedScores:
    s = as_scores(scores, "scores")
    y = as_binary(labels, "labels")
    check_same_shape(s, y, "scores", "labels")
    s, y = s.ravel(), y.ravel()
    return rank_scores(s[y], s[~y])


def image_metrics(scores: Any, labels: Any, names: Iterable[str] = IMAGE_METRICS) -> dict[str, float]:
    """Several image-level metrics (names from ``IMAGE_METRICS``) from one sort of the scores."""
    names = check_names(names, IMAGE_METRICS)
    ranked = _rank(scores, labels)
    compute = {
        "image_auroc": ranked.auroc,
        "image_ap": ranked.average_precision,
        "image_f1max": ranked.f1_max,
    }
    return {name: compute[name]() for name in names}


def image_auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (= Mann-Whitney U / (P*N), ties 1/2), as ``sklearn.metrics.roc_auc_score``."""
    return _rank(scores, labels).auroc()


def image_ap(scores: Any, labels: Any) -> float:
    """Average precision, as ``sklearn.metrics.average_precision_score`` (no interpolation)."""
    return _rank(scores, labels).average_precision()


def image_f1max(scores: Any, labels: Any) -> float:
    """Best F1 = 2TP / (2TP + FP + FN) over all thresholds ``score >= t``."""
    return _rank(scores, labels).f1_max()

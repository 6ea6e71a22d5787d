"""What pass / reject decisions cost on a line, and what a threshold chosen with the labels could have done.

:func:`decision_metrics` scores a sequence of decisions (True = rejected) against the labels (1 = defective):
false-alarm rate (good parts rejected / good parts), miss rate (defective parts passed / defective parts),
precision, recall and F1 of the rejections, and rejections per 1,000 parts; NaN where a ratio has no
denominator. :func:`hindsight_references` are the label-using references: F1 at the best fixed threshold
(F1-max), recall at a false-alarm rate of at most 1 % and the false-alarm rate at a recall of at least 99 %
(anomalib's PG / PB operating points), over every threshold ``score >= t`` (``sklearn.metrics.roc_curve``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from oadbench.metrics.image import image_f1max

DECISION_METRICS = ("false_alarm_rate", "miss_rate", "precision", "recall", "f1", "rejections_per_1000")
REFERENCES = ("hindsight_f1", "recall_at_1pct_false_alarms", "false_alarms_at_99pct_recall")


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def decision_metrics(labels: Any, rejected: Any) -> dict[str, float]:
    """The :data:`DECISION_METRICS` of decisions ``rejected`` (bool, (N,)) against ``labels`` (0/1, (N,))."""
    y = np.asarray(labels).astype(bool).ravel()
    r = np.asarray(rejected).astype(bool).ravel()
    if y.shape != r.shape:
        raise ValueError(f"labels {y.shape} and decisions {r.shape} differ in shape")
    tp, fp = int((r & y).sum()), int((r & ~y).sum())
    fn = int((~r & y).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"false_alarm_rate": _ratio(fp, int((~y).sum())), "miss_rate": _ratio(fn, int(y.sum())),
            "precision": precision, "recall": recall, "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "rejections_per_1000": _ratio(1000 * int(r.sum()), r.size)}


def hindsight_references(scores: Any, labels: Any, false_alarms: float = 0.01, recall: float = 0.99
                         ) -> dict[str, float]:
    """The :data:`REFERENCES` of ``scores`` against ``labels``; NaN without both classes."""
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.min(initial=1) == y.max(initial=0):
        return dict.fromkeys(REFERENCES, math.nan)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)  # every threshold: a dropped corner can be the answer
    return {"hindsight_f1": image_f1max(s, y),
            "recall_at_1pct_false_alarms": float(tpr[fpr <= false_alarms].max()),
            "false_alarms_at_99pct_recall": float(fpr[tpr >= recall].min())}

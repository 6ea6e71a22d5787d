"""The run's learning curve: one entry per evaluation time (checkpoint), and what the record derives from them.

An entry (``record["checkpoints"][i]``) holds the images observed so far, the current task's category, the metrics
(the mean over the categories evaluated, undefined values left out), the method's footprint and diagnostics, and
where the evaluation has them: the metrics in the initial drift state and the drift state itself, where normal
images peak in their maps (:func:`normal_peaks`), and for continual protocols the per-category metrics and
whether the checkpoint ends a task. :func:`forgetting` is the continual protocols' forgetting measure over the
task ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Metrics = dict[str, float]


class CheckpointLog:
    """Checkpoint entries in the order they were evaluated; ``on_entry(entry)`` is called after each is added
    (the runner logs it to W&B and the progress bar)."""

    def __init__(self, metrics: Sequence[str], continual: bool, on_entry: Callable[[dict[str, Any]], None]):
        self.names = tuple(metrics)
        self.continual = continual
        self.on_entry = on_entry
        self.entries: list[dict[str, Any]] = []

    def mean(self, by_category: Mapping[str, Metrics]) -> Metrics:
        """Each metric's mean over the categories (a single category's metrics as they are)."""
        if len(by_category) == 1:
            return next(iter(by_category.values()))
        return {m: nanmean([v[m] for v in by_category.values()]) for m in self.names}

    def add(self, observed: int, task: str, per_category: dict[str, Metrics], footprint: int,
            diagnostics: Mapping[str, float], task_end: bool = False, peaks: dict[str, float] | None = None,
            initial: dict[str, Metrics] | None = None, drift_state: dict[str, Any] | None = None) -> None:
        """One checkpoint after ``observed`` images, during the task of category ``task``. ``initial``: the same
        evaluation in the initial drift state (drift protocols), ``drift_state``: the state described."""
        entry: dict[str, Any] = {"observed": observed, "task": task, "metrics": self.mean(per_category),
                                 "footprint_bytes": int(footprint)}
        if initial is not None:
            entry["metrics_initial"] = self.mean(initial)
            entry["drift_state"] = drift_state
        diagnostics = {k: float(v) for k, v in diagnostics.items()}
        if diagnostics:
            entry["diagnostics"] = diagnostics
        if peaks is not None:
            entry["normal_peaks"] = peaks
        if self.continual:
            entry["per_category"] = per_category
            entry["task_end"] = task_end
            if initial is not None:
                entry["per_category_initial"] = initial
        self.entries.append(entry)
        self.on_entry(entry)


def normal_peaks(maps: np.ndarray) -> dict[str, float] | None:
    """Where normal images score highest: the share of the normal evaluation images (maps (N,H,W)) whose map
    maximum lies within ``border_px`` = max(1, H // 16) of the image's edge (a band that covers 23 % of the
    image), or None without normal images. Far above 0.23, the border is what makes normal images look
    anomalous (zero padding, vignetting)."""
    if len(maps) == 0:
        return None
    n, h, w = maps.shape
    band = max(1, h // 16)
    rows, cols = np.unravel_index(maps.reshape(n, -1).argmax(1), (h, w))
    border = (rows < band) | (cols < band) | (rows >= h - band) | (cols >= w - band)
    return {"border_share": float(border.mean()), "border_px": float(band)}


def forgetting(checkpoints: list[dict[str, Any]], categories: list[str], names: Sequence[str]) -> dict[str, Any]:
    """Forgetting per metric: mean over all but the last task of (best value at a task end before the last task
    minus the final value), as in IM-IAD's continual setting."""
    ends = [c for c in checkpoints if c.get("task_end")]
    if not ends:
        return {}
    last = ends[-1]["per_category"]
    out: dict[str, Any] = {}
    for m in names:
        drops = []
        for cat in categories[:-1]:
            earlier = [c["per_category"][cat][m] for c in ends[:-1] if cat in c["per_category"]]
            earlier = [v for v in earlier if v is not None and not math.isnan(v)]
            if earlier and cat in last:
                drops.append(max(earlier) - last[cat][m])
        out[m] = nanmean(drops)
    return out


def nanmean(values: Sequence[float]) -> float:
    """Mean of the defined values (None and NaN left out), NaN without any."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")

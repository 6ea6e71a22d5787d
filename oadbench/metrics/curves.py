"""Summaries of an online learning curve: one metric value per evaluation checkpoint.

``observed`` is the number of training images a method had seen at each checkpoint (ascending) and
``values`` the metric measured there; NaN marks a checkpoint where the metric was undefined. Inputs may be
sequences, NumPy arrays or torch tensors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from oadbench.metrics._ranking import check_same_shape, to_numpy


def _values(values: Any) -> np.ndarray:
    return np.asarray(to_numpy(values), dtype=np.float64).ravel()  # None in a list becomes NaN


def final_value(values: Any) -> float:
    """The value at the last checkpoint (NaN if it is NaN or there are no checkpoints)."""
    v = _values(values)
    return float(v[-1]) if v.size else math.nan


def area_under_learning_curve(values: Any) -> float:
    """Mean of the values over the checkpoints, ignoring NaN ones (NaN if all are NaN or there are none).

    With equally spaced checkpoints this is the normalised area under the learning curve.
    """
    v = _values(values)
    if not np.any(~np.isnan(v)):
        return math.nan
    return float(np.nanmean(v))


def images_to_fraction(observed: Any, values: Any, fraction: float = 0.95) -> int | None:
    """Smallest ``observed`` count at a checkpoint whose value is ``>= fraction * final value``.

    None if the final value is NaN (or, for a negative final value, if no checkpoint qualifies).
    NaN checkpoints never qualify. ValueError if ``observed`` and ``values`` differ in shape.
    """
    obs = np.asarray(to_numpy(observed)).ravel()
    v = _values(values)
    check_same_shape(obs, v, "observed", "values")
    final = final_value(v)
    if math.isnan(final):
        return None
    hit = v >= fraction * final
    if not hit.any():
        return None
    return int(np.min(obs[hit]))


def summarise_curve(observed: Any, values: Any) -> dict[str, Any]:
    """``final`` value, ``aulc`` (:func:`area_under_learning_curve`) and ``images_to_95`` (95% of final)."""
    return {
        "final": final_value(values),
        "aulc": area_under_learning_curve(values),
        "images_to_95": images_to_fraction(observed, values, 0.95),
    }

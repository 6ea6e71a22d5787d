"""AUPIMO: area under the per-image overlap (PIMO) curve, computed exactly.

Bertoldo, Ameln, Vaidya, Akçay, "AUPIMO: Redefining Visual Anomaly Detection Benchmarks with High Speed and
Low Tolerance", 2024 (arXiv:2401.01984). For each anomalous image i, the PIMO curve plots its pixel TPR,
``TPR_i(t)`` = fraction of image i's mask pixels with score ``>= t``, against the shared FPR of the same
threshold, ``FPR(t)`` = fraction of the normal images' pixels with score ``>= t`` (all normal images pooled).
As all images here have the same size, the pooled FPR equals the mean of the normal images' per-image FPRs,
which is anomalib's "shared FPR". AUPIMO_i is the area under that curve over ``log10(FPR)`` in
``[log10 lo, log10 hi]`` divided by ``log10(hi / lo)``, so it lies in [0, 1] (1: every mask pixel of image i
scores above the threshold at FPR ``lo``; 0: none scores at least the threshold at FPR ``hi``).

Interpretations, where the paper leaves a choice:

* normal images are those with label 0 (their masks must be empty); anomalous images (label 1) contribute
  their mask pixels to their own TPR and nothing to the FPR, and their other pixels are not used at all;
* the curve is the one traced by *every* threshold t, not a grid of thresholds (anomalib uses a linspace
  of thresholds and tends to this curve as the grid gets finer). FPR only changes at the distinct normal
  values ``v_1 > v_2 > ...``; for t in ``(v_{j+1}, v_j]`` FPR stays at ``FPR_j = FPR(v_j)`` while TPR rises
  (a vertical part, no area on the FPR axis). Between two FPR steps the curve goes from
  ``(FPR_j, TPR_i(> v_{j+1}))`` to ``(FPR_{j+1}, TPR_i(>= v_{j+1}))``: horizontal unless mask pixels tie
  with ``v_{j+1}``, a straight line in ``log10(FPR)`` when they do (the trapezoid rule on the points of all
  distinct thresholds, ties merged into one point as in the standard ROC curve);
* the area is the trapezoid rule on that polyline in ``log10(FPR)`` over exactly ``[lo, hi]``: a segment
  that straddles a bound is cut there, its TPR interpolated linearly in ``log10(FPR)``;
* below the lowest non-zero FPR there are no points, so the lowest non-zero FPR, ``c / n`` (c normal pixels
  tie at the maximum normal score, n normal pixels; ``1 / n`` without ties), must not exceed ``lo``:
  otherwise ValueError, as anomalib raises when ``lo`` is below the range of its shared FPR;
* per image the result is NaN for normal images and for anomalous images with an empty mask.

Only the normal pixels at or above the ``hi`` quantile matter (the top 1e-4 of them by default); they are
taken with a partition, not a full sort. The area is linear in ``TPR_i(> v)`` and ``TPR_i(>= v)`` at the
few distinct values ``v`` inside the range, so each image costs two searches in its sorted mask scores.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from oadbench.metrics._ranking import as_binary, distinct_sorted
from oadbench.metrics.pixel import prepare_maps, top_negatives

AUPIMO_FPR = (1e-5, 1e-4)  # the paper's shared-FPR integration range


def _check_bounds(fpr_bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(b) for b in fpr_bounds)
    if not 0.0 < lo < hi <= 1.0:
        raise ValueError(f"fpr_bounds must satisfy 0 < lo < hi <= 1, got {tuple(fpr_bounds)!r}")
    return lo, hi


def _segment_weights(neg: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct normal values ``v`` closing a curve segment inside [lo, hi], and the weights of the segments.

    Every image's AUPIMO (area over ``log10(FPR)`` in [lo, hi] / ``log10(hi / lo)``) is
    ``sum(w_gt * TPR(> v) + w_ge * TPR(>= v))``.
    ``neg`` (all normal-pixel scores, non-empty) is reordered in place.
    """
    n = neg.size
    top = np.sort(top_negatives(neg, hi))  # every normal value at or above the hi quantile, ascending
    starts, counts = distinct_sorted(top)
    values, counts = top[starts][::-1], counts[::-1]  # distinct values v_1 > v_2 > ... and their counts
    fpr = np.cumsum(counts) / n  # FPR(v_j), ascending
    if fpr[0] > lo:
        raise ValueError(
            f"too few normal pixels to resolve the lower FPR bound {lo:g}: the lowest non-zero FPR achievable is "
            f"{fpr[0]:g} ({int(counts[0])} of {n} normal pixels tie at the maximum score); at least "
            f"{math.ceil(1 / lo - 1e-9)} normal pixels, without ties at the maximum, are needed"
        )
    x = np.log10(fpr)
    x_lo, x_hi = math.log10(lo), math.log10(hi)
    # segment j goes from x[j - 1] (TPR(> v_j)) to x[j] (TPR(>= v_j)), j >= 1
    x0, x1 = x[:-1], x[1:]
    a = np.maximum(x0, x_lo)
    b = np.minimum(x1, x_hi)
    keep = b > a
    x0, x1, a, b = x0[keep], x1[keep], a[keep], b[keep]
    fa = (a - x0) / (x1 - x0)  # where the cut segment starts and ends, as fractions of the full segment
    fb = (b - x0) / (x1 - x0)
    width = (b - a) / (x_hi - x_lo)
    return values[1:][keep], width * (2 - fa - fb) / 2, width * (fa + fb) / 2


def aupimo(maps: Any, masks: Any, labels: Any, fpr_bounds: tuple[float, float] = AUPIMO_FPR) -> np.ndarray:
    """AUPIMO of every image, exact (see module docstring): (N,) float64 in [0, 1].

    ``maps`` (N, H, W) real scores, ``masks`` (N, H, W) bool or 0/1, ``labels`` (N,) 0/1 image labels, as
    NumPy arrays or torch tensors (any device; compared in the maps' own dtype, so the device does not
    matter). ``fpr_bounds`` = (lo, hi), the shared-FPR integration range, 0 < lo < hi <= 1. NaN for normal
    images and for anomalous images whose mask is empty. ValueError when no image is normal, when a normal
    image's mask is not empty, or when the normal pixels are too few for FPR ``lo`` (lowest non-zero FPR, 1
    / number of normal pixels without ties, above ``lo``: at least 100 000 normal pixels for lo = 1e-5).
    """
    lo, hi = _check_bounds(fpr_bounds)
    s, m = prepare_maps(maps, masks)
    y = as_binary(labels, "labels").reshape(-1)
    if y.size != s.shape[0]:
        raise ValueError(f"labels has {y.size} entries for {s.shape[0]} images")
    normal = ~y
    if not normal.any():
        raise ValueError("aupimo needs at least one normal image (label 0): the shared FPR is measured on them")
    bad = np.flatnonzero(normal & m.any(axis=(1, 2)))
    if bad.size:
        raise ValueError(f"normal images (label 0) must have empty masks; image {int(bad[0])} does not")

    neg = s[normal].reshape(-1)  # a copy: boolean indexing
    values, w_gt, w_ge = _segment_weights(neg, lo, hi)
    del neg
    out = np.full(s.shape[0], np.nan)
    v_min = values[-1]  # never empty: FPR(v_1) <= lo < hi <= FPR(v_last)
    for i in np.flatnonzero(y):
        pos = s[i][m[i]]
        p = pos.size
        if p == 0:
            continue
        pos = np.sort(pos[pos >= v_min])  # only mask scores >= the smallest v in the range are ever counted
        k = pos.size
        ge = k - np.searchsorted(pos, values, "left")
        gt = k - np.searchsorted(pos, values, "right")
        score = (np.dot(w_gt, gt) + np.dot(w_ge, ge)) / p
        out[i] = min(max(float(score), 0.0), 1.0)  # clips rounding only
    return out

"""Pixel-level (localization) metrics: anomaly maps against ground-truth masks.

Maps are (N, H, W) real scores and masks (N, H, W) bool or 0/1, as NumPy arrays or torch tensors (any
device); (H, W) is read as one image and (..., H, W) as a stack of images. Pixel AUROC and AP treat every
pixel of every image as one sample. Results are python floats; NaN when no pixel is anomalous or none is
normal.

AUPRO follows the MVTec AD definition (Bergmann et al., "MVTec AD -- A Comprehensive Real-World Dataset for
Unsupervised Anomaly Detection", CVPR 2019; "The MVTec Anomaly Detection Dataset: A Comprehensive
Real-World Dataset for Unsupervised Anomaly Detection", IJCV 2021) and its reference evaluation code:

* regions are the 8-connected components of each image's mask (labelled per image);
* FPR(t) is the fraction of all normal pixels (of all images) with score ``>= t``;
* PRO(t) is the mean over all regions (of all images) of the fraction of the region's pixels with score
  ``>= t``;
* the curve has one point per distinct score and starts at (0, 0); it is integrated with the trapezoid
  rule up to FPR = ``fpr_limit`` (the last segment linearly interpolated at ``fpr_limit``) and divided by
  ``fpr_limit``, so a perfect map scores 1.

Exact and fast formulation: PRO(t) is the sum of the weights 1 / (R * |region(p)|) of the anomalous pixels
with score ``>= t`` (R regions in all). Only distinct normal-pixel scores move FPR; at such a value v the
curve goes from (FPR(> v), PRO(> v)) to (FPR(>= v), PRO(>= v)), a diagonal where anomalous pixels tie
with v, and horizontal otherwise. Grouping the normal pixels by where they fall among the distinct
anomalous-pixel scores (see :mod:`oadbench.metrics._ranking`) gives the area without sorting all pixels
together; with only AUPRO requested, only the normal pixels above the ``fpr_limit`` quantile are sorted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import ndimage

from oadbench.metrics._ranking import (
    RankedScores,
    as_binary,
    as_scores,
    check_names,
    check_same_shape,
    distinct_sorted,
    executor,
    start_chunk_sort,
)

PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "aupro")

# 8-connectivity within each image, none across images of the (N, H, W) stack.
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True


def prepare_maps(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (N, H, W) scores and bool masks."""
    s = as_scores(maps, "maps")
    m = as_binary(masks, "masks")
    check_same_shape(s, m, "maps", "masks")
    if s.ndim < 2:
        raise ValueError(f"maps must be (N, H, W) or (H, W), got shape {tuple(s.shape)}")
    h, w = s.shape[-2:]
    return s.reshape(-1, h, w), m.reshape(-1, h, w)


def _check_limit(fpr_limit: float) -> float:
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    return limit


def top_negatives(neg: np.ndarray, fpr_limit: float) -> np.ndarray:
    """The normal-pixel scores at or above the ``fpr_limit`` quantile, all ties of the cut value included.

    ``neg`` is reordered in place (partitioned). Enough values are kept that FPR reaches ``fpr_limit``.
    """
    n = neg.size
    k = min(n, max(1, math.ceil(fpr_limit * n)))
    if k == n:
        return neg
    neg.partition(n - k)
    cut = neg[n - k]
    ties_below = int(np.count_nonzero(neg[: n - k] == cut))
    top = neg[n - k :]
    if ties_below:
        top = np.concatenate((np.full(ties_below, cut, dtype=neg.dtype), top))
    return top


def _pro_weights(pos: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted anomalous-pixel scores and PRO(>= u_j) at their distinct values u_j (float64, length U + 1).

    ``pos`` must be ``maps[masks]`` (C order). The last entry, PRO above every score, is 0.
    """
    labels, n_regions = ndimage.label(masks, structure=_STRUCTURE)
    region = labels[masks]
    del labels
    inv_size = 1.0 / np.bincount(region)[region]  # 1 / |region(p)| per anomalous pixel
    order = np.argsort(pos)
    pos_sorted = pos[order]
    starts, _ = distinct_sorted(pos_sorted)
    per_value = np.add.reduceat(inv_size[order], starts)
    pro_ge = np.zeros(starts.size + 1)
    pro_ge[:-1] = np.cumsum(per_value[::-1])[::-1] / n_regions
    np.minimum(pro_ge, 1.0, out=pro_ge)  # rounding in the sums; PRO below every score is exactly 1
    pro_ge[0] = 1.0
    return pos_sorted, pro_ge


def _aupro_from_counts(ranked: RankedScores, pro_ge: np.ndarray, fpr_limit: float) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (see module docstring).

    Works in counts of normal pixels (x = FPR * N). With u_0 < ... < u_{U-1} the distinct anomalous
    scores, the normal pixels split into "gaps" strictly between consecutive u_j (horizontal segments at
    PRO(>= u_j)) and "ties" equal to some u_j (one diagonal from PRO(> u_j) to PRO(>= u_j)). Walked from
    the highest score down: gap U, tie U-1, gap U-1, ..., tie 0, gap 0.
    """
    n, u = ranked.n_neg, ranked.values.size
    ge, gt = ranked.neg_ge, ranked.neg_gt
    x0 = np.empty(2 * u + 1, np.float64)
    x1 = np.empty_like(x0)
    y0 = np.empty_like(x0)
    y1 = np.empty_like(x0)
    # gaps, j = U..0: from #neg >= u_j (0 for j = U) to #neg > u_{j-1} (N for j = 0), at height PRO(>= u_j)
    x0[0::2] = np.append(ge, 0)[::-1]
    x1[0::2] = np.concatenate(([n], gt))[::-1]
    y0[0::2] = y1[0::2] = pro_ge[::-1]
    # ties, j = U-1..0: from #neg > u_j to #neg >= u_j, rising from PRO(> u_j) to PRO(>= u_j)
    x0[1::2] = gt[::-1]
    x1[1::2] = ge[::-1]
    y0[1::2] = pro_ge[1:][::-1]
    y1[1::2] = pro_ge[:-1][::-1]

    x_lim = fpr_limit * n
    cut = int(np.searchsorted(x1, x_lim, "right"))  # segments [0, cut) end at or before the limit
    area = float(np.dot(x1[:cut] - x0[:cut], y0[:cut] + y1[:cut])) / 2
    if cut < x1.size:
        dx = x_lim - x0[cut]
        if dx > 0:
            y_lim = y0[cut] + (y1[cut] - y0[cut]) * dx / (x1[cut] - x0[cut])
            area += dx * (y0[cut] + y_lim) / 2
    return float(min(area / x_lim, 1.0))


def pixel_metrics(
    maps: Any, masks: Any, names: Iterable[str] = PIXEL_METRICS, fpr_limit: float = 0.3
) -> dict[str, float]:
    """Several pixel metrics (names from ``PIXEL_METRICS``) sharing the split and sorting of the scores.

    ``fpr_limit`` is the AUPRO integration limit (a fraction of normal pixels, in (0, 1]). Extra memory is
    about 10 bytes per pixel for float32 maps: one copy of the normal-pixel scores, a bool mask and, for
    AUPRO, an int32 region label per pixel. The input arrays are not modified.
    """
    names = check_names(names, PIXEL_METRICS)
    limit = _check_limit(fpr_limit)
    s, m = prepare_maps(maps, masks)
    if not names:
        return {}
    pos = s[m]
    neg = s[~m]
    n_neg = neg.size
    if pos.size == 0 or n_neg == 0:
        return {name: math.nan for name in names}

    want_aupro = "aupro" in names
    with executor() as pool:
        if "pixel_auroc" in names or "pixel_ap" in names:
            wait = start_chunk_sort(neg, pool)
        else:
            wait = start_chunk_sort(top_negatives(neg, limit), pool)
        # Runs while the normal-pixel scores are being sorted in the pool's threads.
        if want_aupro:
            pos_sorted, pro_ge = _pro_weights(pos, m)
        else:
            pos_sorted = np.sort(pos)
        chunks = wait()
    ranked = RankedScores.from_sorted(pos_sorted, chunks, n_neg)

    out: dict[str, float] = {}
    for name in names:
        if name == "pixel_auroc":
            out[name] = ranked.auroc()
        elif name == "pixel_ap":
            out[name] = ranked.average_precision()
        else:
            out[name] = _aupro_from_counts(ranked, pro_ge, limit)
    return out


def pixel_auroc(maps: Any, masks: Any) -> float:
    """AUROC over all pixels (= ``sklearn.metrics.roc_auc_score`` of the flattened arrays)."""
    return pixel_metrics(maps, masks, ("pixel_auroc",))["pixel_auroc"]


def pixel_ap(maps: Any, masks: Any) -> float:
    """Average precision over all pixels (= ``sklearn.metrics.average_precision_score``, flattened)."""
    return pixel_metrics(maps, masks, ("pixel_ap",))["pixel_ap"]


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to FPR ``fpr_limit`` (MVTec AD), in [0, 1]."""
    return pixel_metrics(maps, masks, ("aupro",), fpr_limit)["aupro"]

"""Exact, fast evaluation metrics.

Image level: :func:`image_auroc`, :func:`image_ap`, :func:`image_f1max` (or :func:`image_metrics` for
several at once). Pixel level: :func:`pixel_auroc`, :func:`pixel_ap`, :func:`aupro` (MVTec AD per-region
overlap, Bergmann et al. 2019/2021), or :func:`pixel_metrics`, which shares the expensive sorting between
them. Per anomalous image: :func:`aupimo` (exact AUPIMO, Bertoldo et al. 2024; ``AUPIMO_FPR`` its default
FPR range). Online summaries of a learning curve: :mod:`oadbench.metrics.curves`.

Inputs are NumPy arrays or torch tensors (any device); results are python floats, NaN where a metric is
undefined (no positive or no negative sample). Ties are handled exactly as in the standard definitions.
"""

from oadbench.metrics.curves import (
    area_under_learning_curve,
    final_value,
    images_to_fraction,
    summarise_curve,
)
from oadbench.metrics.image import IMAGE_METRICS, image_ap, image_auroc, image_f1max, image_metrics
from oadbench.metrics.pimo import AUPIMO_FPR, aupimo
from oadbench.metrics.pixel import PIXEL_METRICS, aupro, pixel_ap, pixel_auroc, pixel_metrics

__all__ = [
    "AUPIMO_FPR",
    "IMAGE_METRICS",
    "PIXEL_METRICS",
    "area_under_learning_curve",
    "aupimo",
    "aupro",
    "final_value",
    "image_ap",
    "image_auroc",
    "image_f1max",
    "image_metrics",
    "images_to_fraction",
    "pixel_ap",
    "pixel_auroc",
    "pixel_metrics",
    "summarise_curve",
]

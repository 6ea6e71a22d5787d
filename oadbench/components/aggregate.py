"""Multi-level patch features: resize every level to a reference grid and concatenate channels.

PaDiM concatenates raw levels (nearest upsampling); PatchCore, CFA and LeMO first aggregate each position's 3x3
neighbourhood (average pooling, stride 1) — the "locally aware patch features" of PatchCore.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def local_aggregate(feature: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Average over each position's ``kernel`` x ``kernel`` neighbourhood, same size (zero padding counted, as
    ``AvgPool2d(kernel, 1, kernel // 2)`` in the reference implementations)."""
    if kernel <= 1:
        return feature
    return F.avg_pool2d(feature, kernel_size=kernel, stride=1, padding=kernel // 2)


def concat_levels(
    features: Sequence[torch.Tensor],
    reference: int = 0,
    mode: str = "bilinear",
    pool: int = 0,
) -> torch.Tensor:
    """Concatenate levels (B,C_l,H_l,W_l) on the grid of ``features[reference]`` -> (B, ΣC_l, H_ref, W_ref).

    ``pool`` > 1 applies :func:`local_aggregate` to each level first; ``mode`` is the interpolation used to
    resize (``nearest`` for PaDiM, ``bilinear`` for the others).
    """
    size = features[reference].shape[-2:]
    out = []
    for f in features:
        f = local_aggregate(f, pool)
        if f.shape[-2:] != size:
            kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
            f = F.interpolate(f, size=size, mode=mode, **kwargs)
        out.append(f)
    return torch.cat(out, dim=1)

"""Multi-level patch features: resize every level to a reference grid and concatenate channels.

PaDiM concatenates raw levels (nearest upsampling); PatchCore, CFA and LeMO first aggregate each position's 3x3
neighbourhood (average pooling, stride 1) — the "locally aware patch features" of PatchCore.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

FEATURE_SCALES = ("auto", "channels", "none")
POOL_PADDINGS = ("zeros", "valid")


def divides_by_channels(scale: str, backbone: str) -> bool:
    """Whether levels are divided by their channel count: ``channels`` yes, ``none`` no, ``auto`` for EfficientNet
    backbones (as CFA's official code does for its EfficientNet features; their raw magnitudes are several times
    those of ResNet levels)."""
    return scale == "channels" or (scale == "auto" and "efficientnet" in backbone.lower())


def scale_levels(levels: Sequence[torch.Tensor], by_channels: bool) -> list[torch.Tensor]:
    """Each level (B,C_l,h,w) as float32, divided by C_l when ``by_channels``."""
    levels = [f.float() for f in levels]
    return [f / f.shape[1] for f in levels] if by_channels else levels


def local_aggregate(feature: torch.Tensor, kernel: int = 3, padding: str = "zeros") -> torch.Tensor:
    """Average over each position's ``kernel`` x ``kernel`` neighbourhood, same size. ``zeros``: zero padding
    counted, as ``AvgPool2d(kernel, 1, kernel // 2)`` in the reference implementations (border positions are
    pulled towards 0); ``valid``: the average over the neighbours inside the map."""
    if kernel <= 1:
        return feature
    return F.avg_pool2d(feature, kernel_size=kernel, stride=1, padding=kernel // 2,
                        count_include_pad=padding == "zeros")


def concat_levels(
    features: Sequence[torch.Tensor],
    reference: int = 0,
    mode: str = "bilinear",
    pool: int = 0,
    padding: str = "zeros",
    select: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Concatenate levels (B,C_l,H_l,W_l) on the grid of ``features[reference]`` -> (B, ΣC_l, H_ref, W_ref).

    ``pool`` > 1 applies :func:`local_aggregate` (with ``padding``) to each level first; ``mode`` is the
    interpolation used to resize (``nearest`` for PaDiM, ``bilinear`` for the others). ``select``: per level, the
    indices of the channels to keep, taken before resizing (a level with none is left out); with a per-channel
    resize such as ``nearest`` the result equals selecting from the concatenation, at a fraction of the cost.
    """
    size = features[reference].shape[-2:]
    out = []
    for i, f in enumerate(features):
        if select is not None:
            if not len(select[i]):
                continue
            f = f.index_select(1, select[i])
        f = local_aggregate(f, pool, padding)
        if f.shape[-2:] != size:
            kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
            f = F.interpolate(f, size=size, mode=mode, **kwargs)
        out.append(f)
    return torch.cat(out, dim=1)

"""Anomaly-map post-processing: upsampling patch scores to the image and Gaussian smoothing (σ = 4 px in
PatchCore, PaDiM, CFA and LeMO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``int(4σ + 0.5)`` (scipy.ndimage's default truncation at 4σ)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of maps (B,H,W) with reflected borders; σ in pixels, σ <= 0 returns the input."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, maps.device).to(maps.dtype)
    r = k.numel() // 2
    x = maps.unsqueeze(1)
    # reflect padding needs pad < size; fall back to replicate for tiny maps
    mode = "reflect" if min(maps.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return x.squeeze(1)


def upsample_maps(patch_scores: torch.Tensor, size: int | tuple[int, int], sigma: float = 4.0,
                  mode: str = "bilinear") -> torch.Tensor:
    """Patch-score grids (B,h,w) -> maps (B,H,W): upsampling (``bilinear``, or ``nearest``: each patch score
    repeated over its cell, InReaCh's block upsampling), then a Gaussian blur of ``sigma`` px."""
    if isinstance(size, int):
        size = (size, size)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    maps = F.interpolate(patch_scores.unsqueeze(1), size=size, mode=mode, **kwargs).squeeze(1)
    return gaussian_blur(maps, sigma)


def kernel_size(sigma: float) -> int:
    return 2 * int(4.0 * sigma + 0.5) + 1 if sigma > 0 else 1


__all__ = ["gaussian_blur", "gaussian_kernel1d", "kernel_size", "upsample_maps"]

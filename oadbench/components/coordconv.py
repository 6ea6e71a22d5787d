"""CoordConv (Liu et al., "An intriguing failing of convolutional neural networks and the CoordConv solution",
NeurIPS 2018): two coordinate channels appended to the input, then a convolution. CFA and LeMO use it as a 1x1
patch adapter so that the adapted feature knows where in the image it is."""

from __future__ import annotations

import torch
from torch import nn


def coordinate_channels(batch: int, height: int, width: int, device: torch.device | str,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(batch, 2, H, W): the row coordinate then the column coordinate, each in [-1, 1]."""
    rows = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype) if height > 1 else torch.zeros(
        1, device=device, dtype=dtype)
    cols = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype) if width > 1 else torch.zeros(
        1, device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
    return grid.unsqueeze(0).expand(batch, -1, -1, -1)


class CoordConv2d(nn.Module):
    """``Conv2d(in_channels + 2, out_channels, kernel_size)`` over the input with coordinate channels appended."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.conv(torch.cat([x, coordinate_channels(b, h, w, x.device, x.dtype)], dim=1))

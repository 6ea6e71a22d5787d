"""Array and raster helpers of the synthetic dataset: pixel grids, 1/f noise, smoothstep, distances to
segments, bounding boxes and colour jitter. Coordinates are pixels, (x, y) for points and (rows, cols) for slices."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np

Array = np.ndarray


@lru_cache(maxsize=4)
def grid(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates (y, x), float32, read-only."""
    ax = np.arange(size, dtype=np.float32)
    y, x = np.meshgrid(ax, ax, indexing="ij")
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


@lru_cache(maxsize=4)
def _freq_radius(size: int) -> Array:
    """Radial frequency of the rfft2 bins in cycles per image."""
    fy = np.fft.fftfreq(size)[:, None] * size
    fx = np.fft.rfftfreq(size)[None, :] * size
    out = np.sqrt(fx**2 + fy**2)
    out.flags.writeable = False
    return out


def noise_field(rng: np.random.Generator, size: int, beta: float, fmax: float, fmin: float = 1.0) -> Array:
    """Zero-mean, unit-std 1/f^beta noise with frequencies in [fmin, fmax] cycles per image (scale-free)."""
    f = _freq_radius(size)
    shape = f.shape
    spec = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    amp = np.where((f >= fmin) & (f <= fmax), np.maximum(f, fmin) ** (-beta / 2), 0.0)
    out = np.fft.irfft2(spec * amp, s=(size, size)).astype(np.float32)
    out -= out.mean()
    std = float(out.std())
    return out / std if std > 0 else out


def smoothstep(e0: float, e1: float, x: Array) -> Array:
    """Hermite step of ``x`` from 0 at ``e0`` to 1 at ``e1`` (either order), clipped to [0, 1]."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def segment_distance(px: Array, py: Array, a: Array, b: Array) -> Array:
    """Distance of points (px, py) (any equal shapes) to the nearest of the segments a[k]-b[k] (shape (K, 2))."""
    qx = px.reshape(-1, 1)
    qy = py.reshape(-1, 1)
    d = b - a
    length2 = np.maximum((d**2).sum(1), 1e-9)
    t = np.clip(((qx - a[:, 0]) * d[:, 0] + (qy - a[:, 1]) * d[:, 1]) / length2, 0.0, 1.0)
    dx = qx - (a[:, 0] + t * d[:, 0])
    dy = qy - (a[:, 1] + t * d[:, 1])
    return np.sqrt((dx * dx + dy * dy).min(1)).reshape(px.shape).astype(np.float32)


def bbox(points: Array, margin: float, size: int) -> tuple[slice, slice]:
    """Pixel (rows, cols) slices covering ``points`` (K, 2) as (x, y) plus ``margin``, clipped to the image."""
    x0 = int(max(0, np.floor(points[:, 0].min() - margin)))
    x1 = int(min(size, np.ceil(points[:, 0].max() + margin) + 1))
    y0 = int(max(0, np.floor(points[:, 1].min() - margin)))
    y1 = int(min(size, np.ceil(points[:, 1].max() + margin) + 1))
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def jitter_colour(rng: np.random.Generator, rgb: Iterable[float], sigma: float) -> Array:
    """``rgb`` (0..1) with a random per-channel gain (std ``sigma``) and offset (std ``sigma / 2``); float32 (3,)."""
    base = np.asarray(list(rgb), dtype=np.float32)
    return base * (1 + rng.normal(0, sigma, 3)).astype(np.float32) + np.float32(rng.normal(0, sigma / 2))


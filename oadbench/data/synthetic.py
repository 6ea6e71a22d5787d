"""The embedded synthetic dataset: procedural industrial images with exact defect masks, in MVTec AD layout.

It is what a first ``oadbench run`` uses when no dataset is configured, and what the test suite uses. It is a
smoke-test and teaching dataset: results on it say that a pipeline works and roughly how methods rank, and are
not comparable to results on real benchmarks such as MVTec AD or VisA.

Categories (two textures, two objects):

* ``fabric`` -- plain-weave cloth: warp and weft threads that pass over and under each other, with per-thread
  brightness and a smooth random displacement of the threads (thread jitter), random phase, scale and rotation.
* ``marble`` -- polished stone: veins made of a turbulent (fractal-noise) sine pattern over a cloudy base.
* ``washer`` -- a brushed metal ring with bevelled edges and a locating notch, on a dark mat background; the
  ring moves, turns and is lit slightly differently in every image.
* ``capsule`` -- a two-colour capsule with a printed marking ("OAD") on a light background, with a soft
  shadow; position, angle and lighting vary slightly.

Defect types (each category uses a subset, see :data:`CATEGORY_DEFECTS`):

* ``scratch`` -- a thin curved line, lighter or darker than the surface (a pulled thread on fabric);
* ``crack`` -- a jagged, dark polyline, sometimes with a branch;
* ``stain`` -- a low-contrast, irregular colour blob;
* ``hole`` -- a small dark pit with a rim lit from the light's side.

Defects vary in size, position (always on the object for object categories), orientation and contrast; many are
small or low-contrast on purpose, so that methods are separated rather than all perfect. Contrast and size are
scaled per category and defect type (``_STRENGTH``) so that a plain nearest-neighbour detector on pretrained
EfficientNet-Lite0 patch features reaches an image AUROC of roughly 0.9-0.98 with 100 training images.

Exact masks: a defect changes the rendered scene (before lighting and sensor noise) into a defective scene. The
mask is the set of pixels where the change, after the lighting gain, exceeds :data:`MASK_THRESHOLD` (about 5 grey
levels) in some channel and survives quantisation; the defective image takes the defective pixel values inside
the mask and the clean image's values everywhere else. So no pixel outside the mask differs from the clean image,
and every pixel inside it does (almost always by at least 5 grey levels).

Variation between normal images: random phase, scale, rotation and position of the pattern or object, colour
shifts of the material, an illumination gradient with vignetting, exposure and white-balance jitter, and
Gaussian sensor noise.

Determinism: all randomness comes from ``numpy.random.default_rng`` seeded by ``np.random.SeedSequence`` from
(dataset seed, category, split/defect, image index), so every image is independent of the others and of the
counts; the same parameters write byte-identical PNG files on every run (given the same numpy, zlib and Pillow).

On disk (written by :func:`write_synthetic`, or on demand by the ``synthetic`` loader into the cache directory
``$OADBENCH_CACHE/synthetic`` or ``~/.cache/oadbench/synthetic``)::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png   (0/255)
    <root>/<category>/DONE                                  (manifest, written last)

A category is written into a temporary directory next to its target and renamed into place, so concurrent
processes are safe and a directory without a matching ``DONE`` manifest (e.g. from a killed process) is never
used: it is regenerated.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from oadbench.data.base import register_dataset
from oadbench.data.mvtec import MVTecLoader
from oadbench.data.sample import CategoryData
from oadbench.errors import ConfigError, DataError

VERSION = "v1"
CATEGORIES: tuple[str, ...] = ("capsule", "fabric", "marble", "washer")
CATEGORY_DEFECTS: dict[str, tuple[str, ...]] = {
    "capsule": ("crack", "hole", "scratch", "stain"),
    "fabric": ("hole", "scratch", "stain"),
    "marble": ("crack", "hole", "scratch", "stain"),
    "washer": ("crack", "hole", "scratch", "stain"),
}
DEFECT_TYPES: tuple[str, ...] = tuple(sorted({d for ds in CATEGORY_DEFECTS.values() for d in ds}))
MASK_THRESHOLD = 0.02  # change (0..1 scale) above which a pixel belongs to the defect mask
DONE_FILE = "DONE"
_STALE_TMP_SECONDS = 24 * 3600

Array = np.ndarray


# --------------------------------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class SyntheticParams:
    """What determines the written files: counts per split, image side and seed."""

    n_train: int = 100
    n_test_good: int = 30
    n_test_defect: int = 10
    resolution: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"dataset.{key}", f"must be an integer, got {value!r}")
            object.__setattr__(self, key, int(value))  # plain ints, also for numpy integers
        minimum = {"n_train": 1, "n_test_good": 0, "n_test_defect": 0, "resolution": 32, "seed": 0}
        for key, low in minimum.items():
            if getattr(self, key) < low:
                raise ConfigError(f"dataset.{key}", f"must be >= {low}, got {getattr(self, key)}")
        if self.resolution > 4096:
            raise ConfigError("dataset.resolution", f"must be <= 4096, got {self.resolution}")

    @property
    def dirname(self) -> str:
        """Name of the cache subdirectory for these parameters, e.g. ``v1-n100-30-10-s256-seed0``."""
        return (
            f"{VERSION}-n{self.n_train}-{self.n_test_good}-{self.n_test_defect}"
            f"-s{self.resolution}-seed{self.seed}"
        )

    def manifest(self, category: str) -> dict[str, Any]:
        return {
            "generator": "oadbench.data.synthetic",
            "version": VERSION,
            "category": category,
            "defects": list(CATEGORY_DEFECTS[category]),
            **asdict(self),
        }


# --------------------------------------------------------------------------------------------------------------
# small numeric helpers


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[Array, Array]:
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


def _noise(rng: np.random.Generator, size: int, beta: float, fmax: float, fmin: float = 1.0) -> Array:
    """Zero-mean, unit-std 1/f^beta noise with frequencies in [fmin, fmax] cycles per image (scale-free)."""
    f = _freq_radius(size)
    shape = f.shape
    spec = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    amp = np.where((f >= fmin) & (f <= fmax), np.maximum(f, fmin) ** (-beta / 2), 0.0)
    out = np.fft.irfft2(spec * amp, s=(size, size)).astype(np.float32)
    out -= out.mean()
    std = float(out.std())
    return out / std if std > 0 else out


def _smoothstep(e0: float, e1: float, x: Array) -> Array:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _segment_distance(px: Array, py: Array, a: Array, b: Array) -> Array:
    """Distance of points (px, py) (any equal shapes) to the nearest of the segments a[k]-b[k] (shape (K, 2))."""
    qx = px.reshape(-1, 1)
    qy = py.reshape(-1, 1)
    d = b - a
    length2 = np.maximum((d**2).sum(1), 1e-9)
    t = np.clip(((qx - a[:, 0]) * d[:, 0] + (qy - a[:, 1]) * d[:, 1]) / length2, 0.0, 1.0)
    dx = qx - (a[:, 0] + t * d[:, 0])
    dy = qy - (a[:, 1] + t * d[:, 1])
    return np.sqrt((dx * dx + dy * dy).min(1)).reshape(px.shape).astype(np.float32)


def _bbox(points: Array, margin: float, size: int) -> tuple[slice, slice]:
    """Pixel (rows, cols) slices covering ``points`` (K, 2) as (x, y) plus ``margin``, clipped to the image."""
    x0 = int(max(0, np.floor(points[:, 0].min() - margin)))
    x1 = int(min(size, np.ceil(points[:, 0].max() + margin) + 1))
    y0 = int(max(0, np.floor(points[:, 1].min() - margin)))
    y1 = int(min(size, np.ceil(points[:, 1].max() + margin) + 1))
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _jitter_colour(rng: np.random.Generator, rgb: Iterable[float], sigma: float) -> Array:
    base = np.asarray(list(rgb), dtype=np.float32)
    return base * (1 + rng.normal(0, sigma, 3)).astype(np.float32) + np.float32(rng.normal(0, sigma / 2))


# --------------------------------------------------------------------------------------------------------------
# scenes


@dataclass
class _Scene:
    """A rendered, noise-free scene: colours (H, W, 3) in [0, 1], where defects may go, and the light angle."""

    rgb: Array
    cover: Array  # (H, W) float in [0, 1]: how much of each pixel is the inspected surface
    support: Array  # (H, W) bool: where a defect may be centred
    light: float  # direction (radians, image coordinates) the light comes from


def _texture_support(size: int) -> tuple[Array, Array]:
    m = max(2, int(round(0.08 * size)))
    support = np.zeros((size, size), dtype=bool)
    support[m:-m, m:-m] = True
    return np.ones((size, size), dtype=np.float32), support


def _fabric(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    period = size / 256 * 9.0 * rng.uniform(0.93, 1.07)
    theta = np.deg2rad(rng.uniform(-3, 3))
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    jitter = 0.13 * period
    xc, yc = x - size / 2, y - size / 2
    u = xc * c + yc * s + rng.uniform(0, period) + jitter * _noise(rng, size, 3.0, 14)
    v = yc * c - xc * s + rng.uniform(0, period) + jitter * _noise(rng, size, 3.0, 14)
    i = np.floor(u / period)
    j = np.floor(v / period)
    fu = u / period - i
    fv = v / period - j
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    warp_tone = rng.normal(0, 0.06, 64).astype(np.float32)[i % 64]
    weft_tone = rng.normal(0, 0.06, 64).astype(np.float32)[j % 64]
    # a yarn: rounded across, arching over the crossing thread along, with diagonal twist striations
    across_warp = np.clip(1 - ((2 * fu - 1) / 0.9) ** 2, 0, 1) ** 0.7
    across_weft = np.clip(1 - ((2 * fv - 1) / 0.9) ** 2, 0, 1) ** 0.7
    h_warp = across_warp * (0.4 + 0.6 * np.sin(np.pi * fv)) * (1 + 0.1 * np.sin(2 * np.pi * (2 * fu + 3 * fv)))
    h_weft = across_weft * (0.4 + 0.6 * np.sin(np.pi * fu)) * (1 + 0.1 * np.sin(2 * np.pi * (2 * fv + 3 * fu)))
    warp_top = ((i + j) & 1) == 0
    height = np.where(warp_top, h_warp + warp_tone, h_weft + weft_tone)
    fibre = 0.05 * _noise(rng, size, 0.8, size / 2, fmin=size / 16)
    shade = (0.3 + 0.7 * height + fibre)[..., None]
    warp_col = _jitter_colour(rng, (0.36, 0.42, 0.58), 0.025)
    weft_col = _jitter_colour(rng, (0.60, 0.61, 0.64), 0.025)
    rgb = np.where(warp_top[..., None], warp_col, weft_col) * shade
    cover, support = _texture_support(size)
    return _Scene(rgb.astype(np.float32), cover, support, rng.uniform(0, 2 * np.pi))


def _marble(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    turb = _noise(rng, size, 4.0, 24)
    fine = _noise(rng, size, 2.0, 64, fmin=8)
    phi = rng.uniform(0, np.pi)
    freq = rng.uniform(1.5, 2.5) / size
    proj = x * np.float32(np.cos(phi)) + y * np.float32(np.sin(phi))
    wave = np.sin(2 * np.pi * freq * proj + rng.uniform(1.2, 2.0) * turb + 0.2 * fine + rng.uniform(0, 7))
    veins = (1 - np.abs(wave)) ** rng.uniform(6, 10)
    phi2 = phi + rng.uniform(0.6, 2.4)
    proj2 = x * np.float32(np.cos(phi2)) + y * np.float32(np.sin(phi2))
    wave2 = np.sin(2 * np.pi * 1.7 * freq * proj2 + 1.5 * turb + 0.3 * fine + rng.uniform(0, 7))
    veins2 = (1 - np.abs(wave2)) ** 14
    cloud = _noise(rng, size, 2.0, 64)
    base = _jitter_colour(rng, (0.86, 0.85, 0.82), 0.012)
    vein_col = _jitter_colour(rng, (0.40, 0.45, 0.43), 0.04)
    amount = np.clip(0.75 * veins + 0.35 * veins2, 0, 1)[..., None]
    rgb = base * (1 + 0.035 * cloud)[..., None]
    rgb = rgb + (vein_col - rgb) * amount
    cover, support = _texture_support(size)
    return _Scene(rgb.astype(np.float32), cover, support, rng.uniform(0, 2 * np.pi))


def _washer(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    cx = size / 2 + rng.normal(0, 0.012 * size)
    cy = size / 2 + rng.normal(0, 0.012 * size)
    r_out = 0.37 * size * (1 + rng.normal(0, 0.006))
    r_in = 0.165 * size * (1 + rng.normal(0, 0.01))
    dx, dy = x - cx, y - cy
    r = np.sqrt(dx * dx + dy * dy)
    ang = np.arctan2(dy, dx)
    psi = -np.pi / 2 + rng.uniform(-0.15, 0.15)
    r_notch = 0.045 * size
    dn = np.sqrt((x - cx - r_out * np.cos(psi)) ** 2 + (y - cy - r_out * np.sin(psi)) ** 2)
    sd = np.maximum(np.maximum(r - r_out, r_in - r), r_notch - dn)  # signed distance, < 0 on the metal
    cover = np.clip(0.5 - sd, 0, 1)
    light = 1.25 * np.pi + rng.uniform(-0.35, 0.35)
    bevel = 0.035 * size
    outer = np.clip(1 - (r_out - r) / bevel, 0, 1) ** 1.5
    inner = np.clip(1 - (r - r_in) / bevel, 0, 1) ** 1.5
    facing = np.cos(ang - light)
    shade = 0.6 + 0.32 * (outer - inner) * facing + rng.uniform(0.05, 0.1) * np.cos(2 * (ang - light))
    radial = np.linspace(0, 0.75 * size, 600)
    lathe_profile = np.convolve(rng.normal(0, 1, 600), np.ones(3) / 3, mode="same")
    lathe = 0.03 * np.interp(r, radial, lathe_profile).astype(np.float32)
    metal = _jitter_colour(rng, (0.76, 0.76, 0.78), 0.015)
    obj = (shade + lathe)[..., None] * metal
    off = 0.02 * size
    rs = np.sqrt((dx + off * np.cos(light)) ** 2 + (dy + off * np.sin(light)) ** 2)
    sd_shadow = np.maximum(rs - r_out, r_in - rs)
    shadow = 1 - 0.45 / (1 + np.exp(sd_shadow / (0.012 * size)))
    bg = (0.2 + 0.012 * _noise(rng, size, 1.5, 96)) * shadow
    bg_col = _jitter_colour(rng, (0.95, 0.97, 1.0), 0.02)
    rgb = bg[..., None] * bg_col * (1 - cover[..., None]) + obj * cover[..., None]
    support = sd < -0.025 * size
    return _Scene(rgb.astype(np.float32), cover.astype(np.float32), support, light)


_FONT: dict[str, list[list[tuple[float, float]]]] = {  # strokes in a 0.6 x 1 box, y down
    "O": [[(0.3 + 0.3 * np.cos(t), 0.5 + 0.5 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 13)]],
    "A": [[(0.0, 1.0), (0.3, 0.0), (0.6, 1.0)], [(0.11, 0.63), (0.49, 0.63)]],
    "D": [[(0.0, 0.0), (0.0, 1.0), (0.3, 1.0), (0.52, 0.83), (0.6, 0.5), (0.52, 0.17), (0.3, 0.0), (0.0, 0.0)]],
}


@lru_cache(maxsize=1)
def _text_segments(text: str = "OAD") -> tuple[Array, Array]:
    """Segments (a, b) of ``text`` in a unit-height box centred on the origin."""
    starts, ends = [], []
    advance = 0.85
    x0 = -(advance * (len(text) - 1) + 0.6) / 2
    for k, ch in enumerate(text):
        for stroke in _FONT[ch]:
            pts = np.array(stroke, dtype=np.float32) + np.array([x0 + k * advance, -0.5], dtype=np.float32)
            starts.append(pts[:-1])
            ends.append(pts[1:])
    return np.concatenate(starts), np.concatenate(ends)


def _capsule(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    cx = size / 2 + rng.normal(0, 0.012 * size)
    cy = size / 2 + rng.normal(0, 0.012 * size)
    theta = np.deg2rad(rng.normal(0, 2.5))
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    half_len = 0.31 * size * (1 + rng.normal(0, 0.005))
    half_w = 0.135 * size * (1 + rng.normal(0, 0.008))

    def stadium(px: Array, py: Array) -> tuple[Array, Array, Array]:
        a = px * c + py * s
        b = py * c - px * s
        d_axis = np.sqrt(np.maximum(np.abs(a) - half_len, 0) ** 2 + b * b)
        return a, b, d_axis

    a, b, d_axis = stadium(x - cx, y - cy)
    sd = d_axis - half_w
    cover = np.clip(0.5 - sd, 0, 1)
    light = -0.5 * np.pi + rng.uniform(-0.3, 0.3)
    dome = np.sqrt(np.clip(1 - (d_axis / half_w) ** 2, 0, 1))
    spec_pos = -0.42 + 0.15 * np.sin(light + 0.5 * np.pi)
    specular = 0.16 * np.exp(-(((b / half_w) - spec_pos) / 0.13) ** 2) * dome
    shade = 0.62 + 0.38 * dome + specular
    seam = -0.06 * size
    cap_col = _jitter_colour(rng, (0.78, 0.30, 0.20), 0.03)
    body_col = _jitter_colour(rng, (0.93, 0.91, 0.85), 0.015)
    t = np.clip(a - seam + 0.5, 0, 1)[..., None]
    obj = (cap_col * (1 - t) + body_col * t) * shade[..., None]
    obj *= (1 - 0.22 * np.exp(-(((a - seam) / (0.9 * size / 256)) ** 2)))[..., None]
    # printed marking on the body, moving with the capsule
    char_h = 0.085 * size
    ta, tb = _text_segments()
    centre = np.array([0.17 * size + rng.normal(0, 0.004 * size), rng.normal(0, 0.004 * size)], dtype=np.float32)
    seg_a, seg_b = ta * char_h + centre, tb * char_h + centre
    rot = np.array([[c, -s], [s, c]], dtype=np.float32)  # local (a, b) -> image offset
    corners = np.array([[seg_a[:, 0].min(), seg_a[:, 1].min()], [seg_a[:, 0].max(), seg_a[:, 1].max()]])
    box = np.array([[corners[i][0], corners[j][1]] for i in (0, 1) for j in (0, 1)], dtype=np.float32)
    img_box = box @ rot.T + np.array([cx, cy], dtype=np.float32)
    width = max(1.0, 1.5 * size / 256)
    rows, cols = _bbox(img_box, width + 2, size)
    ink = np.zeros((size, size), dtype=np.float32)
    dist = _segment_distance(a[rows, cols], b[rows, cols], seg_a, seg_b)
    ink[rows, cols] = np.clip(width / 2 + 0.5 - dist, 0, 1) * rng.uniform(0.8, 0.9)
    ink_col = _jitter_colour(rng, (0.16, 0.17, 0.24), 0.05)
    obj = obj * (1 - ink[..., None]) + ink_col * ink[..., None]
    off = 0.025 * size
    _, _, d_shadow = stadium(x - cx + off * np.cos(light), y - cy + off * np.sin(light))
    shadow = 1 - 0.3 / (1 + np.exp((d_shadow - half_w) / (0.02 * size)))
    bg = (0.8 + 0.01 * _noise(rng, size, 1.5, 96)) * shadow
    bg_col = _jitter_colour(rng, (0.98, 0.99, 1.0), 0.015)
    rgb = bg[..., None] * bg_col * (1 - cover[..., None]) + obj * cover[..., None]
    support = sd < -0.03 * size
    return _Scene(rgb.astype(np.float32), cover.astype(np.float32), support, light)


_RENDERERS: dict[str, Callable[[np.random.Generator, int], _Scene]] = {
    "capsule": _capsule,
    "fabric": _fabric,
    "marble": _marble,
    "washer": _washer,
}


def _camera(rng: np.random.Generator, size: int) -> tuple[Array, Array]:
    """Per-pixel gain (illumination gradient, vignetting, exposure, white balance) and sensor noise."""
    y, x = _grid(size)
    nx, ny = x / size - 0.5, y / size - 0.5
    gx, gy = rng.uniform(-0.12, 0.12, 2)
    field = 1 + gx * nx + gy * ny - rng.uniform(0.05, 0.3) * (nx * nx + ny * ny)
    balance = (rng.uniform(0.93, 1.05) * (1 + rng.normal(0, 0.01, 3))).astype(np.float32)
    gain = field[..., None] * balance
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(rng.uniform(0.006, 0.012))
    return gain.astype(np.float32), noise


def _expose(rgb: Array, gain: Array, noise: Array) -> Array:
    return np.clip(np.rint((rgb * gain + noise) * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# defects: each returns the defective scene colours; only a bounding box around the defect is recomputed


def _pick_centre(rng: np.random.Generator, scene: _Scene) -> tuple[float, float]:
    idx = np.flatnonzero(scene.support)
    k = int(idx[rng.integers(len(idx))])
    size = scene.support.shape[1]
    return float(k % size) + rng.uniform(-0.5, 0.5), float(k // size) + rng.uniform(-0.5, 0.5)


def _line_defect(scene: _Scene, points: Array, width: float, apply: Callable[[Array, Array], Array]) -> Array:
    """Rasterise a line profile exp(-d^2 / 2w^2) along ``points`` and let ``apply(patch, profile)`` use it."""
    size = scene.rgb.shape[0]
    rows, cols = _bbox(points, 4 * width + 2, size)
    y, x = _grid(size)
    d = _segment_distance(x[rows, cols], y[rows, cols], points[:-1], points[1:])
    profile = np.exp(-0.5 * (d / width) ** 2) * scene.cover[rows, cols]
    out = scene.rgb.copy()
    out[rows, cols] = apply(out[rows, cols], profile[..., None])
    return out


@dataclass(frozen=True)
class _Strength:
    """Per-category scaling of defect contrast and size (surfaces differ in how much a defect stands out)."""

    contrast: float = 1.0
    size: float = 1.0


def _strength(contrast: dict[str, float], size: float) -> dict[str, _Strength]:
    return {defect: _Strength(c, size) for defect, c in contrast.items()}


_STRENGTH: dict[str, dict[str, _Strength]] = {  # tuned so that a simple kNN detector is good but not perfect
    "capsule": _strength({"crack": 1.2, "hole": 1.0, "scratch": 1.0, "stain": 1.1}, 1.0),
    "fabric": _strength({"hole": 2.5, "scratch": 2.8, "stain": 2.8}, 1.4),
    "marble": _strength({"crack": 2.1, "hole": 1.9, "scratch": 1.9, "stain": 1.9}, 1.3),
    "washer": _strength({"crack": 0.45, "hole": 0.55, "scratch": 0.45, "stain": 1.0}, 0.8),
}


def _scratch(rng: np.random.Generator, scene: _Scene, size: int, k: _Strength) -> Array:
    px = size / 256
    cx, cy = _pick_centre(rng, scene)
    length = rng.uniform(0.06, 0.22) * size * k.size
    ang = rng.uniform(0, np.pi)
    ux, uy = np.cos(ang), np.sin(ang)
    bend = rng.uniform(-0.25, 0.25) * length
    t = np.linspace(-0.5, 0.5, 24)[:, None]
    pts = np.hstack([cx + t * length * ux, cy + t * length * uy])
    pts += (1 - 4 * t * t) * bend * np.array([-uy, ux])
    width = max(0.45, rng.uniform(0.6, 1.3) * px * k.size)
    contrast = rng.uniform(0.08, 0.2) * k.contrast * rng.choice([-1.0, 1.0], p=[0.35, 0.65])
    return _line_defect(scene, pts.astype(np.float32), width, lambda patch, prof: patch + contrast * prof)


def _crack(rng: np.random.Generator, scene: _Scene, size: int, k: _Strength) -> Array:
    px = size / 256
    cx, cy = _pick_centre(rng, scene)
    length = rng.uniform(0.05, 0.16) * size * k.size
    n = int(rng.integers(4, 9))
    heading = rng.uniform(0, 2 * np.pi)
    steps = rng.uniform(0.5, 1.5, n)
    steps *= length / steps.sum()
    angles = heading + np.cumsum(rng.normal(0, 0.6, n))
    pts = np.vstack([[0.0, 0.0], np.cumsum(np.c_[steps * np.cos(angles), steps * np.sin(angles)], axis=0)])
    pts += np.array([cx, cy]) - pts.mean(0)
    width = max(0.45, rng.uniform(0.45, 0.9) * px * k.size)
    depth = min(0.9, rng.uniform(0.2, 0.5) * k.contrast)

    def darken(patch: Array, prof: Array) -> Array:
        return patch * (1 - depth * prof)

    out = _line_defect(scene, pts.astype(np.float32), width, darken)
    if rng.random() < 0.4:  # a short branch from a middle vertex
        start = pts[int(rng.integers(1, n))]
        blen = rng.uniform(0.25, 0.5) * length
        bang = angles[0] + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2)
        branch = np.vstack([start, start + blen * np.array([np.cos(bang), np.sin(bang)])])
        out = _line_defect(_Scene(out, scene.cover, scene.support, scene.light), branch.astype(np.float32),
                           0.8 * width, darken)
    return out


_STAIN_TINTS = np.array([[0.80, 0.62, 0.40], [0.55, 0.55, 0.60], [0.88, 0.80, 0.52], [0.60, 0.70, 0.62]],
                        dtype=np.float32)


def _stain(rng: np.random.Generator, scene: _Scene, size: int, k: _Strength) -> Array:
    cx, cy = _pick_centre(rng, scene)
    radius = max(2.0, rng.uniform(0.025, 0.07) * size * k.size)
    aspect = rng.uniform(0.6, 1.0)
    rot = rng.uniform(0, np.pi)
    rows, cols = _bbox(np.array([[cx, cy]]), 1.6 * radius + 2, size)
    y, x = _grid(size)
    dx, dy = x[rows, cols] - cx, y[rows, cols] - cy
    a = dx * np.cos(rot) + dy * np.sin(rot)
    b = (dy * np.cos(rot) - dx * np.sin(rot)) / aspect
    ang = np.arctan2(b, a)
    wobble = 1 + sum(rng.uniform(0, 0.12) * np.cos(j * ang + rng.uniform(0, 2 * np.pi)) for j in range(2, 6))
    rho = np.sqrt(a * a + b * b) / (radius * wobble)
    opacity = min(0.9, rng.uniform(0.15, 0.35) * k.contrast)
    alpha = (opacity * _smoothstep(1.0, 0.45, rho) * scene.cover[rows, cols])[..., None]
    out = scene.rgb.copy()
    patch = out[rows, cols]
    # blend towards a tinted version of the local mean colour: the stain hides some texture and shifts colour
    target = _STAIN_TINTS[rng.integers(len(_STAIN_TINTS))] * patch.reshape(-1, 3).mean(0).mean()
    out[rows, cols] = patch * (1 - alpha) + alpha * target
    return out


def _hole(rng: np.random.Generator, scene: _Scene, size: int, k: _Strength) -> Array:
    cx, cy = _pick_centre(rng, scene)
    radius = max(1.0, rng.uniform(0.008, 0.024) * size * k.size)
    rows, cols = _bbox(np.array([[cx, cy]]), 2 * radius + 2, size)
    y, x = _grid(size)
    dx, dy = x[rows, cols] - cx, y[rows, cols] - cy
    r = np.sqrt(dx * dx + dy * dy) / radius
    cover = scene.cover[rows, cols]
    pit = (_smoothstep(1.05, 0.55, r) * cover)[..., None]
    rim = np.exp(-(((r - 1.25) / 0.22) ** 2)) * (0.5 + 0.5 * np.cos(np.arctan2(dy, dx) - scene.light))
    depth = min(0.9, rng.uniform(0.3, 0.65) * k.contrast)
    out = scene.rgb.copy()
    patch = out[rows, cols]
    out[rows, cols] = patch * (1 - depth * pit) + rng.uniform(0.05, 0.12) * k.contrast * (rim * cover)[..., None]
    return out


_DEFECTS: dict[str, Callable[[np.random.Generator, _Scene, int, _Strength], Array]] = {
    "crack": _crack,
    "hole": _hole,
    "scratch": _scratch,
    "stain": _stain,
}


# --------------------------------------------------------------------------------------------------------------
# public generation API


class SyntheticSample(NamedTuple):
    """One generated image: ``image`` and ``clean`` uint8 (H, W, 3), ``mask`` bool (H, W)."""

    image: Array
    mask: Array
    clean: Array


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def generate_sample(
    category: str,
    defect: str | None = None,
    index: int = 0,
    split: str = "test",
    resolution: int = 256,
    seed: int = 0,
) -> SyntheticSample:
    """Render one image in memory, exactly as it is written to ``<split>/<defect or good>/<index>.png``.

    For a normal image (``defect`` None) the mask is all False and ``clean`` equals ``image``; for a defective
    one, ``clean`` is the same image without the defect and differs from ``image`` exactly on ``mask``.
    """
    if category not in _RENDERERS:
        raise ConfigError("dataset.category", f"'{category}' is not a synthetic category", allowed=CATEGORIES)
    if defect is not None and defect not in CATEGORY_DEFECTS[category]:
        raise ConfigError("defect", f"'{defect}' is not a defect of '{category}'", allowed=CATEGORY_DEFECTS[category])
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    size = int(resolution)
    key = f"{split}/{defect or 'good'}"
    scene_seq, defect_seq = np.random.SeedSequence([int(seed), _crc(category), _crc(key), int(index)]).spawn(2)
    rng = np.random.default_rng(scene_seq)
    scene = _RENDERERS[category](rng, size)
    gain, noise = _camera(rng, size)
    clean = _expose(scene.rgb, gain, noise)
    if defect is None:
        return SyntheticSample(clean, np.zeros((size, size), dtype=bool), clean)
    drng = np.random.default_rng(defect_seq)
    minimum = max(3, (size // 64) ** 2)
    for _ in range(50):  # redraw the (rare) defect that leaves almost no visible change
        altered = _DEFECTS[defect](drng, scene, size, _STRENGTH[category][defect])
        change = (np.abs(altered - scene.rgb) * gain).max(-1)
        dirty = _expose(altered, gain, noise)
        mask = (change > MASK_THRESHOLD) & (dirty != clean).any(-1)
        if mask.sum() >= minimum:
            break
    else:
        raise RuntimeError(f"synthetic {category}/{defect} #{index}: no visible defect at size {size}")
    image = np.where(mask[..., None], dirty, clean)
    return SyntheticSample(image, mask, clean)


def _save_png(array: Array, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)  # noise does not compress


def _write_category(dest: Path, category: str, params: SyntheticParams) -> None:
    """Write all images and masks of ``category`` under ``dest`` (the category directory)."""
    plan: list[tuple[str, str | None, int]] = [("train", None, params.n_train), ("test", None, params.n_test_good)]
    plan += [("test", d, params.n_test_defect) for d in CATEGORY_DEFECTS[category]]
    for split, defect, count in plan:
        width = max(3, len(str(count - 1)))
        out_dir = dest / split / (defect or "good")
        out_dir.mkdir(parents=True, exist_ok=True)
        gt_dir = dest / "ground_truth" / defect if defect else None
        if gt_dir is not None:
            gt_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, mask, _ = generate_sample(category, defect, index, split, params.resolution, params.seed)
            stem = f"{index:0{width}d}"
            _save_png(image, out_dir / f"{stem}.png")
            if gt_dir is not None:
                _save_png(mask.astype(np.uint8) * 255, gt_dir / f"{stem}_mask.png")


def _manifest_text(category: str, params: SyntheticParams) -> str:
    return json.dumps(params.manifest(category), indent=1, sort_keys=True) + "\n"


def is_complete(directory: Path, category: str, params: SyntheticParams) -> bool:
    """Whether ``directory`` holds a finished generation of ``category`` with exactly these parameters."""
    try:
        return (directory / DONE_FILE).read_text(encoding="utf-8") == _manifest_text(category, params)
    except OSError:
        return False


def _discard(path: Path) -> None:
    """Remove a directory: first rename it aside (atomic, so nobody reads it half-deleted), then delete it."""
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def _clean_stale_temporaries(base: Path, category: str) -> None:
    """Delete temporary directories of ``category`` left by killed processes more than a day ago."""
    now = time.time()
    for leftover in base.glob(f".{category}.*"):
        try:
            if leftover.is_dir() and now - leftover.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def ensure_category(base: Path, category: str, params: SyntheticParams) -> Path:
    """Make ``base/category`` a complete generation of ``category`` with ``params``; return its path.

    Safe under concurrent processes: the category is written to a temporary directory next to the target and
    renamed into place; if another process got there first, its copy is kept and ours is discarded. A target
    without a matching ``DONE`` manifest (half-written, other parameters) is replaced.
    """
    if category not in _RENDERERS:
        raise ConfigError("dataset.category", f"'{category}' is not a synthetic category", allowed=CATEGORIES)
    base = Path(base)
    target = base / category
    if is_complete(target, category, params):
        return target
    try:
        base.mkdir(parents=True, exist_ok=True)
        _clean_stale_temporaries(base, category)
        tmp = Path(tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=base))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    except OSError as exc:
        raise DataError(f"cannot write the synthetic dataset under {base}: {exc}") from exc
    try:
        _write_category(tmp, category, params)
        (tmp / DONE_FILE).write_text(_manifest_text(category, params), encoding="utf-8")
        for _ in range(5):
            try:
                os.rename(tmp, target)
                return target
            except OSError:
                if is_complete(target, category, params):
                    return target  # another process finished first: keep its copy, drop ours
                _discard(target)  # stale: half-written or generated with other parameters
        raise DataError(f"cannot move the synthetic category into place at {target}")
    except OSError as exc:
        raise DataError(f"cannot write the synthetic dataset under {base}: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_synthetic(
    root: str | os.PathLike[str] | None = None,
    categories: Iterable[str] | None = None,
    *,
    n_train: int = 100,
    n_test_good: int = 30,
    n_test_defect: int = 10,
    resolution: int = 256,
    seed: int = 0,
    versioned: bool | None = None,
) -> Path:
    """Write the synthetic dataset in MVTec AD layout (all categories by default); return the dataset root.

    With ``versioned=False`` the categories go directly under ``root``, which the ``mvtec`` loader reads. With
    ``versioned=True`` they go under ``root/<version and options>`` (e.g. ``v1-n100-30-10-s256-seed0``), where
    the ``synthetic`` loader with ``root`` and the same options finds them. By default ``root`` is the cache
    (:func:`cache_root`, which the ``synthetic`` loader uses; versioned), and an explicit ``root`` is not
    versioned. Categories already complete with the same parameters are left alone.
    """
    params = SyntheticParams(n_train, n_test_good, n_test_defect, resolution, seed)
    out = cache_root() if root is None else Path(root).expanduser()
    if versioned is None:
        versioned = root is None
    if versioned:
        out = out / params.dirname
    for category in CATEGORIES if categories is None else list(categories):
        ensure_category(out, category, params)
    return out


def cache_root() -> Path:
    """``$OADBENCH_CACHE/synthetic``, or ``~/.cache/oadbench/synthetic``."""
    env = os.environ.get("OADBENCH_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "oadbench"
    return base / "synthetic"


@register_dataset
class SyntheticLoader(MVTecLoader):
    """The embedded dataset, generated on first use into ``<root>/<version and options>/<category>``."""

    name = "synthetic"
    description = (
        "embedded procedural dataset (capsule, fabric, marble, washer; scratch/crack/stain/hole defects with "
        "exact masks), generated on first use into the cache; for smoke tests and teaching only"
    )
    layout = """\
<root>/<version-options>/<category>/...   (generated on demand; root defaults to the cache directory)
<root>/<version-options>/<category>/train/good/*.png
<root>/<version-options>/<category>/test/<good|defect>/*.png
<root>/<version-options>/<category>/ground_truth/<defect>/<stem>_mask.png   (0/255)
"""
    options = {"n_train": 100, "n_test_good": 30, "n_test_defect": 10, "resolution": 256, "seed": 0}

    def default_root(self) -> Path:
        return cache_root()

    def categories(self, root: Path) -> list[str]:
        return list(CATEGORIES)

    def load(self, root: Path, category: str, **options: Any) -> CategoryData:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ConfigError(f"dataset.{unknown[0]}", "unknown option of dataset 'synthetic'", allowed=self.options)
        if category not in CATEGORIES:
            raise ConfigError("dataset.category", f"'{category}' is not a category of dataset 'synthetic'",
                              allowed=CATEGORIES)
        params = SyntheticParams(**{**self.options, **options})
        base = Path(root).expanduser() / params.dirname
        ensure_category(base, category, params)
        return super().load(base, category)

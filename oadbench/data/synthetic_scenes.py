"""Scenes of the synthetic dataset: one renderer per category (fabric, marble, washer, capsule), drawing all its
variation from the given generator, and the camera model (lighting gain, sensor noise, exposure to uint8)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from oadbench.data.synthetic_raster import Array, bbox, grid, jitter_colour, noise_field, segment_distance


@dataclass
class Scene:
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


def _fabric(rng: np.random.Generator, size: int) -> Scene:
    y, x = grid(size)
    period = size / 256 * 9.0 * rng.uniform(0.93, 1.07)
    theta = np.deg2rad(rng.uniform(-3, 3))
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    jitter = 0.13 * period
    xc, yc = x - size / 2, y - size / 2
    u = xc * c + yc * s + rng.uniform(0, period) + jitter * noise_field(rng, size, 3.0, 14)
    v = yc * c - xc * s + rng.uniform(0, period) + jitter * noise_field(rng, size, 3.0, 14)
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
    fibre = 0.05 * noise_field(rng, size, 0.8, size / 2, fmin=size / 16)
    shade = (0.3 + 0.7 * height + fibre)[..., None]
    warp_col = jitter_colour(rng, (0.36, 0.42, 0.58), 0.025)
    weft_col = jitter_colour(rng, (0.60, 0.61, 0.64), 0.025)
    rgb = np.where(warp_top[..., None], warp_col, weft_col) * shade
    cover, support = _texture_support(size)
    return Scene(rgb.astype(np.float32), cover, support, rng.uniform(0, 2 * np.pi))


def _marble(rng: np.random.Generator, size: int) -> Scene:
    y, x = grid(size)
    turb = noise_field(rng, size, 4.0, 24)
    fine = noise_field(rng, size, 2.0, 64, fmin=8)
    phi = rng.uniform(0, np.pi)
    freq = rng.uniform(1.5, 2.5) / size
    proj = x * np.float32(np.cos(phi)) + y * np.float32(np.sin(phi))
    wave = np.sin(2 * np.pi * freq * proj + rng.uniform(1.2, 2.0) * turb + 0.2 * fine + rng.uniform(0, 7))
    veins = (1 - np.abs(wave)) ** rng.uniform(6, 10)
    phi2 = phi + rng.uniform(0.6, 2.4)
    proj2 = x * np.float32(np.cos(phi2)) + y * np.float32(np.sin(phi2))
    wave2 = np.sin(2 * np.pi * 1.7 * freq * proj2 + 1.5 * turb + 0.3 * fine + rng.uniform(0, 7))
    veins2 = (1 - np.abs(wave2)) ** 14
    cloud = noise_field(rng, size, 2.0, 64)
    base = jitter_colour(rng, (0.86, 0.85, 0.82), 0.012)
    vein_col = jitter_colour(rng, (0.40, 0.45, 0.43), 0.04)
    amount = np.clip(0.75 * veins + 0.35 * veins2, 0, 1)[..., None]
    rgb = base * (1 + 0.035 * cloud)[..., None]
    rgb = rgb + (vein_col - rgb) * amount
    cover, support = _texture_support(size)
    return Scene(rgb.astype(np.float32), cover, support, rng.uniform(0, 2 * np.pi))


def _washer(rng: np.random.Generator, size: int) -> Scene:
    y, x = grid(size)
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
    metal = jitter_colour(rng, (0.76, 0.76, 0.78), 0.015)
    obj = (shade + lathe)[..., None] * metal
    off = 0.02 * size
    rs = np.sqrt((dx + off * np.cos(light)) ** 2 + (dy + off * np.sin(light)) ** 2)
    sd_shadow = np.maximum(rs - r_out, r_in - rs)
    shadow = 1 - 0.45 / (1 + np.exp(sd_shadow / (0.012 * size)))
    bg = (0.2 + 0.012 * noise_field(rng, size, 1.5, 96)) * shadow
    bg_col = jitter_colour(rng, (0.95, 0.97, 1.0), 0.02)
    rgb = bg[..., None] * bg_col * (1 - cover[..., None]) + obj * cover[..., None]
    support = sd < -0.025 * size
    return Scene(rgb.astype(np.float32), cover.astype(np.float32), support, light)


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


def _capsule(rng: np.random.Generator, size: int) -> Scene:
    y, x = grid(size)
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
    cap_col = jitter_colour(rng, (0.78, 0.30, 0.20), 0.03)
    body_col = jitter_colour(rng, (0.93, 0.91, 0.85), 0.015)
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
    rows, cols = bbox(img_box, width + 2, size)
    ink = np.zeros((size, size), dtype=np.float32)
    dist = segment_distance(a[rows, cols], b[rows, cols], seg_a, seg_b)
    ink[rows, cols] = np.clip(width / 2 + 0.5 - dist, 0, 1) * rng.uniform(0.8, 0.9)
    ink_col = jitter_colour(rng, (0.16, 0.17, 0.24), 0.05)
    obj = obj * (1 - ink[..., None]) + ink_col * ink[..., None]
    off = 0.025 * size
    _, _, d_shadow = stadium(x - cx + off * np.cos(light), y - cy + off * np.sin(light))
    shadow = 1 - 0.3 / (1 + np.exp((d_shadow - half_w) / (0.02 * size)))
    bg = (0.8 + 0.01 * noise_field(rng, size, 1.5, 96)) * shadow
    bg_col = jitter_colour(rng, (0.98, 0.99, 1.0), 0.015)
    rgb = bg[..., None] * bg_col * (1 - cover[..., None]) + obj * cover[..., None]
    support = sd < -0.03 * size
    return Scene(rgb.astype(np.float32), cover.astype(np.float32), support, light)


RENDERERS: dict[str, Callable[[np.random.Generator, int], Scene]] = {  # category -> (rng, side in px) -> Scene
    "capsule": _capsule,
    "fabric": _fabric,
    "marble": _marble,
    "washer": _washer,
}


def camera(rng: np.random.Generator, size: int) -> tuple[Array, Array]:
    """Per-pixel gain (illumination gradient, vignetting, exposure, white balance) and sensor noise."""
    y, x = grid(size)
    nx, ny = x / size - 0.5, y / size - 0.5
    gx, gy = rng.uniform(-0.12, 0.12, 2)
    field = 1 + gx * nx + gy * ny - rng.uniform(0.05, 0.3) * (nx * nx + ny * ny)
    balance = (rng.uniform(0.93, 1.05) * (1 + rng.normal(0, 0.01, 3))).astype(np.float32)
    gain = field[..., None] * balance
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(rng.uniform(0.006, 0.012))
    return gain.astype(np.float32), noise


def expose(rgb: Array, gain: Array, noise: Array) -> Array:
    """The uint8 image of scene colours ``rgb`` (0..1) under ``gain`` and additive ``noise`` (from :func:`camera`)."""
    return np.clip(np.rint((rgb * gain + noise) * 255), 0, 255).astype(np.uint8)



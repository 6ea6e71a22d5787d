"""Defects of the synthetic dataset (scratch, crack, stain, hole) and their per-category strengths. Each defect
draws from the given generator and returns the defective scene colours; only a bounding box around the defect is
recomputed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from oadbench.data.synthetic_raster import Array, bbox, grid, segment_distance, smoothstep
from oadbench.data.synthetic_scenes import Scene


def _pick_centre(rng: np.random.Generator, scene: Scene) -> tuple[float, float]:
    idx = np.flatnonzero(scene.support)
    k = int(idx[rng.integers(len(idx))])
    size = scene.support.shape[1]
    return float(k % size) + rng.uniform(-0.5, 0.5), float(k // size) + rng.uniform(-0.5, 0.5)


def _line_defect(scene: Scene, points: Array, width: float, apply: Callable[[Array, Array], Array]) -> Array:
    """Rasterise a line profile exp(-d^2 / 2w^2) along ``points`` and let ``apply(patch, profile)`` use it."""
    size = scene.rgb.shape[0]
    rows, cols = bbox(points, 4 * width + 2, size)
    y, x = grid(size)
    d = segment_distance(x[rows, cols], y[rows, cols], points[:-1], points[1:])
    profile = np.exp(-0.5 * (d / width) ** 2) * scene.cover[rows, cols]
    out = scene.rgb.copy()
    out[rows, cols] = apply(out[rows, cols], profile[..., None])
    return out


@dataclass(frozen=True)
class Strength:
    """Per-category scaling of defect contrast and size (surfaces differ in how much a defect stands out)."""

    contrast: float = 1.0
    size: float = 1.0


def _strength(contrast: dict[str, float], size: float) -> dict[str, Strength]:
    return {defect: Strength(c, size) for defect, c in contrast.items()}


STRENGTH: dict[str, dict[str, Strength]] = {  # tuned so that a simple kNN detector is good but not perfect
    "capsule": _strength({"crack": 1.2, "hole": 1.0, "scratch": 1.0, "stain": 1.1}, 1.0),
    "fabric": _strength({"hole": 2.5, "scratch": 2.8, "stain": 2.8}, 1.4),
    "marble": _strength({"crack": 2.1, "hole": 1.9, "scratch": 1.9, "stain": 1.9}, 1.3),
    "washer": _strength({"crack": 0.45, "hole": 0.55, "scratch": 0.45, "stain": 1.0}, 0.8),
}


def _scratch(rng: np.random.Generator, scene: Scene, size: int, k: Strength) -> Array:
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


def _crack(rng: np.random.Generator, scene: Scene, size: int, k: Strength) -> Array:
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
        out = _line_defect(Scene(out, scene.cover, scene.support, scene.light), branch.astype(np.float32),
                           0.8 * width, darken)
    return out


_STAIN_TINTS = np.array([[0.80, 0.62, 0.40], [0.55, 0.55, 0.60], [0.88, 0.80, 0.52], [0.60, 0.70, 0.62]],
                        dtype=np.float32)


def _stain(rng: np.random.Generator, scene: Scene, size: int, k: Strength) -> Array:
    cx, cy = _pick_centre(rng, scene)
    radius = max(2.0, rng.uniform(0.025, 0.07) * size * k.size)
    aspect = rng.uniform(0.6, 1.0)
    rot = rng.uniform(0, np.pi)
    rows, cols = bbox(np.array([[cx, cy]]), 1.6 * radius + 2, size)
    y, x = grid(size)
    dx, dy = x[rows, cols] - cx, y[rows, cols] - cy
    a = dx * np.cos(rot) + dy * np.sin(rot)
    b = (dy * np.cos(rot) - dx * np.sin(rot)) / aspect
    ang = np.arctan2(b, a)
    wobble = 1 + sum(rng.uniform(0, 0.12) * np.cos(j * ang + rng.uniform(0, 2 * np.pi)) for j in range(2, 6))
    rho = np.sqrt(a * a + b * b) / (radius * wobble)
    opacity = min(0.9, rng.uniform(0.15, 0.35) * k.contrast)
    alpha = (opacity * smoothstep(1.0, 0.45, rho) * scene.cover[rows, cols])[..., None]
    out = scene.rgb.copy()
    patch = out[rows, cols]
    # blend towards a tinted version of the local mean colour: the stain hides some texture and shifts colour
    target = _STAIN_TINTS[rng.integers(len(_STAIN_TINTS))] * patch.reshape(-1, 3).mean(0).mean()
    out[rows, cols] = patch * (1 - alpha) + alpha * target
    return out


def _hole(rng: np.random.Generator, scene: Scene, size: int, k: Strength) -> Array:
    cx, cy = _pick_centre(rng, scene)
    radius = max(1.0, rng.uniform(0.008, 0.024) * size * k.size)
    rows, cols = bbox(np.array([[cx, cy]]), 2 * radius + 2, size)
    y, x = grid(size)
    dx, dy = x[rows, cols] - cx, y[rows, cols] - cy
    r = np.sqrt(dx * dx + dy * dy) / radius
    cover = scene.cover[rows, cols]
    pit = (smoothstep(1.05, 0.55, r) * cover)[..., None]
    rim = np.exp(-(((r - 1.25) / 0.22) ** 2)) * (0.5 + 0.5 * np.cos(np.arctan2(dy, dx) - scene.light))
    depth = min(0.9, rng.uniform(0.3, 0.65) * k.contrast)
    out = scene.rgb.copy()
    patch = out[rows, cols]
    out[rows, cols] = patch * (1 - depth * pit) + rng.uniform(0.05, 0.12) * k.contrast * (rim * cover)[..., None]
    return out


# defect type -> (rng, clean scene, side in px, strength) -> defective scene colours (H, W, 3)
DEFECTS: dict[str, Callable[[np.random.Generator, Scene, int, Strength], Array]] = {
    "crack": _crack,
    "hole": _hole,
    "scratch": _scratch,
    "stain": _stain,
}

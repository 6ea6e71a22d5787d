"""Drift of the normal appearance along the stream: protocol data, a state per stream position, image transforms.

A protocol's ``drift`` section is a list of components::

    drift:
      - {kind: brightness, magnitude: -0.3, schedule: {type: gradual, start: 0.5, end: 1.0}}
      - {kind: tint, magnitude: 0.1, schedule: {type: gradual, start: 0.5, end: 1.0}}

Each component's *intensity* s ∈ [0, 1] is a pure function of the position p = t / T in the stream (t images
observed so far, warm-up included, of T in all): ``abrupt`` (``at``: s = 1 from p >= at), ``gradual``
(``start``, ``end``: linear from 0 at p <= start to 1 at p >= end), ``recurring`` (``period``, ``phase``,
fractions of the stream: s = (1 - cos(2π (p - phase) / period)) / 2, 0 at the phase, 1 half a period later).
The i-th streamed image is seen in the state at p = i / T, the checkpoint after t images evaluates in the state
at p = t / T, so the end of the stream is p = 1. A component acts with m = magnitude × s:

- ``brightness``: every pixel × (1 + m) (m = -0.3: a lamp giving 30 % less light);
- ``contrast``: (x - mean) × (1 + m) + mean, the image's mean over all pixels and channels;
- ``tint``: channel c × (1 + m · color_c), ``color`` an RGB direction scaled to a largest |component| of 1
  (default [1, 0, -1]: a warm cast, as a white balance or lamp colour temperature shift);
- ``blur``: a Gaussian of σ = m pixels (of the image as the backbone sees it: defocus);
- ``noise``: additive Gaussian noise of standard deviation m × 255 (sensor noise, gain); the noise of an image is
  drawn from a generator seeded by (image id, run seed, component, m), so it is a pure function of them;
- ``rotation``: m degrees about the centre (positive: counter-clockwise as displayed, rows down);
  ``translation``: a shift of m × the image side along ``direction`` (default [1, 0], to the right); ``scale``:
  a zoom by 1 + m about the centre — a camera nudged. Masks move with the image (nearest neighbour); pixels from
  outside the image repeat its border.

Components apply in the listed order; the result is rounded back to uint8. With no drift the images are untouched.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from oadbench.components import gaussian_blur
from oadbench.errors import ConfigError
from oadbench.validate import check_choice, check_number

PHOTOMETRIC = ("brightness", "contrast", "tint", "blur", "noise")
GEOMETRIC = ("rotation", "translation", "scale")
KINDS = PHOTOMETRIC + GEOMETRIC
SCHEDULES = ("abrupt", "gradual", "recurring")
SCHEDULE_KEYS = {"abrupt": ("at",), "gradual": ("start", "end"), "recurring": ("period", "phase")}
OPTIONS = {"tint": ("color",), "translation": ("direction",)}
# magnitude ranges that keep an image an image (brightness -1 would be black, blur sigma 0..32 px)
RANGES = {"brightness": (-0.95, 3.0), "contrast": (-0.95, 3.0), "tint": (-0.95, 0.95), "blur": (0.0, 32.0),
          "noise": (0.0, 0.5), "rotation": (-180.0, 180.0), "translation": (-0.5, 0.5), "scale": (-0.5, 1.0)}


@dataclass(frozen=True)
class DriftComponent:
    kind: str
    magnitude: float
    schedule: str
    at: float = 1.0
    start: float = 0.0
    end: float = 1.0
    period: float = 1.0
    phase: float = 0.0
    color: tuple[float, float, float] = (1.0, 0.0, -1.0)
    direction: tuple[float, float] = (1.0, 0.0)

    def intensity(self, position: float) -> float:
        """s ∈ [0, 1] at stream position ``position`` (0 = start, 1 = end)."""
        if self.schedule == "abrupt":
            return 1.0 if position >= self.at else 0.0
        if self.schedule == "gradual":
            if position <= self.start:
                return 0.0
            if position >= self.end:
                return 1.0
            return (position - self.start) / (self.end - self.start)
        return 0.5 * (1.0 - math.cos(2.0 * math.pi * (position - self.phase) / self.period))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "magnitude": self.magnitude,
                               "schedule": {"type": self.schedule,
                                            **{k: getattr(self, k) for k in SCHEDULE_KEYS[self.schedule]}}}
        for key in OPTIONS.get(self.kind, ()):
            out[key] = list(getattr(self, key))
        return out


@dataclass(frozen=True)
class Drift:
    """The drift of a protocol (no components: no drift)."""

    components: tuple[DriftComponent, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.components)

    def state(self, position: float) -> tuple[float, ...]:
        """The effective magnitudes m = magnitude × s of every component at ``position``."""
        return tuple(round(c.magnitude * c.intensity(min(max(position, 0.0), 1.0)), 12) + 0.0 for c in self.components)

    def initial(self) -> tuple[float, ...]:
        return tuple(0.0 for _ in self.components)

    def to_list(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.components]

    def describe(self, state: Sequence[float]) -> dict[str, float]:
        """``{"<index>_<kind>": m}`` of a state, for records."""
        return {f"{i}_{c.kind}": float(m) for i, (c, m) in enumerate(zip(self.components, state, strict=True))}

    def apply(self, image: torch.Tensor, mask: torch.Tensor | None, state: Sequence[float], image_id: str,
              seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``image`` uint8 (3,H,W) and ``mask`` bool (H,W) in drift state ``state``; unchanged where every m is 0."""
        if not any(state):
            return image, mask
        x = image.float()
        m_out = mask
        for i, (c, m) in enumerate(zip(self.components, state, strict=True)):
            if m == 0:
                continue
            if c.kind in GEOMETRIC:
                x, m_out = _geometric(c, m, x, m_out)
            else:
                x = _photometric(c, m, x, image_id, seed, i)
        return x.round().clamp(0, 255).to(torch.uint8), m_out


def _photometric(c: DriftComponent, m: float, x: torch.Tensor, image_id: str, seed: int, index: int) -> torch.Tensor:
    if c.kind == "brightness":
        return x * (1.0 + m)
    if c.kind == "contrast":
        mean = x.mean()
        return (x - mean) * (1.0 + m) + mean
    if c.kind == "tint":
        color = torch.tensor(c.color, dtype=x.dtype, device=x.device)
        color = color / color.abs().max().clamp_min(1e-12)
        return x * (1.0 + m * color).view(3, 1, 1)
    if c.kind == "blur":
        return gaussian_blur(x, m)
    key = f"{image_id}|{seed}|{index}|{m!r}".encode()
    gen = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
    return x + m * 255.0 * torch.randn(x.shape, generator=gen).to(x.device, x.dtype)


def _geometric(c: DriftComponent, m: float, x: torch.Tensor, mask: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Affine resampling of the image (bilinear, border repeated) and of the mask (nearest, zeros outside)."""
    if c.kind == "rotation":
        a = math.radians(m)
        theta = [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]
    elif c.kind == "translation":
        dx, dy = c.direction
        norm = math.hypot(dx, dy) or 1.0
        # grid coordinates span [-1, 1]: a shift of m x the side is 2m; sampling moves the other way
        theta = [[1.0, 0.0, -2.0 * m * dx / norm], [0.0, 1.0, -2.0 * m * dy / norm]]
    else:
        z = 1.0 / (1.0 + m)
        theta = [[z, 0.0, 0.0], [0.0, z, 0.0]]
    t = torch.tensor(theta, dtype=torch.float32, device=x.device).unsqueeze(0)
    grid = F.affine_grid(t, [1, 3, *x.shape[-2:]], align_corners=False)
    out = F.grid_sample(x.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    if mask is not None:
        moved = F.grid_sample(mask.float()[None, None], grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)[0, 0] > 0.5
        mask = moved
    return out, mask


# --------------------------------------------------------------------------------------------------------------
# parsing


def parse_drift(value: Any, source: str) -> Drift:
    """A protocol's ``drift`` section (None or a list of components) -> :class:`Drift`; errors name the key as
    ``<source>: drift[i].<key>``."""
    if value is None:
        return Drift()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{source}: drift", f"must be a list of drift components, got {value!r}")
    return Drift(tuple(_component(item, f"{source}: drift[{i}]") for i, item in enumerate(value)))


def _unit(value: Any, key: str, lo: float = 0.0, hi: float = 1.0, lo_open: bool = False) -> float:
    v = check_number(value, key)
    if not (lo < v if lo_open else lo <= v) or v > hi or not math.isfinite(v):
        raise ConfigError(key, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return v


def _component(item: Any, key: str) -> DriftComponent:
    if not isinstance(item, Mapping):
        raise ConfigError(key, f"must be a mapping with kind, magnitude and schedule, got {item!r}")
    kind = check_choice(item.get("kind"), KINDS, f"{key}.kind")
    allowed = ["kind", "magnitude", "schedule", *OPTIONS.get(kind, ())]
    for k in item:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}", f"unknown key for drift kind '{kind}'",
                              allowed=[f"{key}.{a}" for a in allowed])
    lo, hi = RANGES[kind]
    magnitude = check_number(item.get("magnitude"), f"{key}.magnitude")
    if not (lo <= magnitude <= hi) or not math.isfinite(magnitude):
        raise ConfigError(f"{key}.magnitude", f"must be in [{lo}, {hi}] for '{kind}', got {magnitude}")
    sched = item.get("schedule")
    if not isinstance(sched, Mapping):
        raise ConfigError(f"{key}.schedule", f"must be a mapping with a type ({', '.join(SCHEDULES)}), got {sched!r}")
    stype = check_choice(sched.get("type"), SCHEDULES, f"{key}.schedule.type")
    for k in sched:
        if k != "type" and k not in SCHEDULE_KEYS[stype]:
            raise ConfigError(f"{key}.schedule.{k}", f"unknown key for schedule '{stype}'",
                              allowed=[f"{key}.schedule.{a}" for a in ("type", *SCHEDULE_KEYS[stype])])
    values: dict[str, Any] = {}
    if stype == "abrupt":
        values["at"] = _unit(sched.get("at"), f"{key}.schedule.at")
    elif stype == "gradual":
        values["start"] = _unit(sched.get("start"), f"{key}.schedule.start")
        values["end"] = _unit(sched.get("end"), f"{key}.schedule.end")
        if values["end"] <= values["start"]:
            raise ConfigError(f"{key}.schedule.end", f"must be > start ({values['start']}), got {values['end']}")
    else:
        values["period"] = _unit(sched.get("period"), f"{key}.schedule.period", lo_open=True)
        values["phase"] = _unit(sched.get("phase", 0.0), f"{key}.schedule.phase")
    for opt, n in (("color", 3), ("direction", 2)):
        if opt in item:
            v = item[opt]
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != n:
                raise ConfigError(f"{key}.{opt}", f"must be a list of {n} numbers, got {v!r}")
            vec = tuple(check_number(x, f"{key}.{opt}[{j}]") for j, x in enumerate(v))
            if not any(vec) or not all(math.isfinite(x) for x in vec):
                raise ConfigError(f"{key}.{opt}", f"must be finite and not all zero, got {list(vec)}")
            values[opt] = vec
    return DriftComponent(kind=kind, magnitude=magnitude, schedule=stype, **values)

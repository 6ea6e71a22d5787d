"""One image of the synthetic dataset, rendered in memory with its exact defect mask (:func:`generate_sample`), and
the catalogue of categories and their defect types."""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np

from oadbench.data.synthetic_defects import DEFECTS, STRENGTH
from oadbench.data.synthetic_raster import Array
from oadbench.data.synthetic_scenes import RENDERERS, camera, expose
from oadbench.errors import ConfigError

CATEGORIES: tuple[str, ...] = ("capsule", "fabric", "marble", "washer")
CATEGORY_DEFECTS: dict[str, tuple[str, ...]] = {
    "capsule": ("crack", "hole", "scratch", "stain"),
    "fabric": ("hole", "scratch", "stain"),
    "marble": ("crack", "hole", "scratch", "stain"),
    "washer": ("crack", "hole", "scratch", "stain"),
}
DEFECT_TYPES: tuple[str, ...] = tuple(sorted({d for ds in CATEGORY_DEFECTS.values() for d in ds}))
MASK_THRESHOLD = 0.02  # change (0..1 scale) above which a pixel belongs to the defect mask


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
    if category not in RENDERERS:
        raise ConfigError("dataset.category", f"'{category}' is not a synthetic category", allowed=CATEGORIES)
    if defect is not None and defect not in CATEGORY_DEFECTS[category]:
        raise ConfigError("defect", f"'{defect}' is not a defect of '{category}'", allowed=CATEGORY_DEFECTS[category])
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    size = int(resolution)
    key = f"{split}/{defect or 'good'}"
    scene_seq, defect_seq = np.random.SeedSequence([int(seed), _crc(category), _crc(key), int(index)]).spawn(2)
    rng = np.random.default_rng(scene_seq)
    scene = RENDERERS[category](rng, size)
    gain, noise = camera(rng, size)
    clean = expose(scene.rgb, gain, noise)
    if defect is None:
        return SyntheticSample(clean, np.zeros((size, size), dtype=bool), clean)
    drng = np.random.default_rng(defect_seq)
    minimum = max(3, (size // 64) ** 2)
    for _ in range(50):  # redraw the (rare) defect that leaves almost no visible change
        altered = DEFECTS[defect](drng, scene, size, STRENGTH[category][defect])
        change = (np.abs(altered - scene.rgb) * gain).max(-1)
        dirty = expose(altered, gain, noise)
        mask = (change > MASK_THRESHOLD) & (dirty != clean).any(-1)
        if mask.sum() >= minimum:
            break
    else:
        raise RuntimeError(f"synthetic {category}/{defect} #{index}: no visible defect at size {size}")
    image = np.where(mask[..., None], dirty, clean)
    return SyntheticSample(image, mask, clean)


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
scaled per category and defect type (``STRENGTH`` in :mod:`oadbench.data.synthetic_defects`) so that a plain
nearest-neighbour detector on pretrained EfficientNet-Lite0 patch features reaches an image AUROC of roughly
0.9-0.98 with 100 training images.

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
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from oadbench.data.base import register_dataset
from oadbench.data.mvtec import MVTecLoader
from oadbench.data.sample import CategoryData
from oadbench.data.synthetic_raster import Array
from oadbench.data.synthetic_sample import (
    CATEGORIES,
    CATEGORY_DEFECTS,
    DEFECT_TYPES,
    MASK_THRESHOLD,
    SyntheticSample,
    generate_sample,
)
from oadbench.data.synthetic_scenes import RENDERERS
from oadbench.errors import ConfigError, DataError

__all__ = [
    "CATEGORIES", "CATEGORY_DEFECTS", "DEFECT_TYPES", "DONE_FILE", "MASK_THRESHOLD", "VERSION", "SyntheticLoader",
    "SyntheticParams", "SyntheticSample", "cache_root", "ensure_category", "generate_sample", "is_complete",
    "write_synthetic",
]

VERSION = "v1"
DONE_FILE = "DONE"
_STALE_TMP_SECONDS = 24 * 3600


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
# the cache on disk and the loader


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
    if category not in RENDERERS:
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

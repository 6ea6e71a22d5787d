"""A generic folder layout for a user's own data: a folder of normal images, optionally a folder of anomalous
images and a folder of masks.

Without ``normal_test_dir`` the normal images are split deterministically: they are ordered by the SHA-1 hex
digest of their file stem (ties, i.e. equal stems with different extensions, broken by file name) and the last
``floor(test_split_ratio * n)`` of that order go to test, the rest to train. The order depends only on the file
names, not on the directory listing order or the machine. Anomalous images are always test images.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from oadbench.data.base import DatasetLoader, find_with_stem, list_images, register_dataset
from oadbench.data.sample import ANOMALOUS, GOOD, NORMAL, CategoryData, Sample
from oadbench.errors import ConfigError

DEFAULT_CATEGORY = "default"


def stem_hash_order(paths: Iterable[Path]) -> list[Path]:
    """``paths`` ordered by the SHA-1 hex digest of their stem (UTF-8), then by name: machine-independent."""
    return sorted(paths, key=lambda p: (hashlib.sha1(p.stem.encode("utf-8")).hexdigest(), p.name))


def fraction_count(fraction: float, n: int) -> int:
    """``floor(fraction * n)``, robust to binary rounding (0.29 * 100 gives 29, not 28)."""
    return math.floor(fraction * n + 1e-9)


def make_sample(
    dataset: str,
    category: str,
    split: str,
    defect: str,
    image: Path,
    mask: Path | None,
    mask_threshold: int,
) -> Sample:
    """A Sample with the standard id ``<dataset>/<category>/<split>/<defect>/<stem>``; normal iff defect is GOOD."""
    label = NORMAL if defect == GOOD else ANOMALOUS
    return Sample(
        id=f"{dataset}/{category}/{split}/{defect}/{image.stem}",
        image_path=image,
        label=label,
        category=category,
        defect_type=defect,
        split=split,
        mask_path=mask if label == ANOMALOUS else None,
        mask_threshold=mask_threshold,
    )


def by_path(samples: Iterable[Sample]) -> list[Sample]:
    """Samples sorted by image path (then id, for equal paths)."""
    return sorted(samples, key=lambda s: (str(s.image_path), s.id))


@register_dataset
class FolderLoader(DatasetLoader):
    name = "folder"
    description = "Your own images: a folder of normals, optionally anomalies and masks (options normal_dir, ...)"
    layout = """\
<root>/<normal_dir>/*.png            normal images (default normal_dir=good)
<root>/<abnormal_dir>/*.png          anomalous test images (default abnormal_dir=defect; null: none)
<root>/<mask_dir>/<stem><mask_suffix>.png   optional masks of the anomalous images (default mask_dir=null)
<root>/<normal_test_dir>/*.png       optional normal test images (default null: test_split_ratio of the normals,
                                     chosen by SHA-1 of the file stem, go to test)
With several categories, each is a subdirectory <root>/<category>/ holding the folders above.
"""
    options = {
        "normal_dir": GOOD,
        "abnormal_dir": "defect",
        "mask_dir": None,
        "mask_suffix": "",
        "normal_test_dir": None,
        "test_split_ratio": 0.2,
        "mask_threshold": 0,
    }

    def categories(self, root: Path, normal_dir: str = GOOD, **_: Any) -> list[str]:
        """``["default"]`` if ``root/normal_dir`` exists, else the subdirectories that hold ``normal_dir``."""
        if not root.is_dir():
            raise self.layout_error(root, root, "dataset root")
        if (root / normal_dir).is_dir():
            return [DEFAULT_CATEGORY]
        found = sorted(p.name for p in root.iterdir() if (p / normal_dir).is_dir() and not p.name.startswith("."))
        if not found:
            raise self.layout_error(root, root / normal_dir, "directory")
        return found

    def load(self, root: Path, category: str, **options: Any) -> CategoryData:
        opts = {**self.options, **{k: v for k, v in options.items() if k in self.options}}
        normal_dir = _rel(opts["normal_dir"], "normal_dir", required=True)
        abnormal_dir = _rel(opts["abnormal_dir"], "abnormal_dir")
        mask_dir = _rel(opts["mask_dir"], "mask_dir")
        normal_test_dir = _rel(opts["normal_test_dir"], "normal_test_dir")
        mask_suffix = str(opts["mask_suffix"] or "")
        ratio = _number(opts["test_split_ratio"], "test_split_ratio", 0.0, 1.0, high_open=True)
        threshold = int(_number(opts["mask_threshold"], "mask_threshold", 0, 254))

        available = self.categories(root, normal_dir)
        if category not in available:
            raise ConfigError(
                "dataset.category",
                f"'{category}' is not a category of dataset '{self.name}' at {root}",
                allowed=available,
            )
        base = root if available == [DEFAULT_CATEGORY] else root / category

        def sample(split: str, defect: str, image: Path, mask: Path | None = None) -> Sample:
            return make_sample(self.name, category, split, defect, image, mask, threshold)

        normals = list_images(self.require_dir(root, base / normal_dir))
        if normal_test_dir is not None:
            train_normals = normals
            test_normals = list_images(self.require_dir(root, base / normal_test_dir))
        else:
            ordered = stem_hash_order(normals)
            n_train = len(ordered) - fraction_count(ratio, len(ordered))
            train_normals, test_normals = ordered[:n_train], ordered[n_train:]
        if not train_normals:
            raise self.layout_error(root, base / normal_dir / "*.png", "training images")

        train = [sample("train", GOOD, p) for p in train_normals]
        test = [sample("test", GOOD, p) for p in test_normals]
        if abnormal_dir is not None:
            abnormal = list_images(self.require_dir(root, base / abnormal_dir))
            masks = self.require_dir(root, base / mask_dir) if mask_dir is not None else None
            defect = Path(abnormal_dir).name
            for img in abnormal:
                mask = find_with_stem(masks, img.stem + mask_suffix) if masks is not None else None
                test.append(sample("test", defect, img, mask))
        return CategoryData(self.name, category, root, by_path(train), by_path(test))


def _rel(value: Any, key: str, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise ConfigError(f"dataset.{key}", "must be a directory name relative to the dataset root")
        return None
    if not isinstance(value, (str, Path)):
        raise ConfigError(f"dataset.{key}", f"expected a directory name, got {value!r}")
    return str(value)


def _number(value: Any, key: str, low: float, high: float, high_open: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"dataset.{key}", f"expected a number, got {value!r}") from None
    if not (low <= x < high if high_open else low <= x <= high):
        interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ConfigError(f"dataset.{key}", f"must lie in {interval}, got {value!r}")
    return x

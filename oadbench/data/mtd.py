"""Magnetic Tile Defects (MTD) layout (Huang et al., Saliency of magnetic tile surface defects; Y. Huang, C. Qiu,
K. Yuan, "Surface defect saliency of magnetic tile", The Visual Computer 2020 / CASE 2018).

``<root>/MT_<Type>/Imgs/*.jpg`` with a same-stem ``.png`` mask next to each image. ``MT_Free`` holds the
defect-free tiles; Blowhole, Break, Crack, Fray and Uneven the defects (``defect_type`` is the lowercased type).
Masks are soft (0-255), so a pixel is anomalous when its grey value is > 127. The masks next to the normal images
(all zero) are ignored. Images are grayscale and vary in size; :func:`oadbench.data.io.read_image` makes them RGB.
A few MT_Uneven masks of the public release are all zero; those images stay anomalous with an empty mask.
The dataset is one category, ``tile``.

Split (MTD has no official one; this follows DifferNet's protocol of training on 80 % of the defect-free tiles):
the normal images are ordered by the SHA-1 hex digest of their file stem (UTF-8; ties broken by file name), the
first ``floor(train_fraction * n_normal)`` (``train_fraction`` default 0.8) are train, the rest are test together
with every defective image. The split depends only on the file names, never on directory listing order or the
machine. Within train and test, samples are sorted by path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oadbench.data.base import DatasetLoader, find_with_stem, list_images, register_dataset
from oadbench.data.folder import by_path, fraction_count, make_sample, stem_hash_order
from oadbench.data.sample import GOOD, CategoryData, Sample
from oadbench.errors import ConfigError

MTD_CATEGORY = "tile"
MTD_NORMAL_DIR = "MT_Free"
MTD_DEFECTS = ("Blowhole", "Break", "Crack", "Fray", "Uneven")
MTD_MASK_THRESHOLD = 127
_IMAGE_EXTENSIONS = (".jpg", ".jpeg")


@register_dataset
class MTDLoader(DatasetLoader):
    name = "mtd"
    description = "Magnetic Tile Defects (1 category 'tile'; deterministic 80/20 split of the defect-free tiles)"
    layout = """\
<root>/MT_Free/Imgs/*.jpg                         defect-free tiles (same-stem .png masks ignored)
<root>/MT_<Type>/Imgs/*.jpg                       Type in Blowhole, Break, Crack, Fray, Uneven
<root>/MT_<Type>/Imgs/<stem>.png                  soft mask (0-255, anomalous where > 127)
"""
    options = {"train_fraction": 0.8}

    def categories(self, root: Path) -> list[str]:
        if not root.is_dir():
            raise self.layout_error(root, root, "dataset root")
        return [MTD_CATEGORY]

    def load(self, root: Path, category: str, **options: Any) -> CategoryData:
        self.check_category(root, category)
        fraction = _train_fraction(options.get("train_fraction", self.options["train_fraction"]))
        normal_dir = self.require_dir(root, root / MTD_NORMAL_DIR / "Imgs")
        defect_dirs = {d: self.require_dir(root, root / f"MT_{d}" / "Imgs") for d in MTD_DEFECTS}

        def sample(split: str, defect: str, image: Path, mask: Path | None = None) -> Sample:
            return make_sample(self.name, category, split, defect, image, mask, MTD_MASK_THRESHOLD)

        normals = stem_hash_order(list_images(normal_dir, _IMAGE_EXTENSIONS))
        n_train = fraction_count(fraction, len(normals))
        if n_train == 0:
            raise self.layout_error(root, normal_dir / "*.jpg", "training images")
        train = [sample("train", GOOD, p) for p in normals[:n_train]]
        test = [sample("test", GOOD, p) for p in normals[n_train:]]
        for defect, directory in defect_dirs.items():
            for img in list_images(directory, _IMAGE_EXTENSIONS):
                mask = find_with_stem(directory, img.stem, (".png",))
                if mask is None:
                    raise self.layout_error(root, directory / f"{img.stem}.png", "mask")
                test.append(sample("test", defect.lower(), img, mask))
        return CategoryData(self.name, category, root, by_path(train), by_path(test))


def _train_fraction(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError("dataset.train_fraction", f"expected a number in (0, 1), got {value!r}") from None
    if not 0.0 < x < 1.0:
        raise ConfigError("dataset.train_fraction", f"must lie in (0, 1), got {value!r}")
    return x

"""BTAD (beanTech Anomaly Detection) layout (Mishra et al., "VT-ADL: A Vision Transformer Network for Image
Anomaly Detection and Localization", ISIE 2021).

Three categories ``01``, ``02``, ``03``; images are ``.bmp`` or ``.png``, masks (0/255) are ``.png`` (class 03:
``.bmp``) with the image's stem. Normal images (``ok``) get defect type ``good`` like every other loader,
anomalous ones (``ko``) get ``ko``. The root is the ``BTech_Dataset_transformed`` directory or a directory that
contains it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oadbench.data.base import DatasetLoader, find_with_stem, list_images, register_dataset
from oadbench.data.folder import by_path, make_sample
from oadbench.data.sample import GOOD, CategoryData, Sample

BTAD_CATEGORIES = ("01", "02", "03")
BTAD_DIRNAME = "BTech_Dataset_transformed"
_IMAGE_EXTENSIONS = (".bmp", ".png")
_MASK_EXTENSIONS = (".png", ".bmp")


@register_dataset
class BTADLoader(DatasetLoader):
    name = "btad"
    description = "BTAD (3 categories 01-03; masks in ground_truth/ko/<stem>.png, class 03 .bmp)"
    layout = """\
<root>/<category>/train/ok/*.bmp|*.png          (root: BTech_Dataset_transformed, or a folder holding it)
<root>/<category>/test/ok/*.bmp|*.png
<root>/<category>/test/ko/*.bmp|*.png
<root>/<category>/ground_truth/ko/<stem>.png    (0/255; category 03: <stem>.bmp)
"""

    def resolve_root(self, root: Path) -> Path:
        """``root/BTech_Dataset_transformed`` if that directory exists, else ``root``."""
        inner = root / BTAD_DIRNAME
        return inner if inner.is_dir() else root

    def categories(self, root: Path) -> list[str]:
        data = self.resolve_root(root)
        if not data.is_dir():
            raise self.layout_error(root, root, "dataset root")
        return sorted(p.name for p in data.iterdir() if (p / "train").is_dir() and (p / "test").is_dir())

    def load(self, root: Path, category: str, **options: Any) -> CategoryData:
        data = self.resolve_root(root)
        cat_dir = data / category
        if not cat_dir.is_dir():
            self.require_dir(root, data)
            if self.categories(root):
                self.check_category(root, category)
            # no category at all: not a BTAD root; the error names the first missing directory

        def sample(split: str, defect: str, image: Path, mask: Path | None = None) -> Sample:
            return make_sample(self.name, category, split, defect, image, mask, 0)

        train_dir = self.require_dir(data, cat_dir / "train" / "ok")
        test_ok = self.require_dir(data, cat_dir / "test" / "ok")
        test_ko = self.require_dir(data, cat_dir / "test" / "ko")
        train = [sample("train", GOOD, p) for p in list_images(train_dir, _IMAGE_EXTENSIONS)]
        if not train:
            raise self.layout_error(data, train_dir / "*.bmp", "training images")
        test = [sample("test", GOOD, p) for p in list_images(test_ok, _IMAGE_EXTENSIONS)]
        anomalous = list_images(test_ko, _IMAGE_EXTENSIONS)
        if anomalous:
            gt_dir = self.require_dir(data, cat_dir / "ground_truth" / "ko")
            mask_ext = ".bmp" if category == "03" else ".png"
            for img in anomalous:
                mask = find_with_stem(gt_dir, img.stem, _MASK_EXTENSIONS)
                if mask is None:
                    raise self.layout_error(data, gt_dir / f"{img.stem}{mask_ext}", "mask")
                test.append(sample("test", "ko", img, mask))
        return CategoryData(self.name, category, data, by_path(train), by_path(test))

"""MVTec AD layout (Bergmann et al., "MVTec AD — A Comprehensive Real-World Dataset for Unsupervised Anomaly
Detection", CVPR 2019). The synthetic dataset is written in the same layout and read by this loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oadbench.data.base import DatasetLoader, find_with_stem, list_images, register_dataset
from oadbench.data.sample import ANOMALOUS, GOOD, NORMAL, CategoryData, Sample

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)


@register_dataset
class MVTecLoader(DatasetLoader):
    name = "mvtec"
    description = "MVTec AD (15 categories; masks in ground_truth/<defect>/<stem>_mask.png)"
    layout = """\
<root>/<category>/train/good/*.png
<root>/<category>/test/good/*.png
<root>/<category>/test/<defect>/*.png
<root>/<category>/ground_truth/<defect>/<stem>_mask.png   (0/255)
"""
    mask_suffix = "_mask"

    def categories(self, root: Path) -> list[str]:
        if not root.is_dir():
            raise self.layout_error(root, root, "dataset root")
        return sorted(p.name for p in root.iterdir() if (p / "train").is_dir() and (p / "test").is_dir())

    def load(self, root: Path, category: str, **options: Any) -> CategoryData:
        cat_dir = root / category
        if not cat_dir.is_dir():
            self.require_dir(root, root)
            self.check_category(root, category)
        train_dir = self.require_dir(root, cat_dir / "train" / GOOD)
        test_dir = self.require_dir(root, cat_dir / "test")
        train = [self._sample(category, "train", GOOD, p, None) for p in list_images(train_dir)]
        test: list[Sample] = []
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            defect = defect_dir.name
            for img in list_images(defect_dir):
                mask = None
                if defect != GOOD:
                    gt_dir = self.require_dir(root, cat_dir / "ground_truth" / defect)
                    mask = find_with_stem(gt_dir, img.stem + self.mask_suffix)
                    if mask is None:
                        raise self.layout_error(root, gt_dir / f"{img.stem}{self.mask_suffix}.png", "mask")
                test.append(self._sample(category, "test", defect, img, mask))
        if not train:
            raise self.layout_error(root, train_dir / "*.png", "training images")
        return CategoryData(self.name, category, root, train, test)

    def _sample(self, category: str, split: str, defect: str, image: Path, mask: Path | None) -> Sample:
        return Sample(
            id=f"{self.name}/{category}/{split}/{defect}/{image.stem}",
            image_path=image,
            label=NORMAL if defect == GOOD else ANOMALOUS,
            category=category,
            defect_type=defect,
            split=split,
            mask_path=mask,
        )

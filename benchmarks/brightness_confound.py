"""How much of a data set's labels the mean grey level of an image gives away (not part of the tests).

An anomaly score that only measures how bright an image is should be useless. On MVTec AD screw it is not: its
good test images were lit differently from its defective ones. For each category this prints the mean grey level
(0-255, the image as the loaders read it, before resizing) of the training images and of each test defect type,
the image AUROC of "mean grey level" (and of its negative, whichever is higher) as an anomaly score on the test
split and on the training and test images pooled (the prequential protocols' stream), and the share of pixels
that offline_drift's brightness (x 1.25) clips at 255, per group.

Usage: python benchmarks/brightness_confound.py [--mvtec ../shared/data/mvtec] [--mtd ../shared/data/mtd]
       [--out benchmarks/results]
Writes ``<out>/brightness-confound.md`` and prints it. Categories whose folder is absent are left out.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from oadbench.data.base import get_dataset
from oadbench.data.io import read_image
from oadbench.metrics import image_metrics

BRIGHTNESS = 1.25  # protocols/offline_drift.yaml: brightness magnitude 0.25


def _grey(path: Path) -> np.ndarray:
    return np.asarray(read_image(path).convert("L"), dtype=np.float64)


def category_lines(dataset: str, root: Path, category: str) -> list[str]:
    data = get_dataset(dataset).load(root, category)
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    test_y, test_m, pooled_y, pooled_m = [], [], [], []
    for split, samples in (("train", data.train), ("test", data.test)):
        for s in samples:
            grey = _grey(s.image_path)
            mean, clipped = float(grey.mean()), float((grey * BRIGHTNESS >= 255).mean())
            groups[f"{split}/{s.defect_type}"].append((mean, clipped))
            pooled_y.append(s.label)
            pooled_m.append(mean)
            if split == "test":
                test_y.append(s.label)
                test_m.append(mean)

    def auroc(y: list[int], m: list[float]) -> str:
        a = image_metrics(np.asarray(m), np.asarray(y))["image_auroc"]
        return f"{max(a, 1 - a):.3f} ({'brighter' if a >= 0.5 else 'darker'} = anomalous)"

    lines = [f"### {dataset}/{category}", "",
             f"Mean grey level as an anomaly score, image AUROC: test split {auroc(test_y, test_m)}; "
             f"training and test pooled {auroc(pooled_y, pooled_m)}.", "",
             "| group | images | mean grey (min–max) | pixels clipped at x1.25, % |", "|---|---|---|---|"]
    for name in sorted(groups, key=lambda g: (not g.startswith("train"), g)):
        means = np.array([v[0] for v in groups[name]])
        clipped = np.array([v[1] for v in groups[name]])
        lines.append(f"| {name} | {len(means)} | {means.mean():.1f} ({means.min():.1f}–{means.max():.1f}) | "
                     f"{100 * clipped.mean():.1f} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mvtec", type=Path, default=Path("../shared/data/mvtec"))
    parser.add_argument("--mtd", type=Path, default=Path("../shared/data/mtd"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ns = parser.parse_args()
    lines = ["# Brightness as a label: mean grey level against the labels", "",
             "`python benchmarks/brightness_confound.py` (no model involved; exact image AUROC).", ""]
    for dataset, root, categories in (("mvtec", ns.mvtec, ("screw", "transistor")), ("mtd", ns.mtd, ("tile",))):
        for category in categories:
            if (root / category).is_dir() or (dataset == "mtd" and root.is_dir()):
                lines += category_lines(dataset, root, category)
    text = "\n".join(lines)
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "brightness-confound.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""VisA layout (Zou et al., "SPot-the-Difference Self-supervised Pre-training for Anomaly Detection and
Segmentation", ECCV 2022).

Two layouts are read, detected automatically:

* raw (the release as downloaded), recognised by ``<root>/split_csv`` or any ``<root>/<category>/Data``
  directory. The split comes from ``split_csv/1cls.csv`` (columns ``object,split,label,image,mask``; split
  train/test, label normal/anomaly, paths relative to the root, empty mask for normals); the categories are the
  ``object`` values in that file.
* prepared ``1cls`` (what VisA's ``prepare_data.py`` writes): an MVTec-like tree with ``test/bad`` and masks
  ``ground_truth/bad/<stem>.png`` without a suffix; read with :class:`MVTecLoader`'s logic.

Both give the same ids: normals have defect type ``good``, anomalies ``anomaly`` (VisA has no per-image defect
type; the 1cls folder ``bad`` is renamed). Masks hold small non-zero class values, so ``mask_threshold`` is 0
(a pixel is anomalous when its value is != 0).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from oadbench.data.base import register_dataset
from oadbench.data.folder import by_path, make_sample
from oadbench.data.mvtec import MVTecLoader
from oadbench.data.sample import GOOD, CategoryData, Sample
from oadbench.errors import ConfigError, DataError

VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
SPLIT_CSV = Path("split_csv") / "1cls.csv"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
ANOMALY = "anomaly"
_PREPARED_BAD = "bad"
_LABELS = {"normal": GOOD, "anomaly": ANOMALY}


@register_dataset
class VisALoader(MVTecLoader):
    name = "visa"
    description = "VisA (12 categories; raw release with split_csv/1cls.csv, or the prepared 1cls layout)"
    layout = """\
raw release (used when <root>/split_csv or a <root>/<category>/Data directory exists):
  <root>/split_csv/1cls.csv                    object,split,label,image,mask (paths relative to <root>)
  <root>/<category>/Data/Images/Normal/*.JPG
  <root>/<category>/Data/Images/Anomaly/*.JPG
  <root>/<category>/Data/Masks/Anomaly/<stem>.png   (non-zero pixels are defects)
or the prepared 1cls layout:
  <root>/<category>/train/good/*.JPG
  <root>/<category>/test/good/*.JPG
  <root>/<category>/test/bad/*.JPG
  <root>/<category>/ground_truth/bad/<stem>.png     (no _mask suffix)
"""
    mask_suffix = ""

    def is_raw(self, root: Path) -> bool:
        """Whether ``root`` holds the raw release rather than the prepared 1cls layout."""
        if (root / SPLIT_CSV.parent).is_dir():
            return True
        return any((p / "Data").is_dir() for p in root.iterdir() if p.is_dir())

    def categories(self, root: Path) -> list[str]:
        if not root.is_dir():
            raise self.layout_error(root, root, "dataset root")
        if self.is_raw(root):
            return sorted({row["object"] for _, row in self._read_split(root)})
        found = super().categories(root)
        if not found:
            raise self.layout_error(root, root / SPLIT_CSV, "split file")
        return found

    def load(self, root: Path, category: str, **options: Any) -> CategoryData:
        if not root.is_dir():
            raise self.layout_error(root, root, "dataset root")
        if not self.is_raw(root):
            self.check_category(root, category)
            return super().load(root, category, **options)
        rows = self._read_split(root)
        available = sorted({row["object"] for _, row in rows})
        if category not in available:
            raise ConfigError(
                "dataset.category",
                f"'{category}' is not a category of dataset '{self.name}' at {root}",
                allowed=available,
            )
        csv_path = root / SPLIT_CSV
        train: list[Sample] = []
        test: list[Sample] = []
        for line, row in rows:
            if row["object"] != category:
                continue
            split, defect = row["split"], _LABELS[row["label"]]
            image = root / row["image"]
            if not image.is_file():
                raise self.layout_error(root, image, f"image (listed in {csv_path}, line {line})")
            mask = None
            if defect == ANOMALY:
                if split == "train":
                    raise DataError(f"{csv_path}, line {line}: anomalous image {row['image']} in the train split")
                if not row["mask"]:
                    expected = root / category / "Data" / "Masks" / "Anomaly" / f"{image.stem}.png"
                    raise self.layout_error(root, expected, f"mask (none listed in {csv_path}, line {line})")
                mask = root / row["mask"]
                if not mask.is_file():
                    raise self.layout_error(root, mask, f"mask (listed in {csv_path}, line {line})")
            (train if split == "train" else test).append(
                make_sample(self.name, category, split, defect, image, mask, 0)
            )
        if not train:
            raise DataError(f"{csv_path} lists no training images for category '{category}'")
        return CategoryData(self.name, category, root, by_path(train), by_path(test))

    def _sample(self, category: str, split: str, defect: str, image: Path, mask: Path | None) -> Sample:
        """MVTec-style sample of the prepared layout, with ``bad`` renamed to ``anomaly``."""
        return super()._sample(category, split, ANOMALY if defect == _PREPARED_BAD else defect, image, mask)

    def _read_split(self, root: Path) -> list[tuple[int, dict[str, str]]]:
        """The rows of ``split_csv/1cls.csv`` with their line numbers, values stripped, split/label lowercased."""
        path = root / SPLIT_CSV
        if not path.is_file():
            raise self.layout_error(root, path, "split file")
        rows: list[tuple[int, dict[str, str]]] = []
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                header = [h.strip() for h in reader.fieldnames or []]
                if any(c not in header for c in CSV_COLUMNS):
                    raise DataError(f"{path}: expected the header {','.join(CSV_COLUMNS)}, got {','.join(header)}")
                reader.fieldnames = header
                for row in reader:
                    clean = {c: (row.get(c) or "").strip() for c in CSV_COLUMNS}
                    clean["split"], clean["label"] = clean["split"].lower(), clean["label"].lower()
                    if clean["split"] not in ("train", "test") or clean["label"] not in _LABELS:
                        raise DataError(
                            f"{path}, line {reader.line_num}: expected split train/test and label "
                            f"normal/anomaly, got '{clean['split']}', '{clean['label']}'"
                        )
                    if not clean["object"] or not clean["image"]:
                        raise DataError(f"{path}, line {reader.line_num}: empty object or image")
                    rows.append((reader.line_num, clean))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"cannot read split file {path}: {exc}") from exc
        return rows

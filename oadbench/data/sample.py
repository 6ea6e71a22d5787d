"""The Sample record: one image of a dataset, with what the runner (never a method) knows about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL import Image

NORMAL = 0
ANOMALOUS = 1
GOOD = "good"


class SampleReader(Protocol):
    """Reads a sample that is not a file on disk (e.g. a row of a Parquet/Arrow dataset), when asked to."""

    def read(self) -> tuple[Image.Image, Image.Image | None]:
        """The RGB image and its binary 'L' mask (255 = anomalous), or None for an all-normal mask."""
        ...


@dataclass(frozen=True)
class Sample:
    """One image: a file on disk, or a row of a stored dataset (see ``reader``).

    ``label`` is 0 (normal) or 1 (anomalous); ``mask_path`` is None for normal images (all-zero mask) and for
    anomalous images of datasets without pixel annotations. A mask pixel counts as anomalous when its grey value
    is greater than ``mask_threshold`` (0 for 0/255 masks and VisA's small class values, 127 for MTD's soft masks).
    ``id`` is stable across machines: ``<dataset>/<category>/<split>/<defect_type>/<file stem>``.
    ``reader`` is None for files on disk; otherwise it decodes the image and mask on demand, and ``image_path``
    and ``mask_path`` are the paths stored with the data (not files of this machine; ``mask_path`` still says
    whether an anomalous sample has a pixel annotation).
    """

    id: str
    image_path: Path
    label: int
    category: str
    defect_type: str
    split: str
    mask_path: Path | None = None
    mask_threshold: int = 0
    reader: SampleReader | None = field(default=None, compare=False, repr=False)

    @property
    def is_anomalous(self) -> bool:
        return self.label == ANOMALOUS


@dataclass
class CategoryData:
    """The train and test samples of one category of one dataset, both in a stable, sorted order."""

    dataset: str
    category: str
    root: Path
    train: list[Sample]
    test: list[Sample]

    @property
    def samples(self) -> list[Sample]:
        """Train then test samples; stream plans index into this list."""
        return self.train + self.test

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect_type for s in self.test if s.is_anomalous})

    def summary(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "train_anomalous": sum(s.is_anomalous for s in self.train),
            "test": len(self.test),
            "test_anomalous": sum(s.is_anomalous for s in self.test),
        }

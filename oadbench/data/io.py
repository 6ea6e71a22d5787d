"""Reading images and masks from disk, and resizing them to the run's input size.

Images come back as uint8 tensors (3, H, W) and masks as bool tensors (H, W); normalisation for the backbone
happens on the device, in the runner. Errors name the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oadbench.data.sample import Sample
from oadbench.errors import DataError


def read_image(path: Path) -> Image.Image:
    """Open ``path`` as an RGB PIL image (grey images are replicated to 3 channels)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def read_mask(path: Path, threshold: int, expected_size: tuple[int, int] | None = None) -> Image.Image:
    """Open a mask as a binary 'L' image (255 where grey value > threshold).

    ``expected_size`` is the (width, height) of the image the mask belongs to; a mismatch is a DataError naming
    the mask file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            grey = np.asarray(img.convert("L"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from exc
    size = (grey.shape[1], grey.shape[0])
    if expected_size is not None and size != tuple(expected_size):
        raise DataError(
            f"mask {path} is {size[0]}x{size[1]} (width x height) but its image is "
            f"{expected_size[0]}x{expected_size[1]}"
        )
    return Image.fromarray(((grey > threshold) * 255).astype(np.uint8), mode="L")


@dataclass(frozen=True)
class ImageTransform:
    """Resize to ``size`` x ``size`` (bilinear, antialiased; masks nearest), then optionally centre-crop.

    ``center_crop`` is the side of the crop in pixels (e.g. 224 after a resize to 256, as in PatchCore and LeMO);
    None keeps the whole resized image.
    """

    size: int = 256
    center_crop: int | None = None

    @property
    def output_size(self) -> int:
        return self.center_crop or self.size

    def _crop_box(self) -> tuple[int, int, int, int] | None:
        if self.center_crop is None:
            return None
        off = (self.size - self.center_crop) // 2
        return (off, off, off + self.center_crop, off + self.center_crop)

    def image(self, img: Image.Image) -> torch.Tensor:
        out = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        box = self._crop_box()
        if box is not None:
            out = out.crop(box)
        return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()

    def mask(self, mask: Image.Image) -> torch.Tensor:
        out = mask.resize((self.size, self.size), Image.Resampling.NEAREST)
        box = self._crop_box()
        if box is not None:
            out = out.crop(box)
        return torch.from_numpy(np.asarray(out) > 127)

    def load(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformed (image uint8 (3,H,W), mask bool (H,W)) of a sample; all-False mask if it has none.
        Files are read from ``image_path`` / ``mask_path``; a sample with a ``reader`` is decoded by it."""
        if sample.reader is not None:
            img, mask = sample.reader.read()
        else:
            img = read_image(sample.image_path)
            mask = None if sample.mask_path is None else read_mask(
                sample.mask_path, sample.mask_threshold, expected_size=img.size)
        if mask is None:
            n = self.output_size
            return self.image(img), torch.zeros((n, n), dtype=torch.bool)
        return self.image(img), self.mask(mask)

"""Hugging Face ``datasets`` as a data source (``dataset=hf``), and the export that writes any loader's category in
the Hub layout (``oadbench data export``). Needs the ``hf`` extra (``pip install 'oadbench[hf]'``).

``dataset.path`` is a Hub repository id (``owner/name``, at ``dataset.revision``) or a local directory: Hub-style
data files (``data/<split>-NNNNN-of-NNNNN.parquet`` or ``.arrow``, or whatever the directory's README ``configs``
declare; read with ``datasets.load_dataset``) or a ``save_to_disk`` folder (read with ``datasets.load_from_disk``).
Other builders ``datasets`` would pick (imagefolder, json, csv, webdataset: archives, FiftyOne exports) are a
DataError. Hub files go to the library's own cache (``HF_HOME``); ``HF_HUB_OFFLINE=1`` is respected, and an
unreachable, missing or gated repository is a :class:`DatasetUnavailableError` that names it and says how to work
offline (download it where there is a network, then point ``dataset.path`` at the local copy).

Layouts detected without any column option (``dataset.columns.<key>`` names a column explicitly; ``''`` says the
data has none; unset keys are detected):

* ``TheoM55/mvtec_all_objects_split`` (MVTec AD), which is also what the export writes: splits
  ``<category>.train`` / ``<category>.test``; columns ``image_path`` (Image), ``mask_path`` (Image, null for
  normal images), ``split`` (train/test), ``object`` (category), ``defect`` (``good`` or the defect name),
  ``label`` (0 normal / 1 anomalous).
* ``BrachioLab/visa`` (VisA): splits ``<category>.train`` / ``<category>.test``; columns ``image``, ``mask``
  (Image), ``label``; no defect column, so anomalous images get defect type ``anomaly`` (as the ``visa`` loader).

Candidates tried per key, in order: image ``image``, ``image_path``; mask ``mask``, ``mask_path``; label
``label``; defect ``defect``, ``defect_type``; category ``object``, ``category``; split ``split``. Image and mask
columns must hold images: a ``datasets.Image`` feature, a ``{bytes, path}`` struct (plain pyarrow Parquet), or
binary; a struct without bytes is read from its path (relative paths against a local ``dataset.path``).

Interpretations:

* Category: when every split name has the form ``<category>.<part>``, the split names give the categories (only
  that category's splits are read; the category column is not used); otherwise all splits are read and the
  category column selects the rows (without one, the data is the single category ``default``).
* Train or test: the split column when there is one (values ``train``/``test``, anything else is an error),
  else the split name (or its ``<part>``); rows of other splits (e.g. ``validation``) are not used.
* Labels: 0/1 integers (or booleans, or the strings ``0``/``1``); other strings are normal when they are
  ``good``, ``normal`` or ``ok`` (any case) and anomalous otherwise; a ``ClassLabel`` is read by its names.
  Without a label column the defect column decides (``good``/``normal``/``ok`` is normal). A label that
  contradicts the defect column is a DataError; normal images have defect type ``good``.
* Masks: only anomalous images use theirs; binarised (grey value > 0); a null mask of an anomalous image means
  it has no pixel annotation (as a missing mask file in the folder loaders), and an all-zero one stays an empty
  mask. Normal images always get an all-zero mask (Hub mirrors store null or all-zero masks for them).
* Order and ids: train and test keep the order of the rows (split by split), so an export read back gives the
  exact stream of the original loader. Ids are ``hf/<category>/<train|test>/<defect>/<stem>`` with the stem of
  the stored image path; a row without a stored path has the stem ``<split name>-<row>`` (row = position in that
  split), and if stems collide within the category, every id of the category uses that form.
  Ids start with ``hf/``: streams equal the original loader's (they depend on order, labels and defect types),
  but what a protocol seeds by image id (drift) is drawn differently.
* Lazy: reading a category reads the metadata columns and the image paths only; images and masks are decoded
  from the memory-mapped Arrow table when the runner asks for them (:class:`HFRow`).
* Config: ``dataset.path`` is an option (so the source, with ``revision`` and ``columns``, is part of a run's
  identity and two repositories never share a record); the runner passes it as ``root``
  (:attr:`DatasetLoader.root_option`), and ``dataset.root`` is an error for this loader. ``dataset.category=all``
  sweeps over the categories of ``dataset.path``.

Export (:func:`export_category`): one Parquet file per part, ``<out>/data/<category>.<train|test>-00000-of-00001
.parquet``, in the first layout above, rows in the loader's order, the image files' bytes embedded unchanged with
their path relative to the dataset root as the stored path. Masks are embedded unchanged when the loader reads
them with threshold 0; otherwise (MTD's soft masks, threshold 127) as the loader's binarised mask, a 0/255 PNG
under the original mask's path, so that "> 0" reads back the same mask. Every image and mask is decoded once on
the way (an unreadable file fails the export, naming it). Both files are written to hidden temporary files and
renamed only when both are complete, so a failed export leaves nothing behind (nor changes an earlier export);
exporting more categories into the same directory adds them to one dataset.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from oadbench.data.base import DatasetLoader, register_dataset
from oadbench.data.hf_export import export_category, export_dataset, export_features
from oadbench.data.hf_schema import (
    CANDIDATES,
    COLUMN_KEYS,
    NORMAL_WORDS,
    PARTS,
    by_split_name,
    column_values,
    detect_columns,
    parse_label,
    row_metadata,
    row_part,
    split_parts,
)
from oadbench.data.hf_source import BUILDERS, Source
from oadbench.data.sample import ANOMALOUS, GOOD, NORMAL, CategoryData, Sample
from oadbench.errors import ConfigError, DataError

__all__ = [
    "ANOMALY", "BUILDERS", "CANDIDATES", "COLUMN_KEYS", "DEFAULT_CATEGORY", "NAME", "NORMAL_WORDS", "PARTS",
    "HFLoader", "HFRow", "export_category", "export_dataset", "export_features",
]

NAME = "hf"
DEFAULT_CATEGORY = "default"
ANOMALY = "anomaly"  # defect type of anomalous rows without a defect column (as the visa loader)


# --------------------------------------------------------------------------------------------------------------
# lazy rows


@dataclass(frozen=True)
class _Rows:
    """The image (and mask) column of one split, arrow-formatted: a row is read from the memory map when asked."""

    table: Any  # datasets.Dataset with only the image and mask columns, format "arrow"
    image: str
    mask: str | None
    source: str  # dataset.path, for errors
    split: str
    base: Path | None  # local dataset directory, for images stored by relative path


@dataclass(frozen=True)
class HFRow:
    """The :class:`~oadbench.data.sample.SampleReader` of one row: decodes its image and, for an annotated
    anomalous image, its mask (binarised, > 0; a size that differs from the image's is a DataError)."""

    rows: _Rows
    row: int
    with_mask: bool

    def read(self) -> tuple[Image.Image, Image.Image | None]:
        rows = self.rows
        record = rows.table[self.row]
        where = f"dataset 'hf' at {rows.source}, split '{rows.split}', row {self.row}"
        img = _decode(record.column(rows.image)[0].as_py(), "RGB", "image", where, rows.base)
        if img is None:
            raise DataError(f"{where}: the image is null")
        if not self.with_mask or rows.mask is None:
            return img, None
        mask = _decode(record.column(rows.mask)[0].as_py(), "L", "mask", where, rows.base)
        if mask is None:
            return img, None
        if mask.size != img.size:
            raise DataError(f"{where}: the mask is {mask.size[0]}x{mask.size[1]} (width x height) but its image is "
                            f"{img.size[0]}x{img.size[1]}")
        return img, Image.fromarray(((np.asarray(mask) > 0) * 255).astype(np.uint8))


def _decode(value: Any, mode: str, what: str, where: str, base: Path | None) -> Image.Image | None:
    """The image of a stored value ({bytes, path} struct, bytes or a path) converted to ``mode`` exactly as
    :func:`~oadbench.data.io.read_image` / ``read_mask`` convert files; None if the value is null."""
    if value is None:
        return None
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (
        (value, None) if isinstance(value, (bytes, bytearray)) else (None, value))
    if data is None and not path:
        return None
    source: Any = io.BytesIO(data) if data is not None else Path(path)
    if data is None and base is not None and not source.is_absolute():
        source = base / source
    try:
        with Image.open(source) as img:
            img.load()
            return img.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: cannot decode the {what}{f' ({path})' if path else ''}: {exc}") from exc


# --------------------------------------------------------------------------------------------------------------
# the loader


@register_dataset
class HFLoader(DatasetLoader):
    name = NAME
    description = "Hugging Face datasets (dataset.path: a Hub repo id, or a local Parquet/Arrow/save_to_disk folder)"
    layout = """\
dataset.path=<owner>/<name>     a Hub repository (dataset.revision: branch, tag or commit)
dataset.path=<dir>              a local copy: <dir>/data/<split>-00000-of-00001.parquet (or .arrow), or a
                                datasets save_to_disk folder
splits <category>.train / <category>.test (else plain train/test splits with a category column)
columns detected: image|image_path (Image), mask|mask_path (Image, null for normals), label (0/1 or good/...),
defect, object|category, split; else dataset.columns.<image|mask|label|defect|category|split>=<column>
"""
    options = {"path": None, "revision": None, "columns": {k: None for k in COLUMN_KEYS}}
    root_option = "path"

    def categories(self, root: Path, **options: Any) -> list[str]:
        """The categories of the source at ``root`` (the value of ``dataset.path``)."""
        source, columns = self._open(root, options)
        names = source.split_names()
        if by_split_name(names):
            return sorted({split_parts(n)[0] for n in names})
        found: set[str] = set()
        for split, dset in source.load(names).items():
            col = detect_columns(dset.features, columns, f"{source.path} split '{split}'")["category"]
            if col is None:
                return [DEFAULT_CATEGORY]
            found.update(str(v) for v in column_values(dset, col) if v is not None)
        return sorted(found)

    def load(self, root: Path, category: str, **options: Any) -> CategoryData:
        source, columns = self._open(root, options)
        names = source.split_names()
        if not names:
            raise DataError(f"dataset 'hf' at {source.path}: no splits found; expected:\n{self.layout.rstrip()}")
        by_name = by_split_name(names)
        wanted = [n for n in names if split_parts(n)[0] == category] if by_name else names
        if not wanted:
            raise ConfigError("dataset.category", f"'{category}' is not a category of dataset 'hf' at {source.path}",
                              allowed=sorted({split_parts(n)[0] for n in names}))
        train: list[Sample] = []
        test: list[Sample] = []
        seen_categories: set[str] = set()
        cols: dict[str, str | None] = {}
        for split, dset in source.load(wanted).items():
            where = f"dataset 'hf' at {source.path}, split '{split}'"
            cols = detect_columns(dset.features, columns, f"{source.path} split '{split}'")
            default_part = split_parts(split)[1] if by_name else split
            image_col = str(cols["image"])
            rows = _Rows(dset.select_columns([c for c in (image_col, cols["mask"]) if c]).with_format("arrow"),
                         image_col, cols["mask"], source.path, split, source.local)
            for r, meta in enumerate(row_metadata(dset, cols)):
                if not by_name and cols["category"] is not None:
                    seen_categories.add(str(meta["category"]))
                    if str(meta["category"]) != category:
                        continue
                part = row_part(meta.get("split"), default_part, cols["split"], f"{where}, row {r}")
                if part is None:
                    continue
                sample = _sample(category, part, split, r, meta, rows, f"{where}, row {r}")
                (train if part == "train" else test).append(sample)
        if not by_name and cols["category"] is None and category != DEFAULT_CATEGORY:
            raise ConfigError("dataset.category", f"'{category}' is not a category of dataset 'hf' at {source.path} "
                              "(it has no category column)", allowed=[DEFAULT_CATEGORY])
        if not by_name and cols["category"] is not None and category not in seen_categories:
            raise ConfigError("dataset.category", f"'{category}' is not a category of dataset 'hf' at {source.path}",
                              allowed=sorted(seen_categories))
        if not train:
            raise DataError(f"dataset 'hf' at {source.path}: category '{category}' has no training images (splits "
                            f"read: {', '.join(wanted)}; train/test come from the split column or the split names, "
                            f"{' or '.join(PARTS)}); expected:\n{self.layout.rstrip()}")
        if len({s.id for s in train + test}) < len(train) + len(test):
            train, test = _row_ids(train), _row_ids(test)
        return CategoryData(self.name, category, Path(source.path), train, test)

    def _open(self, root: Path, options: Mapping[str, Any]) -> tuple[Source, dict[str, Any]]:
        revision = options.get("revision")
        if revision is not None and not isinstance(revision, str):
            revision = str(revision)
        columns = options.get("columns") or {}
        if not isinstance(columns, Mapping):
            raise ConfigError("dataset.columns", f"expected a mapping of {', '.join(COLUMN_KEYS)} to column names, "
                              f"got {columns!r}")
        unknown = [k for k in columns if k not in COLUMN_KEYS]
        if unknown:
            raise ConfigError(f"dataset.columns.{unknown[0]}", "unknown key", allowed=COLUMN_KEYS)
        return Source(str(root), revision, self.layout), dict(columns)

def _sample(category: str, part: str, split: str, row: int, meta: Mapping[str, Any], rows: _Rows,
            where: str) -> Sample:
    defect_value = meta.get("defect")
    defect = str(defect_value).strip() if defect_value is not None and str(defect_value).strip() else None
    defect_normal = defect is not None and defect.lower() in NORMAL_WORDS
    if "label" in meta:
        label = parse_label(meta["label"], where)
        if defect is not None and defect_normal != (label == NORMAL):
            raise DataError(f"{where}: label {meta['label']!r} contradicts defect {defect_value!r}")
    elif defect is None:
        raise DataError(f"{where}: null defect and no label column")
    else:
        label = NORMAL if defect_normal else ANOMALOUS
    defect_type = GOOD if label == NORMAL else (defect or ANOMALY)
    stored = meta.get("image_path")
    stem = PurePosixPath(str(stored).replace("\\", "/")).stem if stored else f"{split}-{row:06d}"
    fallback = Path(f"{split}-{row:06d}")
    image_path = Path(stored) if stored else fallback
    mask_path = None
    if label == ANOMALOUS and meta.get("has_mask"):
        mask_path = Path(meta["mask_path"]) if meta.get("mask_path") else Path(f"{fallback}-mask")
    return Sample(
        id=f"{NAME}/{category}/{part}/{defect_type}/{stem}",
        image_path=image_path,
        label=label,
        category=category,
        defect_type=defect_type,
        split=part,
        mask_path=mask_path,
        mask_threshold=0,
        reader=HFRow(rows, row, mask_path is not None),
    )


def _row_ids(samples: list[Sample]) -> list[Sample]:
    """The samples with ids ``.../<split name>-<row>`` (for when stored stems are missing or not unique)."""
    out = []
    for s in samples:
        reader = s.reader
        assert isinstance(reader, HFRow)
        out.append(dataclasses.replace(
            s, id=f"{NAME}/{s.category}/{s.split}/{s.defect_type}/{reader.rows.split}-{reader.row:06d}"))
    return out

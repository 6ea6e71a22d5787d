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
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from oadbench.data.base import DatasetLoader, get_dataset, register_dataset
from oadbench.data.io import read_image, read_mask
from oadbench.data.sample import ANOMALOUS, GOOD, NORMAL, CategoryData, Sample
from oadbench.errors import ConfigError, DataError, DatasetUnavailableError

NAME = "hf"
COLUMN_KEYS = ("image", "mask", "label", "defect", "category", "split")
CANDIDATES: dict[str, tuple[str, ...]] = {
    "image": ("image", "image_path"),
    "mask": ("mask", "mask_path"),
    "label": ("label",),
    "defect": ("defect", "defect_type"),
    "category": ("object", "category"),
    "split": ("split",),
}
NORMAL_WORDS = ("good", "normal", "ok")
PARTS = ("train", "test")
DEFAULT_CATEGORY = "default"
ANOMALY = "anomaly"  # defect type of anomalous rows without a defect column (as the visa loader)
BUILDERS = ("parquet", "arrow")  # the datasets builders whose files hold an AD dataset
_SPLIT_NAME = re.compile(r"^(?P<category>.+)\.(?P<part>[^.]+)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_SPLIT = re.compile(r"^\w+$")  # what datasets accepts in a data/<split>-... file name (dots separate parts)
_META_BATCH = 256


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError("dataset", "dataset 'hf' and `oadbench data export` need the Hugging Face datasets "
                          "library: pip install 'oadbench[hf]'") from None
    return datasets


# --------------------------------------------------------------------------------------------------------------
# opening a source


class _Source:
    """A Hub repository or local directory, opened far enough to know its split names."""

    def __init__(self, path: str, revision: str | None):
        self.path = path
        self.revision = revision
        local = Path(path).expanduser()
        self.local: Path | None = local if local.is_dir() else None
        self._saved: dict[str, Any] | None = None
        self._builder: Any = None
        ds = _datasets()
        if self.local is not None:
            if revision is not None:
                raise ConfigError("dataset.revision", f"applies to Hub repositories; {path} is a local directory")
            if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
                loaded = self._call(ds.load_from_disk, str(local))
                if isinstance(loaded, ds.Dataset):
                    self._saved = {str(loaded.split) if loaded.split is not None else "train": loaded}
                else:
                    self._saved = dict(loaded)
                return
        elif not _HUB_ID.match(path):
            raise DataError(f"dataset 'hf': dataset.path {path!r} is neither a directory nor a Hub repository id "
                            f"(owner/name); expected:\n{HFLoader.layout.rstrip()}")
        self._builder = self._call(ds.load_dataset_builder, path, revision=revision)
        if self._builder.name not in BUILDERS:
            raise DataError(f"dataset 'hf' at {path}: datasets reads it with its '{self._builder.name}' builder, not "
                            f"as Parquet or Arrow files, so it is not a dataset of images with labels (archives and "
                            f"FiftyOne exports are not supported); expected:\n{HFLoader.layout.rstrip()}")

    def split_names(self) -> list[str]:
        if self._saved is not None:
            return list(self._saved)
        files = self._builder.config.data_files
        if files:
            return list(files)
        return list(self._builder.info.splits or {})

    def load(self, names: Sequence[str]) -> dict[str, Any]:
        """The Datasets of the splits ``names`` (memory-mapped; only those splits' files are downloaded)."""
        if self._saved is not None:
            return {n: self._saved[n] for n in names}
        ds = _datasets()
        files = self._builder.config.data_files
        if files:
            loaded = self._call(ds.load_dataset, self.path, revision=self.revision,
                                data_files={n: list(files[n]) for n in names})
        else:
            loaded = self._call(ds.load_dataset, self.path, revision=self.revision)
        return {n: loaded[n] for n in names}

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with the library's errors turned into ours, naming the source."""
        from datasets.exceptions import DatasetNotFoundError

        try:
            return fn(*args, **kwargs)
        except ConnectionError as exc:
            raise DatasetUnavailableError(self._unreachable(str(exc))) from None
        except DatasetNotFoundError as exc:
            raise DatasetUnavailableError(
                f"dataset.path: {exc} Check dataset.path={self.path!r}"
                f"{f' and dataset.revision={self.revision!r}' if self.revision else ''}; a gated repository "
                "needs you to accept its terms on the Hub and a token (`hf auth login` or HF_TOKEN). "
                f"{self._offline_hint()}") from None
        except (OSError, ValueError) as exc:  # missing or unreadable files (pyarrow's errors are among these)
            raise DataError(f"dataset 'hf' at {self.path}: datasets cannot read it ({type(exc).__name__}: {exc}); "
                            f"expected:\n{HFLoader.layout.rstrip()}") from None

    def _unreachable(self, detail: str) -> str:
        from datasets import config

        offline = " (offline mode: HF_HUB_OFFLINE is set)" if config.HF_HUB_OFFLINE else ""
        return (f"dataset.path: cannot reach the Hub repository '{self.path}'{offline}; no local directory of that "
                f"name exists and it is not in the datasets cache ({detail}). {self._offline_hint()}")

    def _offline_hint(self) -> str:
        return (f"To work offline, download it where there is a network (`hf download {self.path} --repo-type "
                "dataset --local-dir DIR`, or only one category with `--include 'data/<category>.*'`) and set "
                "dataset.path=DIR.")


def _columns(features: Any, given: Mapping[str, Any], where: str) -> dict[str, str | None]:
    """The column of each key: given explicitly, else the first candidate present that fits."""
    names = list(features)
    out: dict[str, str | None] = {}
    for key in COLUMN_KEYS:
        value = given.get(key)
        if value == "":
            out[key] = None
        elif value is not None:
            if not isinstance(value, str) or value not in names:
                raise ConfigError(f"dataset.columns.{key}", f"{value!r} is not a column of {where}; columns found: "
                                  f"{_describe(features)}")
            if key in ("image", "mask") and not _holds_images(features[value]):
                raise ConfigError(f"dataset.columns.{key}", f"column {value!r} of {where} holds "
                                  f"{_feature_name(features[value])}, not images")
            out[key] = value
        else:
            out[key] = next((c for c in CANDIDATES[key] if c in names
                             and (key not in ("image", "mask") or _holds_images(features[c]))), None)
    if out["image"] is None:
        raise ConfigError("dataset.columns.image", f"no image column found in {where} (tried "
                          f"{', '.join(CANDIDATES['image'])}); columns found: {_describe(features)}; name it with "
                          "dataset.columns.image=<column>")
    if out["label"] is None and out["defect"] is None:
        raise ConfigError("dataset.columns.label", f"no label or defect column found in {where} (tried "
                          f"{', '.join(CANDIDATES['label'] + CANDIDATES['defect'])}); columns found: "
                          f"{_describe(features)}; name one with dataset.columns.label=<column>")
    return out


def _holds_images(feature: Any) -> bool:
    from datasets import Image as HFImage
    from datasets import Value

    if isinstance(feature, HFImage):
        return True
    if isinstance(feature, dict):
        return "bytes" in feature
    return isinstance(feature, Value) and feature.dtype in ("binary", "large_binary")


def _feature_name(feature: Any) -> str:
    from datasets import Value

    if isinstance(feature, Value):
        return feature.dtype
    return type(feature).__name__ if not isinstance(feature, dict) else "struct{" + ", ".join(feature) + "}"


def _describe(features: Any) -> str:
    return ", ".join(f"{n} ({_feature_name(f)})" for n, f in features.items())


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
        if _by_split_name(names):
            return sorted({_split_parts(n)[0] for n in names})
        found: set[str] = set()
        for split, dset in source.load(names).items():
            col = _columns(dset.features, columns, f"{source.path} split '{split}'")["category"]
            if col is None:
                return [DEFAULT_CATEGORY]
            found.update(str(v) for v in _values(dset, col) if v is not None)
        return sorted(found)

    def load(self, root: Path, category: str, **options: Any) -> CategoryData:
        source, columns = self._open(root, options)
        names = source.split_names()
        if not names:
            raise DataError(f"dataset 'hf' at {source.path}: no splits found; expected:\n{self.layout.rstrip()}")
        by_name = _by_split_name(names)
        wanted = [n for n in names if _split_parts(n)[0] == category] if by_name else names
        if not wanted:
            raise ConfigError("dataset.category", f"'{category}' is not a category of dataset 'hf' at {source.path}",
                              allowed=sorted({_split_parts(n)[0] for n in names}))
        train: list[Sample] = []
        test: list[Sample] = []
        seen_categories: set[str] = set()
        cols: dict[str, str | None] = {}
        for split, dset in source.load(wanted).items():
            where = f"dataset 'hf' at {source.path}, split '{split}'"
            cols = _columns(dset.features, columns, f"{source.path} split '{split}'")
            default_part = _split_parts(split)[1] if by_name else split
            image_col = str(cols["image"])
            rows = _Rows(dset.select_columns([c for c in (image_col, cols["mask"]) if c]).with_format("arrow"),
                         image_col, cols["mask"], source.path, split, source.local)
            for r, meta in enumerate(_metadata(dset, cols)):
                if not by_name and cols["category"] is not None:
                    seen_categories.add(str(meta["category"]))
                    if str(meta["category"]) != category:
                        continue
                part = _part(meta.get("split"), default_part, cols["split"], f"{where}, row {r}")
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

    def _open(self, root: Path, options: Mapping[str, Any]) -> tuple[_Source, dict[str, Any]]:
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
        return _Source(str(root), revision), dict(columns)


def _by_split_name(names: Sequence[str]) -> bool:
    """Whether the split names carry the category: every one is ``<category>.<part>``."""
    return bool(names) and all(_SPLIT_NAME.match(n) for n in names)


def _split_parts(name: str) -> tuple[str, str]:
    """(category, part) of a split name ``<category>.<part>``; (name, name) for another name."""
    m = _SPLIT_NAME.match(name)
    return (m.group("category"), m.group("part")) if m else (name, name)


def _values(dset: Any, column: str) -> list[Any]:
    """A column's values as Python objects (ClassLabel integers as their names); never image columns."""
    from datasets import ClassLabel

    values = dset.select_columns([column]).with_format("arrow")[:].column(column).to_pylist()
    feature = dset.features[column]
    if isinstance(feature, ClassLabel):
        values = [None if v is None else feature.int2str(v) for v in values]
    return values


def _metadata(dset: Any, cols: Mapping[str, str | None]) -> Iterator[dict[str, Any]]:
    """Per row: label, defect, category, split (those with a column) and the stored image / mask paths, read in
    batches without touching the image bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    meta = {key: _values(dset, col) for key in ("label", "defect", "category", "split") if (col := cols[key])}
    image_cols = [c for c in (cols["image"], cols["mask"]) if c]
    r = 0
    for batch in dset.select_columns(image_cols).with_format("arrow").iter(batch_size=_META_BATCH):
        paths = {}
        present = {}
        for key in ("image", "mask"):
            col = cols[key]
            if col is None:
                continue
            array = batch.column(col)
            if pa.types.is_struct(array.type):
                fields = {array.type.field(i).name for i in range(array.type.num_fields)}
                p = pc.struct_field(array, "path").to_pylist() if "path" in fields else [None] * len(array)
                b = pc.invert(pc.is_null(pc.struct_field(array, "bytes"))).to_pylist()
                paths[key] = p
                present[key] = [bool(x) or bool(y) for x, y in zip(b, p, strict=True)]
            elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
                paths[key] = array.to_pylist()
                present[key] = [bool(x) for x in paths[key]]
            else:
                paths[key] = [None] * len(array)
                present[key] = pc.invert(pc.is_null(array)).to_pylist()
        for j in range(batch.num_rows):
            row = {key: values[r] for key, values in meta.items()}
            row["image_path"] = paths["image"][j]
            row["mask_path"] = paths.get("mask", [None] * batch.num_rows)[j]
            row["has_mask"] = present.get("mask", [False] * batch.num_rows)[j]
            yield row
            r += 1


def _part(value: Any, default: str, column: str | None, where: str) -> str | None:
    """train/test of a row: its split column's value, else the split name's part; None for other splits."""
    if column is None:
        return default if default in PARTS else None
    text = str(value).strip().lower() if value is not None else None
    if text not in PARTS:
        raise DataError(f"{where}: split column {column!r} holds {value!r}; expected {' or '.join(PARTS)}")
    return text


def _label(value: Any, where: str) -> int:
    """0/1 from a label value (see the module doc); anything else is a DataError."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("0", "1"):
            return int(text)
        return NORMAL if text in NORMAL_WORDS else ANOMALOUS
    raise DataError(f"{where}: label {value!r}; expected 0/1, a boolean, or a string (good/normal/ok for normal "
                    "images, anything else for anomalous ones)")


def _sample(category: str, part: str, split: str, row: int, meta: Mapping[str, Any], rows: _Rows,
            where: str) -> Sample:
    defect_value = meta.get("defect")
    defect = str(defect_value).strip() if defect_value is not None and str(defect_value).strip() else None
    defect_normal = defect is not None and defect.lower() in NORMAL_WORDS
    if "label" in meta:
        label = _label(meta["label"], where)
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


# --------------------------------------------------------------------------------------------------------------
# export


def export_features() -> Any:
    """The ``datasets.Features`` of an export (the ``TheoM55/mvtec_all_objects_split`` schema)."""
    ds = _datasets()
    return ds.Features({
        "image_path": ds.Image(), "split": ds.Value("string"), "object": ds.Value("string"),
        "defect": ds.Value("string"), "label": ds.Value("int64"), "mask_path": ds.Image(),
    })


def export_dataset(dataset: Mapping[str, Any], out: Path) -> list[Path]:
    """Load one category as the runner does from a resolved ``dataset`` config node (name, root, category,
    options) and :func:`export_category` it into ``out``."""
    loader = get_dataset(str(dataset.get("name")))
    if loader.root_option is not None:
        raise ConfigError("dataset", f"dataset '{loader.name}' is already Parquet/Arrow data; export reads the image "
                          "files of a folder-based dataset", allowed=[n for n in _folder_datasets()])
    options = {k: v for k, v in dataset.items() if k not in ("name", "root", "category")}
    root = dataset.get("root")
    if root is None:
        root = loader.default_root()
        if root is None:
            raise ConfigError("dataset.root", f"is required for dataset '{loader.name}'; expected layout:\n"
                              f"{loader.layout.rstrip()}")
    root = Path(str(root)).expanduser()
    category = dataset.get("category")
    if category is None:
        available = loader.categories(root)
        if len(available) != 1:
            raise ConfigError("dataset.category", "which category to export", allowed=available)
        category = available[0]
    return export_category(loader.load(root, str(category), **options), out)


def _folder_datasets() -> list[str]:
    from oadbench.data.base import dataset_names

    return [n for n in dataset_names() if get_dataset(n).root_option is None]


def export_category(data: CategoryData, out: Path) -> list[Path]:
    """Write ``data`` as ``<out>/data/<category>.<train|test>-00000-of-00001.parquet`` (see the module doc);
    the paths written, train first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not _HUB_SPLIT.match(data.category):
        raise ConfigError("dataset.category", f"{data.category!r} cannot name a Hub split (letters, digits and _ "
                          "only)")
    if any(s.reader is not None for s in data.samples):
        raise ConfigError("dataset", f"dataset '{data.dataset}' has no image files to export")
    schema = export_features().arrow_schema
    target_dir = Path(out).expanduser() / "data"
    target_dir.mkdir(parents=True, exist_ok=True)
    parts = (("train", data.train), ("test", data.test))
    targets = [target_dir / f"{data.category}.{part}-00000-of-00001.parquet" for part, _ in parts]
    temps = [t.with_name(f".{t.name}.{os.getpid()}.tmp") for t in targets]  # hidden: datasets never reads them
    try:
        for (_, samples), tmp in zip(parts, temps, strict=True):
            with pq.ParquetWriter(tmp, schema) as writer:
                for start in range(0, len(samples), 32):  # 32 rows in memory at a time
                    rows = [_export_row(data, s) for s in samples[start:start + 32]]
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        for tmp, target in zip(temps, targets, strict=True):  # both parts written: only now replace any old ones
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return targets


def _export_row(data: CategoryData, s: Sample) -> dict[str, Any]:
    img = read_image(s.image_path)  # an unreadable image fails here, naming the file
    mask = None
    if s.is_anomalous and s.mask_path is not None:
        if s.mask_threshold == 0:
            read_mask(s.mask_path, 0, expected_size=img.size)
            mask_bytes = s.mask_path.read_bytes()
        else:
            buf = io.BytesIO()
            read_mask(s.mask_path, s.mask_threshold, expected_size=img.size).save(buf, format="PNG")
            mask_bytes = buf.getvalue()
        mask = {"bytes": mask_bytes, "path": _relative(s.mask_path, data.root)}
    return {
        "image_path": {"bytes": s.image_path.read_bytes(), "path": _relative(s.image_path, data.root)},
        "split": s.split,
        "object": data.category,
        "defect": s.defect_type,
        "label": int(s.label),
        "mask_path": mask,
    }


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name

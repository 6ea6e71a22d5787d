"""The columns of a Hugging Face dataset for ``dataset=hf``: which column holds what (detected or given), how
split names carry categories, and how the metadata of each row (label, defect, category, train/test, stored image
and mask paths) is read and interpreted, without decoding images."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from oadbench.data.sample import ANOMALOUS, NORMAL
from oadbench.errors import ConfigError, DataError

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
_SPLIT_NAME = re.compile(r"^(?P<category>.+)\.(?P<part>[^.]+)$")
_META_BATCH = 256


def detect_columns(features: Any, given: Mapping[str, Any], where: str) -> dict[str, str | None]:
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

def by_split_name(names: Sequence[str]) -> bool:
    """Whether the split names carry the category: every one is ``<category>.<part>``."""
    return bool(names) and all(_SPLIT_NAME.match(n) for n in names)


def split_parts(name: str) -> tuple[str, str]:
    """(category, part) of a split name ``<category>.<part>``; (name, name) for another name."""
    m = _SPLIT_NAME.match(name)
    return (m.group("category"), m.group("part")) if m else (name, name)


def column_values(dset: Any, column: str) -> list[Any]:
    """A column's values as Python objects (ClassLabel integers as their names); never image columns."""
    from datasets import ClassLabel

    values = dset.select_columns([column]).with_format("arrow")[:].column(column).to_pylist()
    feature = dset.features[column]
    if isinstance(feature, ClassLabel):
        values = [None if v is None else feature.int2str(v) for v in values]
    return values


def row_metadata(dset: Any, cols: Mapping[str, str | None]) -> Iterator[dict[str, Any]]:
    """Per row: label, defect, category, split (those with a column) and the stored image / mask paths, read in
    batches without touching the image bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    meta = {key: column_values(dset, col) for key in ("label", "defect", "category", "split") if (col := cols[key])}
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


def row_part(value: Any, default: str, column: str | None, where: str) -> str | None:
    """train/test of a row: its split column's value, else the split name's part; None for other splits."""
    if column is None:
        return default if default in PARTS else None
    text = str(value).strip().lower() if value is not None else None
    if text not in PARTS:
        raise DataError(f"{where}: split column {column!r} holds {value!r}; expected {' or '.join(PARTS)}")
    return text


def parse_label(value: Any, where: str) -> int:
    """0/1 from a label value (see :mod:`oadbench.data.hf`); anything else is a DataError."""
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

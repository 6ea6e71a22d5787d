"""Export of any folder-based loader's category as a Hugging Face dataset (``oadbench data export``): Parquet files
in the Hub layout and the ``TheoM55/mvtec_all_objects_split`` schema, written atomically."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oadbench.data.base import get_dataset
from oadbench.data.hf_source import require_datasets
from oadbench.data.io import read_image, read_mask
from oadbench.data.sample import CategoryData, Sample
from oadbench.errors import ConfigError

_HUB_SPLIT = re.compile(r"^\w+$")  # what datasets accepts in a data/<split>-... file name (dots separate parts)


def export_features() -> Any:
    """The ``datasets.Features`` of an export (the ``TheoM55/mvtec_all_objects_split`` schema)."""
    ds = require_datasets()
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
    root = loader.resolve_root(dataset.get("root"))
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
    """Write ``data`` as ``<out>/data/<category>.<train|test>-00000-of-00001.parquet`` (see :mod:`oadbench.data.hf`);
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

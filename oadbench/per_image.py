"""Per-image results: the sidecar ``<record>.images.csv`` beside a run record, named in it with its digest.

What a paired test, a confidence interval over test images or an operating point needs and a record's aggregate
metrics cannot give. Two kinds, by evaluation mode:

- ``holdout``: the final checkpoint's evaluation split(s), one row per test image in split order: ``category``,
  ``id``, ``label``, ``defect_type``, ``score`` (the image score) and ``aupimo`` (the image's AUPIMO,
  :func:`oadbench.metrics.aupimo`, against the normal images of its category's split; empty for normal images,
  anomalous ones without a mask, and splits whose normal pixels are too few to resolve an FPR of 1e-5);
- ``prequential``: every scored stream image in stream order: ``position`` (0-based), ``category``, ``id``,
  ``label``, ``defect_type``, ``score`` and, with drift, one ``drift_<i>_<kind>`` column per drift component (the
  magnitude the image was scored in); with protected learning (``decisions.protect``) a ``withheld`` column, 1
  where the runner's policy rejected the image and the method never observed it.

Plain CSV (UTF-8, ``\\n``, the ``csv`` module's quoting), written atomically; float32 scores in their shortest
round-trip text, so the file, and the SHA-256 the record keeps (``per_image: {file, sha256, kind, rows}``), are
the same for the same run. A record without a sidecar (written before it existed, or a run that never evaluated)
stays valid: its statistics are empty. :func:`read_per_image` refuses a sidecar that is missing, unreadable or
whose digest is not the record's, naming the file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oadbench.errors import DataError
from oadbench.results import atomic_write

SUFFIX = ".images.csv"
HOLDOUT, PREQUENTIAL = "holdout", "prequential"
COLUMNS = {
    HOLDOUT: ("category", "id", "label", "defect_type", "score", "aupimo"),
    PREQUENTIAL: ("position", "category", "id", "label", "defect_type", "score"),
}
DRIFT_PREFIX = "drift_"
WITHHELD = "withheld"  # prequential, protected learning only


@dataclass
class PerImage:
    """Per-image results of one run: ``kind`` (holdout or prequential) and its columns, each an array of one
    row per image (text columns as ``str`` arrays, ``label`` int, ``score``, ``aupimo`` and drift columns float64
    with NaN for empty cells, ``position`` int)."""

    kind: str
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns["id"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]


def _text(value: Any) -> str:
    if isinstance(value, (np.floating, float)):
        if math.isnan(float(value)):
            return ""
        return str(value) if isinstance(value, np.float32) else repr(float(value))
    return str(value)


def to_csv(table: PerImage) -> str:
    """The sidecar's text: the kind's columns, then drift columns in the order given."""
    names = list(COLUMNS[table.kind]) + [WITHHELD] * (WITHHELD in table.columns) + \
        [c for c in table.columns if c.startswith(DRIFT_PREFIX)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for row in zip(*(table.columns[c] for c in names), strict=True):
        writer.writerow([_text(v) for v in row])
    return buf.getvalue()


def save_per_image(record_path: Path, table: PerImage | None) -> dict[str, Any] | None:
    """Write ``<record stem>.images.csv`` beside ``record_path``; returns the record's ``per_image`` entry
    (file name, SHA-256, kind, rows), or None without results."""
    if table is None or not len(table):
        return None
    data = to_csv(table).encode()
    path = record_path.with_name(record_path.stem + SUFFIX)
    atomic_write(path, lambda f: f.write(data))
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "kind": table.kind, "rows": len(table)}


def _sidecar(record_path: Path, record: Mapping[str, Any]) -> tuple[Path | None, bytes | None, str | None]:
    """(path, bytes, None) of the sound sidecar ``record`` names, (None, None, None) where it names none, else
    (None, None, what is wrong: an entry not of the record's form, a file missing, unreadable or not matching the
    record's digest)."""
    entry = record.get("per_image")
    if not entry:
        return None, None, None
    if not isinstance(entry, Mapping) or not {"file", "sha256", "kind"} <= set(entry) or \
            entry["kind"] not in COLUMNS:
        return None, None, f"its per_image entry {entry!r} is not {{file, sha256, kind: holdout|prequential, rows}}"
    path = Path(record_path).with_name(str(entry["file"]))
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, None, f"its per-image file {path} cannot be read ({exc.strerror or exc})"
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return None, None, (f"its per-image file {path} does not match the digest the record keeps (changed or "
                            "from another run)")
    return path, data, None


def check_per_image(record_path: Path, record: Mapping[str, Any]) -> str | None:
    """What is wrong with the sidecar ``record`` names (missing, unreadable, digest or entry not the record's), or
    None when it is sound or the record names none."""
    return _sidecar(record_path, record)[2]


def read_per_image(record_path: Path, record: Mapping[str, Any]) -> PerImage | None:
    """The per-image results ``record`` (at ``record_path``) names, or None where it names none; a DataError
    naming the file when the sidecar is missing, unreadable or not the record's."""
    path, data, problem = _sidecar(record_path, record)
    if problem is not None:
        raise DataError(f"{record_path}: {problem}")
    if path is None or data is None:
        return None
    kind = str(record["per_image"]["kind"])
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    header, body = rows[0], rows[1:]
    missing = [c for c in COLUMNS[kind] if c not in header]
    if missing:
        raise DataError(f"{path}: per-image file without the column(s) {', '.join(missing)}")
    raw = {name: [r[j] for r in body] for j, name in enumerate(header)}
    cols: dict[str, np.ndarray] = {}
    for name, values in raw.items():
        if name in ("label", "position", WITHHELD):
            cols[name] = np.array([int(v) for v in values], dtype=np.int64)
        elif name in ("score", "aupimo") or name.startswith(DRIFT_PREFIX):
            cols[name] = np.array([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
        else:
            cols[name] = np.array(values, dtype=str)
    return PerImage(kind, cols)


def holdout_table(splits: Sequence[tuple[str, Sequence[Any], np.ndarray, np.ndarray]]) -> PerImage:
    """Rows of holdout splits: (category, samples, image scores (N,), AUPIMO (N,), NaN where undefined)."""
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS[HOLDOUT]}
    for category, samples, scores, aupimo in splits:
        for s, score, a in zip(samples, scores, aupimo, strict=True):
            cols["category"].append(category)
            cols["id"].append(s.id)
            cols["label"].append(int(s.label))
            cols["defect_type"].append(s.defect_type)
            cols["score"].append(np.float32(score))
            cols["aupimo"].append(float(a))
    return PerImage(HOLDOUT, {k: np.array(v, dtype=np.float32 if k == "score" else None) for k, v in cols.items()})


class StreamRows:
    """Per-image results of a prequential stream, appended batch by batch in stream order."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {c: [] for c in COLUMNS[PREQUENTIAL]}

    def add(self, category: str, samples: Sequence[Any], scores: np.ndarray,
            drift: Sequence[Mapping[str, float]] | None = None, withheld: Sequence[bool] | None = None) -> None:
        """One scored batch: its samples, image scores, with drift each image's described drift state, with
        protected learning whether each was withheld from the method."""
        start = len(self.cols["id"])
        for j, (s, score) in enumerate(zip(samples, scores, strict=True)):
            self.cols["position"].append(start + j)
            self.cols["category"].append(category)
            self.cols["id"].append(s.id)
            self.cols["label"].append(int(s.label))
            self.cols["defect_type"].append(s.defect_type)
            self.cols["score"].append(np.float32(score))
            if withheld is not None:
                self.cols.setdefault(WITHHELD, []).append(int(withheld[j]))
            for key, m in (drift[j] if drift else {}).items():
                self.cols.setdefault(f"{DRIFT_PREFIX}{key}", [np.nan] * (start + j)).append(float(m))

    def table(self) -> PerImage | None:
        if not self.cols["id"]:
            return None
        return PerImage(PREQUENTIAL, {k: np.array(v, dtype=np.float32 if k == "score" else None)
                                      for k, v in self.cols.items()})

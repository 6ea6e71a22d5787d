"""Run records: one JSON file per run, named by a hash of the run's identity, written atomically.

A record is written once, when the run ends: ``status: finished`` with its metrics, or ``status: failed`` with
the error, never half a file (temp file in the same directory, fsync, ``os.replace``). A finished record is
never rewritten unless the run is forced; a failed one is replaced by the next attempt. Non-finite floats are
written as ``null`` so records stay strict JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

SCHEMA_VERSION = 1
FINISHED = "finished"
FAILED = "failed"


def identity_hash(identity: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``identity`` (sorted keys, no whitespace)."""
    text = json.dumps(_jsonable(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"oadbench-record-v{SCHEMA_VERSION}:{text}".encode()).hexdigest()


def record_path(results_dir: Path, protocol: str, dataset: str, method: str, category: str, seed: int,
                run_hash: str) -> Path:
    """``<results_dir>/<protocol>/<dataset>/<method>/<category>-seed<seed>-<hash[:16]>.json``."""
    safe = [_safe(p) for p in (protocol, dataset, method, category)]
    return Path(results_dir) / safe[0] / safe[1] / safe[2] / f"{safe[3]}-seed{seed}-{run_hash[:16]}.json"


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    """Atomically write ``record`` to ``path`` (readers see the old file or the whole new one)."""
    path = Path(path)
    text = json.dumps(_jsonable(record), indent=1, sort_keys=False, allow_nan=False) + "\n"
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write (one run, one writer)
            stale.unlink(missing_ok=True)
    atomic_write(path, lambda f: f.write(text.encode()))


def write_arrays(path: Path, **arrays: Any) -> None:
    """Atomically write compressed numpy ``arrays`` to ``path`` (``.npz``)."""
    import numpy as np

    atomic_write(Path(path), lambda f: np.savez_compressed(f, **arrays))


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], fsync: bool = True) -> None:
    """``write`` into a temp file ``.<name>.<random>.tmp`` beside ``path``, fsync (unless ``fsync=False``: a cache
    entry that checks its own digests needs atomicity, not durability), then rename over ``path``; the temp file
    is removed on any failure. The file is made readable by others (mkstemp's 0600 would hide records from a team
    sharing ``results_dir``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None if there is none or it is not a readable record."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "status" in data else None


def is_finished(path: Path) -> bool:
    record = read_record(path)
    return record is not None and record.get("status") == FINISHED


def iter_records(results_dir: Path):
    """Every readable record under ``results_dir`` (recursively), as (path, record), sorted by path."""
    for path in sorted(Path(results_dir).rglob("*.json")):
        record = read_record(path)
        if record is not None and record.get("schema") == SCHEMA_VERSION:
            yield path, record


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in str(part)) or "_"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value

"""Reading folders of run records for compilation (leaderboards, figures, ``compare``, ``decisions``), strictly.

Every ``*.json`` file under the folders is read, except inside hidden folders and ``wandb/`` (the tracker's own
files); a JSON object with neither ``status`` nor ``schema`` is some other tool's file and is passed over. A
record that cannot be read -- not JSON (a truncated copy), another schema, a finished record without the keys
the tables read, or a per-image sidecar that is missing or whose digest is not the record's -- is never dropped
in silence: :func:`load_records` raises one
:class:`~oadbench.errors.DataError` naming every such file, unless ``skip_unreadable`` is set, in which case they
are logged as warnings and returned in :attr:`RecordSet.skipped` for the caller to list in what it writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oadbench.errors import DataError
from oadbench.per_image import check_per_image
from oadbench.results import FINISHED, SCHEMA_VERSION

log = logging.getLogger("oadbench")
FINISHED_KEYS = (("config", "protocol", "name"), ("config", "dataset", "name"), ("config", "dataset", "category"),
                 ("config", "method", "name"), ("config", "seed"), ("backbone", "name"), ("data", "image_size"),
                 ("env",), ("final",))
NOT_RECORDS = "wandb"  # folders of the tracker's files


@dataclass
class RecordSet:
    """The readable records of some folders as (path, record), sorted by folder then path, and the skipped files
    as (path, why)."""

    pairs: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def finished(self) -> list[tuple[Path, dict[str, Any]]]:
        return [(p, r) for p, r in self.pairs if r.get("status") == FINISHED]


def problem(path: Path, required: Sequence[Sequence[str]] = FINISHED_KEYS) -> tuple[dict[str, Any] | None, str | None]:
    """(the record, None) for a readable record file, (None, None) for another tool's JSON, else (None, what is
    wrong with it); a finished record must have the ``required`` key paths."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    except ValueError as exc:
        return None, f"is not valid JSON ({exc}; a truncated or hand-edited copy?)"
    if not isinstance(data, dict) or not ({"status", "schema"} & set(data)):
        return None, None
    if "status" not in data:
        return None, "is a record without 'status'"
    if data.get("schema") != SCHEMA_VERSION:
        return None, f"has record schema {data.get('schema')!r}; this oadbench reads schema {SCHEMA_VERSION}"
    if data["status"] == FINISHED:
        missing = ["/".join(keys) for keys in required if not _has(data, keys)]
        if missing:
            return None, f"is a finished record without {', '.join(missing)}"
        sidecar = check_per_image(path, data)
        if sidecar is not None:
            return None, sidecar
    return data, None


def _has(data: Mapping[str, Any], keys: Sequence[str]) -> bool:
    node: Any = data
    for k in keys:
        if not isinstance(node, Mapping) or k not in node:
            return False
        node = node[k]
    return True


def folders_of(paths: Path | Iterable[Path] | None) -> list[Path]:
    """One folder or several (or None: none) as a list of paths."""
    if paths is None:
        return []
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def load_records(folders: Iterable[Path], skip_unreadable: bool = False,
                 required: Sequence[Sequence[str]] = FINISHED_KEYS) -> RecordSet:
    """Every record file under ``folders`` (recursively). Unreadable ones (``required``: the key paths a finished
    record must have; default: those the results tables read) are an error naming each of them, or, with
    ``skip_unreadable``, listed in :attr:`RecordSet.skipped`. A folder that does not exist is an error."""
    out = RecordSet()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"records directory {folder} does not exist")
        for path in sorted(folder.rglob("*.json")):
            parts = path.relative_to(folder).parts[:-1]
            if any(p.startswith(".") or p == NOT_RECORDS for p in parts):
                continue
            record, why = problem(path, required)
            if why is not None:
                out.skipped.append((path, why))
            elif record is not None:
                out.pairs.append((path, record))
    for path, why in out.skipped if skip_unreadable else ():
        log.warning("skipped unreadable record file %s: %s", path, why)
    if out.skipped and not skip_unreadable:
        lines = "\n".join(f"  {p}: {why}" for p, why in out.skipped)
        raise DataError(f"{len(out.skipped)} record file(s) cannot be read:\n{lines}\n"
                        "fix or remove them, or pass --skip-unreadable to compile without them (they are then "
                        "listed in the output)")
    return out


def skipped_lines(skipped: Sequence[tuple[Path, str]]) -> list[str]:
    """Markdown lines listing skipped record files (nothing when none was skipped)."""
    if not skipped:
        return []
    return ["**Skipped unreadable record files** (`--skip-unreadable`): these runs are missing from the tables.", "",
            *[f"- `{p.as_posix()}`: {why}" for p, why in skipped], ""]

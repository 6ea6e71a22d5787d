"""Where oadbench finds the repository's ``methods/`` and ``protocols/`` folders and its cache."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_dir(name: str) -> Path | None:
    """``<repository>/<name>`` when oadbench runs from a source checkout (editable install), else None."""
    candidate = _PACKAGE_DIR.parent / name
    return candidate if candidate.is_dir() else None


def cache_dir() -> Path:
    """``$OADBENCH_CACHE``, else ``~/.cache/oadbench`` (``$XDG_CACHE_HOME`` respected)."""
    env = os.environ.get("OADBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "oadbench"


def search_dirs(name: str, env_var: str) -> list[Path]:
    """Existing directories named ``name`` to search, in order, without duplicates: ``./<name>``, the
    ``os.pathsep``-separated entries of ``$<env_var>``, then the repository's ``<name>/``."""
    candidates = [Path.cwd() / name]
    candidates += [Path(p).expanduser() for p in os.environ.get(env_var, "").split(os.pathsep) if p]
    repo = repo_dir(name)
    if repo is not None:
        candidates.append(repo)
    out: list[Path] = []
    seen: set[Path] = set()
    for d in candidates:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out

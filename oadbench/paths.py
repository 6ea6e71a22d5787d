"""Where oadbench finds the built-in ``methods/`` and ``protocols/``, a source checkout's folders, and its cache.

The built-in methods and protocols have one source, the repository's top-level ``methods/`` and ``protocols/``.
A wheel or an sdist install carries them inside the package (``oadbench/methods/``, ``oadbench/protocols/``,
mapped there by ``pyproject.toml``); a source checkout (editable install, or the tree on ``sys.path``) reads the
top-level folders themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_dir(name: str) -> Path | None:
    """``<repository>/<name>`` when oadbench runs from a source checkout (editable install), else None.

    A checkout is recognised by its ``pyproject.toml`` beside the package, so that an unrelated top-level folder
    of the same name in ``site-packages`` is never mistaken for it."""
    root = _PACKAGE_DIR.parent
    candidate = root / name
    return candidate if (root / "pyproject.toml").is_file() and candidate.is_dir() else None


def builtin_dir(name: str) -> Path | None:
    """The built-in ``methods`` or ``protocols`` folder: the one installed inside the package, else the source
    checkout's top-level one; None when neither exists."""
    installed = _PACKAGE_DIR / name
    return installed if installed.is_dir() else repo_dir(name)


def cache_dir() -> Path:
    """``$OADBENCH_CACHE``, else ``~/.cache/oadbench`` (``$XDG_CACHE_HOME`` respected)."""
    env = os.environ.get("OADBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "oadbench"


def search_dirs(name: str, env_var: str) -> list[Path]:
    """Existing directories named ``name`` to search, in order, without duplicates: ``./<name>``, the
    ``os.pathsep``-separated entries of ``$<env_var>``, then the built-in ``<name>/`` (:func:`builtin_dir`)."""
    candidates = [Path.cwd() / name]
    candidates += [Path(p).expanduser() for p in os.environ.get(env_var, "").split(os.pathsep) if p]
    builtin = builtin_dir(name)
    if builtin is not None:
        candidates.append(builtin)
    out: list[Path] = []
    seen: set[Path] = set()
    for d in candidates:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out

"""Dataset loader interface and registry.

A loader turns a dataset root on disk into :class:`CategoryData` for one category. Loaders register themselves
with :func:`register_dataset`; the CLI's ``dataset=<name>`` picks one, and ``dataset.<option>=...`` sets the
options a loader declares in ``options`` (besides ``root`` and ``category``, which every loader takes).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from oadbench.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetLoader(abc.ABC):
    """One dataset format. Subclasses set ``name``, ``description``, ``layout`` and implement the two methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    layout: ClassVar[str]  # the expected directory layout, shown in errors
    options: ClassVar[dict[str, Any]] = {}  # extra config keys and their defaults
    # the option that names where the data is, for a loader that takes it instead of ``root`` (hf: ``path``, a
    # Hub repository or a directory); the runner then passes that option's value as ``root``, and the options to
    # ``categories`` as well
    root_option: ClassVar[str | None] = None

    @abc.abstractmethod
    def categories(self, root: Path) -> list[str]:
        """Sorted category names found under ``root``."""

    @abc.abstractmethod
    def load(self, root: Path, category: str, **options: Any) -> Any:
        """The :class:`~oadbench.data.sample.CategoryData` of ``category``; raise DataError on a broken layout."""

    def default_root(self) -> Path | None:
        """Root used when the config gives none (only the embedded synthetic dataset has one)."""
        return None

    def resolve_root(self, root: Any) -> Path:
        """The given ``root`` (``~`` expanded), else :meth:`default_root`; neither is a ConfigError naming
        ``dataset.root`` and the expected layout."""
        if root is None:
            root = self.default_root()
            if root is None:
                raise ConfigError("dataset.root", f"is required for dataset '{self.name}'; expected layout:\n"
                                  f"{self.layout.rstrip()}")
        return Path(str(root)).expanduser()

    def config_defaults(self) -> dict[str, Any]:
        return {"name": self.name, "root": None, "category": None, **self.options}

    # helpers shared by the concrete loaders -------------------------------------------------------------------

    def layout_error(self, root: Path, missing: Path, what: str = "path") -> DataError:
        return DataError(
            f"dataset '{self.name}' at {root}: missing {what} {missing}\n"
            f"expected layout:\n{self.layout.rstrip()}"
        )

    def require_dir(self, root: Path, path: Path) -> Path:
        if not path.is_dir():
            first = _first_missing(root, path)
            raise self.layout_error(root, first, "directory")
        return path

    def check_category(self, root: Path, category: str) -> None:
        available = self.categories(root)
        if category not in available:
            raise ConfigError(
                "dataset.category",
                f"'{category}' is not a category of dataset '{self.name}' at {root}",
                allowed=available,
            )


_REGISTRY: dict[str, DatasetLoader] = {}


def register_dataset(cls: type[DatasetLoader]) -> type[DatasetLoader]:
    """Class decorator: make a loader available as ``dataset=<cls.name>``."""
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"dataset '{cls.name}' registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def get_dataset(name: str) -> DatasetLoader:
    if name not in _REGISTRY:
        raise ConfigError("dataset", f"unknown dataset '{name}'", allowed=dataset_names())
    return _REGISTRY[name]


def list_images(directory: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name; hidden files skipped."""
    exts = {e.lower() for e in extensions}
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
    )


def find_with_stem(directory: Path, stem: str, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> Path | None:
    """The file ``directory/stem.<ext>`` for the first extension that exists, or None."""
    for ext in extensions:
        for candidate in (directory / f"{stem}{ext}", directory / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _first_missing(root: Path, path: Path) -> Path:
    """The shallowest ancestor of ``path`` (at or below ``root``) that does not exist."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return path
    current = root
    if not current.exists():
        return current
    for part in parts:
        current = current / part
        if not current.exists():
            return current
    return path


LoaderFactory = Callable[[], DatasetLoader]

"""Access to Hugging Face data for ``dataset=hf``: importing ``datasets`` and opening a Hub repository or a local
copy (Parquet/Arrow files or a ``save_to_disk`` folder) far enough to list and load its splits."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from oadbench.errors import ConfigError, DataError, DatasetUnavailableError

BUILDERS = ("parquet", "arrow")  # the datasets builders whose files hold an AD dataset
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def require_datasets() -> Any:
    """The ``datasets`` module; a ConfigError naming the ``hf`` extra when it is not installed."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("dataset", "dataset 'hf' and `oadbench data export` need the Hugging Face datasets "
                          "library: pip install 'oadbench[hf]'") from None
    return datasets


class Source:
    """A Hub repository or local directory, opened far enough to know its split names; ``datasets``' errors
    become DatasetUnavailableError (unreachable, missing, gated) or DataError, naming the source."""

    def __init__(self, path: str, revision: str | None, layout: str) -> None:
        self.path = path
        self.revision = revision
        self.layout = layout  # the loader's expected layout, quoted in errors
        local = Path(path).expanduser()
        self.local: Path | None = local if local.is_dir() else None
        self._saved: dict[str, Any] | None = None
        self._builder: Any = None
        ds = require_datasets()
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
                            f"(owner/name); expected:\n{self.layout.rstrip()}")
        self._builder = self._call(ds.load_dataset_builder, path, revision=revision)
        if self._builder.name not in BUILDERS:
            raise DataError(f"dataset 'hf' at {path}: datasets reads it with its '{self._builder.name}' builder, not "
                            f"as Parquet or Arrow files, so it is not a dataset of images with labels (archives and "
                            f"FiftyOne exports are not supported); expected:\n{self.layout.rstrip()}")

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
        ds = require_datasets()
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
                            f"expected:\n{self.layout.rstrip()}") from None

    def _unreachable(self, detail: str) -> str:
        from datasets import config

        offline = " (offline mode: HF_HUB_OFFLINE is set)" if config.HF_HUB_OFFLINE else ""
        return (f"dataset.path: cannot reach the Hub repository '{self.path}'{offline}; no local directory of that "
                f"name exists and it is not in the datasets cache ({detail}). {self._offline_hint()}")

    def _offline_hint(self) -> str:
        return (f"To work offline, download it where there is a network (`hf download {self.path} --repo-type "
                "dataset --local-dir DIR`, or only one category with `--include 'data/<category>.*'`) and set "
                "dataset.path=DIR.")

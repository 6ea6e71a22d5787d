"""Errors oadbench raises for bad input. Each message names the key, file or value at fault."""

from __future__ import annotations

from collections.abc import Iterable


class OadbenchError(Exception):
    """Base class: an error the user can fix; the CLI prints its message without a traceback."""


class ConfigError(OadbenchError):
    """A configuration or protocol value is invalid. The message names the key and what was expected."""

    def __init__(self, key: str, message: str, allowed: Iterable[object] | None = None):
        self.key = key
        self.message = message
        self.allowed = list(allowed) if allowed is not None else None
        text = f"{key}: {message}"
        if self.allowed is not None:
            text += f" (allowed: {', '.join(map(str, self.allowed))})"
        super().__init__(text)


class DataError(OadbenchError):
    """A dataset is missing, has the wrong layout, or holds an unreadable or inconsistent file."""


class DatasetUnavailableError(DataError):
    """A remote dataset (a Hugging Face Hub repository) cannot be reached, does not exist or is gated."""


class WeightsUnavailableError(OadbenchError):
    """No source of pretrained backbone weights could be used."""


class MethodError(OadbenchError):
    """A method misbehaved during a run (e.g. produced non-finite scores)."""

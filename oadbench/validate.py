"""Value checks shared by protocol, method and run configuration: each raises ConfigError naming ``key``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from oadbench.errors import ConfigError


def check_choice(value: Any, allowed: Sequence[str], key: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(key, f"{value!r} is not valid", allowed=allowed)
    return value


def check_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def check_int(value: Any, key: str, lo: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(key, f"must be >= {lo}, got {value}")
    return value


def check_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be a number, got {value!r}")
    return float(value)


def check_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value

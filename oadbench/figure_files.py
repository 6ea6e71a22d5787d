"""What every figure module shares: how a figure is written (PDF and PNG, reproducible bytes) and how a record's
method is labelled in a legend."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def method_label(record: Mapping[str, Any]) -> str:
    """The method's name, with the device type for runs off the CPU (``padim (cuda)``): the figures, like the
    leaderboards, never mix CPU and GPU runs in one line or bar."""
    name = str(record["config"]["method"]["name"])
    device = str(record["config"].get("device", "cpu")).split(":")[0]
    return name if device == "cpu" else f"{name} ({device})"


def save_figure(fig: Any, out: Path, name: str) -> list[Path]:
    """Write ``fig`` as ``<out>/<name>.pdf`` and ``.png`` (150 dpi, no creation date: reproducible bytes) and
    close it; returns the two paths."""
    paths = []
    for ext in ("pdf", "png"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths

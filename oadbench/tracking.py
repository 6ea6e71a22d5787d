"""Weights & Biases logging. Offline unless the user opts in (``wandb.mode=online``); ``disabled`` logs nothing.

W&B is never allowed to lose a run: if it cannot start (no credentials, no network, an unwritable directory) the
tracker warns and falls back to offline, then to disabled; errors while logging are warnings too. The local run
record is written by the runner independently of anything here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("oadbench")

WANDB_MODES = ("offline", "online", "disabled")


class Tracker:
    """One W&B run per oadbench run. ``mode`` in :data:`WANDB_MODES`; ``dir`` is where ``wandb/`` is created."""

    def __init__(self, mode: str, project: str, entity: str | None, dir: Path, name: str, group: str,
                 tags: Sequence[str], config: Mapping[str, Any]):
        self.requested_mode = mode
        self.mode = "disabled"
        self.run = None
        if mode == "disabled":
            return
        attempts = [mode] if mode == "offline" else [mode, "offline"]
        for attempt in attempts:
            try:
                self.run = self._init(attempt, project, entity, dir, name, group, tags, config)
                self.mode = attempt
                break
            except Exception as exc:  # noqa: BLE001 - W&B must never fail a run
                log.warning("W&B could not start in %s mode (%s: %s); %s", attempt, type(exc).__name__,
                            str(exc).splitlines()[0] if str(exc) else "",
                            "trying offline" if attempt != attempts[-1] else "logging disabled for this run")

    @staticmethod
    def _init(mode: str, project: str, entity: str | None, dir: Path, name: str, group: str,
              tags: Sequence[str], config: Mapping[str, Any]):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        # absolute: the process's W&B service (shared with its children through WANDB_SERVICE) resolves a relative
        # directory against its own working directory: the run's .wandb file went missing
        dir = Path(dir).resolve()
        dir.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            mode=mode, project=project, entity=entity, dir=str(dir), name=name, group=group, tags=list(tags),
            config=dict(config), reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True,
                                    init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", 60))),
        )

    @property
    def run_dir(self) -> str | None:
        if self.run is None:
            return None
        try:
            return str(Path(self.run.dir).parent)
        except Exception:  # noqa: BLE001
            return None

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.id

    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        if self.run is None:
            return
        clean = {k: v for k, v in data.items() if v is not None and not (isinstance(v, float) and np.isnan(v))}
        try:
            self.run.log(clean, step=step)
        except Exception as exc:  # noqa: BLE001
            log.warning("W&B log failed: %s", exc)

    def log_images(self, key: str, panels: Sequence[tuple[str, np.ndarray]], step: int | None = None) -> None:
        """Log RGB uint8 panels (H,W,3) with captions."""
        if self.run is None or not panels:
            return
        try:
            import wandb

            self.run.log({key: [wandb.Image(img, caption=cap) for cap, img in panels]}, step=step)
        except Exception as exc:  # noqa: BLE001
            log.warning("W&B image log failed: %s", exc)

    def finish(self, summary: Mapping[str, Any], failed: bool = False) -> None:
        if self.run is None:
            return
        try:
            for k, v in summary.items():
                if v is not None and not (isinstance(v, float) and np.isnan(v)):
                    self.run.summary[k] = v
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as exc:  # noqa: BLE001
            log.warning("W&B finish failed: %s", exc)
        self.run = None


def map_panel(image: np.ndarray, mask: np.ndarray, amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """One row (H, 3W, 3) uint8: the image, the image with the ground-truth outline in red, the anomaly map
    (``vmin``..``vmax`` on the viridis colour map)."""
    from matplotlib import colormaps

    img = image.astype(np.uint8)
    outlined = img.copy()
    edge = mask & ~_erode(mask)
    outlined[edge] = (255, 0, 0)
    scaled = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    heat = (colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)
    return np.concatenate([img, outlined, heat], axis=1)


def _erode(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]

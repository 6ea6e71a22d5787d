"""What a run leaves besides its record: the maps file beside it and the anomaly-map panels of its W&B run, both
drawn from the latest evaluation's :class:`~oadbench.evaluation.Panel`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from oadbench.evaluation import Panel
from oadbench.results import write_arrays
from oadbench.tracking import Tracker, map_panel

MAPS_PX = 128  # side of the anomaly maps saved beside a record


def save_maps(record_path: Path, panel: Panel | None) -> str | None:
    """Beside the record, ``<record>.maps.npz``: 2 anomalous images of the final evaluation (the first of each
    of its first two defect types, so that a figure does not show two shots of one defect) and its first 2
    normal images -- the same for every method of a protocol, dataset and seed -- with their masks and anomaly
    maps at 128 px, for qualitative figures. Returns the file name, or None (no evaluation, or a panel of stream
    images: prequential runs)."""
    if panel is None or panel.samples is None:
        return None
    labels, samples = panel.labels, panel.samples
    anomalous = [int(r) for r in np.flatnonzero(labels == 1)]
    first_of_type: dict[str, int] = {}
    for r in anomalous:
        first_of_type.setdefault(samples[r].defect_type, r)
    picked = list(first_of_type.values())[:2]
    picked += [r for r in anomalous if r not in picked][: 2 - len(picked)]
    rows = [*sorted(picked), *np.flatnonzero(labels == 0)[:2]]
    if not rows:
        return None

    def shrink(x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, MAPS_PX, MAPS_PX), area average
        return torch.nn.functional.interpolate(x.float(), size=(MAPS_PX, MAPS_PX), mode="area")

    small = shrink(panel.images[torch.as_tensor(rows)])
    small_maps = shrink(torch.as_tensor(panel.maps[rows]).unsqueeze(1)).squeeze(1)
    small_masks = shrink(torch.as_tensor(panel.masks[rows]).unsqueeze(1)).squeeze(1) > 0.5
    path = record_path.with_name(record_path.stem + ".maps.npz")
    write_arrays(path, ids=np.array([samples[r].id for r in rows]), labels=labels[rows].astype(np.int8),
                 scores=np.asarray(panel.scores)[rows].astype(np.float32),
                 images=small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy(),
                 masks=small_masks.numpy(), maps=small_maps.numpy().astype(np.float16))
    return path.name


def log_panels(tracker: Tracker, panel: Panel | None, n: int, step: int) -> None:
    """Up to ``n`` (image, ground truth, map) panels of the latest evaluation, mostly anomalous images, logged at
    ``step`` (observed images); nothing without a W&B run."""
    if not n or panel is None or tracker.run is None:
        return
    labels, maps = panel.labels, panel.maps
    chosen = [*np.flatnonzero(labels == 1)[: max(1, n - n // 4)], *np.flatnonzero(labels == 0)[: n // 4]][:n]
    vmin, vmax = float(np.min(maps)), float(np.max(maps))
    panels = [(f"label={int(labels[r])} score={panel.scores[r]:.3g}",
               map_panel(panel.images[r].permute(1, 2, 0).numpy(), panel.masks[r], maps[r], vmin, vmax))
              for r in chosen]
    tracker.log_images("anomaly_maps", panels, step=step)

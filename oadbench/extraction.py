"""Where a run's frozen features come from: the feature store where it has them, else the backbone.

:class:`FeatureSource` is the one place the runner asks for features. With the store off it passes images
through a backbone built for the method's levels, as it always did; with the store on
(:mod:`oadbench.feature_store`) the backbone outputs every level up to the deepest one the method needs, each
image is looked up by its content digest, the misses are extracted together and stored, and the method gets its
own levels either way -- the same tensors, bit for bit on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from oadbench.cost import CostMeter
from oadbench.feature_store import FeatureStore, image_digest, numerics, store_levels, weights_digest
from oadbench.features import BackboneInfo, FrozenBackbone
from oadbench.paths import cache_dir


class FeatureSource:
    """Features of the method's ``levels`` for uint8 image batches (B,3,H,W), on ``device``.

    ``info`` describes the backbone as the method sees it (its levels only); ``extracted`` counts the images that
    went through the backbone, ``hits`` those read from the store. Backbone time is metered under the kind the
    caller names (per extracted image), store reads under ``feature_store_read`` (per hit, including the digests of
    all images looked up) and writes under ``feature_store_write``."""

    def __init__(self, backbone: Mapping[str, str], levels: Sequence[int], features: Mapping[str, Any],
                 device: torch.device, image_size: int, center_crop: int | None, meter: CostMeter):
        levels = tuple(int(lv) for lv in levels)
        extracted = store_levels(levels) if features["cache"] else levels
        self.backbone = FrozenBackbone(backbone["name"], extracted, backbone["weights"], device)
        self.rows = [extracted.index(lv) for lv in levels]  # the method's levels among the extracted ones
        self.info: BackboneInfo = self.backbone.info.subset(levels)
        self.device = device
        self.meter = meter
        self.extracted = 0
        self.store: FeatureStore | None = None
        if features["cache"]:
            full = self.backbone.info
            namespace = {
                "backbone": full.name, "weights": full.weights, "weights_detail": full.weights_detail,
                "weights_sha256": weights_digest(self.backbone.model), "levels": list(extracted),
                "image_size": image_size, "center_crop": center_crop, **numerics(device),
            }
            root = Path(features["cache_dir"]).expanduser() if features["cache_dir"] else cache_dir() / "features"
            self.store = FeatureStore(root, namespace, max_bytes=int(features["cache_max_gb"] * 2**30))

    @property
    def hits(self) -> int:
        return self.store.hits if self.store is not None else 0

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.normalise(images)

    def __call__(self, images: torch.Tensor, kind: str) -> list[torch.Tensor]:
        """One tensor (B,C_l,h_l,w_l) per method level; ``kind`` names the backbone timer."""
        if self.store is None:
            with self.meter.measure(kind, len(images)):
                feats = self.backbone(images)
            self.extracted += len(images)
            return [feats[r] for r in self.rows]
        start = time.perf_counter()
        digests = [image_digest(image) for image in images]
        found: list[list[torch.Tensor] | None] = []
        for d in digests:
            hit = self.store.get(d, self.rows)
            found.append(None if hit is None else [t.to(self.device) for t in hit])
        misses = [i for i, f in enumerate(found) if f is None]
        self.meter.add("feature_store_read", time.perf_counter() - start, len(images) - len(misses))
        if misses:
            with self.meter.measure(kind, len(misses)):
                feats = self.backbone(images[misses])
            self.extracted += len(misses)
            with self.meter.measure("feature_store_write", len(misses)):
                for j, i in enumerate(misses):
                    self.store.put(digests[i], [f[j] for f in feats])
            for j, i in enumerate(misses):
                found[i] = [feats[r][j] for r in self.rows]
        return [torch.stack([f[k] for f in found]) for k in range(len(self.rows))]  # type: ignore[index]

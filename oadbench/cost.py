"""Cost meters: per-image times of observe / score / backbone calls, throughput, peak memory."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

WARMUP_CALLS = 3  # first calls of each kind excluded from median / p95 (allocator and kernel warm-up)


@dataclass
class Timer:
    """Per-image milliseconds of each call (call time / images in the call)."""

    per_image_ms: list[float] = field(default_factory=list)
    total_s: float = 0.0
    images: int = 0

    def add(self, seconds: float, images: int) -> None:
        self.total_s += seconds
        self.images += images
        if images:
            self.per_image_ms.append(1000.0 * seconds / images)

    def summary(self) -> dict[str, float | int | None]:
        steady = self.per_image_ms[WARMUP_CALLS:] if len(self.per_image_ms) > WARMUP_CALLS else self.per_image_ms
        if not steady:
            return {"median_ms": None, "p95_ms": None, "total_s": self.total_s, "images": self.images}
        arr = np.asarray(steady)
        return {
            "median_ms": float(np.median(arr)),
            "p95_ms": float(np.percentile(arr, 95)),
            "total_s": self.total_s,
            "images": self.images,
        }


class CostMeter:
    """Times the runner's calls; synchronises CUDA so GPU work is counted where it is launched."""

    def __init__(self, device: torch.device):
        self.device = device
        self.timers: dict[str, Timer] = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    @contextmanager
    def measure(self, kind: str, images: int):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.add(kind, time.perf_counter() - start, images)

    def add(self, kind: str, seconds: float, images: int) -> None:
        """Count ``seconds`` spent on ``images`` images under ``kind`` (for work timed by the caller)."""
        self.timers.setdefault(kind, Timer()).add(seconds, images)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def total(self, kind: str) -> float:
        t = self.timers.get(kind)
        return t.total_s if t else 0.0

    def summary(self, streamed_images: int) -> dict[str, object]:
        out: dict[str, object] = {k: t.summary() for k, t in sorted(self.timers.items())}
        loop_s = self.total("observe") + self.total("backbone_stream")
        out["throughput_images_per_s"] = streamed_images / loop_s if loop_s > 0 and streamed_images else None
        out["peak_rss_mb"] = peak_rss_mb()
        if self.device.type == "cuda":
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024

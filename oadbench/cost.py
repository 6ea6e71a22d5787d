"""Cost meters: per-image times of observe / score / backbone calls, throughput, peak memory.

On CUDA every measured call is synchronised at both ends, so GPU work is counted where it is launched, and the
meters start after the device's warm-up (:func:`oadbench.devices.warm_up`, timed as ``device_warmup_s``), so
CUDA's one-off start-up lands in no timer. GPU memory (MiB of tensors allocated by PyTorch, the caching
allocator's spare blocks excluded), counted from the warm-up on:

- ``cuda_peak_mb``: the run's peak;
- ``cuda_method_peak_mb``: the method's own peak: the largest, over its calls (observe, warm-up observe,
  consolidate, score), of the call's peak minus what the runner held on the device when the call began (backbone
  weights, the evaluation features kept for reuse, the batch's features and images) and minus the libraries'
  memory: its learned state plus its working memory;
- ``cuda_features_peak_mb``: the runner's share: the largest of what it held at a method call and, over the
  backbone calls, the call's peak minus what the method and the libraries held when it began (backbone weights
  and activations, and the features it keeps);
- ``cuda_library_mb``: what stayed allocated by the warm-up beyond the runner's tensors (cuBLAS workspaces), in
  the run's peak and in neither share.

The meters start before the method is built, so its initial state counts as its own. The two shares peak at
different times, so they need not add up to the run's peak.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

WARMUP_CALLS = 3  # first calls of each kind excluded from median / p95 (allocator and kernel warm-up)
METHOD_KINDS = ("observe_warmup", "observe", "consolidate", "score")  # the method's own calls
MIB = 2**20


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
    """Times the runner's calls; on CUDA synchronises around each and splits GPU memory (module docstring).

    ``resident``: bytes the runner holds on the device right now (called at the start of every measured call on
    CUDA; never on the CPU)."""

    def __init__(self, device: torch.device, resident: Callable[[], int] | None = None):
        self.device = device
        self.timers: dict[str, Timer] = {}
        self.resident = resident or (lambda: 0)
        self.cuda = device.type == "cuda"
        self.warmup_s: float | None = None
        self.peak = self.method_peak = self.features_peak = self.library = 0  # bytes
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def start(self, warmup_s: float | None = None) -> None:
        """Count GPU memory from now on: after the device warm-up (which took ``warmup_s`` seconds), before the
        method exists; what is allocated now beyond the runner's tensors is the libraries'."""
        self.warmup_s = warmup_s
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.peak = self.method_peak = self.features_peak = 0
            self.library = max(0, torch.cuda.memory_allocated(self.device) - int(self.resident()))

    @contextmanager
    def measure(self, kind: str, images: int):
        self._sync()
        before = self._open() if self.cuda else None
        start = time.perf_counter()
        yield
        self._sync()
        self.add(kind, time.perf_counter() - start, images)
        if before is not None:
            self._close(kind, *before)

    def _open(self) -> tuple[int, int]:
        """Fold the peak since the last reading into the run's, restart the peak; (allocated, runner's) bytes."""
        self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device), int(self.resident())

    def _close(self, kind: str, allocated: int, resident: int) -> None:
        peak = torch.cuda.max_memory_allocated(self.device)
        self.peak = max(self.peak, peak)
        if kind in METHOD_KINDS:
            self.method_peak = max(self.method_peak, peak - resident - self.library)
            self.features_peak = max(self.features_peak, resident)
        else:  # what the method and the libraries held at the start: allocated - resident
            self.features_peak = max(self.features_peak, peak - (allocated - resident))

    def add(self, kind: str, seconds: float, images: int) -> None:
        """Count ``seconds`` spent on ``images`` images under ``kind`` (for work timed by the caller)."""
        self.timers.setdefault(kind, Timer()).add(seconds, images)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def total(self, kind: str) -> float:
        t = self.timers.get(kind)
        return t.total_s if t else 0.0

    def summary(self, streamed_images: int) -> dict[str, object]:
        out: dict[str, object] = {k: t.summary() for k, t in sorted(self.timers.items())}
        loop_s = self.total("observe") + self.total("backbone_stream")
        out["throughput_images_per_s"] = streamed_images / loop_s if loop_s > 0 and streamed_images else None
        out["peak_rss_mb"] = peak_rss_mb()
        if self.cuda:
            peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
            out["cuda_peak_mb"] = peak / MIB
            out["cuda_method_peak_mb"] = self.method_peak / MIB
            out["cuda_features_peak_mb"] = self.features_peak / MIB
            out["cuda_library_mb"] = self.library / MIB
            out["device_warmup_s"] = self.warmup_s
        return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024

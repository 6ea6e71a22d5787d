"""Evaluation strategies: how a run's stream plan is fed to the method and when and on what it is evaluated.

A strategy implements one ``evaluation.mode`` of the protocols (:class:`Evaluation.mode`) in :meth:`Evaluation.run`:
it walks the stream plan's tasks, hands batches to the method (``observe``), scores (``score``) and adds one
entry per evaluation time to the checkpoint log; it never sees anything but the run's pipeline, the method, the
cost meter and the log. Shipped: :class:`oadbench.holdout.Holdout` (score the evaluation split at checkpoints;
continual protocols are holdout across tasks) and :class:`oadbench.prequential.Prequential` (score every stream
batch before observing it). A new strategy subclasses :class:`Evaluation`, uses its shared steps
(:meth:`~Evaluation.observe`, :meth:`~Evaluation.score`, :meth:`~Evaluation.metrics`) and is listed in
:data:`oadbench.runner.STRATEGIES` (and its mode in :data:`oadbench.protocol.EVAL_MODES`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from oadbench.checkpoints import CheckpointLog
from oadbench.cost import CostMeter
from oadbench.data import Sample
from oadbench.errors import MethodError
from oadbench.method import Batch, Method
from oadbench.metrics import IMAGE_METRICS, PIXEL_METRICS, image_metrics, pixel_metrics
from oadbench.per_image import PerImage
from oadbench.pipeline import DriftState, Pipeline


@dataclass
class Panel:
    """Images of the latest evaluation with their scores, for the maps file and the W&B panels."""

    images: torch.Tensor  # uint8 (N,3,H,W), CPU
    labels: np.ndarray  # (N,)
    masks: np.ndarray  # bool (N,H,W)
    scores: np.ndarray  # (N,)
    maps: np.ndarray  # (N,H,W)
    samples: list[Sample] | None = None  # an evaluation split's samples (holdout); None for stream images


class Evaluation(abc.ABC):
    """One run's evaluation: ``observed`` counts the images the method has observed, ``panel`` is the latest
    evaluation's images (None before the first); ``tick(n)`` reports n more observed images (progress bar)."""

    mode: ClassVar[str]

    def __init__(self, data: Pipeline, method: Method, meter: CostMeter, log: CheckpointLog,
                 tick: Callable[[int], None]):
        self.data = data
        self.prep = data.prep
        self.spec = data.prep.spec
        self.plan = data.prep.plan
        self.method = method
        self.meter = meter
        self.log = log
        self.tick = tick
        self.observed = 0
        self.panel: Panel | None = None

    @abc.abstractmethod
    def run(self) -> None:
        """Feed the whole stream plan to the method, adding each evaluation to the checkpoint log."""

    def per_image(self) -> PerImage | None:
        """The per-image results of the run once :meth:`run` has returned (:mod:`oadbench.per_image`), or None
        where the strategy keeps none."""
        return None

    def stops(self) -> set[int]:
        """The protocol's evaluation times, in observed images."""
        return set(self.spec.checkpoints(self.plan.total_observed, self.plan.task_ends))

    def observe(self, batch: Batch, kind: str) -> None:
        """The method observes ``batch`` (timed as ``kind``: ``observe`` or ``observe_warmup``)."""
        with self.meter.measure(kind, len(batch)):
            self.method.observe(batch)
        self.observed += len(batch)
        self.tick(len(batch))

    def withhold(self, n: int) -> None:
        """``n`` stream images go by without being observed (protected learning): they count as observed for
        checkpoints and drift (positions on the line), not for the method."""
        self.observed += n
        self.tick(n)

    def record_fields(self) -> dict[str, Any]:
        """What the strategy adds to a finished run's record (nothing by default)."""
        return {}

    def stream_view(self, t: int, idx: list[int], images: torch.Tensor, masks: torch.Tensor | None = None
                    ) -> tuple[Batch, torch.Tensor, torch.Tensor | None, list[DriftState]]:
        """Stream images of task ``t`` in their drift states: (the method's batch, the images, the masks, the
        states)."""
        images, masks, states = self.data.drift_stream(t, idx, images, masks, self.observed)
        return self.data.stream_batch(t, idx, images, states), images, masks, states

    def consolidate(self) -> None:
        """The method's work between observing and scoring (timed as ``consolidate``)."""
        with self.meter.measure("consolidate", 0):
            self.method.consolidate()

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Image scores (N,) and anomaly maps (N,H,W) of ``batch`` as float32 arrays; non-finite scores are a
        MethodError."""
        with self.meter.measure("score", len(batch)):
            out = self.method.score(batch)
        if not (torch.isfinite(out.image).all() and torch.isfinite(out.maps).all()):
            raise MethodError(f"method '{self.prep.method_cls.name}' produced non-finite (NaN or infinite) scores "
                              f"at the checkpoint after {self.observed} observed images")
        return out.image.detach().float().cpu().numpy(), out.maps.detach().float().cpu().numpy()

    def metrics(self, scores: np.ndarray, labels: np.ndarray, maps: np.ndarray | None,
                masks: np.ndarray | None) -> dict[str, float]:
        """The protocol's metrics; pixel metrics are NaN without maps and masks."""
        wanted = self.spec.metrics
        out = image_metrics(scores, labels, names=[m for m in wanted if m in IMAGE_METRICS])
        pix = [m for m in wanted if m in PIXEL_METRICS]
        if pix:
            if maps is not None and masks is not None:
                out.update(pixel_metrics(maps, masks, names=pix))
            else:
                out.update({m: float("nan") for m in pix})
        return {m: out[m] for m in wanted}

    def checkpoint(self, t: int, per_category: dict[str, dict[str, float]], task_end: bool = False,
                   peaks: dict[str, float] | None = None, initial: dict[str, dict[str, float]] | None = None,
                   state: DriftState = ()) -> None:
        """Add the checkpoint after ``observed`` images during task ``t`` to the log."""
        self.log.add(self.observed, self.plan.tasks[t].category, per_category, self.method.footprint(),
                     self.method.diagnostics(), task_end, peaks, initial,
                     self.data.drift.describe(state) if initial is not None else None)


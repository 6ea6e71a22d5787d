"""Prequential evaluation (score, then observe): every stream batch is scored by the method as it is before it
observes that batch; at each checkpoint the metrics are computed over every stream image scored so far. With
``evaluation.order: observe_then_score`` each batch is observed first and then scored (transductive). With
``evaluation.unscored: n`` the batches starting among the first n stream images are observed and never scored;
checkpoints that fall among them have no metrics (nothing is scored yet).

Warm-up images are observed without being scored. Stream images are scored in their own drift state (the state
they are observed in) against their masks; pixel metrics are NaN when an anomalous stream image has no mask. A
checkpoint's metrics are over every stream image scored so far (a stream of several tasks pools them), filed
under the current task. The W&B panels show the last stream batches scored; no maps file is written (there is no
fixed evaluation split). The per-image results are every scored stream image in stream order
(:class:`oadbench.per_image.StreamRows`).

Protected learning (``decisions.protect``): each scored image is passed or rejected by the label-free policy
``decisions.policy`` (:class:`oadbench.decisions.Tracker`: the image's score against the threshold set by the
scores before it); rejected images are withheld from ``observe`` -- they still count as observed for
checkpoints and drift (they went by on the line) -- and marked in the per-image ``withheld`` column; the record's
``decisions`` entry counts them (normal and anomalous). Unscored images (``evaluation.unscored``) are observed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from oadbench.decisions import Tracker, parse_policy
from oadbench.evaluation import Evaluation, Panel
from oadbench.method import Batch
from oadbench.per_image import WITHHELD, PerImage, StreamRows
from oadbench.protocol import OBSERVE_THEN_SCORE

PANEL_BATCHES = 16  # the last stream batches kept for the W&B panels


class Prequential(Evaluation):
    mode = "prequential"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rows = StreamRows()
        protect = self.spec.decisions.protect
        self.tracker = Tracker(parse_policy(self.spec.decisions.policy)) if protect else None

    def run(self) -> None:
        stops = self.stops()
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        tail_images: list[torch.Tensor] = []
        has_masks = True
        observe_first = self.spec.evaluation.order == OBSERVE_THEN_SCORE
        unscored = self.spec.evaluation.unscored
        position = 0  # stream images so far, over every task
        for t, task in enumerate(self.plan.tasks):
            data = self.prep.datas[t]
            for idx, future in self.data.batches(t, task.warmup, stops, self.observed):
                images, _ = future.result()
                batch, *_ = self.stream_view(t, idx, images)
                self.observe(batch, "observe_warmup")
            for idx, future in self.data.batches(t, task.stream, stops, self.observed):
                images, mask = future.result()
                batch, images, mask, states = self.stream_view(t, idx, images, mask)  # scored in their own state
                position += len(idx)
                if position - len(idx) < unscored:  # a batch starting among the first ``unscored`` images
                    self.observe(batch, "observe")
                    continue
                if observe_first:
                    self.observe(batch, "observe")
                self.consolidate()
                image_scores, image_maps = self.score(batch)
                scores.append(image_scores)
                maps.append(image_maps)
                samples = [data.samples[i] for i in idx]
                withheld = [self.tracker.decide(s)[0] for s in image_scores] if self.tracker else None
                self.rows.add(task.category, samples, image_scores,
                              [self.data.drift.describe(s) for s in states] if self.data.drift else None, withheld)
                labels.append(np.array([s.label for s in samples]))
                masks.append(mask.numpy())
                tail_images = (tail_images + [images])[-PANEL_BATCHES:]
                has_masks &= all(s.mask_path is not None for s in samples if s.is_anomalous)
                if withheld is not None and any(withheld):
                    self.observe_protected(batch, withheld)
                elif not observe_first:
                    self.observe(batch, "observe")
                if self.observed in stops:
                    m = self.metrics(np.concatenate(scores), np.concatenate(labels),
                                     np.concatenate(maps) if has_masks else None,
                                     np.concatenate(masks) if has_masks else None)
                    self.checkpoint(t, {task.category: m})
        if scores:
            n = PANEL_BATCHES
            self.panel = Panel(torch.cat(tail_images[-n:]), np.concatenate(labels[-n:]), np.concatenate(masks[-n:]),
                               np.concatenate(scores[-n:]), np.concatenate(maps[-n:]))

    def observe_protected(self, batch: Batch, withheld: list[bool]) -> None:
        """Observe the images the policy passed; the rejected ones go by unobserved."""
        keep = [j for j, w in enumerate(withheld) if not w]
        if keep:
            self.observe(batch.select(keep), "observe")
        self.withhold(len(withheld) - len(keep))

    def per_image(self) -> PerImage | None:
        return self.rows.table()

    def record_fields(self) -> dict[str, Any]:
        """With protected learning: ``decisions`` = the policy and the withheld images, normal and anomalous
        (counted from the per-image rows)."""
        if self.tracker is None:
            return {}
        withheld = np.asarray(self.rows.cols.get(WITHHELD, []), dtype=bool)
        anomalous = int(np.asarray(self.rows.cols["label"], dtype=int)[withheld].sum()) if withheld.size else 0
        return {"decisions": {"policy": self.tracker.policy.label(), "withheld": int(withheld.sum()),
                              "withheld_normal": int(withheld.sum()) - anomalous, "withheld_anomalous": anomalous}}

"""Holdout evaluation: the method observes the stream; at each checkpoint (counted in observed images, from the
protocol's schedule) it scores the evaluation split of every task so far.

Per task: its evaluation split is loaded and extracted before its stream (so streamed images that are also in it
reuse its features), a checkpoint at 0 observed images scores the cold-start method, then the warm-up and stream
batches are observed, never crossing a checkpoint. Continual protocols are holdout across tasks: at each
checkpoint every category seen so far is scored (the metrics are their mean, each category's are kept) and the
checkpoints at task ends give the forgetting measure. With drift, the split is scored in the drift state of the
checkpoint and, for the forgetting of the initial appearance, in the initial state too. The per-image results
are the final checkpoint's: every scored split's images with their scores and AUPIMO.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from oadbench.checkpoints import normal_peaks
from oadbench.evaluation import Evaluation, Panel
from oadbench.metrics import AUPIMO_FPR, aupimo
from oadbench.per_image import PerImage, holdout_table
from oadbench.pipeline import EvalSet


class Holdout(Evaluation):
    mode = "holdout"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.scored: list[tuple[int, EvalSet, np.ndarray, np.ndarray]] = []  # the latest checkpoint's splits

    def run(self) -> None:
        stops = self.stops()
        ends = self.plan.task_ends
        done: set[int] = set()

        def maybe_evaluate(t: int) -> None:
            if self.observed in stops and self.observed not in done:
                done.add(self.observed)
                self.evaluate(t, task_end=self.observed == ends[t])

        for t, task in enumerate(self.plan.tasks):
            self.data.eval_set(t)  # before the stream, so overlapping stream images reuse its features
            maybe_evaluate(t)  # cold start (0 observed), or a task that streams nothing
            for part, kind in ((task.warmup, "observe_warmup"), (task.stream, "observe")):
                for idx, future in self.data.batches(t, part, stops, self.observed):
                    images, _ = future.result()
                    batch, *_ = self.stream_view(t, idx, images)
                    self.observe(batch, kind)
                    maybe_evaluate(t)

    def score_split(self, es: EvalSet) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N,) and maps (N,H,W) of an evaluation split, in evaluation batches."""
        bs = self.spec.evaluation.batch_size
        scores, maps = [], []
        for s in range(0, len(es.indices), bs):
            batch = self.data.make_batch(es.images[s:s + bs], [f[s:s + bs] for f in es.features])
            image, amap = self.score(batch)
            scores.append(image)
            maps.append(amap)
        return np.concatenate(scores), np.concatenate(maps)

    def split_metrics(self, es: EvalSet, scores: np.ndarray, maps: np.ndarray) -> dict[str, float]:
        return self.metrics(scores, es.labels, maps, es.masks.numpy() if es.has_masks else None)

    def evaluate(self, t_current: int, task_end: bool) -> None:
        """The checkpoint after ``observed`` images: every task's split up to ``t_current`` scored."""
        self.consolidate()
        per_category: dict[str, dict[str, float]] = {}
        initial: dict[str, dict[str, float]] = {}
        normal_maps: list[np.ndarray] = []
        self.scored = []
        state = self.data.drift_state(self.observed)
        for t in range(t_current + 1):
            es = self.data.eval_set_in(t, state)
            scores, maps = self.score_split(es)
            category = self.plan.tasks[t].category
            per_category[category] = self.split_metrics(es, scores, maps)
            if self.data.drift:  # the same split in the initial state, for forgetting
                first = self.data.eval_set(t)
                if first is es:
                    initial[category] = per_category[category]
                else:
                    initial[category] = self.split_metrics(first, *self.score_split(first))
            normal_maps.append(maps[es.labels == 0])
            self.scored.append((t, es, scores, maps))
            self.panel = Panel(es.images, es.labels, es.masks.numpy(), scores, maps,
                               [self.prep.datas[t].samples[i] for i in es.indices])
        self.checkpoint(t_current, per_category, task_end, normal_peaks(np.concatenate(normal_maps)),
                        initial if self.data.drift else None, state)

    def per_image(self) -> PerImage | None:
        """The last checkpoint's splits: each image's score and, where the split's normal pixels resolve the
        lowest FPR of AUPIMO's range, each anomalous image's AUPIMO (NaN otherwise)."""
        splits = []
        for t, es, scores, maps in self.scored:
            per_image = np.full(len(scores), np.nan)
            normal_pixels = int((es.labels == 0).sum()) * maps.shape[-2] * maps.shape[-1]
            if es.has_masks and normal_pixels * AUPIMO_FPR[0] >= 1 and (es.labels == 1).any():
                with contextlib.suppress(ValueError):  # the normal pixels' top values tie: FPR 1e-5 not reached
                    per_image = aupimo(maps, es.masks.numpy(), es.labels)
            splits.append((self.plan.tasks[t].category, [self.prep.datas[t].samples[i] for i in es.indices],
                           scores, per_image))
        return holdout_table(splits) if splits else None

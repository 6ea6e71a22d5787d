"""The image and feature pipeline of one run: samples -> decoded images -> drift views -> backbone features ->
the :class:`~oadbench.method.Batch` a method sees.

- Images are decoded on a small thread pool; stream batches never cross a checkpoint, and the next batch is
  decoded while the current one is processed (:meth:`Pipeline.batches`). A consumed batch is not kept. The
  workers run torch with one thread each (they are parallel across images already): a worker thread that runs a
  torch op with OpenMP keeps a team of OpenMP threads of its own, and with more OpenMP threads alive than cores
  libgomp stops spinning, so that every parallel region of the run's own thread waits on the kernel afterwards.
  Measured on 2 cores: a batched triangular solve of PaDiM's size (4096 positions, d = 100, 16 images) took
  0.27-0.30 s instead of 0.03 s once four multi-threaded workers had run a torch op (a standalone measurement,
  not a benchmark of this repository; ``benchmarks/bench_default_run.py`` measures the whole run).
- Drift (:mod:`oadbench.drift`): the j-th image of a stream batch is seen in the drift state after
  ``observed + j`` images of the run's T (:meth:`Pipeline.drift_state`); an evaluation split is seen in the state
  of its checkpoint.
- Frozen backbone features are obtained once per distinct image: a task's evaluation split before its stream
  starts (:meth:`Pipeline.eval_set`), kept on the run's device and reused at every checkpoint, and for stream
  images that are also in the evaluation split; the latest drifted view of each split is kept too, so an
  unchanged state is not extracted again. ``distinct`` counts the distinct (task, sample, drift state) images.
- The method's view: normalised images are made only for a method that reads them (``needs_images``).

Everything the run holds on the device (backbone weights, kept features, the current batch) is counted by
:meth:`Pipeline.resident_bytes`, the runner's share of device memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from oadbench import devices
from oadbench.data import Sample
from oadbench.extraction import FeatureSource
from oadbench.method import Batch
from oadbench.preparation import Prepared

DriftState = tuple[float, ...]  # empty or all 0: the initial state


@dataclass
class EvalSet:
    """A task's evaluation split, loaded and passed through the backbone once."""

    indices: list[int]
    images: torch.Tensor  # uint8 (N,3,H,W), CPU
    masks: torch.Tensor  # bool (N,H,W), CPU
    labels: np.ndarray  # (N,)
    features: list[torch.Tensor]  # per level (N,C,h,w), on the run device
    has_masks: bool
    position: dict[int, int] = field(default_factory=dict)  # sample index -> row
    state: DriftState = ()  # the drift state its images are in


class Pipeline:
    """Images and features of one prepared run; ``features`` extracts (or reads from the store) and meters."""

    def __init__(self, prep: Prepared, features: FeatureSource):
        self.prep = prep
        self.features = features
        self.drift = prep.spec.drift
        self.distinct: set[tuple[int, int, DriftState]] = set()  # (task, sample, drift state)
        self.eval_sets: dict[int, EvalSet] = {}  # task -> its evaluation split in the initial state
        self.drifted: dict[int, EvalSet] = {}  # task -> its evaluation split in the latest drift state
        self.current: Batch | None = None  # the batch the method is working on (its memory is the runner's)
        # image decoding and the next batch; each worker runs torch single-threaded (see the module docstring)
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="oadbench-io",
                                       initializer=torch.set_num_threads, initargs=(1,))
        self.prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oadbench-prefetch",
                                           initializer=torch.set_num_threads, initargs=(1,))

    def close(self) -> None:
        """Stop decoding (pending batches are dropped)."""
        self.prefetch.shutdown(wait=False, cancel_futures=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def resident_bytes(self) -> int:
        """Bytes the runner holds on the device: backbone weights, evaluation features, the current batch."""
        held: list[torch.Tensor | None] = [*self.features.backbone.parameters(), *self.features.backbone.buffers()]
        for es in [*self.eval_sets.values(), *self.drifted.values()]:
            held += es.features
        if self.current is not None:
            held += [*self.current.features, self.current.materialised]
        return devices.device_bytes(held, self.prep.device)

    # ---- images -------------------------------------------------------------------------------------------

    def load(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded images (uint8 (N,3,H,W)) and masks (bool (N,H,W)) of ``samples``, at the run's input size."""
        pairs = list(self.pool.map(self.prep.transform.load, samples))
        return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])

    def batches(self, t: int, indices: Sequence[int], stops: set[int], observed: int
                ) -> Iterator[tuple[list[int], Future]]:
        """Task ``t``'s samples ``indices`` in batches of ``stream.batch_size`` that never cross a checkpoint
        (``stops``, counted in observed images; ``observed`` images were observed before the first), each with
        the future of its decoded (images, masks); the next batch loads while the current one is processed."""
        data = self.prep.datas[t]
        bs = self.prep.spec.stream.batch_size
        groups: list[list[int]] = []
        pos = 0
        while pos < len(indices):
            size = bs
            upcoming = [s - observed for s in stops if s > observed]
            if upcoming:
                size = min(size, min(upcoming))
            groups.append(list(indices[pos:pos + size]))
            pos += size
            observed += size
        pending: dict[int, Future] = {}  # consumed batches are dropped, so memory does not grow with the stream
        submitted = 0
        for i, g in enumerate(groups):
            while submitted <= i + 1 and submitted < len(groups):
                pending[submitted] = self.prefetch.submit(self.load, [data.samples[j] for j in groups[submitted]])
                submitted += 1
            yield g, pending.pop(i)

    # ---- drift --------------------------------------------------------------------------------------------

    def drift_state(self, observed: int) -> DriftState:
        """The drift state after ``observed`` images (position observed / T of the run's T images)."""
        total = self.prep.plan.total_observed
        return self.drift.state(observed / total if total else 1.0)

    def drift_stream(self, t: int, idx: Sequence[int], images: torch.Tensor, masks: torch.Tensor | None,
                     observed: int) -> tuple[torch.Tensor, torch.Tensor | None, list[DriftState]]:
        """Stream images (and masks) each in its own drift state: the j-th of the batch at ``observed + j``."""
        if not self.drift:
            return images, masks, [()] * len(idx)
        samples = self.prep.datas[t].samples
        states = [self.drift_state(observed + j) for j in range(len(idx))]
        out_i, out_m = [], []
        for j, i in enumerate(idx):
            img, msk = self.drift.apply(images[j], None if masks is None else masks[j], states[j], samples[i].id,
                                        self.prep.config["seed"])
            out_i.append(img)
            out_m.append(msk)
        return torch.stack(out_i), None if masks is None else torch.stack(out_m), states

    # ---- evaluation splits --------------------------------------------------------------------------------

    def eval_set(self, t: int) -> EvalSet:
        """Task ``t``'s evaluation split in the initial state, loaded and extracted once."""
        if t in self.eval_sets:
            return self.eval_sets[t]
        task, data = self.prep.plan.tasks[t], self.prep.datas[t]
        images, masks = self.load([data.samples[i] for i in task.eval])
        es = self._build_eval_set(t, images, masks, ())
        self.eval_sets[t] = es
        return es

    def eval_set_in(self, t: int, state: DriftState) -> EvalSet:
        """Task ``t``'s evaluation split in drift state ``state`` (the initial set when nothing drifts); the latest
        drifted set is kept, so an unchanged state is not extracted again."""
        es = self.eval_set(t)
        if not any(state):
            return es
        cached = self.drifted.get(t)
        if cached is not None and cached.state == state:
            return cached
        samples = self.prep.datas[t].samples
        pairs = [self.drift.apply(es.images[r], es.masks[r], state, samples[i].id, self.prep.config["seed"])
                 for r, i in enumerate(es.indices)]
        images = torch.stack([a for a, _ in pairs])
        masks = torch.stack([b for _, b in pairs])
        drifted = self._build_eval_set(t, images, masks, state)
        self.drifted[t] = drifted
        return drifted

    def _build_eval_set(self, t: int, images: torch.Tensor, masks: torch.Tensor, state: DriftState) -> EvalSet:
        task, data = self.prep.plan.tasks[t], self.prep.datas[t]
        samples = [data.samples[i] for i in task.eval]
        bs = self.prep.spec.evaluation.batch_size
        chunks = [self._extract(t, task.eval[s:s + bs], images[s:s + bs], "backbone_eval",
                                [state] * len(task.eval[s:s + bs])) for s in range(0, len(samples), bs)]
        features = [torch.cat([c[level] for c in chunks]) for level in range(len(chunks[0]))]
        labels = np.array([s.label for s in samples], dtype=np.int64)
        has_masks = all(s.mask_path is not None for s in samples if s.is_anomalous)
        return EvalSet(list(task.eval), images, masks, labels, features, has_masks,
                       {i: r for r, i in enumerate(task.eval)}, state)

    # ---- features and the method's view -------------------------------------------------------------------

    def _extract(self, task: int, indices: Sequence[int], images: torch.Tensor, kind: str,
                 states: Sequence[DriftState] | None = None) -> list[torch.Tensor]:
        states = states or [()] * len(indices)
        self.distinct.update((task, i, st if any(st) else ()) for i, st in zip(indices, states, strict=True))
        return self.features(images, kind)

    def stream_batch(self, t: int, idx: list[int], images: torch.Tensor, states: Sequence[DriftState]) -> Batch:
        """The method's view of stream images; images of the evaluation split in the initial state reuse its
        features."""
        es = self.eval_sets.get(t)
        undrifted = not any(any(st) for st in states)
        if es is not None and undrifted and all(i in es.position for i in idx):  # overlap: reuse eval features
            rows = torch.tensor([es.position[i] for i in idx])
            feats = [f.index_select(0, rows.to(f.device)) for f in es.features]
        else:
            feats = self._extract(t, idx, images, "backbone_stream", states)
        return self.make_batch(images, feats)

    def make_batch(self, images: torch.Tensor, feats: Sequence[torch.Tensor]) -> Batch:
        """The method's view of uint8 ``images`` and their features; the normalised images are made now only for
        a method that reads them (``needs_images``), else never unless it reads them after all."""
        if self.prep.method_cls.needs_images:
            self.current = Batch(self.features.normalise(images), feats)
        else:
            self.current = Batch.deferred(images, self.features.normalise, feats)
        return self.current

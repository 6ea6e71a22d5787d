"""One run: resolve and validate the config, stream images to the method, evaluate, measure cost, write the record.

Flow (nothing flows backwards): config -> :func:`prepare` (protocol, method config, dataset, stream plan; every
validation error happens here, before anything is written) -> :func:`execute` (backbone, method, stream loop,
evaluations, cost meters) -> run record (atomic JSON) and W&B.

Frozen backbone features are obtained once per distinct image per run: each task's evaluation split before its
stream starts, reused at every checkpoint (and for streamed images that are also in the evaluation split); stream
images when streamed. With the feature store (``features.cache``, default on; :mod:`oadbench.feature_store`) an
image whose features another run already extracted is read instead of extracted, exactly. ``cost.backbone_images``
counts the images passed through the backbone, ``cost.feature_store_hits`` those read from the store,
``data.distinct_images`` the distinct ones: the first two add up to the third. The store changes nothing but cost.

Devices: a CUDA run is its own record (its device type and numeric settings are part of its identity; a CPU run's
identity has none, so CPU records keep their names), runs with deterministic algorithms, a fixed cuBLAS workspace
and TF32 off unless ``precision=tf32``, and warms the device up before the meters start (:mod:`oadbench.devices`).

Records and bad input: a ConfigError / DataError / WeightsUnavailableError (bad input) never leaves a record; any
other failure after the run started writes ``status: failed`` with the error — unless a finished record of the
same run exists, which is never overwritten by a failure.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import oadbench
from oadbench import devices
from oadbench.claims import RunClaim
from oadbench.cost import CostMeter
from oadbench.data import CategoryData, ImageTransform, Sample, get_dataset
from oadbench.errors import ConfigError, DataError, MethodError, WeightsUnavailableError
from oadbench.extraction import FeatureSource
from oadbench.feature_store import FEATURE_DEFAULTS
from oadbench.features import DEFAULT_BACKBONE
from oadbench.method import Batch, Method, MethodContext, build_config, config_identity, get_method
from oadbench.metrics import IMAGE_METRICS, PIXEL_METRICS, image_metrics, pixel_metrics, summarise_curve
from oadbench.protocol import ProtocolSpec
from oadbench.results import (
    FAILED,
    FINISHED,
    SCHEMA_VERSION,
    identity_hash,
    is_finished,
    read_record,
    record_path,
    write_arrays,
    write_record,
)
from oadbench.stream import StreamPlan, TaskPlan, build_plan, plan_digest
from oadbench.tracking import WANDB_MODES, Tracker, map_panel
from oadbench.validate import check_bool, check_int, check_number

log = logging.getLogger("oadbench")
MAPS_PX = 128  # side of the anomaly maps saved beside a record

INPUT_ERRORS = (ConfigError, DataError, WeightsUnavailableError)
RUN_KEYS = ("protocol", "method", "dataset", "backbone", "image_size", "center_crop", "seed", "device",
            "precision", "results_dir", "force", "wandb", "progress", "threads", "features")


@dataclass
class Prepared:
    """A validated run, ready to execute."""

    config: dict[str, Any]  # resolved, plain
    spec: ProtocolSpec
    method_cls: type[Method]
    method_config: Any
    datas: list[CategoryData]
    plan: StreamPlan
    transform: ImageTransform
    device: torch.device
    identity: dict[str, Any]
    run_hash: str
    path: Path


# --------------------------------------------------------------------------------------------------------------
# preparation and validation


def prepare(config: Mapping[str, Any]) -> Prepared:
    """Validate ``config`` and resolve everything a run needs; raises ConfigError/DataError on bad input."""
    cfg = {k: v for k, v in config.items()}
    unknown = [k for k in cfg if k not in RUN_KEYS]
    if unknown:
        raise ConfigError(unknown[0], "unknown configuration key", allowed=RUN_KEYS)

    proto = _mapping(cfg, "protocol")
    spec = ProtocolSpec.from_dict(proto, source=f"protocol '{proto.get('name', '?')}'")

    mcfg = _mapping(cfg, "method")
    method_cls = get_method(_str(mcfg, "name", "method.name"))
    method_config = build_config(method_cls, mcfg)

    dcfg = _mapping(cfg, "dataset")
    loader = get_dataset(_str(dcfg, "name", "dataset.name"))
    options = {k: v for k, v in dcfg.items() if k not in ("name", "root", "category")}
    for key in options:
        if key not in loader.options:
            raise ConfigError(f"dataset.{key}", f"unknown option of dataset '{loader.name}'",
                              allowed=["dataset.root", "dataset.category", *[f"dataset.{k}" for k in loader.options]])
    root = dcfg.get("root")
    if loader.root_option is not None:  # e.g. hf: dataset.path, an option (so it is part of the run's identity)
        if root is not None:
            raise ConfigError("dataset.root", f"is not used by dataset '{loader.name}'; give "
                              f"dataset.{loader.root_option}")
        root = options.get(loader.root_option)
        if root is None:
            raise ConfigError(f"dataset.{loader.root_option}", f"is required for dataset '{loader.name}'; "
                              f"expected:\n{loader.layout.rstrip()}")
    if root is None:
        root = loader.default_root()
        if root is None:
            raise ConfigError("dataset.root", f"is required for dataset '{loader.name}'; expected layout:\n"
                              f"{loader.layout.rstrip()}")
    root = Path(str(root)).expanduser()
    if spec.categories is not None:
        categories = list(spec.categories)
    elif dcfg.get("category") is not None:
        categories = [str(dcfg["category"])]
    else:
        available = loader.categories(root, **options) if loader.root_option else loader.categories(root)
        if not available:
            raise DataError(f"dataset '{loader.name}' at {root}: no category found; expected layout:\n"
                            f"{loader.layout.rstrip()}")
        categories = [available[0]]
    datas = [loader.load(root, c, **options) for c in categories]

    seed = check_int(cfg.get("seed", 0), "seed", lo=0)
    plan = build_plan(spec, datas, seed)

    image_size = check_int(cfg.get("image_size", 256), "image_size", lo=32)
    crop = cfg.get("center_crop")
    if crop is not None:
        crop = check_int(crop, "center_crop", lo=16)
        if crop > image_size:
            raise ConfigError("center_crop", f"must be <= image_size ({image_size}), got {crop}")
    device = devices.resolve_device(str(cfg.get("device", "cpu")))
    precision = devices.check_precision(cfg.get("precision", devices.DEFAULT_PRECISION), device)

    bcfg = dict(cfg.get("backbone") or {})
    for key in bcfg:
        if key not in ("name", "weights"):
            raise ConfigError(f"backbone.{key}", "unknown key", allowed=["backbone.name", "backbone.weights"])
    backbone = {"name": str(bcfg.get("name", DEFAULT_BACKBONE)), "weights": str(bcfg.get("weights", "auto"))}

    wcfg = dict(cfg.get("wandb") or {})
    wandb_cfg = {"mode": wcfg.pop("mode", "offline"), "project": wcfg.pop("project", "oadbench"),
                 "entity": wcfg.pop("entity", None), "log_images": wcfg.pop("log_images", 4)}
    if wcfg:
        raise ConfigError(f"wandb.{next(iter(wcfg))}", "unknown key",
                          allowed=["wandb.mode", "wandb.project", "wandb.entity", "wandb.log_images"])
    if wandb_cfg["mode"] not in WANDB_MODES:
        raise ConfigError("wandb.mode", f"{wandb_cfg['mode']!r} is not valid", allowed=WANDB_MODES)
    check_int(wandb_cfg["log_images"], "wandb.log_images", lo=0)

    threads = cfg.get("threads")
    if threads is not None:
        check_int(threads, "threads", lo=1)
    force = cfg.get("force", False)
    if not isinstance(force, bool):
        raise ConfigError("force", f"must be true or false, got {force!r}")
    features = _features_config(cfg.get("features"))

    dataset_identity = {"name": loader.name, "categories": categories, "options": options}
    identity = {
        "protocol": spec.to_dict(),
        "method": {"name": method_cls.name, **config_identity(method_config)},
        "dataset": dataset_identity,
        "backbone": backbone,
        "input": {"image_size": image_size, "center_crop": crop},
        "seed": seed,
    }
    numeric = devices.numeric_identity(device, precision)
    if numeric is not None:  # only off the CPU: CPU identities, and so the names of CPU records, stay as they were
        identity["device"] = numeric
    run_hash = identity_hash(identity)
    results_dir = Path(str(cfg.get("results_dir", "results"))).expanduser()
    category_label = categories[0] if len(categories) == 1 else "+".join(categories)
    path = record_path(results_dir, spec.name, loader.name, method_cls.name, category_label, seed, run_hash)
    resolved = {
        "protocol": spec.to_dict(),
        "method": identity["method"],
        "dataset": {"name": loader.name, "root": str(root), "category": category_label, **options},
        "backbone": backbone,
        "image_size": image_size,
        "center_crop": crop,
        "seed": seed,
        "device": str(device),
        "precision": precision,
        "results_dir": str(results_dir),
        "force": force,
        "wandb": wandb_cfg,
        "progress": bool(cfg.get("progress", True)),
        "threads": threads,
        "features": features,
    }
    return Prepared(resolved, spec, method_cls, method_config, datas, plan, ImageTransform(image_size, crop),
                    device, identity, run_hash, path)


def run(config: Mapping[str, Any]) -> dict[str, Any]:
    """Prepare and execute one run. Skipped (returning the existing record) if it already finished, unless
    ``force``; skipped (returning ``status: claimed``) while another live process executes it."""
    prep = prepare(config)
    if not prep.config["force"] and is_finished(prep.path):
        return _skipped(prep)
    claim = RunClaim(prep.path)
    if not claim.acquire():
        owner = claim.owner or {}
        log.info("skipped: run %s is being executed by %s (pid %s)", prep.path, owner.get("host"), owner.get("pid"))
        return {"status": "claimed", "skipped": True, "config": prep.config, "path": str(prep.path),
                "claimed_by": {k: owner.get(k) for k in ("host", "pid")}}
    with claim:
        if not prep.config["force"] and is_finished(prep.path):  # finished elsewhere while we were preparing
            return _skipped(prep)
        return execute(prep)


def _skipped(prep: Prepared) -> dict[str, Any]:
    log.info("skipped: a finished record exists at %s (force=true reruns)", prep.path)
    record = read_record(prep.path)
    assert record is not None
    record["skipped"] = True
    record["path"] = str(prep.path)
    return record


# --------------------------------------------------------------------------------------------------------------
# execution


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
    state: tuple[float, ...] = ()  # the drift state its images are in (empty or all 0: the initial one)


class Execution:
    def __init__(self, prep: Prepared):
        self.prep = prep
        self.cfg = prep.config
        self.spec = prep.spec
        self.checkpoints: list[dict[str, Any]] = []
        self.distinct: set[tuple[int, int, tuple[float, ...]]] = set()  # (task, sample, drift state)
        self.observed = 0
        self.drift = prep.spec.drift
        self._drifted: dict[int, EvalSet] = {}  # task -> its evaluation split in the latest drift state
        self.panels: list[tuple[str, np.ndarray]] = []
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="oadbench-io")  # image decoding
        self.prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oadbench-prefetch")  # next batch

    # ---- setup --------------------------------------------------------------------------------------------

    def setup(self) -> None:
        p = self.prep
        if self.cfg["threads"]:
            torch.set_num_threads(self.cfg["threads"])
        torch.manual_seed(self.cfg["seed"])
        self._batch: Batch | None = None  # the batch the method is working on (its memory is the runner's)
        self.meter = CostMeter(p.device, resident=self._resident_bytes)
        self.features = FeatureSource(self.cfg["backbone"], p.method_cls.feature_levels(p.method_config),
                                      self.cfg["features"], p.device, self.cfg["image_size"], self.cfg["center_crop"],
                                      self.meter)
        self.eval_sets: dict[int, EvalSet] = {}
        # CUDA: the device's one-off start-up before any meter, and before the method exists (its state is its own)
        sizes = {self.spec.stream.batch_size, self.spec.evaluation.batch_size}
        self.meter.start(devices.warm_up(p.device, self.features.backbone, self.cfg["image_size"], sizes)
                         if p.device.type == "cuda" else None)
        info = self.features.info
        context = MethodContext(
            mode=self.spec.training, device=p.device, seed=self.cfg["seed"],
            image_size=p.transform.output_size, backbone=info.name, channels=info.channels, strides=info.strides,
        )
        self.method = p.method_cls(p.method_config, context)

    def _resident_bytes(self) -> int:
        """Bytes the runner holds on the device: backbone weights, evaluation features, the current batch."""
        held: list[torch.Tensor | None] = [*self.features.backbone.parameters(), *self.features.backbone.buffers()]
        for es in [*self.eval_sets.values(), *self._drifted.values()]:
            held += es.features
        if self._batch is not None:
            held += [*self._batch.features, self._batch.materialised]
        return devices.device_bytes(held, self.prep.device)

    # ---- data ---------------------------------------------------------------------------------------------

    def _load(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = list(self.pool.map(self.prep.transform.load, samples))
        return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])

    def _extract(self, task: int, indices: Sequence[int], images: torch.Tensor, kind: str,
                 states: Sequence[tuple[float, ...]] | None = None) -> list[torch.Tensor]:
        states = states or [()] * len(indices)
        self.distinct.update((task, i, st if any(st) else ()) for i, st in zip(indices, states, strict=True))
        return self.features(images, kind)

    # ---- drift --------------------------------------------------------------------------------------------

    def drift_state(self, observed: int) -> tuple[float, ...]:
        """The drift state after ``observed`` images (position observed / T of the run's T images)."""
        total = self.prep.plan.total_observed
        return self.drift.state(observed / total if total else 1.0)

    def _drift_stream(self, t: int, idx: Sequence[int], images: torch.Tensor, masks: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[float, ...]]]:
        """Stream images (and masks) each in its own drift state: the j-th of the batch at observed + j."""
        if not self.drift:
            return images, masks, [()] * len(idx)
        samples = self.prep.datas[t].samples
        states = [self.drift_state(self.observed + j) for j in range(len(idx))]
        out_i, out_m = [], []
        for j, i in enumerate(idx):
            img, msk = self.drift.apply(images[j], None if masks is None else masks[j], states[j], samples[i].id,
                                        self.cfg["seed"])
            out_i.append(img)
            out_m.append(msk)
        return torch.stack(out_i), None if masks is None else torch.stack(out_m), states

    def eval_set_in(self, t: int, state: tuple[float, ...]) -> EvalSet:
        """Task ``t``'s evaluation split in drift state ``state`` (the initial set when nothing drifts); the latest
        drifted set is kept, so an unchanged state is not extracted again."""
        es = self.eval_set(t)
        if not any(state):
            return es
        cached = self._drifted.get(t)
        if cached is not None and cached.state == state:
            return cached
        samples = self.prep.datas[t].samples
        pairs = [self.drift.apply(es.images[r], es.masks[r], state, samples[i].id, self.cfg["seed"])
                 for r, i in enumerate(es.indices)]
        images = torch.stack([a for a, _ in pairs])
        masks = torch.stack([b for _, b in pairs])
        drifted = self._build_eval_set(t, images, masks, state)
        self._drifted[t] = drifted
        return drifted

    def eval_set(self, t: int) -> EvalSet:
        """Task ``t``'s evaluation split in the initial state, loaded and extracted once."""
        if t in self.eval_sets:
            return self.eval_sets[t]
        task, data = self.prep.plan.tasks[t], self.prep.datas[t]
        images, masks = self._load([data.samples[i] for i in task.eval])
        es = self._build_eval_set(t, images, masks, ())
        self.eval_sets[t] = es
        return es

    def _build_eval_set(self, t: int, images: torch.Tensor, masks: torch.Tensor, state: tuple[float, ...]
                        ) -> EvalSet:
        task, data = self.prep.plan.tasks[t], self.prep.datas[t]
        samples = [data.samples[i] for i in task.eval]
        bs = self.spec.evaluation.batch_size
        chunks = [self._extract(t, task.eval[s:s + bs], images[s:s + bs], "backbone_eval",
                                [state] * len(task.eval[s:s + bs])) for s in range(0, len(samples), bs)]
        features = [torch.cat([c[level] for c in chunks]) for level in range(len(chunks[0]))]
        labels = np.array([s.label for s in samples], dtype=np.int64)
        has_masks = all(s.mask_path is not None for s in samples if s.is_anomalous)
        return EvalSet(list(task.eval), images, masks, labels, features, has_masks,
                       {i: r for r, i in enumerate(task.eval)}, state)

    def _batches(self, t: int, indices: Sequence[int], stops: set[int]) -> Iterator[tuple[list[int], Future]]:
        """Batches of ``stream.batch_size`` that never cross a checkpoint; the next batch loads while the
        current one is processed."""
        data = self.prep.datas[t]
        bs = self.spec.stream.batch_size
        groups: list[list[int]] = []
        pos, observed = 0, self.observed
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
                pending[submitted] = self.prefetch.submit(self._load, [data.samples[j] for j in groups[submitted]])
                submitted += 1
            yield g, pending.pop(i)

    def _stream_batch(self, t: int, idx: list[int], images: torch.Tensor,
                      states: Sequence[tuple[float, ...]]) -> Batch:
        es = self.eval_sets.get(t)
        undrifted = not any(any(st) for st in states)
        if es is not None and undrifted and all(i in es.position for i in idx):  # overlap: reuse eval features
            rows = torch.tensor([es.position[i] for i in idx])
            feats = [f.index_select(0, rows.to(f.device)) for f in es.features]
        else:
            feats = self._extract(t, idx, images, "backbone_stream", states)
        return self._make_batch(images, feats)

    def _make_batch(self, images: torch.Tensor, feats: Sequence[torch.Tensor]) -> Batch:
        """The method's view of uint8 ``images`` and their features; the normalised images are made now only for
        a method that reads them (``needs_images``), else never unless it reads them after all."""
        if self.prep.method_cls.needs_images:
            self._batch = Batch(self.features.normalise(images), feats)
        else:
            self._batch = Batch.deferred(images, self.features.normalise, feats)
        return self._batch

    # ---- evaluation ---------------------------------------------------------------------------------------

    def _check_finite(self, scores: torch.Tensor, maps: torch.Tensor) -> None:
        if not (torch.isfinite(scores).all() and torch.isfinite(maps).all()):
            raise MethodError(f"method '{self.prep.method_cls.name}' produced non-finite (NaN or infinite) scores "
                              f"at the checkpoint after {self.observed} observed images")

    def score_eval(self, es: EvalSet) -> tuple[np.ndarray, np.ndarray]:
        bs = self.spec.evaluation.batch_size
        scores, maps = [], []
        for s in range(0, len(es.indices), bs):
            batch = self._make_batch(es.images[s:s + bs], [f[s:s + bs] for f in es.features])
            with self.meter.measure("score", len(batch)):
                out = self.method.score(batch)
            self._check_finite(out.image, out.maps)
            scores.append(out.image.detach().float().cpu())
            maps.append(out.maps.detach().float().cpu())
        return torch.cat(scores).numpy(), torch.cat(maps).numpy()

    def metrics(self, scores: np.ndarray, labels: np.ndarray, maps: np.ndarray | None,
                masks: np.ndarray | None) -> dict[str, float]:
        wanted = self.spec.metrics
        out = image_metrics(scores, labels, names=[m for m in wanted if m in IMAGE_METRICS])
        pix = [m for m in wanted if m in PIXEL_METRICS]
        if pix:
            if maps is not None and masks is not None:
                out.update(pixel_metrics(maps, masks, names=pix))
            else:
                out.update({m: float("nan") for m in pix})
        return {m: out[m] for m in wanted}

    def evaluate_holdout(self, t_current: int, task_end: bool) -> None:
        with self.meter.measure("consolidate", 0):
            self.method.consolidate()
        per_category: dict[str, dict[str, float]] = {}
        initial: dict[str, dict[str, float]] = {}
        normal_maps: list[np.ndarray] = []
        state = self.drift_state(self.observed)
        for t in range(t_current + 1):
            es = self.eval_set_in(t, state)
            scores, maps = self.score_eval(es)
            category = self.prep.plan.tasks[t].category
            masks = es.masks.numpy() if es.has_masks else None
            per_category[category] = self.metrics(scores, es.labels, maps, masks)
            if self.drift:  # the same split in the initial state, for forgetting
                first = self.eval_set(t)
                if first is es:
                    initial[category] = per_category[category]
                else:
                    s0, m0 = self.score_eval(first)
                    initial[category] = self.metrics(s0, first.labels, m0,
                                                     first.masks.numpy() if first.has_masks else None)
            normal_maps.append(maps[es.labels == 0])
            self._panel_source = (es.images, es.labels, es.masks.numpy(), scores, maps)
            self._panel_samples = [self.prep.datas[t].samples[i] for i in es.indices]
        self._record_checkpoint(per_category, t_current, task_end, normal_peaks(np.concatenate(normal_maps)),
                                initial if self.drift else None, state)



    def _record_checkpoint(self, per_category: dict[str, dict[str, float]], t: int, task_end: bool,
                           peaks: dict[str, float] | None = None,
                           initial: dict[str, dict[str, float]] | None = None,
                           state: tuple[float, ...] = ()) -> None:
        names = self.spec.metrics

        def mean(by_category: dict[str, dict[str, float]]) -> dict[str, float]:
            if len(by_category) == 1:
                return next(iter(by_category.values()))
            return {m: _nanmean([v[m] for v in by_category.values()]) for m in names}

        metrics = mean(per_category)
        entry: dict[str, Any] = {"observed": self.observed, "task": self.prep.plan.tasks[t].category,
                                 "metrics": metrics, "footprint_bytes": int(self.method.footprint())}
        if initial is not None:
            entry["metrics_initial"] = mean(initial)
            entry["drift_state"] = self.drift.describe(state)
        diagnostics = {k: float(v) for k, v in self.method.diagnostics().items()}
        if diagnostics:
            entry["diagnostics"] = diagnostics
        if peaks is not None:
            entry["normal_peaks"] = peaks
        if self.spec.continual:
            entry["per_category"] = per_category
            entry["task_end"] = task_end
            if initial is not None:
                entry["per_category_initial"] = initial
        self.checkpoints.append(entry)
        self.tracker.log({**{f"eval/{k}": v for k, v in metrics.items()},
                          **{f"eval_initial/{k}": v for k, v in entry.get("metrics_initial", {}).items()},
                          **{f"diag/{k}": v for k, v in diagnostics.items()},
                          "footprint_bytes": entry["footprint_bytes"], "observed": self.observed},
                         step=self.observed)
        if self.bar is not None:
            self.bar.set_postfix_str(f"image_auroc={metrics.get('image_auroc', float('nan')):.3f}")

    # ---- loops --------------------------------------------------------------------------------------------

    def run_holdout(self) -> None:
        plan = self.prep.plan
        stops = set(self.spec.checkpoints(plan.total_observed, plan.task_ends))
        ends = plan.task_ends
        done: set[int] = set()

        def maybe_evaluate(t: int) -> None:
            if self.observed in stops and self.observed not in done:
                done.add(self.observed)
                self.evaluate_holdout(t, task_end=self.observed == ends[t])

        for t, task in enumerate(plan.tasks):
            self.eval_set(t)  # before the stream, so overlapping stream images reuse its features
            maybe_evaluate(t)  # cold start (0 observed), or a task that streams nothing
            for part, kind in ((task.warmup, "observe_warmup"), (task.stream, "observe")):
                for idx, future in self._batches(t, part, stops):
                    images, _ = future.result()
                    images, _, states = self._drift_stream(t, idx, images, None)
                    batch = self._stream_batch(t, idx, images, states)
                    with self.meter.measure(kind, len(idx)):
                        self.method.observe(batch)
                    self.observed += len(idx)
                    self._tick(len(idx))
                    maybe_evaluate(t)

    def run_prequential(self) -> None:
        plan = self.prep.plan
        stops = set(self.spec.checkpoints(plan.total_observed, plan.task_ends))
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        tail_images: list[torch.Tensor] = []
        has_masks = True
        for t, task in enumerate(plan.tasks):
            data = self.prep.datas[t]
            for idx, future in self._batches(t, task.warmup, stops):
                images, _ = future.result()
                images, _, states = self._drift_stream(t, idx, images, None)
                batch = self._stream_batch(t, idx, images, states)
                with self.meter.measure("observe_warmup", len(idx)):
                    self.method.observe(batch)
                self.observed += len(idx)
                self._tick(len(idx))
            for idx, future in self._batches(t, task.stream, stops):
                images, mask = future.result()
                images, mask, states = self._drift_stream(t, idx, images, mask)  # scored in their own state
                batch = self._stream_batch(t, idx, images, states)
                with self.meter.measure("consolidate", 0):
                    self.method.consolidate()
                with self.meter.measure("score", len(idx)):
                    out = self.method.score(batch)
                self._check_finite(out.image, out.maps)
                scores.append(out.image.detach().float().cpu().numpy())
                maps.append(out.maps.detach().float().cpu().numpy())
                samples = [data.samples[i] for i in idx]
                labels.append(np.array([s.label for s in samples]))
                masks.append(mask.numpy())
                tail_images = (tail_images + [images])[-16:]
                has_masks &= all(s.mask_path is not None for s in samples if s.is_anomalous)
                with self.meter.measure("observe", len(idx)):
                    self.method.observe(batch)
                self.observed += len(idx)
                self._tick(len(idx))
                if self.observed in stops:
                    m = self.metrics(np.concatenate(scores), np.concatenate(labels),
                                     np.concatenate(maps) if has_masks else None,
                                     np.concatenate(masks) if has_masks else None)
                    self._record_checkpoint({task.category: m}, t, task_end=False)
        if scores:  # the last scored stream images, for the W&B panels
            self._panel_source = (torch.cat(tail_images[-16:]), np.concatenate(labels[-16:]),
                                  np.concatenate(masks[-16:]), np.concatenate(scores[-16:]),
                                  np.concatenate(maps[-16:]))

    def _tick(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    # ---- the whole run ------------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        with devices.numeric_mode(self.prep.device, self.cfg["precision"]):  # before the run's first kernel
            return self._execute()

    def _execute(self) -> dict[str, Any]:
        p = self.prep
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        self.bar = None
        self.tracker = None
        self._panel_source = None
        record: dict[str, Any] = {}
        try:
            self.setup()
            record = self._base_record(started)
            self.tracker = Tracker(
                self.cfg["wandb"]["mode"], self.cfg["wandb"]["project"], self.cfg["wandb"]["entity"],
                Path(self.cfg["results_dir"]), name=p.path.stem, group=f"{self.spec.name}/{record['data']['dataset']}",
                tags=[self.spec.name, p.method_cls.name, record["data"]["dataset"]], config=p.config,
            )
            if self.cfg["progress"]:
                from tqdm import tqdm

                self.bar = tqdm(total=p.plan.total_observed, unit="img", desc=f"{p.method_cls.name} observe",
                                dynamic_ncols=True, leave=False)
            if self.spec.evaluation.mode == "prequential":
                self.run_prequential()
            else:
                self.run_holdout()
            if self.bar is not None:
                self.bar.close()
            record.update(self._results())
            record["data"]["distinct_images"] = len(self.distinct)
            record["status"] = FINISHED
        except INPUT_ERRORS:
            self._close(failed=True, record=None)
            raise
        except BaseException as exc:
            if record:
                record.update(self._results(partial=True))
                record["status"] = FAILED
                record["error"] = f"{type(exc).__name__}: {exc}"
                record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                record["duration_s"] = time.perf_counter() - t0
                if not is_finished(p.path):
                    write_record(p.path, record)
            self._close(failed=True, record=record)
            raise
        record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record["duration_s"] = time.perf_counter() - t0
        self._log_panels()
        record["tracking"] = {"wandb_mode": self.tracker.mode, "wandb_run_id": self.tracker.run_id,
                              "wandb_dir": self.tracker.run_dir}
        record["maps_file"] = self._save_maps()
        write_record(p.path, record)
        self._close(failed=False, record=record)
        record["path"] = str(p.path)
        return record

    def _close(self, failed: bool, record: dict[str, Any] | None) -> None:
        if self.bar is not None:
            self.bar.close()
        self.prefetch.shutdown(wait=False, cancel_futures=True)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.tracker is not None:
            summary = {}
            if record and record.get("final"):
                summary = {f"final/{k}": v for k, v in record["final"].items()}
                summary.update({f"cost/{k}": v for k, v in _flat_cost(record.get("cost", {})).items()})
                summary["status"] = record.get("status")
            self.tracker.finish(summary, failed=failed)

    def _base_record(self, started: datetime) -> dict[str, Any]:
        p = self.prep
        plan = p.plan
        n_stream_anom = sum(p.datas[t].samples[i].is_anomalous for t, task in enumerate(plan.tasks)
                            for i in task.stream)
        n_eval = sum(len(task.eval) for task in plan.tasks)
        n_eval_anom = sum(p.datas[t].samples[i].is_anomalous for t, task in enumerate(plan.tasks)
                          for i in task.eval)
        return {
            "schema": SCHEMA_VERSION,
            "id": p.run_hash,
            "status": "running",
            "config": p.config,
            "identity": p.identity,
            "env": _environment(p.device, self.cfg["precision"]),
            "backbone": dataclasses.asdict(self.features.info),
            "data": {
                "dataset": p.identity["dataset"]["name"],
                "categories": [t.category for t in plan.tasks],
                "image_size": p.transform.output_size,
                "warmup": sum(len(t.warmup) for t in plan.tasks),
                "stream": sum(len(t.stream) for t in plan.tasks),
                "stream_anomalous": n_stream_anom,
                "eval": n_eval,
                "eval_anomalous": n_eval_anom,
                "stream_digest": plan_digest(plan, p.datas),
                "distinct_images": None,
            },
            "started_at": started.isoformat(timespec="seconds"),
            "error": None,
        }

    def _results(self, partial: bool = False) -> dict[str, Any]:
        names = self.spec.metrics
        final = dict(self.checkpoints[-1]["metrics"]) if self.checkpoints else {}
        final_initial = self.checkpoints[-1].get("metrics_initial") if self.checkpoints else None
        observed = [c["observed"] for c in self.checkpoints]
        summary = {m: summarise_curve(observed, [c["metrics"][m] for c in self.checkpoints])
                   for m in names} if self.checkpoints else {}
        out: dict[str, Any] = {
            "checkpoints": self.checkpoints,
            "final": final,
            **({"final_initial": dict(final_initial)} if final_initial is not None else {}),
            "summary": summary,
            "cost": {
                **self.meter.summary(sum(len(t.stream) for t in self.prep.plan.tasks)),
                "backbone_images": self.features.extracted,
                "feature_store_hits": self.features.hits,
                "footprint_bytes": self.checkpoints[-1]["footprint_bytes"] if self.checkpoints else None,
                "footprint_max_bytes": max((c["footprint_bytes"] for c in self.checkpoints), default=None),
            } if hasattr(self, "features") else {},
        }
        if self.spec.continual and self.checkpoints:
            out["forgetting"] = _forgetting(self.checkpoints, [t.category for t in self.prep.plan.tasks], names)
        return out

    def _save_maps(self) -> str | None:
        """Beside the record, ``<record>.maps.npz``: 2 anomalous images of the final evaluation (the first of each
        of its first two defect types, so that a figure does not show two shots of one defect) and its first 2
        normal images -- the same for every method of a protocol, dataset and seed -- with their masks and anomaly
        maps at 128 px, for qualitative figures. Returns the file name, or None (prequential runs, or no
        evaluation)."""
        if self._panel_source is None or self.spec.evaluation.mode == "prequential":
            return None
        images, labels, masks, scores, maps = self._panel_source
        anomalous = [int(r) for r in np.flatnonzero(labels == 1)]
        first_of_type: dict[str, int] = {}
        for r in anomalous:
            first_of_type.setdefault(self._panel_samples[r].defect_type, r)
        picked = list(first_of_type.values())[:2]
        picked += [r for r in anomalous if r not in picked][: 2 - len(picked)]
        rows = [*sorted(picked), *np.flatnonzero(labels == 0)[:2]]
        if not rows:
            return None

        def shrink(x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, MAPS_PX, MAPS_PX), area average
            return torch.nn.functional.interpolate(x.float(), size=(MAPS_PX, MAPS_PX), mode="area")

        small = shrink(images[torch.as_tensor(rows)])
        small_maps = shrink(torch.as_tensor(maps[rows]).unsqueeze(1)).squeeze(1)
        small_masks = shrink(torch.as_tensor(masks[rows]).unsqueeze(1)).squeeze(1) > 0.5
        path = self.prep.path.with_name(self.prep.path.stem + ".maps.npz")
        write_arrays(path, ids=np.array([self._panel_samples[r].id for r in rows]), labels=labels[rows].astype(np.int8),
                     scores=np.asarray(scores)[rows].astype(np.float32),
                     images=small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy(),
                     masks=small_masks.numpy(), maps=small_maps.numpy().astype(np.float16))
        return path.name

    def _log_panels(self) -> None:
        """A few (image, ground truth, map) panels of the last evaluation, mostly anomalous images."""
        n = self.cfg["wandb"]["log_images"]
        if not n or self._panel_source is None or self.tracker.run is None:
            return
        images, labels, masks, scores, maps = self._panel_source
        chosen = [*np.flatnonzero(labels == 1)[: max(1, n - n // 4)], *np.flatnonzero(labels == 0)[: n // 4]][:n]
        vmin, vmax = float(np.min(maps)), float(np.max(maps))
        panels = [(f"label={int(labels[r])} score={scores[r]:.3g}",
                   map_panel(images[r].permute(1, 2, 0).numpy(), masks[r], maps[r], vmin, vmax)) for r in chosen]
        self.tracker.log_images("anomaly_maps", panels, step=self.observed)


def execute(prep: Prepared) -> dict[str, Any]:
    """Run a prepared run and write its record; returns the record (with ``path``)."""
    return Execution(prep).execute()


# --------------------------------------------------------------------------------------------------------------
# helpers


def normal_peaks(maps: np.ndarray) -> dict[str, float] | None:
    """Where normal images score highest: the share of the normal evaluation images (maps (N,H,W)) whose map
    maximum lies within ``border_px`` = max(1, H // 16) of the image's edge (a band that covers 23 % of the
    image), or None without normal images. Far above 0.23, the border is what makes normal images look
    anomalous (zero padding, vignetting)."""
    if len(maps) == 0:
        return None
    n, h, w = maps.shape
    band = max(1, h // 16)
    rows, cols = np.unravel_index(maps.reshape(n, -1).argmax(1), (h, w))
    border = (rows < band) | (cols < band) | (rows >= h - band) | (cols >= w - band)
    return {"border_share": float(border.mean()), "border_px": float(band)}


def _forgetting(checkpoints: list[dict[str, Any]], categories: list[str], names: Sequence[str]) -> dict[str, Any]:
    """Forgetting per metric: mean over all but the last task of (best value at a task end before the last task
    minus the final value), as in IM-IAD's continual setting."""
    ends = [c for c in checkpoints if c.get("task_end")]
    if not ends:
        return {}
    last = ends[-1]["per_category"]
    out: dict[str, Any] = {}
    for m in names:
        drops = []
        for cat in categories[:-1]:
            earlier = [c["per_category"][cat][m] for c in ends[:-1] if cat in c["per_category"]]
            earlier = [v for v in earlier if v is not None and not math.isnan(v)]
            if earlier and cat in last:
                drops.append(max(earlier) - last[cat][m])
        out[m] = _nanmean(drops)
    return out


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _flat_cost(cost: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cost.items():
        if isinstance(v, Mapping):
            out.update(_flat_cost(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def _environment(device: torch.device, precision: str = devices.DEFAULT_PRECISION) -> dict[str, Any]:
    import timm

    env: dict[str, Any] = {
        "oadbench": oadbench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
    }
    env.update(devices.numeric_environment(device, precision))  # CUDA: the device and the numeric settings
    return env


def _git_commit() -> str | None:
    repo = Path(oadbench.__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip() or None
    return f"{commit}-dirty" if commit and dirty.stdout.strip() else commit


def _features_config(value: Any) -> dict[str, Any]:
    """``features.*`` with defaults filled in and checked (not part of a run's identity: the store changes no
    result)."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError("features", f"must be a mapping, got {value!r}")
    unknown = [k for k in value if k not in FEATURE_DEFAULTS]
    if unknown:
        raise ConfigError(f"features.{unknown[0]}", "unknown key", allowed=[f"features.{k}" for k in FEATURE_DEFAULTS])
    out = {**FEATURE_DEFAULTS, **value}
    check_bool(out["cache"], "features.cache")
    if out["cache_dir"] is not None and (not isinstance(out["cache_dir"], str) or not out["cache_dir"]):
        raise ConfigError("features.cache_dir", f"must be a directory path or null, got {out['cache_dir']!r}")
    gb = check_number(out["cache_max_gb"], "features.cache_max_gb")
    if not gb > 0:
        raise ConfigError("features.cache_max_gb", f"must be > 0, got {gb}")
    out["cache_max_gb"] = gb
    return out


def _mapping(cfg: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = cfg.get(key)
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping, got {value!r}")
    return dict(value)


def _str(cfg: Mapping[str, Any], key: str, label: str) -> str:
    value = cfg.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(label, f"must be a non-empty string, got {value!r}")
    return value


__all__ = ["Prepared", "TaskPlan", "execute", "prepare", "run"]

"""One run: prepare it, stream images to the method, evaluate, measure cost, write the record.

Flow (nothing flows backwards), one module per step:

- :mod:`oadbench.preparation`: config -> :class:`Prepared` (protocol, method config, dataset, stream plan; every
  validation error happens there, before anything is written);
- :mod:`oadbench.pipeline`: images -> drift views -> backbone features -> the method's batches;
- :mod:`oadbench.evaluation` (:mod:`oadbench.holdout`, :mod:`oadbench.prequential`): the stream loop and when
  and on what the method is scored, into :mod:`oadbench.checkpoints`;
- :mod:`oadbench.run_record`: the record assembled; :mod:`oadbench.artifacts`: the maps file and W&B panels;
- this module: :func:`run` (skip a finished or claimed run, else :func:`execute`), and :class:`Execution`, which
  builds the backbone and the method, runs the evaluation strategy of the protocol's ``evaluation.mode``
  (:data:`STRATEGIES`) under the cost meters, and ends every run with a record or with none.

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

import logging
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from oadbench import devices, run_record
from oadbench.artifacts import log_panels, save_maps
from oadbench.checkpoints import CheckpointLog
from oadbench.claims import RunClaim
from oadbench.cost import CostMeter
from oadbench.errors import ConfigError, DataError, WeightsUnavailableError
from oadbench.evaluation import Evaluation
from oadbench.extraction import FeatureSource
from oadbench.holdout import Holdout
from oadbench.method import MethodContext
from oadbench.per_image import save_per_image
from oadbench.pipeline import Pipeline
from oadbench.preparation import Prepared, prepare
from oadbench.prequential import Prequential
from oadbench.results import FINISHED, is_finished, read_record, write_record
from oadbench.stream import TaskPlan
from oadbench.tracking import Tracker

log = logging.getLogger("oadbench")

INPUT_ERRORS = (ConfigError, DataError, WeightsUnavailableError)
STRATEGIES: dict[str, type[Evaluation]] = {s.mode: s for s in (Holdout, Prequential)}  # evaluation.mode -> strategy


def run(config: Mapping[str, Any]) -> dict[str, Any]:
    """Prepare and execute one run. Skipped (returning the existing record) if it already finished, unless
    ``force``; skipped (returning ``status: claimed``) while another live process executes it."""
    prep = prepare(config)
    if not prep.config["force"] and is_finished(prep.path):
        RunClaim(prep.path).clear_stale()  # its process died between writing the record and releasing the claim
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


class Execution:
    """One prepared run, executed once: :meth:`setup` (backbone, pipeline, method), then the evaluation strategy,
    then the record, the maps file and the W&B run; a failure after the start leaves a failed record."""

    def __init__(self, prep: Prepared):
        self.prep = prep
        self.cfg = prep.config
        self.spec = prep.spec
        self.meter: CostMeter | None = None
        self.data: Pipeline | None = None
        self.evaluation: Evaluation | None = None
        self.log = CheckpointLog(prep.spec.metrics, prep.spec.continual, self._on_checkpoint)
        self.bar: Any = None
        self.tracker: Tracker | None = None

    def setup(self) -> None:
        """Threads and seed, cost meter, backbone and pipeline, the device's warm-up (CUDA), then the method."""
        p = self.prep
        if self.cfg["threads"]:
            torch.set_num_threads(self.cfg["threads"])
        torch.manual_seed(self.cfg["seed"])
        self.meter = CostMeter(p.device, resident=self._resident_bytes)
        features = FeatureSource(self.cfg["backbone"], p.method_cls.feature_levels(p.method_config),
                                 self.cfg["features"], p.device, self.cfg["image_size"], self.cfg["center_crop"],
                                 self.meter)
        self.data = Pipeline(p, features)
        # CUDA: the device's one-off start-up before any meter, and before the method exists (its state is its own)
        sizes = {self.spec.stream.batch_size, self.spec.evaluation.batch_size}
        self.meter.start(devices.warm_up(p.device, features.backbone, self.cfg["image_size"], sizes)
                         if p.device.type == "cuda" else None)
        info = features.info
        context = MethodContext(
            mode=self.spec.training, device=p.device, seed=self.cfg["seed"],
            image_size=p.transform.output_size, backbone=info.name, channels=info.channels, strides=info.strides,
            pixel_std=info.std,
        )
        self.method = p.method_cls(p.method_config, context)
        self.evaluation = STRATEGIES[self.spec.evaluation.mode](self.data, self.method, self.meter, self.log,
                                                                self._tick)

    def _resident_bytes(self) -> int:
        return self.data.resident_bytes() if self.data is not None else 0

    def _tick(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def _on_checkpoint(self, entry: dict[str, Any]) -> None:
        """A new checkpoint: to W&B at its observed-images step, and its image AUROC on the progress bar."""
        metrics = entry["metrics"]
        assert self.tracker is not None
        self.tracker.log({**{f"eval/{k}": v for k, v in metrics.items()},
                          **{f"eval_initial/{k}": v for k, v in entry.get("metrics_initial", {}).items()},
                          **{f"diag/{k}": v for k, v in entry.get("diagnostics", {}).items()},
                          "footprint_bytes": entry["footprint_bytes"], "observed": entry["observed"]},
                         step=entry["observed"])
        if self.bar is not None:
            self.bar.set_postfix_str(f"image_auroc={metrics.get('image_auroc', float('nan')):.3f}")

    def execute(self) -> dict[str, Any]:
        """Run, write the record (finished, or failed after the start), return it with its ``path``."""
        with devices.numeric_mode(self.prep.device, self.cfg["precision"]):  # before the run's first kernel
            return self._execute()

    def _execute(self) -> dict[str, Any]:
        p = self.prep
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        record: dict[str, Any] = {}
        try:
            self.setup()
            assert self.data is not None and self.evaluation is not None
            record = run_record.base_record(p, self.data.features, started)
            self.tracker = Tracker(
                self.cfg["wandb"]["mode"], self.cfg["wandb"]["project"], self.cfg["wandb"]["entity"],
                Path(self.cfg["results_dir"]), name=p.path.stem, group=f"{self.spec.name}/{record['data']['dataset']}",
                tags=[self.spec.name, p.method_cls.name, record["data"]["dataset"]], config=p.config,
            )
            if self.cfg["progress"]:
                from tqdm import tqdm

                self.bar = tqdm(total=p.plan.total_observed, unit="img", desc=f"{p.method_cls.name} observe",
                                dynamic_ncols=True, leave=False)
            self.evaluation.run()
            if self.bar is not None:
                self.bar.close()
            record.update(self._results())
            record["data"]["distinct_images"] = len(self.data.distinct)
            record["status"] = FINISHED
        except INPUT_ERRORS:
            self._close(failed=True, record=None)
            raise
        except BaseException as exc:
            if record:
                run_record.failed(record, exc, self._results(), t0, time.perf_counter())
                if not is_finished(p.path):
                    write_record(p.path, record)
            self._close(failed=True, record=record)
            raise
        run_record.finish(record, FINISHED, t0, time.perf_counter())
        panel = self.evaluation.panel
        log_panels(self.tracker, panel, self.cfg["wandb"]["log_images"], self.evaluation.observed)
        record["tracking"] = {"wandb_mode": self.tracker.mode, "wandb_run_id": self.tracker.run_id,
                              "wandb_dir": self.tracker.run_dir}
        record["maps_file"] = save_maps(p.path, panel)
        record["per_image"] = save_per_image(p.path, self.evaluation.per_image())
        record.update(self.evaluation.record_fields())
        write_record(p.path, record)
        self._close(failed=False, record=record)
        record["path"] = str(p.path)
        return record

    def _results(self) -> dict[str, Any]:
        features = self.data.features if self.data is not None else None
        return run_record.results(self.prep, self.log.entries, self.meter, features)

    def _close(self, failed: bool, record: dict[str, Any] | None) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.data is not None:
            self.data.close()
        if self.tracker is not None:
            summary = {}
            if record and record.get("final"):
                summary = {f"final/{k}": v for k, v in record["final"].items()}
                summary.update({f"cost/{k}": v for k, v in run_record.flat_cost(record.get("cost", {})).items()})
                summary["status"] = record.get("status")
            self.tracker.finish(summary, failed=failed)


def execute(prep: Prepared) -> dict[str, Any]:
    """Run a prepared run and write its record; returns the record (with ``path``)."""
    return Execution(prep).execute()


__all__ = ["STRATEGIES", "Execution", "Prepared", "TaskPlan", "execute", "prepare", "run"]

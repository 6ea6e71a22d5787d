"""The content of a run record (schema :data:`oadbench.results.SCHEMA_VERSION`), assembled in three steps:

1. :func:`base_record` when the run starts: identity, config, environment, backbone and the stream's data counts
   (``status: running``);
2. :func:`results` from the checkpoint log and the cost meters: the checkpoints, the final metrics (those of the
   last checkpoint), the learning-curve summaries, the cost and, for continual protocols, the forgetting. A
   failed run gets the partial results of the checkpoints it reached (:func:`failed`);
3. the end: status, finish time and duration; the runner then adds the tracking and maps-file entries and writes
   the record atomically (:mod:`oadbench.results`).
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import oadbench
from oadbench import devices
from oadbench.checkpoints import forgetting
from oadbench.cost import CostMeter
from oadbench.extraction import FeatureSource
from oadbench.metrics import summarise_curve
from oadbench.preparation import Prepared
from oadbench.results import FAILED, SCHEMA_VERSION
from oadbench.stream import plan_digest


def base_record(prep: Prepared, features: FeatureSource, started: datetime) -> dict[str, Any]:
    """The record of a run that has started (its backbone loaded)."""
    plan = prep.plan
    n_stream_anom = sum(prep.datas[t].samples[i].is_anomalous for t, task in enumerate(plan.tasks)
                        for i in task.stream)
    n_eval = sum(len(task.eval) for task in plan.tasks)
    n_eval_anom = sum(prep.datas[t].samples[i].is_anomalous for t, task in enumerate(plan.tasks)
                      for i in task.eval)
    return {
        "schema": SCHEMA_VERSION,
        "id": prep.run_hash,
        "status": "running",
        "config": prep.config,
        "identity": prep.identity,
        "env": environment(prep.device, prep.config["precision"]),
        "backbone": dataclasses.asdict(features.info),
        "data": {
            "dataset": prep.identity["dataset"]["name"],
            "categories": [t.category for t in plan.tasks],
            "image_size": prep.transform.output_size,
            "warmup": sum(len(t.warmup) for t in plan.tasks),
            "stream": sum(len(t.stream) for t in plan.tasks),
            "stream_anomalous": n_stream_anom,
            "eval": n_eval,
            "eval_anomalous": n_eval_anom,
            "stream_digest": plan_digest(plan, prep.datas),
            "distinct_images": None,
        },
        "started_at": started.isoformat(timespec="seconds"),
        "error": None,
    }


def results(prep: Prepared, checkpoints: list[dict[str, Any]], meter: CostMeter | None,
            features: FeatureSource | None) -> dict[str, Any]:
    """Checkpoints, final metrics, summaries, cost (empty before the backbone was loaded) and forgetting."""
    names = prep.spec.metrics
    final = dict(checkpoints[-1]["metrics"]) if checkpoints else {}
    final_initial = checkpoints[-1].get("metrics_initial") if checkpoints else None
    observed = [c["observed"] for c in checkpoints]
    summary = {m: summarise_curve(observed, [c["metrics"][m] for c in checkpoints])
               for m in names} if checkpoints else {}
    out: dict[str, Any] = {
        "checkpoints": checkpoints,
        "final": final,
        **({"final_initial": dict(final_initial)} if final_initial is not None else {}),
        "summary": summary,
        "cost": {
            **meter.summary(sum(len(t.stream) for t in prep.plan.tasks)),
            "backbone_images": features.extracted,
            "feature_store_hits": features.hits,
            "footprint_bytes": checkpoints[-1]["footprint_bytes"] if checkpoints else None,
            "footprint_max_bytes": max((c["footprint_bytes"] for c in checkpoints), default=None),
        } if meter is not None and features is not None else {},
    }
    if prep.spec.continual and checkpoints:
        out["forgetting"] = forgetting(checkpoints, [t.category for t in prep.plan.tasks], names)
    return out


def finish(record: dict[str, Any], status: str, t0: float, now: float) -> None:
    """Mark ``record`` ended with ``status``: finish time and duration (``now - t0``, perf-counter seconds)."""
    record["status"] = status
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["duration_s"] = now - t0


def failed(record: dict[str, Any], exc: BaseException, partial: Mapping[str, Any], t0: float, now: float) -> None:
    """Turn ``record`` into the record of a run that failed with ``exc``, keeping the ``partial`` results."""
    record.update(partial)
    finish(record, FAILED, t0, now)
    record["error"] = f"{type(exc).__name__}: {exc}"


def flat_cost(cost: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The record's cost as flat ``a/b`` keys of numbers (W&B summary)."""
    out: dict[str, Any] = {}
    for k, v in cost.items():
        if isinstance(v, Mapping):
            out.update(flat_cost(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def environment(device: torch.device, precision: str = devices.DEFAULT_PRECISION) -> dict[str, Any]:
    """Versions, platform, device, threads and git commit (``-dirty`` with uncommitted changes) of this run."""
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
        "git_commit": git_commit(),
    }
    env.update(devices.numeric_environment(device, precision))  # CUDA: the device and the numeric settings
    return env


def git_commit() -> str | None:
    """The commit of the checkout oadbench runs from, or None outside a git checkout."""
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


"""Where a finished run record goes in the results tables, and the numbers it brings there.

A record belongs to the table (protocol label, dataset) of :func:`table_of` and, inside it, to the cell
(method, backbone, device type, category); a cell holds one configuration, one record per seed
(:func:`assign_cells` checks it). :func:`run_values` is what a record contributes to its cell: the final metrics,
the online summaries, the cost columns and, for drift protocols, the metrics in the initial drift state.
The leaderboards (:mod:`oadbench.leaderboard`), the headline (:mod:`oadbench.headline`) and the figures
(:mod:`oadbench.figures`) all read records through this module.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oadbench.decisions import DEFAULT_POLICY
from oadbench.errors import ConfigError, DataError
from oadbench.protocol import SCORE_THEN_OBSERVE, ProtocolSpec, protocol_files, read_protocol_file
from oadbench.results import FINISHED

METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "aupro")
SUMMARIES = ("aulc", "images_to_95")
COSTS = ("observe_ms", "score_ms", "train_s", "peak_rss_mb", "footprint_mb")
GPU_COSTS = ("cuda_peak_mb", "cuda_method_peak_mb", "cuda_features_peak_mb")  # only in tables with GPU records
CPU = "cpu"
TRAINING_PHASES = ("observe_warmup", "observe", "consolidate")  # the method's own learning work


def file_contaminations() -> dict[str, float | None]:
    """Protocol name -> the stream contamination its protocol file sets (None: no fixed ratio or unreadable)."""
    ratios: dict[str, float | None] = {}
    for name, path in protocol_files().items():
        try:
            ratios[name] = ProtocolSpec.from_dict(read_protocol_file(path), source=str(path)).stream.contamination
        except ConfigError:
            ratios[name] = None
    return ratios


def protocol_label(protocol: Mapping[str, Any], file_ratios: Mapping[str, float | None]) -> str:
    """The table a run belongs to, from its resolved protocol config: the name, ``_k<k>`` when the protocol has a
    warm-up of k images, ``_c<percent>`` when the contamination differs from the one the protocol file of that
    name sets (``file_ratios``: :func:`file_contaminations`, read once per compilation), ``_overlap`` when the
    streamed images may also be evaluated (``stream.overlap: true``: no shipped protocol sets it, and its
    evaluation split differs), ``_observe_then_score`` for a prequential run in that order, ``_protected`` for
    protected learning (``decisions.protect``) with the default policy, ``_protected_<policy>`` with another."""
    name = str(protocol["name"])
    label = name
    k = int((protocol.get("warmup") or {}).get("k") or 0)
    if k:
        label += f"_k{k}"
    ratio, default = (protocol.get("stream") or {}).get("contamination"), file_ratios.get(name)
    if ratio is not None and default is not None and not math.isclose(float(ratio), default):
        label += f"_c{100 * float(ratio):g}"
    if (protocol.get("stream") or {}).get("overlap"):
        label += "_overlap"
    order = (protocol.get("evaluation") or {}).get("order")
    if order not in (None, SCORE_THEN_OBSERVE):
        label += f"_{order}"
    decisions = protocol.get("decisions") or {}
    if decisions.get("protect"):
        policy = str(decisions.get("policy") or DEFAULT_POLICY)
        label += "_protected" + ("" if policy == DEFAULT_POLICY else "_" + re.sub(r"[^A-Za-z0-9._]+", "-", policy))
    return label


def table_of(record: Mapping[str, Any], file_ratios: Mapping[str, float | None]) -> tuple[str, str]:
    """(protocol label, dataset name): the leaderboard table, and the figures' group, a record belongs to."""
    cfg = record["config"]
    return protocol_label(cfg["protocol"], file_ratios), cfg["dataset"]["name"]


def record_device(record: Mapping[str, Any]) -> str:
    """The device type a record ran on: its identity's (CUDA runs), else its config's, else ``cpu``."""
    numeric = (record.get("identity") or {}).get("device")
    if isinstance(numeric, Mapping) and numeric.get("type"):
        return str(numeric["type"])
    return str((record.get("config") or {}).get("device") or CPU).split(":")[0]


def is_gpu_table(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a table has rows of records run on a device other than the CPU (rows' ``device``, default CPU)."""
    return any(r.get("device", CPU) != CPU for r in rows)


def undrifted_key(record: Mapping[str, Any]) -> str:
    """A run's identity without the protocol's name, description and drift: equal for a drift run and the same
    run without drift."""
    identity = dict(record.get("identity") or {})
    identity["protocol"] = {k: v for k, v in (identity.get("protocol") or {}).items()
                            if k not in ("name", "description", "drift")}
    return json.dumps(identity, sort_keys=True, default=str)


def run_values(record: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers one record contributes to its leaderboard cell."""
    final = record.get("final") or {}
    summary = record.get("summary") or {}
    cost = record.get("cost") or {}
    values: dict[str, Any] = {m: final.get(m) for m in METRICS}
    for s in SUMMARIES:
        for m in METRICS:
            values[f"{s}_{m}"] = (summary.get(m) or {}).get(s)
    observe = cost.get("observe") or {}
    if observe.get("median_ms") is None:  # offline and few-shot runs learn from the warm-up images
        observe = cost.get("observe_warmup") or {}
    values["observe_ms"] = observe.get("median_ms")
    spent = [(cost.get(phase) or {}).get("total_s") for phase in TRAINING_PHASES]
    values["train_s"] = sum(x for x in spent if x is not None) if any(x is not None for x in spent) else None
    values["score_ms"] = (cost.get("score") or {}).get("median_ms")
    values["peak_rss_mb"] = cost.get("peak_rss_mb")
    footprint = cost.get("footprint_bytes")
    values["footprint_mb"] = None if footprint is None else footprint / 2**20
    for key in GPU_COSTS:
        values[key] = cost.get(key)
    initial = record.get("final_initial")
    if initial is not None:
        for m in METRICS:
            values[f"{m}_initial"] = initial.get(m)
    return values


@dataclass(frozen=True)
class Placed:
    """A finished record in its table and cell."""

    path: Path
    record: Mapping[str, Any]
    table: tuple[str, str]  # (protocol label, dataset)
    cell: tuple[str, str, str, str]  # (method, backbone, device type, category)
    seed: int


def assign_cells(records: Iterable[tuple[Path, Mapping[str, Any]]],
                 file_ratios: Mapping[str, float | None]) -> list[Placed]:
    """The finished records of (path, record) pairs, each placed in its table and cell, in input order. A record
    copied twice counts once; two records of one cell and seed with different run identities are an error
    naming both files: a cell is one configuration."""
    owners: dict[tuple, tuple[Any, Path]] = {}
    placed = []
    for path, record in records:
        if record.get("status") != FINISHED:
            continue
        cfg = record["config"]
        table = table_of(record, file_ratios)
        cell = (cfg["method"]["name"], record["backbone"]["name"], record_device(record),
                str(cfg["dataset"]["category"]))
        seed = int(cfg["seed"])
        key = (*table, *cell, seed)
        if key in owners and owners[key][0] != record.get("id"):
            raise DataError(f"two records for {'/'.join(map(str, key[:6]))} seed {seed} with different "
                            f"configurations: {owners[key][1]} and {path}; a leaderboard cell is one configuration")
        if key in owners:
            continue  # the same run copied twice
        owners[key] = (record.get("id"), path)
        placed.append(Placed(path, record, table, cell, seed))
    return placed

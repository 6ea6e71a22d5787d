"""A threshold policy replayed on a finished prequential run: the decisions it would have taken, image by image
in stream order, from the run's per-image results (``<record>.images.csv``), without rerunning the run.

The policy sees the stream's scores in their stream positions only (:mod:`oadbench.decisions`); the labels enter
the metrics alone (:mod:`oadbench.metrics.decision`): for the whole stream and over it, at each of the record's
checkpoints (the metrics over the images scored up to it), plus the label-using references of the whole stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oadbench.decisions import Policy, decide
from oadbench.errors import DataError
from oadbench.metrics.decision import decision_metrics, hindsight_references
from oadbench.per_image import PerImage, read_per_image


@dataclass(frozen=True)
class StreamDecisions:
    """``rejected`` and ``thresholds`` per scored stream image (stream order), ``labels``; ``final``: the
    decision metrics and references over the whole stream; ``curve``: (scored images, metrics) per checkpoint."""

    policy: str
    rejected: np.ndarray
    thresholds: np.ndarray
    labels: np.ndarray
    final: dict[str, float]
    curve: list[tuple[int, dict[str, float]]]


def replay(record_path: Path, record: Mapping[str, Any], policy: Policy) -> StreamDecisions:
    """``policy`` over the prequential stream of one finished record; a clear error when the record has no
    per-image stream results."""
    table = read_per_image(Path(record_path), record)
    if table is None or table.kind != "prequential":
        raise DataError(f"{record_path}: no per-image stream results (a prequential record with a "
                        f"<record>.images.csv sidecar is needed)")
    return replay_table(table, record, policy)


def replay_table(table: PerImage, record: Mapping[str, Any], policy: Policy) -> StreamDecisions:
    """:func:`replay` on the record's per-image stream results already read (``table``, prequential)."""
    order = np.argsort(table["position"], kind="stable")
    scores, labels = np.asarray(table["score"], float)[order], np.asarray(table["label"], int)[order]
    rejected, thresholds = decide(scores, policy)
    final = {**decision_metrics(labels, rejected), **hindsight_references(scores, labels)}
    evaluation = record["config"]["protocol"]["evaluation"]
    before = int(record["data"]["warmup"]) + int(evaluation.get("unscored") or 0)  # observed, never scored
    curve = []
    for c in record["checkpoints"]:
        n = min(max(int(c["observed"]) - before, 0), len(scores))
        if n:
            curve.append((n, decision_metrics(labels[:n], rejected[:n])))
    return StreamDecisions(policy.label(), rejected, thresholds, labels, final, curve)

"""A line engineer's view of a prequential run (drawn by ``oadbench figs``): the default label-free threshold
policy's decisions over the stream.

``rejections_<protocol>_<dataset>_<category>``: cumulative false alarms (good parts rejected, left) and misses
(defective parts passed, right) against parts scored, one line per method, mean over the seeds whose records
have per-image stream results (:mod:`oadbench.stream_decisions`); the right panel's grey line is the defective
parts seen so far (the most a detector could miss, mean over the same streams). Drawn only where such records
exist.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oadbench.cells import table_of
from oadbench.decision_report import has_stream_results
from oadbench.decisions import DEFAULT_POLICY, parse_policy
from oadbench.figure_files import method_label, save_figure
from oadbench.stream_decisions import replay


def _mean_cumulative(series: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise mean of cumulative counts, over the length all of them share."""
    n = min(len(s) for s in series)
    return np.mean([np.cumsum(s[:n]) for s in series], axis=0)


def draw_rejections(pairs: Sequence[tuple[Path, Mapping[str, Any]]], out: Path, palette: Mapping[str, Any],
                    file_ratios: Mapping[str, float | None]) -> list[Path]:
    """The rejections figures of every (protocol, dataset, category) with stream results."""
    import matplotlib.pyplot as plt

    policy = parse_policy(DEFAULT_POLICY)
    cells: dict[tuple[str, str, str], dict[str, list[tuple[np.ndarray, ...]]]] = defaultdict(
        lambda: defaultdict(list))
    for path, record in pairs:
        if not has_stream_results(record):
            continue
        protocol, dataset = table_of(record, file_ratios)
        result = replay(path, record, policy)
        labels = result.labels.astype(bool)
        cells[(protocol, dataset, record["config"]["dataset"]["category"])][method_label(record)].append(
            (result.rejected & ~labels, ~result.rejected & labels, labels))
    written: list[Path] = []
    for (protocol, dataset, category), by_method in sorted(cells.items()):
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), sharex=True)
        for method, runs in sorted(by_method.items()):
            false_alarms = _mean_cumulative([fa for fa, _, _ in runs])
            misses = _mean_cumulative([m for _, m, _ in runs])
            parts = np.arange(1, len(false_alarms) + 1)
            left.plot(parts, false_alarms, color=palette.get(method), label=f"{method} ({len(runs)})")
            right.plot(parts, misses, color=palette.get(method))
        seen = _mean_cumulative([y for runs in by_method.values() for _, _, y in runs])
        right.plot(np.arange(1, len(seen) + 1), seen, color="0.6", linestyle=":", label="defective parts seen")
        left.set_title("false alarms (good parts rejected)", fontsize=9)
        right.set_title("misses (defective parts passed)", fontsize=9)
        for ax in (left, right):
            ax.set_xlabel("parts scored")
        left.set_ylabel("cumulative count")
        left.legend(fontsize=7)
        right.legend(fontsize=7)
        fig.suptitle(f"{protocol} / {dataset} / {category}: policy {policy.label()} (mean over seeds)", fontsize=9)
        written += save_figure(fig, out, f"rejections_{protocol}_{dataset}_{category}")
    return written

"""The statistics columns of the results tables, from the records' per-image results (:mod:`oadbench.per_image`,
tested in :mod:`oadbench.significance`).

For a table row (one configuration on one category, or its mean over categories): ``aupimo`` (per run, the mean
AUPIMO of the anomalous test images; mean and std over seeds like every metric), the 95 % bootstrap interval of
image AUROC and AUPIMO (``<m>_ci_low`` / ``<m>_ci_high``), and, on category rows, the top group of that category:
``<m>_top`` (1 for the best configuration and every one not significantly below it, 0 otherwise) and
``<m>_p_best`` (the Holm-adjusted one-sided p-value of 'the best is above this one'; empty for the best). A row
gets these only when every run in it has per-image results, and the markers only when every row of its category
does; otherwise they are empty, never computed on part of the runs or part of the rows.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from oadbench.per_image import HOLDOUT, PerImage
from oadbench.significance import ALPHA, CI_METRICS, bootstrap_ci, top_group

STAT_METRICS = CI_METRICS  # image_auroc, aupimo


def stat_columns() -> list[str]:
    """The statistics columns of a leaderboard CSV, in order."""
    cols = [f"{m}_{end}" for m in STAT_METRICS for end in ("ci_low", "ci_high")]
    return cols + [f"{m}_{end}" for m in STAT_METRICS for end in ("top", "p_best")]


def aupimo_value(table: PerImage | None) -> float | None:
    """One run's AUPIMO: the mean over its anomalous images that have one (holdout results only)."""
    if table is None or table.kind != HOLDOUT:
        return None
    values = table["aupimo"][(table["label"] == 1) & np.isfinite(table["aupimo"])]
    return float(values.mean()) if len(values) else None


def complete(tables: Mapping[str, Mapping[int, PerImage | None]]) -> dict[str, list[PerImage]] | None:
    """``data set -> seed -> table`` as a :data:`~oadbench.significance.Cell`, or None when a run has none."""
    if not tables or any(t is None for seeds in tables.values() for t in seeds.values()):
        return None
    return {c: [seeds[s] for s in sorted(seeds)] for c, seeds in tables.items()}  # type: ignore[misc]


def interval_columns(cell: Mapping[str, Sequence[PerImage]] | None) -> dict[str, float | None]:
    """``<m>_ci_low`` / ``<m>_ci_high`` of a row's cell (empty without one)."""
    out: dict[str, float | None] = {}
    for m in STAT_METRICS:
        ci = bootstrap_ci(cell, m) if cell is not None else None
        out[f"{m}_ci_low"], out[f"{m}_ci_high"] = ci if ci is not None else (None, None)
    return out


def marker_columns(cells: Mapping[Hashable, Sequence[PerImage] | None], values: Mapping[Hashable, Mapping[str, Any]]
                   ) -> dict[Hashable, dict[str, Any]]:
    """The rows of one data set (key -> its seeds' tables, None without; key -> its row's ``<m>_mean``): each
    key's ``<m>_top`` and ``<m>_p_best``; all empty unless every row has tables (among part of the rows, the
    'best' could sit below an untested row, and its ★ would say what no test showed)."""
    out: dict[Hashable, dict[str, Any]] = {k: {} for k in cells}
    tables = {k: v for k, v in cells.items() if v is not None}
    if len(tables) < len(cells):
        return out
    for m in STAT_METRICS:
        group = top_group(tables, {k: values[k].get(f"{m}_mean") for k in tables}, m)
        for key, p in group.items():
            out[key][f"{m}_p_best"] = p
            out[key][f"{m}_top"] = 1 if p is None or p >= ALPHA else 0
    return out


def marked(text: str, row: Mapping[str, Any], metric: str) -> str:
    """A Markdown metric cell with its interval and the top-group mark (``★``) where the row has them."""
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if low is not None and high is not None:
        text += f" [{low:.3f}, {high:.3f}]"
    if row.get(f"{metric}_top") == 1:
        text += " ★"
    return text

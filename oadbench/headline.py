"""The headline table: one protocol at the usual input size, every method on a fixed set of data sets.

``build_headline(records)`` reads finished records of one protocol (the published one: ``online_cold_start`` at
256 px, ``leaderboards/headline/records``) and returns one row per (method, backbone, data set) plus one ``mean``
row per (method, backbone). A data set is ``<dataset>/<category>`` (``synthetic/capsule``, ``mtd/tile``,
``mvtec/transistor``): each counts once in the mean, as in the LeMO ablation's selection rule. The mean row averages
each seed's final metric over the data sets, then takes mean and sample std (ddof = 1) over seeds; it is empty
unless every data set of the table has that method's run for that seed, so a missing cell never shifts the mean
silently. Cells hold the records' final metrics (mean and std over seeds), the area under the image-AUROC
learning curve and the method's observe and score ms per image (median, mean over runs).

The records must form one table: one protocol, one input size, one configuration per cell (the leaderboards'
rule, :func:`oadbench.cells.assign_cells`, checks the last); anything else is an error naming what differs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from oadbench.cells import assign_cells, file_contaminations, run_values, table_of
from oadbench.errors import DataError
from oadbench.results import FINISHED
from oadbench.stats import MEAN_ROW, fmt, fmt1, fmt_pm, mean_over, seed_stats

ORDER = ("synthetic", "mtd", "mvtec")
HEADLINE_METRICS = ("image_auroc", "pixel_auroc", "aupro")
HEADLINE_COSTS = ("aulc_image_auroc", "observe_ms", "score_ms")
COLUMNS = ["method", "backbone", "dataset", "n_runs", "seeds",
           *[f"{m}_{s}" for m in HEADLINE_METRICS for s in ("mean", "std")], *HEADLINE_COSTS, "image_size"]


def data_set(record: Mapping[str, Any]) -> str:
    """``<dataset>/<category>`` of a record."""
    dataset = record["config"]["dataset"]
    return f"{dataset['name']}/{dataset['category']}"


def build_headline(records: Iterable[tuple[Path, Mapping[str, Any]]]) -> tuple[str, int, list[dict[str, Any]]]:
    """(protocol label, image size, rows) from (path, record) pairs; unfinished records are ignored."""
    pairs = [(p, r) for p, r in records if r.get("status") == FINISHED]
    if not pairs:
        raise DataError("no finished run record for the headline table")
    ratios = file_contaminations()
    assign_cells(pairs, ratios)  # one configuration per cell, or an error naming both files
    labels = {table_of(r, ratios)[0]: p for p, r in pairs}
    sizes = {int(r["data"]["image_size"]): p for p, r in pairs}
    if len(labels) > 1:
        raise DataError(f"the headline table takes one protocol, got {sorted(labels)} "
                        f"(e.g. {' and '.join(str(p) for p in labels.values())})")
    if len(sizes) > 1:
        raise DataError(f"the headline table takes one input size, got {sorted(sizes)} px "
                        f"(e.g. {' and '.join(str(p) for p in sizes.values())})")
    runs: dict[tuple[str, str], dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for _, record in pairs:
        key = (record["config"]["method"]["name"], record["backbone"]["name"])
        runs[key][data_set(record)][int(record["config"]["seed"])] = run_values(record)
    everywhere = sorted({d for cells in runs.values() for d in cells}, key=_order)
    rows = []
    for (method, backbone), cells in sorted(runs.items()):
        for name in everywhere:
            if name in cells:
                rows.append(_row(method, backbone, name, cells[name], len(cells[name])))
        complete = [s for s in sorted({s for c in cells.values() for s in c})
                    if all(s in cells.get(d, {}) for d in everywhere)]
        per_seed = {s: mean_over([cells[d][s] for d in everywhere], (*HEADLINE_METRICS, *HEADLINE_COSTS))
                    for s in complete}
        rows.append(_row(method, backbone, MEAN_ROW, per_seed, sum(len(c) for c in cells.values())))
    return next(iter(labels)), next(iter(sizes)), rows


def _order(name: str) -> tuple[int, str]:
    """The synthetic categories, MTD, MVTec AD, then any other data set, each group alphabetical."""
    dataset = name.split("/", 1)[0]
    return (ORDER.index(dataset) if dataset in ORDER else len(ORDER), name)


def _row(method: str, backbone: str, name: str, runs: Mapping[int, Mapping[str, Any]], n_runs: int
         ) -> dict[str, Any]:
    seeds = sorted(runs)
    row: dict[str, Any] = {"method": method, "backbone": backbone, "dataset": name, "n_runs": n_runs,
                           "seeds": " ".join(map(str, seeds))}
    return {**row, **seed_stats(runs, HEADLINE_METRICS, HEADLINE_COSTS)}


def headline_csv(rows: Sequence[Mapping[str, Any]], image_size: int) -> str:
    lines = [",".join(COLUMNS)]
    for r in rows:
        lines.append(",".join(fmt(image_size if c == "image_size" else r.get(c)) for c in COLUMNS))
    return "\n".join(lines) + "\n"


def headline_markdown(protocol: str, image_size: int, rows: Sequence[Mapping[str, Any]], csv_name: str,
                      records_name: str) -> list[str]:
    """Two pivot tables (methods × data sets): final image AUROC, then pixel AUROC; mean ± std over seeds."""
    names = [d for d in dict.fromkeys(r["dataset"] for r in rows) if d != MEAN_ROW]
    by_key = {(r["method"], r["backbone"], r["dataset"]): r for r in rows}
    methods = list(dict.fromkeys((r["method"], r["backbone"]) for r in rows))
    seeds = " ".join(sorted({s for r in rows for s in str(r["seeds"]).split()}, key=int))
    out = [f"## Headline: {protocol} at {image_size} px", "",
           f"Final image AUROC and pixel AUROC after the whole stream, mean ± std over seeds {seeds}; "
           f"**mean**: the mean over the {len(names)} data sets, each counting once (empty until every data set "
           f"has the seed's run). Records: `{records_name}`; CSV: `{csv_name}`.", ""]
    for metric, title in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC")):
        out += [f"| {title} | " + " | ".join(names) + " | **mean** |", "|---|" + "---|" * (len(names) + 1)]
        for method, backbone in methods:
            cells = []
            for name in [*names, MEAN_ROW]:
                r = by_key.get((method, backbone, name)) or {}
                mean = r.get(f"{metric}_mean")
                text = fmt_pm(mean, r.get(f"{metric}_std"))
                cells.append(f"**{text}**" if name == MEAN_ROW and mean is not None else text)
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["Observe / score ms per image (median, the method's own work):", "",
            "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for method, backbone in methods:
        cells = [f"{fmt1(by_key.get((method, backbone, n), {}).get('observe_ms'))} / "
                 f"{fmt1(by_key.get((method, backbone, n), {}).get('score_ms'))}" for n in names]
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return out + [""]

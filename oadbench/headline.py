"""The headline table: one protocol at the usual input size, every method on a fixed set of data sets.

``build_headline(records)`` reads finished records of one protocol (the published one: ``online_cold_start`` at
256 px, ``leaderboards/headline/records``) and returns one row per (method, backbone, data set) plus one ``mean``
row per (method, backbone). A data set is ``<dataset>/<category>`` (``synthetic/capsule``, ``mtd/tile``,
``mvtec/transistor``): each counts once in the mean, as in the LeMO ablation's selection rule. The mean row averages
each seed's final metric over the data sets, then takes mean and sample std (ddof = 1) over seeds; it is empty
unless every data set of the table has that method's run for that seed, so a missing cell never shifts the mean
silently. Cells hold the records' final metrics (mean and std over seeds), the area under the image-AUROC
learning curve and the method's observe and score ms per image (median, mean over runs).

Where the records have per-image results, cells gain AUPIMO, intervals and the top group of each data set
(:mod:`oadbench.table_stats`); :func:`headline_ranks` gives the methods' average ranks across data sets with the
Friedman test (:func:`oadbench.significance.rank_summary`), :func:`ranks_csv` writes them.

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
from oadbench.per_image import PerImage, read_per_image
from oadbench.results import FINISHED
from oadbench.significance import ALPHA, Ranks, rank_summary
from oadbench.stats import MEAN_ROW, fmt, fmt1, fmt3, fmt_pm, mean_over, seed_stats
from oadbench.table_stats import aupimo_value, complete, interval_columns, marked, marker_columns, stat_columns

ORDER = ("synthetic", "mtd", "mvtec")
HEADLINE_METRICS = ("image_auroc", "pixel_auroc", "aupro", "aupimo")
HEADLINE_COSTS = ("aulc_image_auroc", "observe_ms", "score_ms")
COLUMNS = ["method", "backbone", "dataset", "n_runs", "seeds",
           *[f"{m}_{s}" for m in HEADLINE_METRICS for s in ("mean", "std")], *stat_columns(), *HEADLINE_COSTS,
           "image_size"]
RANK_COLUMNS = ["method", "backbone", "average_rank", "data_sets", "friedman_statistic", "friedman_p"]
RANK_METRIC = "image_auroc"


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
    tables: dict[tuple[str, str], dict[str, dict[int, PerImage | None]]] = defaultdict(lambda: defaultdict(dict))
    for path, record in pairs:
        key = (record["config"]["method"]["name"], record["backbone"]["name"])
        seed, table = int(record["config"]["seed"]), read_per_image(path, record)
        runs[key][data_set(record)][seed] = {**run_values(record), "aupimo": aupimo_value(table)}
        tables[key][data_set(record)][seed] = table
    everywhere = sorted({d for cells in runs.values() for d in cells}, key=_order)
    rows = []
    for (method, backbone), cells in sorted(runs.items()):
        for name in everywhere:
            if name in cells:
                rows.append(_row(method, backbone, name, cells[name], len(cells[name]),
                                 {name: tables[(method, backbone)][name]}))
        full = [s for s in sorted({s for c in cells.values() for s in c})
                if all(s in cells.get(d, {}) for d in everywhere)]
        per_seed = {s: mean_over([cells[d][s] for d in everywhere], (*HEADLINE_METRICS, *HEADLINE_COSTS))
                    for s in full}
        rows.append(_row(method, backbone, MEAN_ROW, per_seed, sum(len(c) for c in cells.values()),
                         {d: {s: tables[(method, backbone)][d][s] for s in full} for d in everywhere}
                         if full else {}))
    for name in everywhere:  # the top group of each data set
        keyed = {(r["method"], r["backbone"]): r for r in rows if r["dataset"] == name}
        cells_of = {k: complete({name: tables[k][name]}) for k in keyed}
        marks = marker_columns({k: c[name] if c else None for k, c in cells_of.items()}, keyed)
        for k, r in keyed.items():
            r.update(marks[k])
    return next(iter(labels)), next(iter(sizes)), rows


def _order(name: str) -> tuple[int, str]:
    """The synthetic categories, MTD, MVTec AD, then any other data set, each group alphabetical."""
    dataset = name.split("/", 1)[0]
    return (ORDER.index(dataset) if dataset in ORDER else len(ORDER), name)


def _row(method: str, backbone: str, name: str, runs: Mapping[int, Mapping[str, Any]], n_runs: int,
         per_image: Mapping[str, Mapping[int, PerImage | None]]) -> dict[str, Any]:
    seeds = sorted(runs)
    row: dict[str, Any] = {"method": method, "backbone": backbone, "dataset": name, "n_runs": n_runs,
                           "seeds": " ".join(map(str, seeds))}
    return {**row, **seed_stats(runs, HEADLINE_METRICS, HEADLINE_COSTS), **interval_columns(complete(per_image))}


def method_names(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """(method, backbone) -> its label: the method's name, with the backbone where a method has several."""
    keys = list(dict.fromkeys((r["method"], r["backbone"]) for r in rows))
    several = {m for m, _ in keys if sum(k[0] == m for k in keys) > 1}
    return {(m, b): f"{m} ({b})" if m in several else m for m, b in keys}


def headline_ranks(rows: Sequence[Mapping[str, Any]], metric: str = RANK_METRIC) -> Ranks:
    """Average ranks, Friedman and Nemenyi across the table's data sets (blocks), on each method's seed-mean
    ``metric`` (:func:`oadbench.significance.rank_summary`)."""
    names = method_names(rows)
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["dataset"] != MEAN_ROW and r.get(f"{metric}_mean") is not None:
            table[r["dataset"]][names[(r["method"], r["backbone"])]] = r[f"{metric}_mean"]
    return rank_summary(table)


def ranks_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The headline's average ranks (image AUROC) with the Friedman test, one row per method, best first."""
    ranks = headline_ranks(rows)
    names = method_names(rows)
    lines = [",".join(RANK_COLUMNS)]
    for (method, backbone), name in sorted(names.items(), key=lambda kv: (ranks.average.get(kv[1], 1e9), kv[1])):
        lines.append(",".join(fmt(v) for v in (method, backbone, ranks.average.get(name), ranks.blocks,
                                               ranks.friedman_statistic, ranks.friedman_p)))
    return "\n".join(lines) + "\n"


def has_per_image(rows: Sequence[Mapping[str, Any]]) -> bool:
    return any(r.get("image_auroc_ci_low") is not None for r in rows)


def headline_csv(rows: Sequence[Mapping[str, Any]], image_size: int) -> str:
    lines = [",".join(COLUMNS)]
    for r in rows:
        lines.append(",".join(fmt(image_size if c == "image_size" else r.get(c)) for c in COLUMNS))
    return "\n".join(lines) + "\n"


def headline_markdown(protocol: str, image_size: int, rows: Sequence[Mapping[str, Any]], csv_name: str,
                      records_name: str, cd_name: str | None = None) -> list[str]:
    """Pivot tables (methods × data sets): final image AUROC, pixel AUROC and AUPIMO, mean ± std over seeds, with
    the 95 % interval and the top-group mark where the records have per-image results; then the average ranks
    with the Friedman test and the critical-difference diagram (``cd_name``, relative to the README)."""
    names = [d for d in dict.fromkeys(r["dataset"] for r in rows) if d != MEAN_ROW]
    by_key = {(r["method"], r["backbone"], r["dataset"]): r for r in rows}
    methods = list(dict.fromkeys((r["method"], r["backbone"]) for r in rows))
    seeds = " ".join(sorted({s for r in rows for s in str(r["seeds"]).split()}, key=int))
    out = [f"## Headline: {protocol} at {image_size} px", "",
           f"Final metrics after the whole stream, mean ± std over seeds {seeds}; "
           f"**mean**: the mean over the {len(names)} data sets, each counting once (empty until every data set "
           f"has the seed's run). Where the records have per-image results: [95 % bootstrap interval over test "
           f"images] and ★ on the best method of a data set and every method not significantly below it "
           f"(one-sided paired test on the same images, Holm-corrected, α = {ALPHA}: DeLong for image AUROC, "
           f"Wilcoxon for AUPIMO; see the README's \"Comparing methods\"). Records: `{records_name}`; "
           f"CSV: `{csv_name}`.", ""]
    for metric, title in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupimo", "AUPIMO")):
        if metric == "aupimo" and not any(r.get("aupimo_mean") is not None for r in rows):
            continue
        out += [f"| {title} | " + " | ".join(names) + " | **mean** |", "|---|" + "---|" * (len(names) + 1)]
        for method, backbone in methods:
            cells = []
            for name in [*names, MEAN_ROW]:
                r = by_key.get((method, backbone, name)) or {}
                mean = r.get(f"{metric}_mean")
                text = marked(fmt_pm(mean, r.get(f"{metric}_std")), r, metric)
                cells.append(f"**{text}**" if name == MEAN_ROW and mean is not None else text)
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out.append("")
    ranks = headline_ranks(rows)
    if ranks.average:
        label = method_names(rows)
        order = sorted(methods, key=lambda k: (ranks.average.get(label[k], 1e9), label[k]))
        p = "–" if ranks.friedman_p is None else f"{ranks.friedman_p:.3g}"
        out += [f"Average rank of the seed-mean final image AUROC over the {ranks.blocks} data sets (1 = best; each "
                f"data set one block, its seeds averaged first: they share its test set). Friedman test: "
                f"p = {p}" + ("" if ranks.friedman_statistic is None else
                               f" (χ² = {ranks.friedman_statistic:.2f}, {len(ranks.average) - 1} df)") + ".", "",
                "| method | " + " | ".join(label[k] for k in order) + " |", "|---|" + "---|" * len(order),
                "| average rank | " + " | ".join(fmt3(ranks.average.get(label[k])) for k in order) + " |", ""]
        if cd_name is not None:
            out += [f"![Critical-difference diagram of the headline]({cd_name})", ""]
    out += ["Observe / score ms per image (median, the method's own work):", "",
            "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for method, backbone in methods:
        cells = [f"{fmt1(by_key.get((method, backbone, n), {}).get('observe_ms'))} / "
                 f"{fmt1(by_key.get((method, backbone, n), {}).get('score_ms'))}" for n in names]
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return out + [""]

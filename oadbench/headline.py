"""The headline tables: one protocol at one input size each, every method on a fixed set of data sets.

``build_headlines(records)`` splits the headline records (the published ones: ``leaderboards/headline/records``)
into tables, one per protocol name, real data sets and synthetic ones apart: the synthetic categories are
smoke-test data (``smoke``), tabled after the real ones. ``build_headline(records)`` builds one table: one row per
(method, backbone, variant, device type, data set) plus one ``mean`` row per (method, backbone, variant, device
type). The *variant* is what
the run's leaderboard label adds to the protocol name (:func:`oadbench.cells.protocol_label`; e.g.
``observe_then_score`` for a prequential run in that order, empty for the protocol's own setting): each variant is
a row of its own, ranked and tested beside the methods. A data set is ``<dataset>/<category>`` (``mtd/tile``,
``mvtec/transistor``): each counts once in the mean, as in the LeMO ablation's selection rule. The mean row averages
each seed's final metric over the data sets, then takes mean and sample std (ddof = 1) over seeds; it is empty
unless every data set of the table has that row's run for that seed, so a missing cell never shifts the mean
silently. Cells hold the records' final metrics (mean and std over seeds), the area under the image-AUROC
learning curve and the method's observe and score ms per image (median, mean over runs); prequential runs add the
default decision policy's false-alarm and miss rates over the stream (:func:`oadbench.decision_report.
leaderboard_values`).

Where the records have per-image results, cells gain AUPIMO, intervals and the top group of each data set
(:mod:`oadbench.table_stats`); :func:`headline_ranks` gives the rows' average ranks across data sets with the
Friedman test (:func:`oadbench.significance.rank_summary`), :func:`ranks_csv` writes them.

A table's records must share one input size and one configuration per cell (the leaderboards' rule,
:func:`oadbench.cells.assign_cells`, checks the last); anything else is an error naming what differs. Records run
on a GPU are rows of their own, labelled with the device type (``inreach (cuda)``), and a table with such rows
gets a ``device`` column after ``variant`` (a CPU-only table's CSV is what it always was): their metrics match the
CPU's up to float rounding, their times are another machine's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oadbench.cells import CPU, assign_cells, file_contaminations, is_gpu_table, record_device, run_values, table_of
from oadbench.decision_report import LEADERBOARD, blank_partial_rates, leaderboard_values
from oadbench.decisions import DEFAULT_POLICY
from oadbench.errors import DataError
from oadbench.per_image import PerImage, read_per_image
from oadbench.results import FINISHED
from oadbench.significance import ALPHA, Ranks, rank_summary
from oadbench.stats import MEAN_ROW, fmt, fmt1, fmt3, fmt_pct, fmt_pm, mean_over, seed_stats
from oadbench.table_stats import aupimo_value, complete, interval_columns, marked, marker_columns, stat_columns

ORDER = ("synthetic", "mtd", "mvtec")
SMOKE = "synthetic"  # the data set whose categories are smoke-test data: tables of their own, after the real ones
HEADLINE_METRICS = ("image_auroc", "pixel_auroc", "aupro", "aupimo", *LEADERBOARD)
HEADLINE_COSTS = ("aulc_image_auroc", "observe_ms", "score_ms")
COLUMNS = ["method", "backbone", "variant", "dataset", "n_runs", "seeds",
           *[f"{m}_{s}" for m in HEADLINE_METRICS for s in ("mean", "std")], *stat_columns(), *HEADLINE_COSTS,
           "image_size"]
RANK_COLUMNS = ["method", "backbone", "variant", "average_rank", "data_sets", "friedman_statistic", "friedman_p"]
DEVICE_AFTER = "variant"  # a GPU table's ``device`` column follows it, in the table's and the ranks' CSV
RANK_METRIC = "image_auroc"

Key = tuple[str, str, str, str]  # (method, backbone, variant, device type): one row group of a headline table


@dataclass(frozen=True)
class Headline:
    """One headline table: ``protocol`` (its name) at ``image_size`` px; ``smoke``: synthetic data sets only."""

    protocol: str
    image_size: int
    smoke: bool
    rows: list[dict[str, Any]]

    @property
    def stem(self) -> str:
        """The table's file stem: ``<protocol>_<size>px``, with ``_synthetic`` for smoke-test data."""
        return f"{self.protocol}_{self.image_size}px" + ("_synthetic" if self.smoke else "")


def data_set(record: Mapping[str, Any]) -> str:
    """``<dataset>/<category>`` of a record."""
    dataset = record["config"]["dataset"]
    return f"{dataset['name']}/{dataset['category']}"


def build_headlines(records: Iterable[tuple[Path, Mapping[str, Any]]]) -> list[Headline]:
    """The headline tables of (path, record) pairs, one per protocol name and kind of data (real, then smoke-test),
    each sorted by protocol name; unfinished records are ignored."""
    groups: dict[tuple[bool, str], list[tuple[Path, Mapping[str, Any]]]] = defaultdict(list)
    for path, record in records:
        if record.get("status") == FINISHED:
            config = record["config"]
            groups[(config["dataset"]["name"] == SMOKE, str(config["protocol"]["name"]))].append((path, record))
    if not groups:
        raise DataError("no finished run record for the headline table")
    out = []
    for (smoke, _), pairs in sorted(groups.items()):
        protocol, size, rows = build_headline(pairs)
        out.append(Headline(protocol, size, smoke, rows))
    return out


def build_headline(records: Iterable[tuple[Path, Mapping[str, Any]]]) -> tuple[str, int, list[dict[str, Any]]]:
    """(protocol name, image size, rows) of one table from (path, record) pairs; unfinished records are ignored."""
    pairs = [(p, r) for p, r in records if r.get("status") == FINISHED]
    if not pairs:
        raise DataError("no finished run record for the headline table")
    ratios = file_contaminations()
    assign_cells(pairs, ratios)  # one configuration per cell, or an error naming both files
    names = {str(r["config"]["protocol"]["name"]): p for p, r in pairs}
    sizes = {int(r["data"]["image_size"]): p for p, r in pairs}
    if len(names) > 1:
        raise DataError(f"a headline table takes one protocol, got {sorted(names)} "
                        f"(e.g. {' and '.join(str(p) for p in names.values())})")
    if len(sizes) > 1:
        raise DataError(f"the headline table takes one input size, got {sorted(sizes)} px "
                        f"(e.g. {' and '.join(str(p) for p in sizes.values())})")
    protocol = next(iter(names))
    runs: dict[Key, dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    tables: dict[Key, dict[str, dict[int, PerImage | None]]] = defaultdict(lambda: defaultdict(dict))
    for path, record in pairs:
        variant = table_of(record, ratios)[0][len(protocol) + 1:]
        key = (record["config"]["method"]["name"], record["backbone"]["name"], variant, record_device(record))
        seed, table = int(record["config"]["seed"]), read_per_image(path, record)
        values = {**run_values(record), "aupimo": aupimo_value(table), **leaderboard_values(table, record)}
        runs[key][data_set(record)][seed] = values
        tables[key][data_set(record)][seed] = table
    everywhere = sorted({d for cells in runs.values() for d in cells}, key=_order)
    rows = []
    for key, cells in sorted(runs.items()):
        for name in everywhere:
            if name in cells:
                rows.append(_row(key, name, cells[name], len(cells[name]), {name: tables[key][name]}))
        full = [s for s in sorted({s for c in cells.values() for s in c})
                if all(s in cells.get(d, {}) for d in everywhere)]
        per_seed = {s: _mean_over([cells[d][s] for d in everywhere]) for s in full}
        rows.append(_row(key, MEAN_ROW, per_seed, sum(len(c) for c in cells.values()),
                         {d: {s: tables[key][d][s] for s in full} for d in everywhere} if full else {}))
    for name in everywhere:  # the top group of each data set
        keyed = {row_key(r): r for r in rows if r["dataset"] == name}
        cells_of = {k: complete({name: tables[k][name]}) for k in keyed}
        marks = marker_columns({k: c[name] if c else None for k, c in cells_of.items()}, keyed)
        for k, r in keyed.items():
            r.update(marks[k])
    return protocol, next(iter(sizes)), rows


def _mean_over(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One seed's values averaged over the data sets; a decision rate missing on one leaves the mean empty."""
    out = mean_over(cells, (*HEADLINE_METRICS, *HEADLINE_COSTS))
    blank_partial_rates(out, cells)
    return out


def row_key(row: Mapping[str, Any]) -> Key:
    """(method, backbone, variant, device type) of a headline row."""
    return row["method"], row["backbone"], row.get("variant") or "", row.get("device") or CPU


def _order(name: str) -> tuple[int, str]:
    """The synthetic categories, MTD, MVTec AD, then any other data set, each group alphabetical."""
    dataset = name.split("/", 1)[0]
    return (ORDER.index(dataset) if dataset in ORDER else len(ORDER), name)


def _row(key: Key, name: str, runs: Mapping[int, Mapping[str, Any]], n_runs: int,
         per_image: Mapping[str, Mapping[int, PerImage | None]]) -> dict[str, Any]:
    seeds = sorted(runs)
    row: dict[str, Any] = {"method": key[0], "backbone": key[1], "variant": key[2], "device": key[3],
                           "dataset": name, "n_runs": n_runs, "seeds": " ".join(map(str, seeds))}
    return {**row, **seed_stats(runs, HEADLINE_METRICS, HEADLINE_COSTS), **interval_columns(complete(per_image))}


def method_names(rows: Sequence[Mapping[str, Any]]) -> dict[Key, str]:
    """(method, backbone, variant, device type) -> its label: the method's name, with the backbone where a method
    has several and the device type off the CPU, then the variant in words (``lemo, observe then score``,
    ``inreach (cuda)``)."""
    keys = list(dict.fromkeys(row_key(r) for r in rows))
    several = {m for m, b, _, _ in keys if len({k[1] for k in keys if k[0] == m}) > 1}

    def label(m: str, b: str, v: str, d: str) -> str:
        note = ", ".join([*([b] if m in several else []), *([d] if d != CPU else [])])
        return m + (f" ({note})" if note else "") + (", " + v.replace("_", " ") if v else "")

    return {key: label(*key) for key in keys}


def headline_ranks(rows: Sequence[Mapping[str, Any]], metric: str = RANK_METRIC) -> Ranks:
    """Average ranks, Friedman and Nemenyi across the table's data sets (blocks), on each row's seed-mean
    ``metric`` (:func:`oadbench.significance.rank_summary`). Only rows with every data set are ranked (while at
    least two are; else only the data sets every row has are blocks)."""
    names = method_names(rows)
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["dataset"] != MEAN_ROW and r.get(f"{metric}_mean") is not None:
            table[r["dataset"]][names[row_key(r)]] = r[f"{metric}_mean"]
    everywhere = set.intersection(*(set(v) for v in table.values())) if table else set()
    if len(everywhere) >= 2:  # rows lacking a data set leave the ranks, rather than the data set leaving them
        table = defaultdict(dict, {d: {n: v for n, v in row.items() if n in everywhere} for d, row in table.items()})
    return rank_summary(table)


def ranks_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The headline's average ranks (image AUROC) with the Friedman test, one row per method, best first."""
    ranks = headline_ranks(rows)
    names = method_names(rows)
    cols = with_device(RANK_COLUMNS, rows)
    lines = [",".join(cols)]
    for (method, backbone, variant, device), name in sorted(names.items(),
                                                            key=lambda kv: (ranks.average.get(kv[1], 1e9), kv[1])):
        values = {"method": method, "backbone": backbone, "variant": variant, "device": device,
                  "average_rank": ranks.average.get(name), "data_sets": ranks.blocks,
                  "friedman_statistic": ranks.friedman_statistic, "friedman_p": ranks.friedman_p}
        lines.append(",".join(fmt(values[c]) for c in cols))
    return "\n".join(lines) + "\n"


def has_per_image(rows: Sequence[Mapping[str, Any]]) -> bool:
    return any(r.get("image_auroc_ci_low") is not None for r in rows)


def with_device(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``columns`` with ``device`` after ``variant`` where the table has rows run off the CPU."""
    if not is_gpu_table(rows):
        return list(columns)
    at = list(columns).index(DEVICE_AFTER) + 1
    return [*columns[:at], "device", *columns[at:]]


def headline_csv(rows: Sequence[Mapping[str, Any]], image_size: int) -> str:
    cols = with_device(COLUMNS, rows)
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join(fmt(image_size if c == "image_size" else r.get(c)) for c in cols))
    return "\n".join(lines) + "\n"


def headline_heading(table: Headline) -> str:
    """The table's title: ``Headline: <protocol> at <size> px``, or ``Smoke test: ...`` for synthetic data."""
    return (f"Smoke test: {table.protocol} at {table.image_size} px on synthetic data" if table.smoke else
            f"Headline: {table.protocol} at {table.image_size} px")


def headline_markdown(table: Headline, csv_name: str, records_name: str, cd_name: str | None = None) -> list[str]:
    """Pivot tables (rows × data sets): final image AUROC, pixel AUROC and AUPIMO, mean ± std over seeds, with the
    95 % interval and the top-group mark where the records have per-image results, and for prequential tables the
    default decision policy's false-alarm / miss rates; then the average ranks with the Friedman test and the
    critical-difference diagram (``cd_name``, relative to the README)."""
    rows = table.rows
    names = sorted({r["dataset"] for r in rows} - {MEAN_ROW}, key=_order)
    by_key = {(*row_key(r), r["dataset"]): r for r in rows}
    keys = list(dict.fromkeys(row_key(r) for r in rows))
    label = method_names(rows)
    seeds = " ".join(sorted({s for r in rows for s in str(r["seeds"]).split()}, key=int))
    heading = headline_heading(table)
    out = [f"## {heading}", ""]
    if table.smoke:
        out += ["The synthetic categories are smoke-test data (generated defects on generated textures): they show "
                "that every method runs and learns, not how it does on real parts.", ""]
    out += [f"Final metrics after the whole stream, mean ± std over seeds {seeds}; "
            f"**mean**: the mean over the {len(names)} data sets, each counting once (empty until every data set "
            f"has the seed's run). Where the records have per-image results: [95 % bootstrap interval over test "
            f"images] and, where every row of a data set has them, ★ on its best row and every row not significantly "
            f"below it (one-sided paired test on the same images, Holm-corrected, α = {ALPHA}: DeLong for image AUROC, "
            f"Wilcoxon for AUPIMO; see the README's \"Comparing methods\"). Records: `{records_name}`; "
            f"CSV: `{csv_name}`.", ""]
    pivots = [("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupimo", "AUPIMO")]
    for metric, title in pivots:
        if metric == "aupimo" and not any(r.get("aupimo_mean") is not None for r in rows):
            continue
        out += [f"| {title} | " + " | ".join(names) + " | **mean** |", "|---|" + "---|" * (len(names) + 1)]
        for key in keys:
            cells = []
            for name in [*names, MEAN_ROW]:
                r = by_key.get((*key, name)) or {}
                mean = r.get(f"{metric}_mean")
                text = marked(fmt_pm(mean, r.get(f"{metric}_std")), r, metric)
                cells.append(f"**{text}**" if name == MEAN_ROW and mean is not None else text)
            out.append(f"| {label[key]} | " + " | ".join(cells) + " |")
        out.append("")
    if any(r.get(f"{LEADERBOARD[0]}_mean") is not None for r in rows):
        out += [f"False alarms / misses over the stream, % (the default label-free threshold policy "
                f"`{DEFAULT_POLICY}`, mean over seeds; `oadbench decisions` gives more):", "",
                "| false alarms / misses % | " + " | ".join(names) + " | **mean** |",
                "|---|" + "---|" * (len(names) + 1)]
        for key in keys:
            cells = [f"{fmt_pct(r.get(f'{LEADERBOARD[0]}_mean'))} / {fmt_pct(r.get(f'{LEADERBOARD[1]}_mean'))}"
                     for r in (by_key.get((*key, n)) or {} for n in [*names, MEAN_ROW])]
            out.append(f"| {label[key]} | " + " | ".join(cells) + " |")
        out.append("")
    ranks = headline_ranks(rows)
    if ranks.average:
        order = sorted(keys, key=lambda k: (ranks.average.get(label[k], 1e9), label[k]))
        p = "–" if ranks.friedman_p is None else f"{ranks.friedman_p:.3g}"
        out += [f"Average rank of the seed-mean final image AUROC over the {ranks.blocks} data sets (1 = best; each "
                f"data set one block, its seeds averaged first: they share its test set; a row without every data set "
                f"is not ranked). Friedman test: "
                f"p = {p}" + ("" if ranks.friedman_statistic is None else
                               f" (χ² = {ranks.friedman_statistic:.2f}, {len(ranks.average) - 1} df)") + ".", "",
                "| row | " + " | ".join(label[k] for k in order) + " |", "|---|" + "---|" * len(order),
                "| average rank | " + " | ".join(fmt3(ranks.average.get(label[k])) for k in order) + " |", ""]
        if cd_name is not None:
            out += [f"![Critical-difference diagram, {heading}]({cd_name})", ""]
    gpu = ("; a row labelled with a device type ran there, its times that machine's, not comparable with the CPU "
           "rows'") if is_gpu_table(rows) else ""
    out += [f"Observe / score ms per image (median, the method's own work{gpu}):", "",
            "| row | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        cells = [f"{fmt1(by_key.get((*key, n), {}).get('observe_ms'))} / "
                 f"{fmt1(by_key.get((*key, n), {}).get('score_ms'))}" for n in names]
        out.append(f"| {label[key]} | " + " | ".join(cells) + " |")
    return out + [""]

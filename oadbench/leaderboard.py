"""Leaderboards compiled from run records, never edited by hand.

``compile_leaderboards(records_dirs, out_dir)`` reads every finished record under ``records_dirs`` (one folder or
several, e.g. a researcher's own and the published ones; unreadable record files are an error naming each,
:mod:`oadbench.record_sets`) and writes
``<out_dir>/<protocol>/<dataset>.csv`` and ``<out_dir>/README.md`` (the same tables in Markdown). ``<protocol>``
is :func:`protocol_label`: the protocol's name, with the warm-up size of few-shot runs (``few_shot_k4``) and the
contamination ratio where it differs from the protocol file's (``online_contaminated_c20``), so that each
setting of a sweep gets its own table.

Rows of a CSV: one per (method, backbone, category), then one ``mean`` row per (method, backbone), sorted by
method, backbone, category. A category row aggregates the seeds of that cell: ``<metric>_mean`` and
``<metric>_std`` (sample standard deviation, ddof = 1; empty with a single seed). A ``mean`` row averages each
seed's metric over the categories run with that seed, then takes mean and std over seeds, so its std is the
seed-to-seed spread of the category average. Online summaries per metric: ``aulc_<metric>`` (area under the
learning curve) and ``images_to_95_<metric>``; cost: observe (or warm-up observe) and score ms per image
(median), training seconds (the method's observe + consolidate time, backbone excluded), peak RSS (MiB) and final
footprint (MiB), each a mean over runs. Also the number of runs, the seeds, the image size and the
oadbench version(s) that produced them. Floats are written with 4 decimals, rows and columns in a fixed order,
so a diff of two compilations shows only real changes.

Statistics from the records' per-image results (:mod:`oadbench.table_stats`): ``aupimo_mean`` / ``_std``, the 95 %
bootstrap interval of image AUROC and AUPIMO (``<m>_ci_low`` / ``_ci_high``) and, on category rows, the top group
(``<m>_top``, ``<m>_p_best``); empty for a row any of whose runs has no per-image results.

Prequential tables: the default label-free threshold policy's false-alarm and miss rates over each run's stream
(``false_alarm_rate_mean`` / ``_std``, ``miss_rate_mean`` / ``_std``: :func:`oadbench.decision_report.
leaderboard_values`, the numbers ``oadbench decisions`` gives), empty for a run without per-image stream results.

Drift protocols (records with ``final_initial``) get three more column groups: every metric in the initial drift
state (``<metric>_initial_mean`` / ``_std``) and ``drop_<metric>``: the same run without drift (the record whose
identity differs only in the protocol's name, description and drift: ``online_cold_start`` for ``online_drift``,
``offline`` for ``offline_drift``) minus the drifted final, mean over the seeds that have both; empty without that
record.

Devices: records of different device types are keyed apart, not merged and not refused. A cell is (method,
backbone, device type, category): a CPU run and a CUDA run of one configuration are two runs with their own
identities (:mod:`oadbench.devices`), both legitimate, and a results directory may well hold both; refusing them
would make such a directory impossible to compile, and merging them would average cost columns that measure
different machines (and metrics that differ by float rounding). A table with records on a device other than the
CPU gets a ``device`` column (after ``backbone``) and the GPU memory of each cell (``cuda_peak_mb``: the run's
peak, ``cuda_method_peak_mb``: the method's own, ``cuda_features_peak_mb``: the backbone's and the kept features';
mean over runs, empty for CPU rows); a table with only CPU records has neither, so its CSV is what it always was.

Two finished records for the same (protocol, dataset, method, backbone, device type, category, seed) with
different run identities (say, two hyperparameter settings, or ``precision=fp32`` and ``tf32``) are an error naming
both files: a leaderboard cell is one configuration.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from oadbench.cells import (
    COSTS,
    GPU_COSTS,
    METRICS,
    SUMMARIES,
    assign_cells,
    file_contaminations,
    is_gpu_table,
    run_values,
    undrifted_key,
)
from oadbench.decision_report import LEADERBOARD, blank_partial_rates, leaderboard_values
from oadbench.decisions import DEFAULT_POLICY
from oadbench.errors import DataError
from oadbench.figures import draw_headline_cd
from oadbench.headline import build_headlines, headline_csv, headline_heading, headline_markdown, ranks_csv
from oadbench.per_image import PerImage, read_per_image
from oadbench.record_sets import folders_of, load_records, skipped_lines
from oadbench.results import FINISHED
from oadbench.stats import MEAN_ROW, fmt, fmt0, fmt1, fmt3, fmt_pct, fmt_pm, mean_over, seed_stats
from oadbench.table_stats import aupimo_value, complete, interval_columns, marked, marker_columns, stat_columns

HEADLINE_RECORDS = Path("headline", "records")  # the headline tables' records, inside a leaderboards folder


def columns(drift: bool = False, gpu: bool = False, decisions: bool = False) -> list[str]:
    cols = ["method", "backbone", *(["device"] if gpu else []), "category", "n_runs", "seeds"]
    for m in METRICS:
        cols += [f"{m}_mean", f"{m}_std"]
    cols += ["aupimo_mean", "aupimo_std", *stat_columns()]
    if decisions:
        cols += [f"{k}_{s}" for k in LEADERBOARD for s in ("mean", "std")]
    if drift:
        for m in METRICS:
            cols += [f"{m}_initial_mean", f"{m}_initial_std"]
        cols += [f"drop_{m}" for m in METRICS]
    for s in SUMMARIES:
        cols += [f"{s}_{m}" for m in METRICS]
    cols += list(COSTS) + (list(GPU_COSTS) if gpu else []) + ["image_size", "oadbench_version"]
    return cols


def default_headline(folder: Path) -> Path | None:
    """The headline table's records inside the leaderboards ``folder``, or None where it has none."""
    path = folder / HEADLINE_RECORDS
    return path if path.is_dir() else None


def _cell_row(method: str, backbone: str, device: str, category: str, runs: Mapping[int, Mapping[str, Any]],
              meta: Sequence[Mapping[str, Any]], per_image: Mapping[str, Mapping[int, PerImage | None]]
              ) -> dict[str, Any]:
    """``runs``: seed -> run values (one category, or the category average for a mean row); ``per_image``:
    category -> seed -> the run's per-image results (None without)."""
    seeds = sorted(runs)
    row: dict[str, Any] = {"method": method, "backbone": backbone, "device": device, "category": category,
                           "n_runs": sum(int(r.get("_n", 1)) for r in runs.values()),
                           "seeds": " ".join(map(str, seeds))}
    for m in METRICS:
        row.update(seed_stats(runs, [m]))
        if any(f"{m}_initial" in runs[s] for s in seeds):
            row.update(seed_stats(runs, [f"{m}_initial"], [f"drop_{m}"]))
    row.update(seed_stats(runs, ["aupimo"]))
    if any(LEADERBOARD[0] in runs[s] for s in seeds):
        row.update(seed_stats(runs, LEADERBOARD))
    row.update(interval_columns(complete(per_image)))
    row.update(seed_stats(runs, (), [f"{s}_{m}" for s in SUMMARIES for m in METRICS] + list(COSTS) + list(GPU_COSTS)))
    row["image_size"] = " ".join(sorted({str(x["image_size"]) for x in meta}, key=int))
    row["oadbench_version"] = " ".join(sorted({str(x["version"]) for x in meta}))
    return row


def build_tables(records: Iterable[tuple[Path, Mapping[str, Any]]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(protocol, dataset) -> leaderboard rows, from (path, record) pairs (unfinished records are ignored)."""
    cells: dict[tuple[str, str], dict[tuple[str, str, str, str], dict[int, dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(dict))
    meta: dict[tuple[str, str], dict[tuple[str, str, str, str], list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list))
    per_image: dict[tuple[str, str], dict[tuple[str, str, str, str], dict[int, PerImage | None]]] = defaultdict(
        lambda: defaultdict(dict))
    file_ratios = file_contaminations()
    records = [(p, r) for p, r in records if r.get("status") == FINISHED]
    undrifted = {undrifted_key(r): r["final"] for _, r in records if r.get("final_initial") is None}
    for placed in assign_cells(records, file_ratios):
        record, table, cell, seed = placed.record, placed.table, placed.cell, placed.seed
        values = run_values(record)
        table_pi = read_per_image(placed.path, record)
        values["aupimo"] = aupimo_value(table_pi)
        if (record["config"]["protocol"].get("evaluation") or {}).get("mode") == "prequential":
            values.update(leaderboard_values(table_pi, record))
        per_image[table][cell][seed] = table_pi
        if record.get("final_initial") is not None:
            base = undrifted.get(undrifted_key(record)) or {}
            for m in METRICS:
                after, before = values.get(m), base.get(m)
                values[f"drop_{m}"] = None if after is None or before is None else before - after
        cells[table][cell][seed] = values
        meta[table][cell].append({"image_size": record["data"]["image_size"],
                                  "version": record["env"].get("oadbench")})
    tables: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for table in sorted(cells):
        rows = []
        by_method: dict[tuple[str, str, str], list[tuple[str, str, str, str]]] = defaultdict(list)
        by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for cell in sorted(cells[table]):
            rows.append(_cell_row(*cell, cells[table][cell], meta[table][cell],
                                  {cell[3]: per_image[table][cell]}))
            by_method[cell[:3]].append(cell)
            by_category[cell[3]].append(rows[-1])
        for category, cat_rows in by_category.items():
            keyed = {(r["method"], r["backbone"], r["device"]): r for r in cat_rows}
            seeds_of = {k: complete({category: per_image[table][(*k, category)]}) for k in keyed}
            marks = marker_columns({k: v[category] if v else None for k, v in seeds_of.items()}, keyed)
            for k, r in keyed.items():
                r.update(marks[k])
        for (method, backbone, device), cell_keys in sorted(by_method.items()):
            per_seed: dict[int, dict[str, Any]] = {}
            for seed in sorted({s for c in cell_keys for s in cells[table][c]}):
                present = [cells[table][c][seed] for c in cell_keys if seed in cells[table][c]]
                per_seed[seed] = mean_over(present, present[0])
                blank_partial_rates(per_seed[seed], present)  # a category without stream results
                per_seed[seed]["_n"] = len(present)
            rows.append(_cell_row(method, backbone, device, MEAN_ROW, per_seed,
                                  [m for c in cell_keys for m in meta[table][c]],
                                  {c[3]: per_image[table][c] for c in cell_keys}))
        rows.sort(key=lambda r: (r["method"], r["backbone"], r["device"], r["category"] == MEAN_ROW, r["category"]))
        tables[table] = rows
    return tables


def is_drift_table(rows: Sequence[Mapping[str, Any]]) -> bool:
    return any(f"{METRICS[0]}_initial_mean" in r for r in rows)


def is_decision_table(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a table is prequential: it has the default policy's decision columns."""
    return any(f"{LEADERBOARD[0]}_mean" in r for r in rows)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    cols = columns(drift=is_drift_table(rows), gpu=is_gpu_table(rows), decisions=is_decision_table(rows))
    writer.writerow(cols)
    for row in rows:
        writer.writerow([fmt(row.get(c)) for c in cols])
    return buf.getvalue()


def to_markdown(tables: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]], first: Sequence[str] = (),
                last: Sequence[str] = ()) -> str:
    """The README: an introduction, ``first`` (Markdown lines: the headline tables), every table, then ``last``
    (the smoke-test tables)."""
    def pm(row: Mapping[str, Any], metric: str) -> str:
        return fmt_pm(row.get(f"{metric}_mean"), row.get(f"{metric}_std"))

    lines = ["# Leaderboards", "",
             "Generated by `oadbench leaderboard` from the run records in `records/`; do not edit by hand.",
             "Mean ± std over seeds; image / pixel AUROC, AUPRO, area under the learning curve of image AUROC,",
             "the method's own observe and score ms per image (median), its training seconds (observe +",
             "consolidate, backbone excluded) and the number of runs. Where every run of a row has per-image",
             "results: AUPIMO, the 95 % bootstrap interval over test images `[low, high]`; where every row of a",
             "category has them, ★ on its best row and every row not significantly below it (paired one-sided test",
             "on the same images, Holm-corrected; the main README's \"Comparing methods\" says what each assumes).",
             "", *first]
    for (protocol, dataset), rows in tables.items():
        sizes = " / ".join(sorted({x for r in rows for x in str(r["image_size"]).split()}, key=int))
        seeds = " ".join(sorted({x for r in rows for x in str(r["seeds"]).split()}, key=int))
        drift, gpu, dec = is_drift_table(rows), is_gpu_table(rows), is_decision_table(rows)
        aupimo = any(r.get("aupimo_mean") is not None for r in rows)
        lines += [f"## {protocol} / {dataset}", "",
                  f"Input {sizes} px, seeds {seeds}; CSV: `{protocol}/{dataset}.csv`."
                  + (" Image AUROC in the drifted (current) state, in the initial state, and its drop against the "
                     "same run without drift." if drift else "")
                  + (" GPU MiB: the method's own peak / the run's peak (GPU rows)." if gpu else "")
                  + (f" False alarms / misses: the `{DEFAULT_POLICY}` threshold policy's rates over the stream, in %"
                     " (runs with per-image results)." if dec else ""), "",
                  "| method | backbone | " + ("device | " if gpu else "") + "category | image AUROC | "
                  + ("initial image AUROC | drop vs no drift | " if drift else "")
                  + "pixel AUROC | AUPRO | " + ("AUPIMO | " if aupimo else "")
                  + ("false alarms / misses % | " if dec else "") + "AULC img | observe ms | "
                  + "score ms | train s | " + ("GPU MiB | " if gpu else "") + "runs |",
                  "|---|---|" + ("---|" if gpu else "") + "---|---|" + ("---|---|" if drift else "")
                  + "---|---|" + ("---|" if aupimo else "") + ("---|" if dec else "") + "---|---|---|---|"
                  + ("---|" if gpu else "") + "---|"]
        for r in rows:
            cat = f"**{r['category']}**" if r["category"] == MEAN_ROW else r["category"]
            extra = f"{pm(r, 'image_auroc_initial')} | {fmt3(r.get('drop_image_auroc'))} | " if drift else ""
            device = f"{r['device']} | " if gpu else ""
            memory = f"{fmt0(r.get('cuda_method_peak_mb'))} / {fmt0(r.get('cuda_peak_mb'))} | " if gpu else ""
            aup = f"{marked(pm(r, 'aupimo'), r, 'aupimo')} | " if aupimo else ""
            far, miss = fmt_pct(r.get("false_alarm_rate_mean")), fmt_pct(r.get("miss_rate_mean"))
            decided = f"{far} / {miss} | " if dec else ""
            lines.append(f"| {r['method']} | {r['backbone']} | {device}{cat} | "
                         f"{marked(pm(r, 'image_auroc'), r, 'image_auroc')} | {extra}"
                         f"{pm(r, 'pixel_auroc')} | {pm(r, 'aupro')} | {aup}{decided}"
                         f"{fmt3(r.get('aulc_image_auroc'))} | "
                         f"{fmt1(r.get('observe_ms'))} | {fmt1(r.get('score_ms'))} | {fmt1(r.get('train_s'))} | "
                         f"{memory}{r['n_runs']} |")
        lines.append("")
    return "\n".join([*lines, *last])


def _shown(folder: Path, bases: Sequence[Path]) -> str:
    """``folder`` as the README names it: relative to the first of ``bases`` it lies in, else its own name."""
    for base in bases:
        try:
            return Path(folder).resolve().relative_to(base.resolve()).as_posix() + "/"
        except ValueError:
            continue
    return Path(folder).name + "/"


def compile_leaderboards(records_dirs: Path | Sequence[Path], out_dir: Path,
                         headline_dirs: Path | Sequence[Path] | None = None, skip_unreadable: bool = False
                         ) -> list[Path]:
    """Write every leaderboard CSV and the Markdown README from the records under ``records_dirs`` (one folder or
    several: a researcher's own and the published ones compile into one set of tables); returns the written
    paths. ``headline_dirs``: records of the headline tables (:mod:`oadbench.headline`), each written to
    ``<out_dir>/headline/<stem>.csv`` (:attr:`oadbench.headline.Headline.stem`) with its ranks and
    critical-difference diagram, and into the README: the real data's tables first, the smoke-test ones last.
    An unreadable record file is an error naming it (:func:`oadbench.record_sets.load_records`), or with
    ``skip_unreadable`` listed in the README."""
    folders, out_dir = folders_of(records_dirs), Path(out_dir)
    loaded = load_records(folders, skip_unreadable)
    tables = build_tables(loaded.pairs)
    if not tables:
        raise DataError(f"no finished run record under {', '.join(map(str, folders))}")
    written, first = [], []
    skipped = list(loaded.skipped)
    headline, last = folders_of(headline_dirs), []
    if headline:
        hl = load_records(headline, skip_unreadable)
        skipped += hl.skipped
        bases = [out_dir, *(f.parent for f in folders)]  # as the README links it; a copy elsewhere names the same
        records_name = ", ".join(_shown(h, bases) for h in headline)
        for table in build_headlines(hl.pairs):
            path = out_dir / "headline" / f"{table.stem}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(headline_csv(table.rows, table.image_size))
            ranks = path.with_name(f"{table.stem}_ranks.csv")
            ranks.write_text(ranks_csv(table.rows))
            cd = draw_headline_cd(table.rows, path.parent, f"{table.stem}_critical_difference",
                                  headline_heading(table))
            written += [path, ranks, *cd]
            png = next((p.relative_to(out_dir).as_posix() for p in cd if p.suffix == ".png"), None)
            lines = headline_markdown(table, path.relative_to(out_dir).as_posix(), records_name, png)
            (last if table.smoke else first).extend(lines)
    for (protocol, dataset), rows in tables.items():
        path = out_dir / protocol / f"{dataset}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_csv(rows))
        written.append(path)
    readme = out_dir / "README.md"
    readme.write_text(to_markdown(tables, [*skipped_lines(skipped), *first], last))
    written.append(readme)
    return written

"""Threshold policies replayed on folders of finished prequential records (``oadbench decisions``), and the default
policy's columns of the leaderboards' prequential tables.

One row per (record, policy): the record's table (:func:`oadbench.cells.table_of`), method, category and seed, the
images scored and how many were defective, the policy's decision metrics over the whole stream and the label-using
references (:mod:`oadbench.stream_decisions`), and for a protected run (``decisions.protect``) how many images the
runner withheld. Records without per-image stream results (holdout runs, prequential records written before the
sidecar existed) are counted and passed over. The summary averages each (table, dataset, category, method, policy)
over its seeds; the curves give the decision metrics over the images scored by each of the record's checkpoints.
Rates are fractions (0-1); ``rejections_per_1000`` is per 1,000 scored parts.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oadbench.cells import file_contaminations, table_of
from oadbench.decisions import DEFAULT_POLICY, Policy, parse_policy
from oadbench.metrics.decision import DECISION_METRICS, REFERENCES
from oadbench.per_image import PREQUENTIAL, PerImage
from oadbench.record_sets import load_records
from oadbench.results import FINISHED
from oadbench.stats import mean
from oadbench.stream_decisions import replay, replay_table

KEYS = ("protocol", "dataset", "category", "method", "seed", "policy")
COLUMNS = (*KEYS, "scored", "anomalous", *DECISION_METRICS, *REFERENCES, "withheld", "record")
SUMMARY = ("false_alarm_rate", "miss_rate", "f1", "rejections_per_1000", "hindsight_f1")
CURVE_COLUMNS = (*KEYS, "scored", *DECISION_METRICS, "record")  # the metrics over the stream, per checkpoint
LEADERBOARD = ("false_alarm_rate", "miss_rate")  # the default policy's columns in the prequential tables


@dataclass
class Report:
    """``rows``: one per (record, policy), in record then policy order; ``curves``: one per (record, policy,
    checkpoint), the decision metrics over the images scored by then; ``passed_over``: finished records without
    per-image stream results."""

    rows: list[dict[str, Any]]
    passed_over: int
    curves: list[dict[str, Any]] = field(default_factory=list)


def has_stream_results(record: Mapping[str, Any]) -> bool:
    return (record.get("per_image") or {}).get("kind") == PREQUENTIAL


def evaluate(records: Iterable[tuple[Path, Mapping[str, Any]]], policies: Sequence[Policy]) -> Report:
    """Every policy on every finished record with stream results."""
    ratios = file_contaminations()
    rows, curves, passed = [], [], 0
    for path, record in records:
        if record.get("status") != FINISHED:
            continue
        if not has_stream_results(record):
            passed += 1
            continue
        protocol, dataset = table_of(record, ratios)
        cfg = record["config"]
        for policy in policies:
            result = replay(path, record, policy)
            rows.append({"protocol": protocol, "dataset": dataset, "category": cfg["dataset"]["category"],
                         "method": cfg["method"]["name"], "seed": int(cfg["seed"]), "policy": policy.label(),
                         "scored": int(result.labels.size), "anomalous": int(result.labels.sum()),
                         **result.final, "withheld": (record.get("decisions") or {}).get("withheld"),
                         "record": Path(path).as_posix()})
            curves += [{**{k: rows[-1][k] for k in KEYS}, "scored": n, **metrics, "record": rows[-1]["record"]}
                       for n, metrics in result.curve]
    return Report(rows, passed, curves)


def leaderboard_values(table: PerImage | None, record: Mapping[str, Any]) -> dict[str, float | None]:
    """The default policy's :data:`LEADERBOARD` values of one record from its per-image results ``table`` (as
    read by :func:`oadbench.per_image.read_per_image`; None without stream results): the numbers ``oadbench
    decisions --policy <default>`` gives it."""
    if table is None or table.kind != PREQUENTIAL:
        return dict.fromkeys(LEADERBOARD)
    final = replay_table(table, record, parse_policy(DEFAULT_POLICY)).final
    return {k: _finite(final[k]) for k in LEADERBOARD}


def blank_partial_rates(mean: dict[str, Any], cells: Sequence[Mapping[str, Any]]) -> None:
    """In ``mean`` (one seed's values averaged over ``cells``: categories or data sets), empty each
    :data:`LEADERBOARD` rate that a cell lacks: a mean over part of the cells would pass for the whole."""
    for k in LEADERBOARD:
        if k in mean and any(c.get(k) is None for c in cells):
            mean[k] = None


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (protocol, dataset, category, method, policy): the mean of :data:`SUMMARY` over seeds and the
    seeds."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in KEYS if k != "seed")].append(r)
    out = []
    for key, members in sorted(groups.items()):
        out.append({**dict(zip([k for k in KEYS if k != "seed"], key, strict=True)),
                    "seeds": " ".join(str(s) for s in sorted(m["seed"] for m in members)),
                    **{k: mean(_finite(m[k]) for m in members) for k in SUMMARY}})
    return out


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """Rows (default: the per-run rows, :data:`COLUMNS`) as CSV; floats with 6 decimals, NaN and None empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if (v := r.get(c)) is None or (isinstance(v, float) and math.isnan(v))
                         else f"{v:.6f}" if isinstance(v, float) else v for c in columns])
    return buf.getvalue()


def to_text(report: Report) -> str:
    """The summary as an aligned text table (rates in %), and what was passed over."""
    head = ("protocol", "dataset", "category", "method", "policy", "seeds", "false alarms %", "misses %", "F1",
            "rej./1000", "hindsight F1")
    body = []
    def num(value: float | None, fmt: str, scale: float = 1.0) -> str:
        return "-" if value is None else format(scale * value, fmt)

    for r in summarise(report.rows):
        body.append((r["protocol"], r["dataset"], r["category"], r["method"], r["policy"], r["seeds"],
                     num(r["false_alarm_rate"], ".1f", 100), num(r["miss_rate"], ".1f", 100), num(r["f1"], ".3f"),
                     num(r["rejections_per_1000"], ".0f"), num(r["hindsight_f1"], ".3f")))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)) for row in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if report.passed_over:
        lines.append(f"({report.passed_over} finished record(s) without per-image stream results passed over)")
    return "\n".join(lines)


def command(args: list[str]) -> int:
    """``oadbench decisions``: parse ``args``, print the summary, write the per-run CSV."""
    parser = argparse.ArgumentParser(
        prog="oadbench decisions",
        description="Pass / reject decisions of label-free threshold policies (each image's score against a "
                    "threshold set by the scores before it), replayed on finished prequential records without "
                    "rerunning them; their false-alarm and miss rates, and what the best threshold in hindsight "
                    "could do.")
    parser.add_argument("records", nargs="+", type=Path, help="folders of run records (searched recursively)")
    parser.add_argument("--policy", action="append", default=None,
                        help=f"NAME[:KEY=VALUE,...], e.g. quantile:q=0.995,window=200 or pot:alpha=0.01; "
                             f"repeatable (default: {DEFAULT_POLICY})")
    parser.add_argument("--out", type=Path, default=Path("decisions.csv"),
                        help="the per-run CSV written (default: decisions.csv); beside it <name>_curves.csv, the "
                             "decision metrics over the images scored by each of the record's checkpoints")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="replay without record files that cannot be read, listing them as warnings")
    ns = parser.parse_args(args)
    policies = [parse_policy(p) for p in ns.policy or [DEFAULT_POLICY]]
    report = evaluate(load_records(ns.records, ns.skip_unreadable).pairs, policies)
    print(to_text(report))
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(to_csv(report.rows))
    curves = ns.out.with_name(f"{ns.out.stem}_curves.csv")
    curves.write_text(to_csv(report.curves, CURVE_COLUMNS))
    print(f"\nwritten: {ns.out}, {curves}")
    return 0

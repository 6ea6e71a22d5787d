"""Issue 32's policy grid: every policy below replayed on every online_prequential record (score-then-observe
order, per-image stream results), the default chosen by the rule in run.sh, and the protected-learning cells.

    python leaderboards/decisions/select.py        (from the repository root; writes leaderboards/decisions/)

Writes ``runs.csv`` (one row per record and policy, ``oadbench decisions``' columns), ``policies.csv`` (mean over
seeds per data set, method and policy; the synthetic categories averaged), ``selection.csv`` (each policy's
selection score: mean F1 of its rejections over methods, each method the mean of the synthetic categories' mean
and MTD) and ``summary.md``. Deterministic: the same records give the same bytes.
"""

from __future__ import annotations

import csv
import io
import sys
from collections import defaultdict
from pathlib import Path
from statistics import fmean

from oadbench.decision_report import evaluate, to_csv
from oadbench.decisions import parse_policy
from oadbench.record_sets import load_records

HERE = Path(__file__).resolve().parent
FOLDERS = [HERE / "records", HERE.parent / "inreach" / "records" / "online_prequential"]
POLICIES = [  # the grid, in tie-break order (simplest first)
    "quantile", "quantile:q=0.95", "quantile:q=0.9",
    "quantile:window=100", "quantile:q=0.95,window=100", "quantile:q=0.9,window=100",
    "robust", "robust:k=5", "robust:window=100", "robust:k=5,window=100",
    "pot", "pot:alpha=0.01", "pot:window=500", "pot:alpha=0.01,window=500",
]
SELECTION = ("synthetic", "mtd")  # MVTec AD transistor and screw are out of sample
METRICS = ("false_alarm_rate", "miss_rate", "f1", "rejections_per_1000", "hindsight_f1")


def dataset_of(row: dict) -> str:
    return row["category"] if row["dataset"] == "mvtec" else row["dataset"]


def cell_means(rows: list[dict]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(data set, method, policy) -> metric means: over seeds, then over the synthetic categories."""
    by_cat: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_cat[(dataset_of(r), r["category"], r["method"], r["policy"])].append(r)
    per_cat = {k: {m: fmean(float(r[m]) for r in v) for m in METRICS} | {"runs": len(v)}
               for k, v in by_cat.items()}
    out: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for (data, _, method, policy), v in per_cat.items():
        out[(data, method, policy)].append(v)
    return {k: {m: fmean(c[m] for c in v) for m in METRICS} | {"runs": sum(c["runs"] for c in v)}
            for k, v in out.items()}


def table(header: list[str], body: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([[f"{x:.4f}" if isinstance(x, float) else x for x in row] for row in body])
    return buf.getvalue()


def main() -> int:
    policies = [parse_policy(p) for p in POLICIES]
    labels = [p.label() for p in policies]
    records = [(p, r) for p, r in load_records(FOLDERS).finished
               if r["config"]["protocol"]["name"] == "online_prequential"]
    report = evaluate(records, policies)
    rows = [r for r in report.rows if r["protocol"] == "online_prequential"]
    (HERE / "runs.csv").write_text(to_csv(rows))
    means = cell_means([r for r in rows])
    datasets = sorted({k[0] for k in means}, key=lambda d: (d not in SELECTION, d))
    methods = sorted({k[1] for k in means})
    body = [[d, m, p, means[(d, m, p)]["runs"], *(means[(d, m, p)][x] for x in METRICS)]
            for d in datasets for m in methods for p in labels if (d, m, p) in means]
    (HERE / "policies.csv").write_text(table(["dataset", "method", "policy", "runs", *METRICS], body))
    score = {}
    for p in labels:
        per_method = [fmean(means[(d, m, p)]["f1"] for d in SELECTION) for m in methods
                      if all((d, m, p) in means for d in SELECTION)]
        score[p] = fmean(per_method) if per_method else float("nan")
    best = max(labels, key=lambda p: (score[p], -labels.index(p)))
    (HERE / "selection.csv").write_text(table(["policy", "selection_f1", "chosen"],
                                              [[p, score[p], "yes" if p == best else ""] for p in labels]))
    print(f"{len(rows)} rows from {len(records)} records; chosen: {best} (selection F1 {score[best]:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

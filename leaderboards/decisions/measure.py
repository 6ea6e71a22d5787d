"""Issue 32's policy grid: every policy below replayed on every online_prequential record (score-then-observe
order, per-image stream results), the default chosen by the rule in run.sh, and the protected-learning cells.

    python leaderboards/decisions/measure.py        (from the repository root; writes leaderboards/decisions/)

Writes ``runs.csv`` (one row per record and policy, ``oadbench decisions``' columns), ``policies.csv`` (mean over
seeds per data set, method and policy; the synthetic categories averaged), ``selection.csv`` (each policy's
selection score: mean F1 of its rejections over methods, each method the mean of the synthetic categories' mean
and MTD), ``protection.csv`` (protected learning against the same stream unprotected, per data set, protocol,
method and seed) and ``summary.md``. Deterministic: the same records give the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import fmean

from oadbench.decision_report import COLUMNS, evaluate, to_csv
from oadbench.decisions import parse_policy
from oadbench.record_sets import load_records

HERE = Path("leaderboards", "decisions")  # from the repository root: record paths in runs.csv stay relative
FOLDERS = [HERE / "records", Path("leaderboards", "inreach", "records", "online_prequential")]
POLICIES = [  # the grid, in tie-break order (simplest first)
    "quantile", "quantile:q=0.95", "quantile:q=0.9",
    "quantile:window=100", "quantile:q=0.95,window=100", "quantile:q=0.9,window=100",
    "robust", "robust:k=5", "robust:window=100", "robust:k=5,window=100",
    "pot", "pot:alpha=0.01", "pot:window=500", "pot:alpha=0.01,window=500",
]
# looked at after the grid's first results put its winner on the grid's edge (lowest q, shortest window): reported
# beside the grid, never eligible as the default
EXPLORATORY = ["quantile:q=0.8,window=100", "quantile:q=0.7,window=100", "quantile:q=0.9,window=50"]
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


def cached() -> dict[tuple[str, str], dict]:
    """(record, policy) -> its row in an earlier runs.csv (replaying pot on 1,344 scores takes seconds)."""
    path = HERE / "runs.csv"
    if not path.exists():
        return {}
    out = {}
    for r in csv.DictReader(path.open()):
        row: dict = dict(r)
        for k in COLUMNS:
            if k in ("seed", "scored", "anomalous"):
                row[k] = int(row[k])
            elif k in ("withheld",):
                row[k] = int(row[k]) if row[k] else None
            elif k not in ("protocol", "dataset", "category", "method", "policy", "record"):
                row[k] = float(row[k]) if row[k] else float("nan")
        out[(row["record"], row["policy"])] = row
    return out


def main() -> int:
    if not HERE.is_dir():
        sys.exit("run from the repository root: python leaderboards/decisions/measure.py")
    policies = [parse_policy(p) for p in POLICIES + EXPLORATORY]
    labels = [p.label() for p in policies[:len(POLICIES)]]
    finished = load_records(FOLDERS).finished
    records = [(p, r) for p, r in finished
               if r["config"]["protocol"]["name"] == "online_prequential"
               and "decisions" not in r["config"]["protocol"]]
    known, rows = cached(), []
    for path, record in records:
        missing = [p for p in policies if (path.as_posix(), p.label()) not in known]
        fresh = {r["policy"]: r for r in evaluate([(path, record)], missing).rows}
        for p in policies:
            row = fresh.get(p.label()) or known.get((path.as_posix(), p.label()))
            if row is not None and row["protocol"] == "online_prequential":
                rows.append(row)
    (HERE / "runs.csv").write_text(to_csv(rows))
    means = cell_means(rows)
    datasets = sorted({k[0] for k in means}, key=lambda d: (d not in SELECTION, d))
    methods = sorted({k[1] for k in means})
    body = [[d, m, p, means[(d, m, p)]["runs"], *(means[(d, m, p)][x] for x in METRICS)]
            for d in datasets for m in methods for p in labels if (d, m, p) in means]
    (HERE / "policies.csv").write_text(table(["dataset", "method", "policy", "runs", *METRICS], body))
    extra = [parse_policy(p).label() for p in EXPLORATORY]
    score = {}
    for p in labels + extra:
        per_method = [fmean(means[(d, m, p)]["f1"] for d in SELECTION) for m in methods
                      if all((d, m, p) in means for d in SELECTION)]
        score[p] = fmean(per_method) if per_method else float("nan")
    best = max(labels, key=lambda p: (score[p], -labels.index(p)))
    (HERE / "selection.csv").write_text(table(["policy", "selection_f1", "chosen"],
                                              [[p, score[p], "yes" if p == best else ""] for p in labels]))
    protection = protection_rows(finished)
    (HERE / "protection.csv").write_text(table(list(protection[0]) if protection else ["dataset"],
                                               [list(r.values()) for r in protection]))
    (HERE / "summary.md").write_text(summary(means, datasets, methods, labels, extra, score, best, protection))
    print(f"{len(rows)} rows from {len(records)} records; chosen: {best} (selection F1 {score[best]:.4f})")
    return 0


def protection_rows(pairs: list[tuple[Path, dict]]) -> list[dict]:
    """Each protected record beside the same run unprotected (its identity without the decisions section)."""
    by_key, protected = {}, []
    for path, r in pairs:
        proto = dict(r["identity"]["protocol"])
        key = json.dumps({**r["identity"], "protocol": {k: v for k, v in proto.items() if k != "decisions"}},
                         sort_keys=True)
        if "decisions" in proto:
            protected.append((key, path, r))
        else:
            by_key[key] = r
    out = []
    for key, _, r in sorted(protected, key=lambda x: str(x[1])):
        plain = by_key.get(key)
        d = r["decisions"]
        normal = r["data"]["stream"] - r["data"]["stream_anomalous"]
        out.append({"dataset": dataset_of({"dataset": r["config"]["dataset"]["name"],
                                           "category": r["config"]["dataset"]["category"]}),
                    "protocol": r["config"]["protocol"]["name"], "contamination":
                        r["config"]["protocol"]["stream"].get("contamination"),
                    "method": r["config"]["method"]["name"], "seed": r["config"]["seed"],
                    "auroc_unprotected": plain["final"]["image_auroc"] if plain else None,
                    "auroc_protected": r["final"]["image_auroc"],
                    "withheld_normal_share": d["withheld_normal"] / normal if normal else None,
                    "withheld_anomalous_share": d["withheld_anomalous"] / r["data"]["stream_anomalous"]
                    if r["data"]["stream_anomalous"] else None,
                    "withheld_normal": d["withheld_normal"], "withheld_anomalous": d["withheld_anomalous"]})
    return sorted(out, key=lambda r: (r["protocol"], r["dataset"], r["method"], r["seed"]))


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def summary(means: dict, datasets: list[str], methods: list[str], labels: list[str], extra: list[str], score: dict,
            best: str, protection: list[dict]) -> str:
    lines = ["# Decisions at stream time: measured", "",
             "Generated by `measure.py` from the online_prequential records (128 px, score then observe) of "
             "`records/` and `../inreach/records/`; do not edit by hand. Rates in %; F1 of the rejections "
             "(a rejected defective part is a true positive); hindsight F1: the best fixed threshold chosen with "
             "the labels after the fact.", "",
             "## Selection (synthetic categories and MTD; transistor and screw out of sample)", "",
             "| policy | selection F1 | transistor + screw F1 |", "|---|---|---|"]
    for p in labels + extra:
        out_of_sample = [fmean(means[(d, m, p)]["f1"] for d in ("transistor", "screw")) for m in methods
                         if all((d, m, p) in means for d in ("transistor", "screw"))]
        name = f"**{p}**" if p == best else f"{p} (exploratory)" if p in extra else p
        lines.append(f"| {name} | {num(score[p])} | {num(fmean(out_of_sample)) if out_of_sample else '-'} |")
    lines += ["", f"Default: `{best}` (highest selection F1 of the grid; rule in run.sh). The exploratory rows were "
              "added after the grid's first results put its winner on the grid's edge; they were never eligible.",
              ""]
    lines += [f"## The default `{best}` against the hindsight-best threshold", "",
              "| data set | method | runs | false alarms % | misses % | F1 | hindsight F1 | gap |",
              "|---|---|---|---|---|---|---|---|"]
    for d in datasets:
        for m in methods:
            c = means.get((d, m, best))
            if c:
                lines.append(f"| {d} | {m} | {c['runs']} | {pct(c['false_alarm_rate'])} | {pct(c['miss_rate'])} | "
                             f"{num(c['f1'])} | {num(c['hindsight_f1'])} | {num(c['hindsight_f1'] - c['f1'])} |")
    for d in datasets:
        lines += ["", f"## Every policy on {d}: F1 (false alarms % / misses %)", "",
                  "| policy | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for p in labels + extra:
            cells = [f"{num(c['f1'])} ({pct(c['false_alarm_rate'])} / {pct(c['miss_rate'])})"
                     if (c := means.get((d, m, p))) else "-" for m in methods]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
    if protection:
        lines += ["", "## Protected learning (`decisions.protect`, default policy)", "",
                  "Final image AUROC of the same stream unprotected and protected; the share of the stream's good "
                  "and defective parts the policy withheld from the method.", "",
                  "| data set | protocol | method | seed | AUROC unprotected | AUROC protected | good withheld % | "
                  "defective withheld % |", "|---|---|---|---|---|---|---|---|"]
        for r in protection:
            proto = r["protocol"] + ("" if r["contamination"] in (None, 0.2) else f" ({pct(r['contamination'])} %)")
            lines.append(f"| {r['dataset']} | {proto} | {r['method']} | {r['seed']} | {num(r['auroc_unprotected'])} | "
                         f"{num(r['auroc_protected'])} | {pct(r['withheld_normal_share'])} | "
                         f"{pct(r['withheld_anomalous_share'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

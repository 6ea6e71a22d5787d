"""``oadbench compare``: one method (or record folder) against another on the data sets both cover.

A side is a folder of records (holding one method) or a method name looked up in the given record folders
(``METHOD@FOLDER`` narrows a folder of several methods). Its finished records are grouped by data set
(``<dataset>/<category>``); the two sides must agree, data set by data set, on the protocol (its table label,
:func:`oadbench.cells.protocol_label`), the input size and the backbone -- anything else is an error naming
what differs. For each shared data set: both sides' seed-mean value of the metric, their difference (A - B) and,
when every run of both sides has per-image results, the paired test on the shared test images with its 95 %
interval (:func:`oadbench.significance.paired_test`: DeLong for image AUROC, Wilcoxon for AUPIMO; other metrics
have none). Across data sets: the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided, exact for
few data sets) of the per-data-set differences of seed means -- each data set one pair, whatever its seeds.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from oadbench.cells import METRICS, file_contaminations, protocol_label
from oadbench.errors import DataError
from oadbench.per_image import PerImage, read_per_image
from oadbench.record_sets import load_records
from oadbench.significance import paired_test
from oadbench.stats import fmt, mean
from oadbench.table_stats import aupimo_value

COMPARE_METRICS = (*METRICS, "aupimo")
CSV_COLUMNS = ["data_set", "seeds_a", "seeds_b", "a", "b", "difference", "ci_low", "ci_high", "p", "test",
               "n_images"]


@dataclass
class Side:
    """One side's finished records: data set -> seed -> (path, record)."""

    name: str
    runs: dict[str, dict[int, tuple[Path, Mapping[str, Any]]]]


def load_side(spec: str, record_dirs: Sequence[Path], protocol: str | None = None,
              skip_unreadable: bool = False) -> Side:
    """``spec``: a folder, ``METHOD@FOLDER`` or a method name (looked up in ``record_dirs``)."""
    method, _, where = spec.rpartition("@") if "@" in spec else ("", "", spec)
    if Path(where).is_dir():
        folders = [Path(where)]
    elif not method:
        method, folders = spec, list(record_dirs)
    else:
        raise DataError(f"{spec}: {where} is not a folder of records")
    ratios = file_contaminations()
    finished = load_records(folders, skip_unreadable).finished
    if method:
        finished = [(p, r) for p, r in finished if r["config"]["method"]["name"] == method]
    if protocol is not None:
        finished = [(p, r) for p, r in finished if protocol_label(r["config"]["protocol"], ratios) == protocol]
    if not finished:
        raise DataError(f"{spec}: no finished record" + (f" of method {method}" if method else "")
                        + (f" under protocol {protocol}" if protocol else "")
                        + f" in {', '.join(map(str, folders))}")
    for what, key in (("methods", lambda r: r["config"]["method"]["name"]),
                      ("protocols", lambda r: protocol_label(r["config"]["protocol"], ratios))):
        found = sorted({key(r) for _, r in finished})
        if len(found) > 1:
            hint = "name one as METHOD@FOLDER" if what == "methods" else "pick one with --protocol"
            raise DataError(f"{spec} holds several {what} ({', '.join(found)}): {hint}")
    runs: dict[str, dict[int, tuple[Path, Mapping[str, Any]]]] = defaultdict(dict)
    for path, r in finished:
        ds = r["config"]["dataset"]
        runs[f"{ds['name']}/{ds['category']}"][int(r["config"]["seed"])] = (path, r)
    label = method or finished[0][1]["config"]["method"]["name"]
    return Side(f"{label} ({spec})" if method and spec != method else label, dict(runs))


def _setting(runs: Mapping[int, tuple[Path, Mapping[str, Any]]]) -> dict[str, str]:
    ratios = file_contaminations()
    out: dict[str, set[str]] = defaultdict(set)
    for _, r in runs.values():
        out["protocol"].add(protocol_label(r["config"]["protocol"], ratios))
        out["input size"].add(f"{r['data']['image_size']} px")
        out["backbone"].add(str(r["backbone"]["name"]))
    return {k: " / ".join(sorted(v)) for k, v in out.items()}


def _value(record: Mapping[str, Any], metric: str, table: PerImage | None) -> float | None:
    v = aupimo_value(table) if metric == "aupimo" else (record.get("final") or {}).get(metric)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def compare(a: Side, b: Side, metric: str = "image_auroc") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(one row per shared data set, the across-data-set summary); errors when the sides share no data set or
    differ in protocol, input size or backbone on one."""
    if metric not in COMPARE_METRICS:
        raise DataError(f"--metric {metric}: not a compared metric (allowed: {', '.join(COMPARE_METRICS)})")
    shared = sorted(set(a.runs) & set(b.runs))
    if not shared:
        raise DataError(f"{a.name} and {b.name} share no data set ({a.name}: {', '.join(sorted(a.runs))}; "
                        f"{b.name}: {', '.join(sorted(b.runs))})")
    rows = []
    for ds in shared:
        sa, sb = _setting(a.runs[ds]), _setting(b.runs[ds])
        differs = [f"{k}: {sa[k]} vs {sb[k]}" for k in sa if sa[k] != sb[k]]
        if differs:
            raise DataError(f"{ds}: {a.name} and {b.name} differ in " + "; ".join(differs)
                            + " (a paired comparison needs the same protocol, input size and backbone)")
        tables = {side.name: {s: read_per_image(p, r) for s, (p, r) in side.runs[ds].items()} for side in (a, b)}
        values = {side.name: mean(_value(r, metric, tables[side.name][s]) for s, (_, r) in side.runs[ds].items())
                  for side in (a, b)}
        row: dict[str, Any] = {"data_set": ds, "seeds_a": " ".join(map(str, sorted(a.runs[ds]))),
                               "seeds_b": " ".join(map(str, sorted(b.runs[ds]))), "a": values[a.name],
                               "b": values[b.name]}
        va, vb = values[a.name], values[b.name]
        row["difference"] = None if va is None or vb is None else va - vb
        ta, tb = ([tables[s.name][k] for k in sorted(s.runs[ds])] for s in (a, b))
        result = None
        if metric in ("image_auroc", "aupimo") and all(t is not None for t in [*ta, *tb]):
            result = paired_test(ta, tb, metric)  # type: ignore[arg-type]
        if result is not None:
            row.update(difference=result.difference, ci_low=result.low, ci_high=result.high, p=result.p,
                       test=result.test, n_images=result.n_images)
        else:
            row["test"] = "none (no per-image results)" if metric in ("image_auroc", "aupimo") else "none"
        rows.append(row)
    diffs = [r["difference"] for r in rows if r["difference"] is not None]
    summary: dict[str, Any] = {"data_sets": len(diffs), "mean_difference": mean(diffs), "wilcoxon_p": None}
    if diffs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-zero differences: scipy's p = 1, with a warning
            p = float(stats.wilcoxon(diffs).pvalue)
        summary["wilcoxon_p"] = 1.0 if math.isnan(p) else p
    return rows, summary


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([fmt(r.get(c)) for c in CSV_COLUMNS])
    return buf.getvalue()


def to_text(a: Side, b: Side, metric: str, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    """The printed table: per data set A, B, A - B [95 % interval], p (test); then the across-data-set line."""
    def f(v: Any, digits: int = 4) -> str:
        return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    head = ["data set", "A", "B", "A - B", "95 % interval", "p", "test"]
    body = [[r["data_set"], f(r["a"]), f(r["b"]), f(r["difference"]),
             "–" if r.get("ci_low") is None else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]",
             "–" if r.get("p") is None else f"{r['p']:.3g}", r["test"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = [f"{metric}: A = {a.name}, B = {b.name}", "",
             "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) for r in body]
    p = summary["wilcoxon_p"]
    lines += ["", f"across {summary['data_sets']} data set(s): mean A - B = {f(summary['mean_difference'])}, "
                  f"Wilcoxon signed-rank p = {'–' if p is None else f'{p:.3g}'} (each data set one pair of "
                  "seed means)"]
    return "\n".join(lines)

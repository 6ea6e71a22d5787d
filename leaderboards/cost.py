"""What a set of records cost to compute: run-minutes (the records' ``duration_s``) per method and protocol table.

    python leaderboards/cost.py leaderboards/records leaderboards/headline/records [--since 2026-12-04]

One Markdown table per input size: a row per protocol table (:func:`oadbench.cells.protocol_label`), a column per
method, each cell the run-minutes with the number of runs in brackets, and the totals. ``--since DATE`` counts only
records started on or after that day (ISO date): one edition's share of a folder that holds older runs too.
Run-minutes are one torch thread each (the published sweeps' setting); wall time is what the lanes overlapped.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from oadbench.cells import file_contaminations, protocol_label
from oadbench.record_sets import load_records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--since", default=None, help="only records started on or after this ISO date")
    ns = parser.parse_args(argv)
    ratios = file_contaminations()
    minutes: dict[int, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for _, r in load_records(ns.records).finished:
        if ns.since and str(r.get("started_at", "")) < ns.since:
            continue
        size = int(r["data"]["image_size"])
        minutes[size][protocol_label(r["config"]["protocol"], ratios)][r["config"]["method"]["name"]].append(
            float(r.get("duration_s") or 0.0) / 60)
    out = sys.stdout
    for size in sorted(minutes):
        table = minutes[size]
        methods = sorted({m for row in table.values() for m in row})
        out.write(f"\n### {size} px: run-minutes (runs)\n\n| protocol | " + " | ".join(methods) + " | total |\n")
        out.write("|---|" + "---|" * (len(methods) + 1) + "\n")
        for protocol in sorted(table):
            row = table[protocol]
            cells = [f"{sum(row[m]):.1f} ({len(row[m])})" if row.get(m) else "-" for m in methods]
            total = [x for m in methods for x in row.get(m, [])]
            out.write(f"| {protocol} | " + " | ".join(cells) + f" | {sum(total):.1f} ({len(total)}) |\n")
        sums = [[x for row in table.values() for x in row.get(m, [])] for m in methods]
        every = [x for s in sums for x in s]
        out.write("| **total** | " + " | ".join(f"{sum(s):.1f} ({len(s)})" for s in sums)
                  + f" | {sum(every):.1f} ({len(every)}) |\n")


if __name__ == "__main__":
    main()

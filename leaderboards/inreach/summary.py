"""The InReaCh comparison table (issue 31) from the compiled tables of these records and of the published grid.

    oadbench leaderboard leaderboards/inreach/records --out leaderboards/inreach/tables
    python leaderboards/inreach/summary.py > leaderboards/inreach/summary.md

A cell comes from these records' tables where they have the method, else from the published grid's
(``leaderboards/<protocol>/<dataset>.csv``: the four methods' cells this measurement did not rerun).

One block per data set (the mean row of each table: the synthetic categories' mean, MTD's tile, MVTec AD
transistor, screw), one row per method, one column per protocol setting: final image AUROC, mean ± std over the
seeds run (their count in brackets), then pixel AUROC; "-" where the cell was not run. "overlap": the streamed
defects stay in the evaluation split (``stream.overlap=true``).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

TABLES = Path(__file__).parent / "tables"
GRID = Path(__file__).parents[1]  # the published leaderboards
COLUMNS = [  # (table folder, heading)
    ("online_cold_start", "cold start"),
    ("online_prequential", "prequential"),
    ("online_prequential_observe_then_score", "prequential, observe then score"),
    ("online_inreach_observe_then_score", "online_inreach"),
    ("online_contaminated_c0", "contaminated 0 %"),
    ("online_contaminated", "contaminated 10 %"),
    ("online_contaminated_c15", "contaminated 15 %"),
    ("online_contaminated_c20", "contaminated 20 %"),
    ("online_contaminated_c30", "contaminated 30 %"),
    ("online_contaminated_c0_overlap", "contaminated 0 %, overlap"),
    ("online_contaminated_overlap", "contaminated 10 %, overlap"),
    ("online_contaminated_c15_overlap", "contaminated 15 %, overlap"),
    ("offline", "offline"),
    ("offline_c10", "offline, 10 % contaminated"),
]
DATASETS = [("synthetic", "synthetic (mean of 4 categories)"), ("mtd", "MTD"), ("mvtec", "MVTec AD transistor"),
            ("mvtec_screw", "MVTec AD screw")]
METHODS = ["inreach", "patchcore", "padim", "cfa", "lemo"]


def rows(folder: str, dataset: str) -> dict[str, dict[str, str]]:
    category = None
    if dataset == "mvtec_screw":
        dataset, category = "mvtec", "screw"
    elif dataset == "mvtec":
        category = "transistor"
    out = {}
    for path in (GRID / folder / f"{dataset}.csv", TABLES / folder / f"{dataset}.csv"):  # these records last: win
        if path.exists():
            for r in csv.DictReader(path.open()):
                if (category is None and r["category"] == "mean") or r["category"] == category:
                    out[r["method"]] = r
    return out


def cell(r: dict[str, str] | None, metric: str) -> str:
    if not r or not r.get(f"{metric}_mean"):
        return "-"
    std = r.get(f"{metric}_std") or ""
    spread = f" ± {float(std):.3f}" if std else ""
    return f"{float(r[f'{metric}_mean']):.3f}{spread} ({r['n_runs']})"


def main() -> None:
    out = sys.stdout
    for dataset, title in DATASETS:
        tables = {folder: rows(folder, dataset) for folder, _ in COLUMNS}
        present = [(f, h) for f, h in COLUMNS if tables[f]]
        if not present:
            continue
        for metric, name in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC")):
            out.write(f"\n### {title}: final {name}, mean ± std (runs)\n\n")
            out.write("| method | " + " | ".join(h for _, h in present) + " |\n")
            out.write("|---|" + "---|" * len(present) + "\n")
            for m in METHODS:
                if any(m in tables[f] for f, _ in present):
                    out.write(f"| {m} | " + " | ".join(cell(tables[f].get(m), metric) for f, _ in present) + " |\n")


if __name__ == "__main__":
    main()

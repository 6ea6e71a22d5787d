"""Cost of each method online, on streams of 100, 400 and 1600 images (not part of the test suite).

Every cell is one real ``oadbench run`` in its own process (so peak RSS is that run's own), on the synthetic
dataset generated with enough training images (``fabric``, 256 px, EfficientNet-Lite0 features), protocol
``online_cold_start`` with the stream capped at N images and a single evaluation at the end on a small test
split (10 normal + 3 per defect type). Reported per cell, from the run record: observe and score ms per image
(median and p95 after the first calls; the method's own work, backbone excluded), backbone ms per image, peak
RSS of the process, the method's footprint at the end and the largest footprint seen.

Also measured: offline PatchCore on 200 training images at 256 px (peak RSS; target <= 4 GB), with the default
backbone and with WideResNet-50 features (random weights: cost does not depend on weight values), and online
PatchCore's peak RSS from 400 to 1600 images (target: flat within 10 %).

Usage: python benchmarks/bench_methods.py [--methods padim patchcore cfa lemo inreach] [--lengths 100 400 1600]
       [--device cpu] [--threads N] [--out benchmarks/results] [--skip-offline] [--merge] [--note TEXT]
Writes ``<out>/methods-<device>.json`` and ``.md`` and prints the table. ``--merge`` re-measures only the given
cells: the other rows of the existing JSON are kept (each row says when it was measured), the new ones replace
rows of the same method, form and stream; ``--note`` adds a line under the table (kept by later merges).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASET = ["dataset=synthetic", "dataset.category=fabric", "dataset.n_train=1600", "dataset.n_test_good=10",
           "dataset.n_test_defect=3"]


def run_cell(overrides: list[str], results: Path, device: str, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "oadbench", "run", *DATASET, *overrides, f"results_dir={results}",
           f"device={device}", "progress=false", "wandb.mode=disabled", "force=true"]
    if threads:
        cmd.append(f"threads={threads}")
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    path = out.stdout.split("record: ")[-1].split()[0]
    record = json.loads(Path(path).read_text())
    record["wall_s"] = wall
    return record


def summarise(record: dict) -> dict:
    cost = record["cost"]

    def ms(kind: str, stat: str):
        return (cost.get(kind) or {}).get(stat)

    return {
        "observe_ms": ms("observe", "median_ms"), "observe_p95_ms": ms("observe", "p95_ms"),
        "score_ms": ms("score", "median_ms"), "score_p95_ms": ms("score", "p95_ms"),
        "backbone_ms": ms("backbone_stream", "median_ms"), "consolidate_s": ms("consolidate", "total_s"),
        "peak_rss_mb": cost.get("peak_rss_mb"), "cuda_peak_mb": cost.get("cuda_peak_mb"),
        "footprint_mb": (cost.get("footprint_bytes") or 0) / 2**20,
        "footprint_max_mb": (cost.get("footprint_max_bytes") or 0) / 2**20,
        "image_auroc": record["final"].get("image_auroc"), "wall_s": record["wall_s"],
    }


def fmt(v, digits=1):
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=["padim", "patchcore", "cfa", "lemo", "inreach"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[100, 400, 1600])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--skip-offline", action="store_true")
    parser.add_argument("--merge", action="store_true", help="keep the existing rows of other cells")
    parser.add_argument("--note", action="append", default=[], help="a line under the table")
    args = parser.parse_args()
    json_path = args.out / f"methods-{args.device}.json"
    md_path = json_path.with_suffix(".md")
    old_rows, old_notes = [], []
    if args.merge and json_path.exists():
        old = json.loads(json_path.read_text())
        old_rows, old_notes = (old, []) if isinstance(old, list) else (old["rows"], old.get("notes", []))
        if isinstance(old, list) and md_path.exists():  # the first format kept its notes in the Markdown only
            old_notes = [line for line in md_path.read_text().splitlines() if line and not line.startswith(
                ("|", "machine:", "online PatchCore peak RSS"))]
    results = Path(tempfile.mkdtemp(prefix="oadbench-bench-"))
    today = time.strftime("%Y-%m-%d")
    rows = []
    for method in args.methods:
        for n in args.lengths:
            rec = run_cell([f"method={method}", "protocol=online_cold_start", f"protocol.stream.max_length={n}",
                            "protocol.evaluation.checkpoints=[]"], results, args.device, args.threads)
            rows.append({"method": method, "form": "online", "stream": n, **summarise(rec), "measured": today})
            print(rows[-1], flush=True)
    if not args.skip_offline:
        for backbone in (["backbone.name=tf_efficientnet_lite0"],
                         ["backbone.name=wide_resnet50_2", "backbone.weights=random"]):
            rec = run_cell(["method=patchcore", "protocol=offline", "protocol.stream.max_length=200", *backbone],
                           results, args.device, args.threads)
            rows.append({"method": "patchcore", "form": f"offline ({backbone[0].split('=')[1]})", "stream": 200,
                         **summarise(rec), "measured": today})
            print(rows[-1], flush=True)
    cell = {(r["method"], r["form"], r["stream"]): r for r in rows}
    merged = [cell.pop((r["method"], r["form"], r["stream"]), r) for r in old_rows]
    rows = merged + list(cell.values())
    header = ["method", "form", "stream", "observe ms (p95)", "score ms (p95)", "backbone ms", "consolidate s",
              "peak RSS MiB", "footprint MiB (max)", "img AUROC", "wall s", "measured"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], r["form"], str(r["stream"]), f"{fmt(r['observe_ms'])} ({fmt(r['observe_p95_ms'])})",
            f"{fmt(r['score_ms'])} ({fmt(r['score_p95_ms'])})", fmt(r["backbone_ms"]), fmt(r["consolidate_s"]),
            fmt(r["peak_rss_mb"], 0), f"{fmt(r['footprint_mb'])} ({fmt(r['footprint_max_mb'])})",
            fmt(r["image_auroc"], 3), fmt(r["wall_s"], 0), r.get("measured", "")]) + " |")
    online_pc = {r["stream"]: r["peak_rss_mb"] for r in rows if r["method"] == "patchcore" and r["form"] == "online"}
    notes = [f"machine: {platform.machine()}, {os.cpu_count()} CPUs, device {args.device}, "
             f"threads {args.threads or 'all'}"]
    if 400 in online_pc and 1600 in online_pc:
        change = 100 * (online_pc[1600] - online_pc[400]) / online_pc[400]
        notes.append(f"online PatchCore peak RSS 400 -> 1600 images: {online_pc[400]:.0f} -> {online_pc[1600]:.0f} "
                     f"MiB ({change:+.1f} %; target within ±10 %)")
    user_notes = list(dict.fromkeys([*old_notes, *args.note]))
    text = "\n".join(lines + [""] + notes + user_notes) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    json_path.write_text(json.dumps({"rows": rows, "notes": user_notes}, indent=1) + "\n")


if __name__ == "__main__":
    main()

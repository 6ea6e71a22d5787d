"""What the feature store saves a sweep (not part of the test suite).

The same sweep twice, side by side: 4 methods x 2 seeds on one synthetic category, as one real
``oadbench run -m`` (Hydra's sequential launcher, one process), first with ``features.cache=false``, then with
the store on and empty at the start. Reported per sweep: wall time of the whole command, images that went through
the backbone and images read from the store (summed over the records), the backbone seconds of the runs, and the
disk the store takes afterwards; per run: whether the store-on record's metrics equal the store-off one's.

The issue's target: store-on wall <= (store-off wall - (m*s - 1) x one run's extraction time) x 1.1, where one
run's extraction time is the mean over the store-off runs of their backbone seconds.

Usage: python benchmarks/bench_sweep.py [--protocol online_cold_start] [--category capsule] [--image-size 256]
       [--checkpoints 0,10,50] [--threads 2] [--out benchmarks/results]
Writes ``<out>/sweep-cpu.json`` and ``.md`` and prints the table.
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

METHODS = ("lemo", "patchcore", "padim", "cfa")
SEEDS = (0, 1)


def sweep(mode: str, work: Path, common: list[str], env: dict[str, str]) -> dict:
    results = work / mode
    cmd = [sys.executable, "-m", "oadbench", "run", "-m", f"method={','.join(METHODS)}",
           f"seed={','.join(map(str, SEEDS))}", f"results_dir={results}", *common,
           f"features.cache={'true' if mode == 'store_on' else 'false'}", f"features.cache_dir={work / 'features'}"]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    records = [json.loads(p.read_text()) for p in sorted(results.rglob("*.json")) if "multirun" not in p.parts]
    records = [r for r in records if r.get("status") == "finished"]
    if len(records) != len(METHODS) * len(SEEDS):
        raise RuntimeError(f"{mode}: expected {len(METHODS) * len(SEEDS)} finished records, found {len(records)}")

    def backbone_s(r: dict) -> float:
        return sum((r["cost"].get(k) or {}).get("total_s", 0.0) for k in ("backbone_stream", "backbone_eval"))

    return {
        "wall_s": wall,
        "runs": len(records),
        "backbone_images": sum(r["cost"]["backbone_images"] for r in records),
        "feature_store_hits": sum(r["cost"].get("feature_store_hits", 0) for r in records),
        "distinct_images_per_run": sorted({r["data"]["distinct_images"] for r in records}),
        "backbone_s": sum(backbone_s(r) for r in records),
        "backbone_s_per_run": [backbone_s(r) for r in records],
        "store_read_s": sum((r["cost"].get("feature_store_read") or {}).get("total_s", 0.0) for r in records),
        "store_write_s": sum((r["cost"].get("feature_store_write") or {}).get("total_s", 0.0) for r in records),
        "records": {r["id"]: {"method": r["config"]["method"]["name"], "seed": r["config"]["seed"],
                              "final": r["final"], "checkpoints": r["checkpoints"]} for r in records},
    }


def disk_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*.safetensors")] if root.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", default="online_cold_start")
    parser.add_argument("--category", default="capsule")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--checkpoints", default="0,10,50", help="evaluation checkpoints (the end is added)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the sweep's runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="oadbench-bench-sweep-"))
    env = {**os.environ, "OADBENCH_CACHE": str(work / "cache"), "WANDB_SILENT": "true"}
    subprocess.run([sys.executable, "-m", "oadbench", "data", "synthetic"], check=True, env=env,
                   capture_output=True)  # generated once, outside the timings
    common = [f"protocol={args.protocol}", "dataset=synthetic", f"dataset.category={args.category}",
              f"image_size={args.image_size}", f"threads={args.threads}", "progress=false", "wandb.mode=disabled",
              f"protocol.evaluation.checkpoints=[{args.checkpoints}]"]
    off = sweep("store_off", work, common, env)
    off_disk = disk_bytes(work / "features")
    on = sweep("store_on", work, common, env)
    on_disk, entries = disk_bytes(work / "features")

    identical = {rid: off["records"][rid]["final"] == rec["final"]
                 and off["records"][rid]["checkpoints"] == rec["checkpoints"] for rid, rec in on["records"].items()}
    m_s = len(METHODS) * len(SEEDS)
    one_run_extraction = off["backbone_s"] / m_s
    target = (off["wall_s"] - (m_s - 1) * one_run_extraction) * 1.1
    result = {
        "setup": {"protocol": args.protocol, "dataset": f"synthetic/{args.category}", "image_size": args.image_size,
                  "checkpoints": args.checkpoints, "methods": list(METHODS), "seeds": list(SEEDS),
                  "threads": args.threads, "machine": platform.machine(), "cpus": os.cpu_count(),
                  "python": platform.python_version()},
        "store_off": {k: v for k, v in off.items() if k != "records"} | {"disk_bytes": off_disk[0]},
        "store_on": {k: v for k, v in on.items() if k != "records"} | {"disk_bytes": on_disk, "entries": entries},
        "identical_metrics": all(identical.values()) and set(identical) == set(off["records"]),
        "one_run_extraction_s": one_run_extraction,
        "target_wall_s": target,
        "meets_target": on["wall_s"] <= target,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep-cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = [("wall time of the sweep (s)", f"{off['wall_s']:.1f}", f"{on['wall_s']:.1f}"),
            ("images through the backbone", str(off["backbone_images"]), str(on["backbone_images"])),
            ("images read from the store", str(off["feature_store_hits"]), str(on["feature_store_hits"])),
            ("backbone seconds (all runs)", f"{off['backbone_s']:.1f}", f"{on['backbone_s']:.1f}"),
            ("store read / write seconds", "-", f"{on['store_read_s']:.1f} / {on['store_write_s']:.1f}"),
            ("store on disk (MiB)", f"{off_disk[0] / 2**20:.1f}", f"{on_disk / 2**20:.1f} ({entries} entries)")]
    md = [f"# Feature store: {m_s} runs ({len(METHODS)} methods x {len(SEEDS)} seeds), {args.protocol}, "
          f"synthetic/{args.category}, {args.image_size} px, checkpoints [{args.checkpoints}] + end, "
          f"threads={args.threads}, {os.cpu_count()} CPUs", "",
          "| | store off | store on |", "| --- | ---: | ---: |", *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
          f"Distinct images per run: {', '.join(map(str, off['distinct_images_per_run']))}. "
          "Metrics of every run identical with and without the store: "
          f"{'yes' if result['identical_metrics'] else 'NO'}.",
          f"Target: store-on wall <= (store-off wall - {m_s - 1} x one run's extraction {one_run_extraction:.1f} s) "
          f"x 1.1 = {target:.1f} s: {'met' if result['meets_target'] else 'NOT met'} ({on['wall_s']:.1f} s).", ""]
    (args.out / "sweep-cpu.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()

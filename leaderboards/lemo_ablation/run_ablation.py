"""Runs the LeMO ablation of ``variants.yaml`` into ``records/`` (finished runs are skipped, so it resumes).

    python leaderboards/lemo_ablation/run_ablation.py screen [--lanes 2] [--variants a,b]
    python leaderboards/lemo_ablation/run_ablation.py final --variants a,b,c
    python leaderboards/lemo_ablation/run_ablation.py baselines [--methods cfa,padim,patchcore]

Run from the repository root. ``screen``: every variant, the screen's seeds and checkpoint schedule. ``final``:
the named variants, the final stage's seeds and schedule. ``baselines``: the other methods with their own
defaults, the final stage's seeds, evaluated at the end of the stream only (the final value does not depend on
the schedule), into ``baselines/``. Each lane runs one sweep (one ``oadbench run -m`` per variant and dataset
group) at a time with one torch thread; lanes share the work through run claims. W&B is disabled; the saved
anomaly maps are removed (the ablation's figures use curves). Then: ``oadbench ablation``.
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RELATIVE = Path("leaderboards") / "lemo_ablation"  # records name their results_dir relative to the repository


def overrides(config: dict) -> list[str]:
    """``method.<key>=<value>`` for every key, in Hydra's override syntax."""
    out = []
    for key, value in config.items():
        if value is None:
            text = "null"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = "[" + ",".join(str(v) for v in value) + "]"
        else:
            text = str(value)
        out.append(f"method.{key}={text}")
    return out


def groups(spec: dict) -> list[list[str]]:
    """Dataset override lists, the synthetic categories merged into one sweep."""
    merged: dict[tuple[str, ...], list[str]] = {}
    for args in spec["datasets"].values():
        base = tuple(a for a in args if not a.startswith("dataset.category="))
        cats = [a.split("=", 1)[1] for a in args if a.startswith("dataset.category=")]
        merged.setdefault(base, []).extend(cats)
    return [[*base, f"dataset.category={','.join(cats)}"] if cats else list(base) for base, cats in merged.items()]


def jobs(spec: dict, stage: str, names: list[str] | None, methods: list[str]) -> list[list[str]]:
    common = [f"protocol={spec['protocol']}", f"image_size={spec['image_size']}", "threads=1", "progress=false",
              "wandb.mode=disabled"]
    out = []
    if stage == "baselines":
        final = spec["stages"]["final"]
        for data in groups(spec):
            for method in methods:
                out.append([*common, *data, f"method={method}", f"seed={','.join(map(str, final['seeds']))}",
                            "protocol.evaluation.checkpoints=[]", f"results_dir={RELATIVE / 'baselines'}"])
        return out
    st = spec["stages"][stage]
    schedule = [] if st["checkpoints"] is None else [
        f"protocol.evaluation.checkpoints=[{','.join(map(str, st['checkpoints']))}]"]
    for name in names or list(spec["variants"]):
        if name not in spec["variants"]:
            raise SystemExit(f"unknown variant {name!r}; variants.yaml has {', '.join(spec['variants'])}")
        config = {**spec["reference"], **spec["variants"][name]}
        for data in groups(spec):
            out.append([*common, *data, f"method={spec['method']}", *overrides(config),
                        f"seed={','.join(map(str, st['seeds']))}", *schedule, f"results_dir={RELATIVE / 'records'}"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=["screen", "final", "baselines"])
    parser.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    parser.add_argument("--methods", default="cfa,padim,patchcore", help="baselines: the methods")
    parser.add_argument("--lanes", type=int, default=2)
    args = parser.parse_args()
    if Path.cwd().resolve() != HERE.parents[1]:
        raise SystemExit("run from the repository root (dataset roots and results_dir are relative to it)")
    spec = yaml.safe_load((HERE / "variants.yaml").read_text())
    names = args.variants.split(",") if args.variants else None
    work: queue.Queue = queue.Queue()
    for job in jobs(spec, args.stage, names, args.methods.split(",")):
        work.put(job)
    failures: list[str] = []

    def lane(i: int) -> None:
        while True:
            try:
                job = work.get_nowait()
            except queue.Empty:
                return
            cmd = [sys.executable, "-m", "oadbench", "run", "-m", *job,
                   f"hydra.sweep.dir={Path(tempfile.gettempdir()) / 'oadbench-ablation' / f'{os.getpid()}-lane{i}'}"]
            print(f"[lane {i}] {' '.join(job)}", flush=True)
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                failures.append(f"{' '.join(job)}\n{out.stderr[-2000:]}")
            for maps in HERE.rglob("*.maps.npz"):
                maps.unlink(missing_ok=True)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(args.lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

"""The first run a newcomer sees, split into stages, with PaDiM's two Mahalanobis forms side by side (not part of
the tests).

The README's default run, ``oadbench run protocol=online_cold_start`` (PaDiM on the synthetic capsule, 256 px,
W&B offline), three times, each in a fresh process with an empty cache (so each generates the dataset and
extracts every feature, as a newcomer's first run does):

- ``before``: the code at ``--before`` (default 0cf34f0, the last commit before PaDiM's Cholesky solve and the
  single-threaded decoding workers), exported with ``git archive`` and put first on ``PYTHONPATH``;
- ``explicit precision``: today's code with ``method.mahalanobis=inverse`` (PaDiM's former scoring form);
- ``after``: today's code, defaults.

Each run goes through the real CLI (``oadbench.cli.main``); stage timers wrap the functions that do each stage:

- start-up and CLI: the process's wall time minus the run's (interpreter, imports, Hydra, the summary table);
- dataset generation (the synthetic category written to the cache), preparation (config validation, stream plan);
- backbone load (weights, feature store namespace) and backbone / feature store (extraction, store reads/writes:
  the record's cost meters);
- observe, consolidate, score (the record's cost meters; of score: the maps' upsampling and blur, and of observe +
  score PaDiM's level concatenation, timed separately);
- metrics (every checkpoint's image and pixel metrics), record and W&B (record assembly and writing, maps file,
  W&B init, logging, panels, finish);
- other: the run's wall time minus all of the above (image decoding, batching, the method's construction).

Also measured in the ``after`` process, on the run's final PaDiM state: one batched Cholesky factorisation of its
P regularised covariances (float64, the floor of a consolidation), against the median consolidate per checkpoint.

Usage: python benchmarks/bench_default_run.py [--threads N] [--out benchmarks/results]
Writes ``<out>/default-run-cpu.json`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

VARIANTS = {"before": [], "explicit precision": ["method.mahalanobis=inverse"], "after": []}
BEFORE = "0cf34f0"
STAGES = ("start-up and CLI", "dataset generation", "preparation", "backbone load", "backbone / feature store",
          "observe", "consolidate", "score", "metrics", "record and W&B", "other")
PARTS = ("score: maps upsampling + blur", "observe + score: PaDiM level concatenation")


class Timers:
    """Wall seconds per stage; a call nested in a timed call of the same stage is not counted twice."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.depth: dict[str, int] = defaultdict(int)

    def wrap(self, owner: object, name: str, stage: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            self.depth[stage] += 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.depth[stage] -= 1
                if self.depth[stage] == 0:
                    self.seconds[stage] += time.perf_counter() - start

        setattr(owner, name, timed)


def child(variant: str, out: Path, threads: int | None) -> None:
    """One default run in this process, stage timers installed; writes the timings to ``out``."""
    import torch

    import oadbench.data.synthetic as synthetic
    import oadbench.evaluation as evaluation
    import oadbench.extraction as extraction
    import oadbench.run_record as run_record
    import oadbench.runner as runner
    import oadbench.tracking as tracking
    from oadbench.cli import main
    from oadbench.method import get_method

    if threads:
        torch.set_num_threads(threads)
    padim_cls = get_method("padim")
    padim_module = sys.modules[padim_cls.__module__]
    timers = Timers()
    timers.wrap(synthetic, "ensure_category", "dataset generation")
    timers.wrap(runner, "prepare", "preparation")
    timers.wrap(extraction.FeatureSource, "__init__", "backbone load")
    timers.wrap(evaluation.Evaluation, "metrics", "metrics")
    for owner, name in ((tracking.Tracker, "__init__"), (tracking.Tracker, "log"), (tracking.Tracker, "log_images"),
                        (tracking.Tracker, "finish"), (run_record, "base_record"), (run_record, "results"),
                        (runner, "write_record"), (runner, "save_maps"), (runner, "log_panels")):
        timers.wrap(owner, name, "record and W&B")
    timers.wrap(padim_module, "upsample_maps", PARTS[0])
    timers.wrap(padim_module, "concat_levels", PARTS[1])

    consolidations: list[float] = []
    models: list = []
    original_consolidate = padim_cls.consolidate

    def consolidate(self):
        start = time.perf_counter()
        original_consolidate(self)
        if self.n >= 2:
            consolidations.append(time.perf_counter() - start)
        models[:] = [self]

    padim_cls.consolidate = consolidate
    records: list[dict] = []
    original_execute = runner.execute

    def execute(prep):
        start = time.perf_counter()
        record = original_execute(prep)
        record["_execute_s"] = time.perf_counter() - start
        records.append(record)
        return record

    runner.execute = execute
    results = out.parent / "results"
    start = time.perf_counter()
    code = main(["run", "protocol=online_cold_start", f"results_dir={results}", *VARIANTS[variant]])
    main_s = time.perf_counter() - start
    assert code == 0 and records and records[0]["status"] == "finished", "the default run failed"
    record = records[0]
    cost = record["cost"]

    def total(*kinds: str) -> float:
        return sum((cost.get(k) or {}).get("total_s") or 0.0 for k in kinds)

    seconds = dict(timers.seconds)
    seconds["preparation"] -= seconds.get("dataset generation", 0.0)  # generation happens inside preparation
    seconds["backbone / feature store"] = total("backbone_eval", "backbone_stream", "feature_store_read",
                                                "feature_store_write")
    seconds["observe"] = total("observe_warmup", "observe")
    seconds["consolidate"] = total("consolidate")
    seconds["score"] = total("score")
    measured = ("dataset generation", "preparation", "backbone load", "backbone / feature store", "observe",
                "consolidate", "score", "metrics", "record and W&B")
    seconds["other"] = record["_execute_s"] - sum(seconds.get(s, 0.0) for s in measured
                                                  if s not in ("dataset generation", "preparation"))
    floor = None
    if models and getattr(models[0], "_factor", None) is not None:
        m = models[0]
        _, _, cov = m.statistics()
        cov.diagonal(dim1=1, dim2=2).add_(m.config.epsilon)  # Σ + ε·I, the matrices the run factorises
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            torch.linalg.cholesky(cov)
            times.append(time.perf_counter() - t0)
        floor = {"positions": int(cov.shape[0]), "d": int(m.d), "cholesky_s": min(times)}
    out.write_text(json.dumps({
        "variant": variant, "git_commit": record["env"]["git_commit"],
        "padim_forms": getattr(padim_module, "MAHALANOBIS_FORMS", None),  # None: the code before the solve
        "overrides": VARIANTS[variant], "main_s": main_s,
        "execute_s": record["_execute_s"], "stages": seconds, "consolidations_s": consolidations,
        "cholesky_floor": floor, "final": record["final"], "threads": torch.get_num_threads(),
        "scored_images": (cost.get("score") or {}).get("images"), "checkpoints": len(record["checkpoints"]),
    }, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' code (default %(default)s)")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.json, args.threads)
        return
    runs = {}
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="oadbench-default-run-") as tmp:
        old = Path(tmp, "before-code")
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(repo), "archive", args.before], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        for variant in VARIANTS:
            work = Path(tmp, variant.replace(" ", "_"))
            work.mkdir()
            env = {**os.environ, "OADBENCH_CACHE": str(work / "cache"), "WANDB_DIR": str(work),
                   "WANDB_SILENT": "true"}
            if variant == "before":
                env["PYTHONPATH"] = os.pathsep.join([str(old), *filter(None, [os.environ.get("PYTHONPATH")])])
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--json",
                   str(work / "timings.json")]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            start = time.perf_counter()
            # cwd: the work folder, whose ./methods does not exist, so each code finds its own built-in methods
            done = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                sys.exit(f"{variant} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            result = json.loads((work / "timings.json").read_text())
            result["wall_s"] = wall
            result["stages"]["start-up and CLI"] = wall - result["execute_s"] - sum(
                result["stages"].get(s, 0.0) for s in ("dataset generation", "preparation"))
            runs[variant] = result
            print(f"{variant}: {wall:.1f} s", flush=True)
    before, after = runs["before"], runs["after"]
    metric_diff = {k: after["final"][k] - before["final"][k] for k in before["final"]}
    floor = after["cholesky_floor"]
    per_checkpoint = {v: statistics.median(r["consolidations_s"]) for v, r in runs.items()}
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(terse=True),
                          "threads": after["threads"]}, "before": args.before,
              "runs": runs, "final_metric_difference_after_minus_before": metric_diff,
              "consolidate_per_checkpoint_median_s": per_checkpoint, "cholesky_floor": floor}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "default-run-cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    names = list(VARIANTS)
    md = [f"# The default run, stage by stage: `oadbench run protocol=online_cold_start` (PaDiM, synthetic "
          f"capsule, 256 px, {after['checkpoints']} checkpoints, {after['scored_images']} scored images), "
          f"threads={after['threads']}, {os.cpu_count()} CPUs, fresh cache",
          "", f"before: the code at {args.before}; explicit precision: today's code with "
          "`method.mahalanobis=inverse`; after: today's code.", "",
          "| stage (s) | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for stage in (*STAGES, *PARTS):
        label = stage if stage in STAGES else f"&nbsp;&nbsp;{stage}"
        md.append(f"| {label} | " + " | ".join(f"{runs[v]['stages'].get(stage, 0.0):.1f}" for v in names) + " |")
    md.append("| **wall time of the process** | " + " | ".join(f"**{runs[v]['wall_s']:.1f}**" for v in names) + " |")
    md += ["", "Consolidate per checkpoint (median over the checkpoints with n >= 2): "
           + ", ".join(f"{v} {per_checkpoint[v]:.3f} s" for v in names)
           + f"; one batched Cholesky factorisation of the final {floor['positions']} covariances "
           f"({floor['d']} x {floor['d']}, float64): {floor['cholesky_s']:.3f} s, so after / floor = "
           f"{per_checkpoint['after'] / floor['cholesky_s']:.2f}.",
           "", "Final metrics, after minus before: " + ", ".join(f"{k} {v:+.2e}" for k, v in metric_diff.items())
           + "."]
    (args.out / "default-run-cpu.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

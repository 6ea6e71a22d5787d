"""Benchmark of the pixel metrics on a realistic evaluation size.

What it measures: wall-clock seconds and peak Python-tracked memory (tracemalloc; NumPy reports its array
allocations to it) of :func:`oadbench.metrics.pixel_metrics` computing pixel AUROC, pixel AP and AUPRO
(FPR limit 0.3) together, and of each metric computed on its own, on ``--n`` synthetic float32 anomaly maps
of ``--size`` x ``--size`` pixels (default 400 x 256 x 256, about 26M pixels) with about 5% anomalous pixels
in a few disc-shaped blobs per image.

Timings are the best of ``--repeat`` runs without tracemalloc, as wall-clock seconds and as CPU seconds
summed over all threads (the sorts run in one thread per CPU, at most 4). On a busy machine CPU time is the
better guide; the load average is printed first. Peak memory comes from one extra run with tracemalloc on
and excludes the input arrays themselves.
Image-level metrics on 10k scores are timed too. ``--sklearn`` adds scikit-learn's roc_auc_score and
average_precision_score on the flattened pixels for comparison (slow, several GB).

Run: ``python benchmarks/bench_metrics.py [--n 400] [--size 256] [--repeat 3] [--sklearn]``.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from oadbench.metrics import aupro, image_metrics, pixel_ap, pixel_auroc, pixel_metrics


def make_maps(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) float32 maps and bool masks: 2-4 discs per image covering ~5% of the pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        k = int(rng.integers(2, 5))
        # total disc area ~5% of the image, split between k discs
        radius = np.sqrt(0.05 * size * size / (k * np.pi))
        for _ in range(k):
            r = radius * rng.uniform(0.6, 1.3)
            cy, cx = rng.uniform(0, size, 2)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    maps = rng.standard_normal((n, size, size), dtype=np.float32)
    maps += 2.0 * masks
    return maps, masks


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Smallest wall-clock and smallest CPU (all threads) seconds over ``repeat`` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def peak_mib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="number of maps")
    parser.add_argument("--size", type=int, default=256, help="map height and width in pixels")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (best is reported)")
    parser.add_argument("--sklearn", action="store_true", help="also time scikit-learn on the same pixels")
    args = parser.parse_args()

    maps, masks = make_maps(args.n, args.size)
    print(
        f"{args.n} maps of {args.size}x{args.size} float32 = {maps.size / 1e6:.1f}M pixels, "
        f"{masks.mean() * 100:.1f}% anomalous; {os.cpu_count()} CPUs; input {maps.nbytes / 2**20:.0f} MiB"
    )
    scores = np.random.default_rng(1).standard_normal(10_000)
    labels = np.random.default_rng(2).random(10_000) < 0.3

    cases: list[tuple[str, Callable[[], object]]] = [
        ("pixel_metrics (auroc+ap+aupro)", lambda: pixel_metrics(maps, masks)),
        ("pixel_auroc", lambda: pixel_auroc(maps, masks)),
        ("pixel_ap", lambda: pixel_ap(maps, masks)),
        ("aupro (fpr_limit=0.3)", lambda: aupro(maps, masks)),
        ("image_metrics (10k scores)", lambda: image_metrics(scores, labels)),
    ]
    if args.sklearn:
        from sklearn.metrics import average_precision_score, roc_auc_score

        y, s = masks.ravel(), maps.ravel()
        cases.append(("sklearn roc_auc_score (pixels)", lambda: roc_auc_score(y, s)))
        cases.append(("sklearn average_precision_score (pixels)", lambda: average_precision_score(y, s)))

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'case':42s} {'wall s':>8s} {'CPU s':>8s} {'peak MiB':>9s}")
    for name, fn in cases:
        wall, cpu = best_of(fn, args.repeat)
        print(f"{name:42s} {wall:8.3f} {cpu:8.3f} {peak_mib(fn):9.0f}")
    print("values:", {k: round(v, 6) for k, v in pixel_metrics(maps, masks).items()})


if __name__ == "__main__":
    main()

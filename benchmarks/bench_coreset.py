"""Greedy k-center coreset speed and memory at the size of one MVTec AD category (not part of the tests).

DESIGN.md's reference: anomalib 2.7's coreset selection for one category (209 training images at 256 px,
214k patches, 10 %) runs at about 12 selections per second on a 2-core CPU, close to half an hour; the target is
at most a fifth of that time and at most 4 GB. This benchmark selects 10 % of 214,016 random patches of WRN-50's
layer 2+3 width (1536) and of EfficientNet-Lite0's (152), projected to 128 dimensions as in PatchCore, and
reports selections per second, total time and peak RSS.

Usage: python benchmarks/bench_coreset.py [--patches 214016] [--dims 152 1536] [--device cpu]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from oadbench.components import greedy_kcenter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patches", type=int, default=209 * 1024)
    parser.add_argument("--dims", type=int, nargs="+", default=[152, 1536])
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print("| patches | dim | selected | seconds | selections/s | vs anomalib (12/s) | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for dim in args.dims:
        x = torch.randn(args.patches, dim, generator=torch.Generator().manual_seed(0)).to(args.device)
        k = int(args.ratio * args.patches)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        idx = greedy_kcenter(x, k, seed=0, projection_dim=128)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        assert idx.unique().numel() == k
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {args.patches} | {dim} | {k} | {seconds:.1f} | {k / seconds:.0f} | {k / seconds / 12:.1f}x | "
              f"{rss:.0f} |", flush=True)
        del x


if __name__ == "__main__":
    main()

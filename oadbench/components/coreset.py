"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022, Algorithm 1: start from one
random point; repeatedly add the point farthest from the selected set. Distances are computed on a sparse random
projection of the features (Johnson–Lindenstrauss; Li, Hastie, Church, "Very sparse random projections", KDD
2006), which keeps each step at N x d' operations (d' = 128).

Cost: k steps, each one pass over the projected features (N x d' floats); memory O(N x d'), independent of k.
The selected index never leaves the device, so on a GPU the k steps queue without a host synchronisation
between them (one per step used to cost a round trip for each of tens of thousands of selected points).
"""

from __future__ import annotations

import math

import torch


def sparse_random_projection(dim_in: int, dim_out: int, generator: torch.Generator,
                             device: torch.device | str = "cpu") -> torch.Tensor:
    """A (dim_in, dim_out) very sparse random projection: entries ±sqrt(s / dim_out) with probability 1/(2s)
    each, 0 otherwise, s = sqrt(dim_in). Drawn on the CPU from ``generator`` (deterministic), then moved."""
    s = math.sqrt(dim_in)
    u = torch.rand(dim_in, dim_out, generator=generator)
    signs = torch.where(u < 0.5 / s, -1.0, torch.where(u < 1.0 / s, 1.0, 0.0))
    return (signs * math.sqrt(s / dim_out)).to(device)


def project(features: torch.Tensor, dim_out: int | None, generator: torch.Generator) -> torch.Tensor:
    """``features`` (N, D) projected to ``dim_out`` dimensions (unchanged if ``dim_out`` is None or >= D)."""
    if dim_out is None or dim_out >= features.shape[1]:
        return features.float()
    matrix = sparse_random_projection(features.shape[1], dim_out, generator, features.device)
    return features.float() @ matrix


def greedy_kcenter(features: torch.Tensor, k: int, seed: int = 0, projection_dim: int | None = 128,
                   progress: bool = False) -> torch.Tensor:
    """Indices (k,) of a greedy k-center coreset of ``features`` (N, D), in selection order.

    The first index is drawn from ``seed``; each following one is the point whose distance to the nearest
    already selected point is largest (ties: the lowest index). Deterministic for a given seed and input.
    ``k >= N`` returns every index.
    """
    n = features.shape[0]
    if k >= n:
        return torch.arange(n, device=features.device)
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=features.device)
    gen = torch.Generator().manual_seed(seed)
    x = project(features, projection_dim, gen)
    sq = (x * x).sum(1)
    # column-major storage: the per-step matrix-vector product runs ~3x faster than on row-major (N, d')
    x = x.T.contiguous().T
    first = int(torch.randint(n, (1,), generator=gen))
    selected = torch.empty(k, dtype=torch.long, device=x.device)
    selected[0] = first
    min_dist = _sq_dist_to(x, sq, first)
    min_dist[first] = -1.0  # selected points never win again
    buf = torch.empty_like(min_dist)
    steps = range(1, k)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="coreset", unit="pt", leave=False, mininterval=1.0)
    for i in steps:
        # the index stays on the device: no host sync per step (argmax: the first maximum, the lowest index)
        j = selected[i:i + 1]
        torch.argmax(min_dist, dim=0, keepdim=True, out=j)
        # |x - x_j|² = |x|² + |x_j|² - 2 x·x_j, one matrix-vector product per step
        torch.addmv(sq, x, x.index_select(0, j)[0], alpha=-2.0, out=buf)
        buf += sq.index_select(0, j)
        torch.minimum(min_dist, buf, out=min_dist)
        min_dist.index_fill_(0, j, -1.0)
    return selected


def _sq_dist_to(x: torch.Tensor, sq: torch.Tensor, j: int) -> torch.Tensor:
    return (torch.addmv(sq, x, x[j].contiguous(), alpha=-2.0) + sq[j]).clamp_min_(0.0)

"""K-means (Lloyd's algorithm with k-means++ seeding) on any device, deterministic for a seed.

Used to initialise memories from the first observed image (CFA's online bank, LeMO's K-means initialisation)
and for the 2-means splits of LeMO's feature-enhanced memory update.

On CUDA: the cluster sums use ``index_add_``, whose CUDA kernel accumulates with atomics in an order that varies
from call to call unless deterministic algorithms are on (``torch.use_deterministic_algorithms(True)``, which every
CUDA run of the runner sets: then it is a sorted, ordered accumulation); cluster sizes are counted by an integer
``scatter_add_`` (exact in any order; ``torch.bincount`` would synchronise with the host to size its output); and
the convergence test, a host synchronisation, runs every ``check_every`` iterations. Once the labels stop
changing every further iteration reproduces the same centroids and labels exactly, so the result does not depend
on ``check_every``: only the number of host round trips does.
"""

from __future__ import annotations

import torch

CHECK_EVERY_DEVICE = 8  # Lloyd iterations between convergence tests off the CPU (on the CPU: every iteration)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50,
           check_every: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (k, D) and labels (N,) of ``x`` (N, D). ``k >= N`` returns the points themselves (padded by
    repeating the last one). Seeding: k-means++ with a CPU generator seeded by ``seed``; then Lloyd iterations
    until the labels stop changing (at most ``iters``). A cluster that empties keeps its previous centroid.
    ``check_every``: iterations between convergence tests (None: 1 on the CPU, 8 elsewhere); changes no result."""
    n = x.shape[0]
    x = x.float()
    if k >= n:
        idx = torch.arange(k, device=x.device).clamp_max(n - 1)
        return x[idx].clone(), torch.arange(n, device=x.device)
    if check_every is None:
        check_every = 1 if x.device.type == "cpu" else CHECK_EVERY_DEVICE
    gen = torch.Generator().manual_seed(seed)
    centroids = torch.empty(k, x.shape[1], device=x.device)
    first = int(torch.randint(n, (1,), generator=gen))
    centroids[0] = x[first]
    closest = _sq_dist(x, centroids[:1]).squeeze(1)
    for i in range(1, k):
        weights = closest.clamp_min(0).cpu().double()  # the CPU generator draws: one host round trip per centre
        if float(weights.sum()) <= 0:
            pick = int(torch.randint(n, (1,), generator=gen))
        else:
            pick = int(torch.multinomial(weights, 1, generator=gen))
        centroids[i] = x[pick]
        closest = torch.minimum(closest, _sq_dist(x, centroids[i:i + 1]).squeeze(1))
    labels = _sq_dist(x, centroids).argmin(1)
    ones = torch.ones_like(labels)
    for it in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.zeros(k, dtype=labels.dtype, device=x.device).scatter_add_(0, labels, ones).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        new_labels = _sq_dist(x, centroids).argmin(1)
        if (it + 1) % check_every == 0 and torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centroids, labels


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (x.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1) - 2.0 * x @ c.T).clamp_min_(0.0)

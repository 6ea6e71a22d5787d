"""Exact nearest-neighbour search in chunks: memory bounded by the chunk sizes, not by |queries| x |bank|."""

from __future__ import annotations

import torch

QUERY_CHUNK = 4096
BANK_CHUNK = 16384


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, query_chunk: int = QUERY_CHUNK,
                       bank_chunk: int = BANK_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (M, k) and indices (M, k) of the ``k`` nearest ``bank`` rows (N, D) of each query
    row (M, D), nearest first. Peak extra memory: one ``query_chunk`` x ``bank_chunk`` float block."""
    m, n = queries.shape[0], bank.shape[0]
    k = min(k, n)
    out_d = torch.empty(m, k, dtype=torch.float32, device=queries.device)
    out_i = torch.empty(m, k, dtype=torch.long, device=queries.device)
    bank = bank.float()
    bank_sq = (bank * bank).sum(1)
    for qs in range(0, m, query_chunk):
        q = queries[qs:qs + query_chunk].float()
        q_sq = (q * q).sum(1, keepdim=True)
        best_d = best_i = None
        for bs in range(0, n, bank_chunk):
            b = bank[bs:bs + bank_chunk]
            d2 = torch.addmm(bank_sq[bs:bs + bank_chunk].unsqueeze(0), q, b.T, alpha=-2.0).add_(q_sq)
            d, i = torch.topk(d2, min(k, d2.shape[1]), dim=1, largest=False)
            i += bs
            if best_d is None:
                best_d, best_i = d, i
            else:
                d, order = torch.topk(torch.cat([best_d, d], 1), k, dim=1, largest=False)
                best_i = torch.gather(torch.cat([best_i, i], 1), 1, order)
                best_d = d
        out_d[qs:qs + query_chunk] = best_d.clamp_min_(0.0).sqrt_()
        out_i[qs:qs + query_chunk] = best_i
    return out_d, out_i


def smallest_sq_distances(z: torch.Tensor, bank: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` smallest squared Euclidean distances (N, n) of each row of ``z`` (N, D) to the rows of ``bank``
    (M, D), nearest first, differentiable w.r.t. ``z`` and ``bank``. The neighbours are found without gradient
    (chunked exact search, :func:`nearest_neighbours`); their squared distances are then recomputed as |z - c|²,
    exact and never negative, so the backward pass costs N x n x D instead of a dense N x M x D product."""
    with torch.no_grad():
        _, idx = nearest_neighbours(z.detach(), bank, n)
    # index_select: its backward (index_add) is deterministic on CPU, advanced indexing's is not
    rows = bank.index_select(0, idx.flatten()).view(*idx.shape, bank.shape[1])
    return (z.unsqueeze(1) - rows).pow(2).sum(-1)

"""Exact nearest-neighbour search in chunks: memory bounded by the chunk sizes, not by |queries| x |bank|."""

from __future__ import annotations

import torch

QUERY_CHUNK = 4096
BANK_CHUNK = 16384
SELECT_BLOCK = 64  # columns per block of the two-stage selection in smallest_k


def smallest_k(values: torch.Tensor, k: int, block: int = SELECT_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest entries (M, k) of each row of ``values`` (M, N), ascending, and their column indices:
    the values of ``torch.topk(values, k, largest=False)`` exactly (indices may differ between equal values).

    Two stages, both exact: the minimum of every ``block`` consecutive columns, then a full selection among the
    columns of the ``k`` blocks with the smallest minima. A row's i-th smallest value is always among them: either
    every block holding the i smallest values is chosen, or each of the k chosen blocks holds a value no larger.
    One reduction pass over the row replaces a top-k pass, several times dearer on CPU for small k."""
    m, n = values.shape
    k = min(k, n)
    n_full = n // block
    if n_full <= 2 * k:  # too few blocks for the first stage to save work
        return torch.topk(values, k, dim=1, largest=False)
    mins = values[:, :n_full * block].unflatten(1, (n_full, block)).amin(2)
    if n_full * block < n:  # a shorter last block
        mins = torch.cat([mins, values[:, n_full * block:].amin(1, keepdim=True)], 1)
    _, blocks = torch.topk(mins, k, dim=1, largest=False)
    cols = (blocks.unsqueeze(2) * block + torch.arange(block, device=values.device)).flatten(1)
    outside = cols >= n  # columns past the end of a shorter last block
    candidates = torch.gather(values, 1, cols.clamp_max(n - 1)).masked_fill_(outside, float("inf"))
    best, pos = torch.topk(candidates, k, dim=1, largest=False)
    return best, torch.gather(cols, 1, pos)


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, query_chunk: int = QUERY_CHUNK,
                       bank_chunk: int = BANK_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (M, k) and indices (M, k) of the ``k`` nearest ``bank`` rows (N, D) of each query
    row (M, D), nearest first. Peak extra memory: one ``query_chunk`` x ``bank_chunk`` float block.

    The neighbours are ranked by |c|² - 2 q·c; |q|² is added to the k selected values only (adding a per-row
    constant is monotone under rounding, so the distances are those of the full |q|² + |c|² - 2 q·c). The ranking
    is finer than that of the rounded full sum: where two bank rows' full sums round to the same float32, the one
    nearer by |c|² - 2 q·c comes first, so the indices can differ from a top-k over the full sum (same distances).
    Methods that use the indices (CFA's and LeMO's recomputed |z - c|², PatchCore's reweighting) can therefore
    differ slightly from records written before this ranking (measured: 7 of 2048 query rows, k = 6)."""
    m, n = queries.shape[0], bank.shape[0]
    k = min(k, n)
    out_d = torch.empty(m, k, dtype=torch.float32, device=queries.device)
    out_i = torch.empty(m, k, dtype=torch.long, device=queries.device)
    bank = bank.float()
    bank_sq = (bank * bank).sum(1)
    for qs in range(0, m, query_chunk):
        q = queries[qs:qs + query_chunk].float()
        best_d = best_i = None
        for bs in range(0, n, bank_chunk):
            b = bank[bs:bs + bank_chunk]
            partial = torch.addmm(bank_sq[bs:bs + bank_chunk].unsqueeze(0), q, b.T, alpha=-2.0)
            d, i = smallest_k(partial, k)
            i += bs
            if best_d is None:
                best_d, best_i = d, i
            else:
                d, order = torch.topk(torch.cat([best_d, d], 1), k, dim=1, largest=False)
                best_i = torch.gather(torch.cat([best_i, i], 1), 1, order)
                best_d = d
        out_d[qs:qs + query_chunk] = best_d.add_((q * q).sum(1, keepdim=True)).clamp_min_(0.0).sqrt_()
        out_i[qs:qs + query_chunk] = best_i
    return out_d, out_i


def mutual_nearest_neighbours(a: torch.Tensor, b: torch.Tensor, block: int = QUERY_CHUNK * QUERY_CHUNK
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mutual nearest neighbours of two sets of rows ``a`` (M, D) and ``b`` (N, D): the pairs (i, j) where
    b[j] is the nearest row of ``b`` to a[i] and a[i] the nearest row of ``a`` to b[j] (exact; ties go to the
    lower index). Returns the indices into ``a`` (K,), ascending, their partners' indices into ``b`` (K,) and the
    pairs' Euclidean distances (K,); each row takes part in at most one pair. Both directions are read from the
    same squared distances |a|² + |b|² - 2 a·b, computed once, a block of rows of ``a`` at a time (peak extra
    memory: about ``block`` floats)."""
    device = a.device
    m, n = a.shape[0], b.shape[0]
    if m == 0 or n == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty.clone(), torch.empty(0, dtype=torch.float32, device=device)
    a, b = a.float(), b.float()
    b_sq = (b * b).sum(1)
    row_d = torch.empty(m, device=device)
    row_i = torch.empty(m, dtype=torch.long, device=device)
    col_d = torch.full((n,), float("inf"), device=device)
    col_i = torch.zeros(n, dtype=torch.long, device=device)
    step = max(1, block // n)
    for s in range(0, m, step):
        q = a[s:s + step]
        d = torch.addmm(b_sq.unsqueeze(0), q, b.T, alpha=-2.0).add_((q * q).sum(1, keepdim=True))
        row_d[s:s + step], row_i[s:s + step] = d.min(1)
        d, i = d.min(0)
        nearer = d < col_d  # strict: an earlier block keeps a tie
        col_d = torch.where(nearer, d, col_d)
        col_i = torch.where(nearer, i + s, col_i)
    rows = torch.nonzero(col_i[row_i] == torch.arange(m, device=device)).flatten()
    return rows, row_i[rows], row_d[rows].clamp_min(0.0).sqrt()


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

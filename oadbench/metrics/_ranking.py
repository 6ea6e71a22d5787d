"""Shared machinery: input conversion and exact ranking counts of positive vs. negative scores.

Every ranking metric used here (AUROC, AP, F1-max, AUPRO) depends on the scores only through how the
negatives fall relative to the *distinct positive score values* ``u_0 < u_1 < ... < u_{U-1}``:

* ``pos_counts[j]`` -- number of positives equal to ``u_j``;
* ``neg_ge[j]`` / ``neg_gt[j]`` -- number of negatives ``>= u_j`` / ``> u_j``.

:class:`RankedScores` holds these counts. They are built without ever sorting positives and negatives
together: the positives are sorted on their own and the negatives are sorted in independent chunks (in
parallel threads; NumPy releases the GIL while sorting), and each chunk is searched with the sorted
distinct positive values. Counts are additive over chunks, so the chunks never need merging. Ties are
counted exactly, with no tolerance.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

# Below this many elements a single-threaded sort is faster than handing chunks to threads.
_PARALLEL_MIN = 1 << 20
_MAX_WORKERS = 4


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a NumPy array: torch tensors (any device) via ``detach().cpu()``, others via ``np.asarray``.

    torch is not imported here; a tensor is recognised by its ``detach``/``cpu`` methods. NumPy inputs are
    returned as they are (no copy).
    """
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach()
        if str(t.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            t = t.float()
        return t.cpu().numpy()
    return np.asarray(x)


def as_scores(x: Any, name: str) -> np.ndarray:
    """Scores as a numeric array (float16 -> float32, bool -> uint8); ValueError for NaN or non-numbers.

    Other dtypes are kept: comparisons happen in the input's own precision, so float32 ties stay ties.
    """
    a = to_numpy(x)
    if a.dtype == np.bool_:
        return a.view(np.uint8)
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    if a.size and np.issubdtype(a.dtype, np.floating) and np.isnan(np.max(a)):
        raise ValueError(f"{name}: contains NaN")
    return a


def as_binary(x: Any, name: str) -> np.ndarray:
    """Labels or masks as a bool array; ValueError if a value is not 0/1 (or False/True)."""
    a = to_numpy(x)
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: expected 0/1 or bool values, got dtype {a.dtype}")
    if a.size and np.any((a != 0) & (a != 1)):
        raise ValueError(f"{name}: expected only 0/1 values, got others (e.g. {a[(a != 0) & (a != 1)][0]!r})")
    return a != 0


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """ValueError naming both shapes unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} shape {tuple(a.shape)} does not match {name_b} shape {tuple(b.shape)}")


def check_names(names: Iterable[str], allowed: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple; ValueError naming the allowed ones if one is unknown."""
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"unknown metric name(s) {unknown}; allowed: {', '.join(allowed)}")
    return names


def n_workers() -> int:
    """Threads used to sort large arrays: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_WORKERS))


def executor() -> contextlib.AbstractContextManager[Executor | None]:
    """A thread pool of :func:`n_workers` threads to use in a ``with`` block, or None on a single CPU."""
    k = n_workers()
    return ThreadPoolExecutor(k) if k > 1 else contextlib.nullcontext()


def start_chunk_sort(a: np.ndarray, pool: Executor | None) -> Callable[[], list[np.ndarray]]:
    """Start sorting the 1-D array ``a`` (owned by the caller) in place, as independent contiguous chunks.

    Large arrays are split into one chunk per worker and sorted in ``pool``'s threads, so the caller can do
    other work meanwhile. Returns a function that waits for the sorts and returns the sorted chunks (views
    of ``a``); ``a`` itself is not globally sorted afterwards.
    """
    if pool is None or a.size < _PARALLEL_MIN:
        a.sort()
        return lambda: [a]
    chunks = np.array_split(a, n_workers())
    futures = [pool.submit(c.sort) for c in chunks]

    def wait() -> list[np.ndarray]:
        for f in futures:
            f.result()
        return chunks

    return wait


def distinct_sorted(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index of each run of equal values in the ascending array ``s`` (non-empty), and run lengths."""
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    counts = np.diff(np.append(starts, s.size)).astype(np.int64)
    return starts, counts


@dataclass(frozen=True)
class RankedScores:
    """Counts of negatives at and above each distinct positive score value (see module docstring).

    ``values`` ascending, shape (U,); ``pos_counts``, ``neg_ge``, ``neg_gt`` int64 (U,). ``n_pos`` and
    ``n_neg`` are the totals. When built from only the top negatives (AUPRO with an FPR limit),
    ``neg_ge``/``neg_gt`` are exact only for values at or above the smallest negative kept.
    """

    values: np.ndarray
    pos_counts: np.ndarray
    neg_ge: np.ndarray
    neg_gt: np.ndarray
    n_pos: int
    n_neg: int

    @classmethod
    def from_sorted(cls, pos_sorted: np.ndarray, chunks: Sequence[np.ndarray], n_neg: int) -> RankedScores:
        """From ascending positives and ascending chunks of negatives (chunks may be empty)."""
        starts, pos_counts = (
            distinct_sorted(pos_sorted) if pos_sorted.size else (np.zeros(0, np.intp), np.zeros(0, np.int64))
        )
        values = pos_sorted[starts]
        neg_ge = np.zeros(values.size, np.int64)
        neg_gt = np.zeros(values.size, np.int64)
        for chunk in chunks:
            n = chunk.size
            if n == 0 or values.size == 0:
                continue
            left = np.searchsorted(chunk, values, "left")
            # Only values present in the chunk need a second ('right') search; with continuous scores
            # those are few, which halves the search time.
            tied = np.flatnonzero(chunk[np.minimum(left, n - 1)] == values)
            right = left.copy()
            right[tied] = np.searchsorted(chunk, values[tied], "right")
            neg_ge += n - left
            neg_gt += n - right
        return cls(values, pos_counts, neg_ge, neg_gt, int(pos_sorted.size), int(n_neg))

    @property
    def defined(self) -> bool:
        """Whether both classes are present (otherwise every metric here is NaN)."""
        return self.n_pos > 0 and self.n_neg > 0

    def tp_ge(self) -> np.ndarray:
        """Number of positives ``>= values[j]`` (int64)."""
        return np.cumsum(self.pos_counts[::-1])[::-1]

    def auroc(self) -> float:
        """Mann-Whitney U / (P*N), ties counted 1/2; equals ``sklearn.metrics.roc_auc_score``."""
        if not self.defined:
            return math.nan
        # 2U = sum_j c_j * (2 * #neg < u_j + #neg == u_j) = sum_j c_j * (2N - ge_j - gt_j), exact in int64.
        u2 = int(np.dot(self.pos_counts, 2 * self.n_neg - self.neg_ge - self.neg_gt))
        return u2 / (2 * self.n_pos * self.n_neg)

    def average_precision(self) -> float:
        """sum_n (R_n - R_{n-1}) P_n over thresholds, as ``sklearn.metrics.average_precision_score``.

        Recall only changes at the distinct positive values, so only those thresholds contribute.
        """
        if not self.defined:
            return math.nan
        tp = self.tp_ge()
        precision = tp / (tp + self.neg_ge)
        return float(np.dot(self.pos_counts, precision) / self.n_pos)

    def f1_max(self) -> float:
        """max over thresholds of 2TP / (2TP + FP + FN); the maximum is at a distinct positive value."""
        if not self.defined:
            return math.nan
        tp = self.tp_ge()
        return float(np.max(2 * tp / (tp + self.neg_ge + self.n_pos)))


def rank_scores(pos: np.ndarray, neg: np.ndarray) -> RankedScores:
    """:class:`RankedScores` of 1-D ``pos`` and ``neg`` (not modified: both are sorted as copies)."""
    neg_copy = np.array(neg)
    with executor() as pool:
        wait = start_chunk_sort(neg_copy, pool)
        pos_sorted = np.sort(pos)
        chunks = wait()
    return RankedScores.from_sorted(pos_sorted, chunks, neg_copy.size)

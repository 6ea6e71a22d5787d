"""DeLong's test for correlated AUROCs: k classifiers scored on the same items, compared through a contrast.

DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more correlated receiver operating
characteristic curves: a nonparametric approach", Biometrics 44:837-845. For classifier r with scores X_ri of
the m positives and Y_rj of the n negatives, psi(x, y) = 1 if y < x, 1/2 if y == x, 0 otherwise, and

* the AUROC (Mann-Whitney statistic, ties counted 1/2) is theta_r = (1/mn) sum_ij psi(X_ri, Y_rj);
* the structural components are V10_r(i) = (1/n) sum_j psi(X_ri, Y_rj) and V01_r(j) = (1/m) sum_i psi(X_ri, Y_rj);
* their sample covariances (ddof = 1) over positives and over negatives are S10 and S01 (k, k), and the
  covariance of the AUROCs is S = S10 / m + S01 / n;
* a contrast w (k,) is tested with z = w theta / sqrt(w S w^T), normal under w theta_true = 0.

The components come from midranks, as in Sun & Xu (2014), "Fast implementation of DeLong's algorithm for
comparing the areas under correlated receiver operating characteristic curves", IEEE Signal Processing Letters
21(11):1389-1393: with T_z the midranks of a classifier's scores among all m + n items, T_x among the positives and
T_y among the negatives, V10(i) = (T_z(i) - T_x(i)) / n and V01(j) = 1 - (T_z(m + j) - T_y(j)) / m. One sort per
score vector, O(k (m + n) log(m + n)), vectorised over the k classifiers.

Contrasts: seed-averaged AUROCs are contrasts too. Methods A and B each run with 3 seeds on the same test items
give 6 score vectors; w = (1/3, 1/3, 1/3, -1/3, -1/3, -1/3) tests the difference of the seed-mean AUROCs with the
correlations between all six accounted for. w = (1,) gives one AUROC with its DeLong interval (its p, a test of
AUROC = 0, is then meaningless).

Conventions: labels are 0/1 (or bool), 1 the positive class, higher scores meaning more positive. The covariance
needs at least 2 positives and 2 negatives (the sample covariances divide by m - 1 and n - 1); fewer raise
ValueError naming the class. A standard error of exactly 0 (every structural component of the contrast constant,
e.g. identical score vectors on both sides) gives z = 0, p = 1.0 when the estimate is 0 and z = +-inf, p = 0.0
otherwise, with the interval collapsed to the estimate. Weighted sums add the positive and the negative terms
separately, each in ascending order, so a contrast between identical score vectors is exactly 0, not rounding
noise that a zero standard error would turn into an arbitrary z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from oadbench.metrics._ranking import as_binary, as_scores, to_numpy

MIN_PER_CLASS = 2  # positives and negatives each: the sample covariances divide by m - 1 and n - 1


@dataclass(frozen=True)
class Contrast:
    """A test of w · AUC = 0: the estimate, its DeLong standard error, z, two-sided p and a normal interval."""

    estimate: float  # w · AUC
    se: float  # sqrt(w S w^T)
    z: float
    p: float  # two-sided
    low: float  # `level` normal interval of w · AUC
    high: float


def midranks(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties get the mean of their ranks) of each row of the 2-D ``x``, as float64."""
    order = np.argsort(x, axis=1)
    s = np.take_along_axis(x, order, axis=1)
    k, n = s.shape
    new = np.ones((k, n), dtype=bool)  # first of a run of equal values
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    last = np.ones((k, n), dtype=bool)  # last of a run
    last[:, :-1] = new[:, 1:]
    pos = np.arange(n)
    first_pos = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    last_pos = np.minimum.accumulate(np.where(last, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((k, n), dtype=np.float64)
    np.put_along_axis(ranks, order, (first_pos + last_pos) / 2 + 1, axis=1)
    return ranks


def _inputs(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` as (k, n) (a 1-D vector is one classifier) and ``labels`` as bool (n,); ValueError if invalid."""
    s = as_scores(scores, "scores")
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"scores: expected shape (k, n) with k >= 1, got {tuple(s.shape)}")
    y = as_binary(labels, "labels")
    if y.ndim != 1 or y.size != s.shape[1]:
        raise ValueError(f"labels shape {tuple(y.shape)} does not match scores shape {tuple(s.shape)} (need (n,))")
    n_pos = int(y.sum())
    for count, name in ((n_pos, "positive (label 1)"), (y.size - n_pos, "negative (label 0)")):
        if count < MIN_PER_CLASS:
            raise ValueError(f"labels: {count} {name} item(s); DeLong's covariance needs at least "
                             f"{MIN_PER_CLASS} positives and {MIN_PER_CLASS} negatives")
    return s, y


def _components(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (k,) and the structural components V10 (k, m), V01 (k, n), from midranks (Sun & Xu 2014)."""
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    tz = midranks(np.concatenate([pos, neg], axis=1))
    v10 = (tz[:, :m] - midranks(pos)) / n
    v01 = 1.0 - (tz[:, m:] - midranks(neg)) / m
    # Sum of the positives' midranks minus its minimum m(m+1)/2 is the Mann-Whitney count (ties 1/2): a sum
    # of half-integers, exact in float64, so the AUCs are correctly rounded.
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    return aucs, v10, v01


def _weighted_sum(w: np.ndarray, a: np.ndarray) -> np.ndarray:
    """sum_r w_r a_r over axis 0 of ``a`` (k, ...): positive and negative terms each summed in ascending order,
    so that terms which cancel in pairs give exactly 0."""
    t = w.reshape((-1,) + (1,) * (a.ndim - 1)) * a
    plus = np.sort(np.where(t > 0, t, 0.0), axis=0).sum(axis=0)
    minus = np.sort(np.where(t < 0, -t, 0.0), axis=0).sum(axis=0)
    return plus - minus


def delong_covariance(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` (k, n) of k classifiers on the same n items (1-D: one classifier), ``labels`` (n,) 0/1 ->
    (AUCs (k,), their DeLong covariance S = S10/m + S01/n (k, k)). Ties count 1/2; at least 2 of each class."""
    s, y = _inputs(scores, labels)
    aucs, v10, v01 = _components(s, y)
    m, n = v10.shape[1], v01.shape[1]
    d10 = v10 - v10.mean(axis=1, keepdims=True)
    d01 = v01 - v01.mean(axis=1, keepdims=True)
    cov = (d10 @ d10.T) / ((m - 1) * m) + (d01 @ d01.T) / ((n - 1) * n)
    return aucs, (cov + cov.T) / 2


def _contrast(estimate: float, se: float, level: float) -> Contrast:
    """z, two-sided p and the ``level`` interval of ``estimate`` with standard error ``se`` (conventions for 0)."""
    if se > 0:
        z = estimate / se
        p = float(2 * stats.norm.sf(abs(z)))
    else:
        z = 0.0 if estimate == 0 else math.copysign(math.inf, estimate)
        p = 1.0 if estimate == 0 else 0.0
    half = float(stats.norm.ppf(0.5 + level / 2)) * se
    return Contrast(estimate=estimate, se=se, z=z, p=p, low=estimate - half, high=estimate + half)


def delong_contrast(scores: Any, labels: Any, weights: Any, level: float = 0.95) -> Contrast:
    """The test of w · AUC = 0 for a contrast ``weights`` w (k,) over the k correlated AUROCs of ``scores``
    (k, n) on ``labels`` (n,) (DeLong et al. 1988: a contrast L theta has variance L S L^T). se = sqrt(w S w^T),
    computed as the DeLong variance of the contrast's own structural components w V10 and w V01; two-sided p
    and a ``level`` normal interval. ValueError for weights not of shape (k,), not finite or all zero."""
    if not 0 < level < 1:
        raise ValueError(f"level: expected 0 < level < 1, got {level}")
    s, y = _inputs(scores, labels)
    w = np.asarray(to_numpy(weights), dtype=np.float64)
    if w.shape != (s.shape[0],):
        raise ValueError(f"weights shape {tuple(w.shape)} does not match the {s.shape[0]} score vector(s)")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights: not all finite")
    if not np.any(w):
        raise ValueError("weights: all zero")
    aucs, v10, v01 = _components(s, y)
    c10, c01 = _weighted_sum(w, v10), _weighted_sum(w, v01)
    # Shifted by a sample, so that constant components give a variance of exactly 0.
    var = float(np.var(c10 - c10[0], ddof=1)) / c10.size + float(np.var(c01 - c01[0], ddof=1)) / c01.size
    return _contrast(float(_weighted_sum(w, aucs)), math.sqrt(var), level)


def delong_test(a: Any, b: Any, labels: Any, level: float = 0.95) -> Contrast:
    """Two classifiers' scores ``a`` and ``b`` (n,) on the same items: the contrast (1, -1), i.e. the test of
    AUC(a) = AUC(b); the estimate is AUC(a) - AUC(b)."""
    a, b = as_scores(a, "a"), as_scores(b, "b")
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a shape {tuple(a.shape)} and b shape {tuple(b.shape)}: expected two vectors (n,)")
    return delong_contrast(np.stack([a, b]), labels, np.array([1.0, -1.0]), level)

"""Which differences in a results table are real: confidence intervals over test images, paired tests between
methods on the same images, and rank statistics across data sets -- computed with maintained libraries.

Inputs are per-image results (:mod:`oadbench.per_image`). A *cell* is ``{label: [PerImage of each seed]}``: one
configuration's runs on one data set, or on several for a mean row (``label`` names the data set; a continual
run's tables hold several categories). Images are matched by (category, id) and a run's value is the mean over
the categories its tables hold (a continual run's final metric); a cell's value is the mean over its labels of
the mean over seeds. A cell uses the images every one of a label's tables has (all of them for holdout splits
and prequential pools, which do not depend on the seed; fewer where a contaminated stream moved different
anomalies into training per seed).

- :func:`bootstrap_ci`: a percentile bootstrap (``scipy.stats.bootstrap``) of the cell's value -- the mean over
  categories of the mean over seeds of the metric. Each category's normal and anomalous images are resampled
  separately (one bootstrap sample each: stratified, so every resample has both classes), the same resample for
  every seed (the seeds share the images). The seeds are not resampled (three are too few): the interval is the
  test-image uncertainty of these runs' mean; their seed-to-seed spread is the ± std beside it. Percentile, not
  BCa: BCa is undefined at the AUROC = 1 the easy categories reach. ``image_auroc``: midrank AUROC (exact with
  ties); ``aupimo``: the mean AUPIMO of the anomalous images.
- :func:`paired_test`: is method A's value above B's on the same images? ``image_auroc``: DeLong's test of the
  difference of seed-mean AUROCs (all seeds of both methods as correlated AUROCs on the shared images,
  :func:`oadbench.delong.delong_contrast`; over several categories, the mean of the categories' differences with
  the variance of a mean of independent estimates -- disjoint test images); ``aupimo``: Wilcoxon signed-rank
  (``scipy.stats.wilcoxon``) over the anomalous images of the difference of their seed-mean AUPIMOs, as Bertoldo
  et al. compare models.
- :func:`top_group`: per data set, the best method and the methods not significantly below it (one-sided tests
  against the best, Holm-corrected with ``statsmodels``).
- :func:`rank_summary`: across data sets (blocks; seeds averaged first -- the seeds of a data set share its test
  set and are not independent blocks, Demšar 2006): average ranks (``scipy.stats.rankdata``), the Friedman test
  (``scipy.stats.friedmanchisquare``) and Nemenyi's post-hoc p-values (``scikit_posthocs.posthoc_nemenyi_friedman``)
  for the critical-difference diagram (``scikit_posthocs.critical_difference_diagram``).

scikit-posthocs rather than autorank: it exposes each step (post-hoc p-value matrices with the usual corrections,
the diagram drawn from any such matrix) on the pandas frames oadbench already builds, and adds only statsmodels;
autorank wraps the same tests behind one automatic choice of test (by normality checks) that a table must not
make silently, and brings more dependencies.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from oadbench.delong import MIN_PER_CLASS, delong_contrast
from oadbench.errors import DataError
from oadbench.per_image import PerImage

CI_METRICS = ("image_auroc", "aupimo")
LEVEL = 0.95
ALPHA = 0.05
N_RESAMPLES = 2000
RNG_SEED = 0  # the bootstrap's generator: the same records give the same interval, byte for byte

Cell = Mapping[str, Sequence[PerImage]]  # data set label -> one per-image table per seed


def _keys(table: PerImage) -> dict[tuple[str, str], int]:
    keys = {}
    for row, key in enumerate(zip(table["category"], table["id"], strict=True)):
        if key in keys:
            raise DataError(f"per-image results list image {key[1]} of {key[0]} twice")
        keys[key] = row
    return keys


def shared_rows(tables: Sequence[PerImage], category: str) -> tuple[list[tuple[str, str]], list[np.ndarray]]:
    """The (category, id) keys of ``category`` that every table has, sorted, and each table's rows of them."""
    maps = [_keys(t) for t in tables]
    common = sorted(k for k in maps[0] if k[0] == category and all(k in m for m in maps[1:]))
    return common, [np.array([m[k] for k in common], dtype=np.int64) for m in maps]


@dataclass(frozen=True)
class Aligned:
    """One category of one or more cells on their shared images: labels (n,), scores (k, n) and AUPIMO (k, n)
    of the k tables (seeds, of every cell aligned)."""

    labels: np.ndarray
    scores: np.ndarray
    aupimo: np.ndarray


def categories(tables: Sequence[PerImage]) -> list[str]:
    """The categories every one of ``tables`` holds, sorted."""
    sets = [set(t["category"].tolist()) for t in tables]
    return sorted(set.intersection(*sets)) if sets else []


def align(tables: Sequence[PerImage], category: str) -> Aligned:
    keys, rows = shared_rows(tables, category)
    labels = tables[0]["label"][rows[0]] if keys else np.zeros(0, dtype=np.int64)
    for t, r in zip(tables[1:], rows[1:], strict=True):
        if not np.array_equal(t["label"][r], labels):
            raise DataError(f"per-image results of {category} disagree on an image's label")
    scores = np.stack([t["score"][r] for t, r in zip(tables, rows, strict=True)]) if keys else np.zeros((0, 0))
    aupimo = np.stack([t["aupimo"][r] if "aupimo" in t.columns else np.full(len(r), np.nan)
                       for t, r in zip(tables, rows, strict=True)]) if keys else np.zeros((0, 0))
    return Aligned(labels, scores, aupimo)


class ResampledAUROC:
    """The midrank AUROC of each seed's scores on resamples (by index, with replacement) of fixed normal and
    anomalous images, without ranking each resample: each normal score is sorted once per seed, so a resample's
    Mann-Whitney count is a cumulative sum of its normal images' multiplicities read at every anomalous score's
    sorted position (O(n) per resample instead of a sort). The count is an integer (twice the U statistic), so the
    value is the same float as the midrank (Mann-Whitney U / (n_normal n_anomalous)) AUROC of the resample."""

    def __init__(self, normal: np.ndarray, anomalous: np.ndarray):  # (seeds, n_normal), (seeds, n_anomalous)
        self.order = np.argsort(normal, axis=1, kind="stable")
        ordered = np.take_along_axis(normal, self.order, axis=1)
        self.below = np.stack([np.searchsorted(o, a, side="left") for o, a in zip(ordered, anomalous, strict=True)])
        self.upto = np.stack([np.searchsorted(o, a, side="right") for o, a in zip(ordered, anomalous, strict=True)])
        self.n_normal = normal.shape[1]

    def __call__(self, idx0: np.ndarray, idx1: np.ndarray) -> np.ndarray:
        """AUROC per seed of the resamples ``idx0`` (..., m0) of the normal and ``idx1`` (..., m1) of the
        anomalous images: an array (seeds, ...)."""
        lead = idx0.shape[:-1]
        i0, i1 = idx0.reshape(-1, idx0.shape[-1]), idx1.reshape(-1, idx1.shape[-1])
        b, n = len(i0), self.n_normal
        counts = np.bincount((i0 + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        rows = np.arange(b)[:, None]
        out = np.empty((len(self.order), b))
        cum = np.zeros((b, n + 1), dtype=np.int64)  # column 0 stays 0; the rest is rewritten per seed
        for s, order in enumerate(self.order):
            np.cumsum(counts[:, order], axis=1, out=cum[:, 1:])
            twice_u = (cum[rows, self.below[s][i1]] + cum[rows, self.upto[s][i1]]).sum(-1)
            out[s] = twice_u / (2 * i0.shape[-1] * i1.shape[-1])
        return out.reshape(len(self.order), *lead)


def bootstrap_ci(cell: Cell, metric: str, level: float = LEVEL, n_resamples: int = N_RESAMPLES
                 ) -> tuple[float, float] | None:
    """The percentile-bootstrap interval of the cell's value (module docstring), or None where it is undefined
    (a category without normal or anomalous images, or without AUPIMO values)."""
    if metric not in CI_METRICS:
        raise ValueError(f"no confidence interval for metric {metric!r} (available: {', '.join(CI_METRICS)})")
    samples: list[np.ndarray] = []
    parts: list[tuple[str, float, Any]] = []  # per category: (kind, weight, AUROC of resamples | values)
    for label in sorted(cell):
        held = categories(cell[label])
        if not held:
            return None
        for category in held:
            a = align(cell[label], category)
            weight = 1 / (len(cell) * len(held))
            normal, anomalous = np.flatnonzero(a.labels == 0), np.flatnonzero(a.labels == 1)
            if metric == "image_auroc":
                if len(normal) < 1 or len(anomalous) < 1:
                    return None
                parts.append(("auroc", weight, ResampledAUROC(a.scores[:, normal], a.scores[:, anomalous])))
                samples += [np.arange(len(normal)), np.arange(len(anomalous))]
            else:
                values = a.aupimo[:, anomalous]
                values = values[:, np.isfinite(values).all(0)]
                if values.shape[1] < 2:
                    return None
                parts.append(("mean", weight, values))
                samples.append(np.arange(values.shape[1]))

    def statistic(*idx: np.ndarray, axis: int = -1) -> np.ndarray:
        out, i = [], 0
        for kind, weight, part in parts:
            if kind == "auroc":
                out.append(weight * part(idx[i], idx[i + 1]).mean(0))  # (seeds, ...) -> (...)
                i += 2
            else:
                out.append(weight * np.take(part, idx[i], axis=1).mean(-1).mean(0))
                i += 1
        return np.sum(out, axis=0)

    res = stats.bootstrap(tuple(samples), statistic, n_resamples=n_resamples, vectorized=True, paired=False,
                          confidence_level=level, method="percentile", rng=np.random.default_rng(RNG_SEED))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


@dataclass(frozen=True)
class Paired:
    """A paired comparison of A and B: the difference of their values (A - B) on the shared images, its interval,
    the p-value (``alternative``), the test's name and the images it used."""

    difference: float
    low: float | None
    high: float | None
    p: float
    test: str
    n_images: int


def paired_test(a: Sequence[PerImage], b: Sequence[PerImage], metric: str, alternative: str = "two-sided",
                level: float = LEVEL) -> Paired | None:
    """A against B (each one per-image table per seed, of one data set) on their shared images, over every
    category they all hold; None where the metric is undefined there. ``alternative``: ``two-sided`` or
    ``greater`` (A above B)."""
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative must be 'two-sided' or 'greater', got {alternative!r}")
    ka, kb = len(a), len(b)
    aligned = [align([*a, *b], c) for c in categories([*a, *b])]
    if metric == "image_auroc":
        weights = np.r_[np.full(ka, 1 / ka), np.full(kb, -1 / kb)]
        parts = [delong_contrast(al.scores, al.labels, weights, level=level) for al in aligned
                 if min(int((al.labels == 0).sum()), int((al.labels == 1).sum())) >= MIN_PER_CLASS]
        if not parts or len(parts) < len(aligned):
            return None  # DeLong's variance needs two images of each class in every category
        estimate = float(np.mean([c.estimate for c in parts]))
        se = math.sqrt(sum(c.se ** 2 for c in parts)) / len(parts)
        n = sum(len(al.labels) for al in aligned)
        if se == 0:
            p = 1.0 if estimate == 0 or alternative == "greater" and estimate < 0 else 0.0
            return Paired(estimate, estimate, estimate, p, "DeLong", n)
        z = estimate / se
        p = float(2 * stats.norm.sf(abs(z)) if alternative == "two-sided" else stats.norm.sf(z))
        half = float(stats.norm.ppf(0.5 + level / 2)) * se
        return Paired(estimate, estimate - half, estimate + half, p, "DeLong", n)
    if metric == "aupimo":
        diffs = []
        for al in aligned:
            values = al.aupimo[:, al.labels == 1]
            values = values[:, np.isfinite(values).all(0)]
            diffs.append(values[:ka].mean(0) - values[ka:].mean(0))
        diff = np.concatenate(diffs) if diffs else np.zeros(0)
        if len(diff) < 1:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-zero differences: scipy's p = 1, with a warning
            p = float(stats.wilcoxon(diff, alternative=alternative).pvalue)
        ci = stats.bootstrap((diff,), np.mean, n_resamples=N_RESAMPLES, confidence_level=level, method="percentile",
                             rng=np.random.default_rng(RNG_SEED)).confidence_interval if len(diff) > 1 else None
        low, high = (float(ci.low), float(ci.high)) if ci is not None else (None, None)
        if low is not None and not (math.isfinite(low) and math.isfinite(high)):
            low = high = float(diff.mean())  # every difference equal: a degenerate interval at that value
        return Paired(float(diff.mean()), low, high, 1.0 if math.isnan(p) else p, "Wilcoxon", len(diff))
    raise ValueError(f"no paired test for metric {metric!r} (available: image_auroc, aupimo)")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (``statsmodels.stats.multitest.multipletests``)."""
    if not pvalues:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(list(pvalues), alpha=ALPHA, method="holm")[1]]


def top_group(cells: Mapping[Any, Sequence[PerImage]], values: Mapping[Any, float | None], metric: str
              ) -> dict[Any, float | None]:
    """Methods (keys of ``cells``, each one per-image table per seed; keys of one kind, sortable) against the
    best by ``values`` (their cell values; None or NaN: not ranked): method -> the Holm-adjusted one-sided p-value
    of 'best above it' (None for the best itself). A method is in the top group when that value is at least
    :data:`ALPHA` (or it is the best)."""
    ranked = [m for m in cells if values.get(m) is not None and not math.isnan(values[m])]
    if not ranked:
        return {}
    best = max(ranked, key=lambda m: (values[m], m))
    others, raw = [], []
    for m in sorted(ranked):
        if m == best:
            continue
        result = paired_test(cells[best], cells[m], metric, alternative="greater")
        if result is not None:
            others.append(m)
            raw.append(result.p)
    return {best: None, **dict(zip(others, holm(raw), strict=True))}


@dataclass(frozen=True)
class Ranks:
    """Across data sets: each method's average rank (1 = best), the Friedman test and Nemenyi's pairwise p-values
    (a methods × methods frame), on ``blocks`` data sets."""

    average: dict[str, float]
    friedman_statistic: float | None
    friedman_p: float | None
    nemenyi: object | None  # pandas.DataFrame
    blocks: int


def rank_summary(table: Mapping[str, Mapping[str, float]]) -> Ranks:
    """``table``: data set -> method -> value (higher is better; seeds already averaged). Only data sets where
    every method has a value are blocks. Friedman and Nemenyi need three methods and two blocks."""
    import pandas as pd

    methods = sorted({m for row in table.values() for m in row})
    blocks = [d for d in sorted(table) if all(table[d].get(m) is not None for m in methods)]
    if not methods or not blocks:
        return Ranks({}, None, None, None, 0)
    data = np.array([[float(table[d][m]) for m in methods] for d in blocks])
    ranks = np.vstack([stats.rankdata(-row) for row in data])
    average = {m: float(r) for m, r in zip(methods, ranks.mean(0), strict=True)}
    if len(methods) < 3 or len(blocks) < 2:
        return Ranks(average, None, None, None, len(blocks))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fr = stats.friedmanchisquare(*data.T)
    import scikit_posthocs as sp

    nemenyi = sp.posthoc_nemenyi_friedman(pd.DataFrame(data, index=blocks, columns=methods))
    stat, p = float(fr.statistic), float(fr.pvalue)
    return Ranks(average, stat if math.isfinite(stat) else None, p if math.isfinite(p) else None, nemenyi,
                 len(blocks))

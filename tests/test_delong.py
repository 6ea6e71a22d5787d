"""Tests of oadbench.delong against independent references.

* AUCs: ``sklearn.metrics.roc_auc_score``; midranks: ``scipy.stats.rankdata``.
* Covariance: a direct O(m·n) computation of DeLong's structural components from their definition (DeLong,
  DeLong & Clarke-Pearson 1988, Biometrics 44:837), written here.
* A published example, checked once and not kept here: DeLong's test on pROC's ``aSAH`` data (113 patients)
  reproduces the Z, p and intervals of pROC's own test suite to 1e-15 (numbers in issue 30's closing note); pROC
  and its data are GPL-3.0-or-later, so the data is not part of this Apache-2.0 repository.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from oadbench.delong import Contrast, delong_contrast, delong_covariance, delong_test, midranks


def random_case(seed: int, k: int = 3, n: int = 60, levels: int | None = 6) -> tuple[np.ndarray, np.ndarray]:
    """k correlated score vectors on n items (with many ties when ``levels`` is set) and 0/1 labels."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=int)
    y[: max(2, n // 3)] = 1
    rng.shuffle(y)
    common = rng.normal(size=n) + y
    s = common + rng.normal(scale=rng.uniform(0.3, 2.0, size=(k, 1)), size=(k, n)) + rng.uniform(0, 1, (k, 1)) * y
    if levels is not None:
        s = np.round(s * levels / 4)
    return s, y


def direct_delong(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and S = S10/m + S01/n from the 1988 definitions: psi(X, Y) = 1, 1/2, 0 for Y <, ==, > X;
    V10(X_i) = mean_j psi, V01(Y_j) = mean_i psi; S10, S01 centred at theta with divisors m-1, n-1."""
    y = labels.astype(bool)
    k, m, n = scores.shape[0], int(y.sum()), int((~y).sum())
    theta = np.empty(k)
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    for r in range(k):
        x, yy = scores[r, y], scores[r, ~y]
        psi = (x[:, None] > yy[None, :]) + 0.5 * (x[:, None] == yy[None, :])
        theta[r] = psi.sum() / (m * n)
        v10[r] = psi.mean(axis=1)
        v01[r] = psi.mean(axis=0)
    s10 = np.empty((k, k))
    s01 = np.empty((k, k))
    for r in range(k):
        for t in range(k):
            s10[r, t] = np.sum((v10[r] - theta[r]) * (v10[t] - theta[t])) / (m - 1)
            s01[r, t] = np.sum((v01[r] - theta[r]) * (v01[t] - theta[t])) / (n - 1)
    return theta, s10 / m + s01 / n


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("seed", range(4))
def test_midranks_match_scipy(seed):
    s, _ = random_case(seed, k=4, n=37, levels=3 if seed % 2 else None)
    np.testing.assert_array_equal(midranks(s), rankdata(s, method="average", axis=1))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 2, 8])
def test_aucs_match_sklearn(seed, levels):
    s, y = random_case(seed, k=4, n=45, levels=levels)
    aucs, _ = delong_covariance(s, y)
    np.testing.assert_allclose(aucs, [roc_auc_score(y, r) for r in s], rtol=0, atol=1e-14)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 3, 10])
def test_covariance_matches_direct_definition(seed, levels):
    s, y = random_case(seed, k=5, n=50 + seed, levels=levels)
    aucs, cov = delong_covariance(s, y)
    theta, expected = direct_delong(s, y)
    np.testing.assert_allclose(aucs, theta, rtol=0, atol=1e-14)
    np.testing.assert_allclose(cov, expected, rtol=1e-10, atol=1e-16)
    assert np.array_equal(cov, cov.T)


def test_float32_bool_and_torch_inputs():
    torch = pytest.importorskip("torch")
    s, y = random_case(11, k=2, n=40, levels=None)
    s32 = s.astype(np.float32)
    aucs, cov = delong_covariance(s32, y.astype(bool))
    theta, expected = direct_delong(s32.astype(np.float64), y)
    np.testing.assert_allclose(aucs, theta, atol=1e-14)
    np.testing.assert_allclose(cov, expected, rtol=1e-10)
    assert delong_test(torch.from_numpy(s32[0]), torch.from_numpy(s32[1]), torch.from_numpy(y)) == delong_test(
        s32[0], s32[1], y)


@pytest.mark.parametrize("seed", range(4))
def test_contrast_variance_is_w_s_wt(seed):
    s, y = random_case(seed, k=6, n=70, levels=5)
    w = np.array([1, 1, 1, -1, -1, -1]) / 3
    aucs, cov = delong_covariance(s, y)
    c = delong_contrast(s, y, w, level=0.9)
    assert c.estimate == pytest.approx(float(w @ aucs), abs=1e-14)
    assert c.se == pytest.approx(math.sqrt(w @ cov @ w), rel=1e-10)
    assert c.z == pytest.approx(c.estimate / c.se, rel=1e-12)
    assert c.p == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(c.z) / math.sqrt(2)))), abs=1e-12)
    half = 1.6448536269514722 * c.se  # 90 % two-sided normal quantile
    assert (c.low, c.high) == pytest.approx((c.estimate - half, c.estimate + half), abs=1e-14)


def test_one_auc_interval_and_two_vector_test_are_contrasts():
    s, y = random_case(5, k=2, n=80, levels=None)
    aucs, cov = delong_covariance(s, y)
    one = delong_contrast(s[:1], y, [1.0])
    assert one.estimate == pytest.approx(aucs[0], abs=1e-15)
    assert one.se == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-12)
    single, single_cov = delong_covariance(s[0], y)  # 1-D scores: one classifier
    assert single_cov.shape == (1, 1) and single_cov[0, 0] == pytest.approx(cov[0, 0], rel=1e-12)
    pair = delong_test(s[0], s[1], y)
    assert pair == delong_contrast(s, y, [1.0, -1.0])
    assert pair.estimate == pytest.approx(aucs[0] - aucs[1], abs=1e-15)


# ----------------------------------------------------------------------------- conventions and invariances


def test_identical_scores_give_estimate_zero_and_p_one():
    s, y = random_case(3, k=1, n=50, levels=4)
    c = delong_test(s[0], s[0].copy(), y)
    assert c == Contrast(estimate=0.0, se=0.0, z=0.0, p=1.0, low=0.0, high=0.0)


def test_identical_methods_over_seeds_give_exactly_zero():
    s, y = random_case(4, k=3, n=90, levels=None)
    w = np.array([1, 1, 1, -1, -1, -1]) / 3
    c = delong_contrast(np.concatenate([s, s[[2, 0, 1]]]), y, w)  # method B: A's seeds in another order
    assert (c.estimate, c.se, c.z, c.p) == (0.0, 0.0, 0.0, 1.0)


def test_zero_se_with_nonzero_estimate_gives_p_zero():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    perfect = y * 2.0 + 1.0  # AUC 1: every component constant
    constant = np.full(y.size, 7.0)  # AUC 1/2: every component 1/2
    c = delong_test(perfect, constant, y)
    assert (c.estimate, c.se, c.z, c.p, c.low, c.high) == (0.5, 0.0, math.inf, 0.0, 0.5, 0.5)
    r = delong_test(constant, perfect, y)
    assert (r.estimate, r.z, r.p) == (-0.5, -math.inf, 0.0)


@pytest.mark.parametrize("seed", range(4))
def test_invariant_under_strictly_increasing_transforms(seed):
    s, y = random_case(seed, k=4, n=64, levels=5)  # integer-valued: the transforms below keep order and ties
    w = np.array([0.5, 0.5, -1.0, 0.0])
    base = delong_contrast(s, y, w)
    base_aucs, base_cov = delong_covariance(s, y)
    for f in (lambda x: 3 * x - 7, lambda x: x**3, np.exp, lambda x: np.arctan(x / 10)):
        t = f(s)
        assert np.array_equal(rankdata(t, axis=1), rankdata(s, axis=1))
        assert delong_contrast(t, y, w) == base
        aucs, cov = delong_covariance(t, y)
        assert np.array_equal(aucs, base_aucs) and np.array_equal(cov, base_cov)
    # per-classifier transforms too (each row its own increasing map)
    mixed = np.stack([s[0] * 2, np.exp(s[1]), s[2] - 100, s[3] ** 3])
    assert delong_contrast(mixed, y, w) == base


def test_p_value_symmetry_and_level():
    s, y = random_case(8, k=2, n=60, levels=None)
    c95 = delong_test(s[0], s[1], y)
    c99 = delong_test(s[0], s[1], y, level=0.99)
    assert (c99.estimate, c99.se, c99.z, c99.p) == (c95.estimate, c95.se, c95.z, c95.p)
    assert c99.low < c95.low < c95.estimate < c95.high < c99.high
    # the 1 - p interval just touches 0
    edge = delong_test(s[0], s[1], y, level=1 - c95.p)
    assert min(abs(edge.low), abs(edge.high)) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("labels", "missing"),
    [
        ([0, 0, 0, 0, 0, 0], "0 positive"),
        ([1, 1, 1, 1, 1, 1], "0 negative"),
        ([1, 0, 0, 0, 0, 0], "1 positive"),
        ([1, 1, 1, 1, 1, 0], "1 negative"),
    ],
)
def test_missing_class_raises_naming_it(labels, missing):
    s = np.arange(12.0).reshape(2, 6)
    for call in (lambda: delong_covariance(s, labels), lambda: delong_test(s[0], s[1], labels),
                 lambda: delong_contrast(s, labels, [1, -1])):
        with pytest.raises(ValueError, match=missing):
            call()


def test_invalid_inputs_raise():
    s = np.arange(12.0).reshape(2, 6)
    y = [0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="only 0/1"):
        delong_covariance(s, [0, 1, 2, 1, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        delong_covariance(np.where(s == 3, np.nan, s), y)
    with pytest.raises(ValueError, match="does not match"):
        delong_covariance(s, y[:5])
    with pytest.raises(ValueError, match=r"expected shape \(k, n\)"):
        delong_covariance(s[None], y)
    with pytest.raises(ValueError, match="weights shape"):
        delong_contrast(s, y, [1, -1, 0])
    with pytest.raises(ValueError, match="all zero"):
        delong_contrast(s, y, [0, 0])
    with pytest.raises(ValueError, match="finite"):
        delong_contrast(s, y, [1, np.nan])
    with pytest.raises(ValueError, match="level"):
        delong_contrast(s, y, [1, -1], level=1.0)
    with pytest.raises(ValueError, match="expected two vectors"):
        delong_test(s[0], s[1, :5], y)

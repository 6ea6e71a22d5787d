"""Tests of oadbench.metrics.aupimo: hand-computed examples, extreme detectors, NaN and error cases, invariance
under increasing transforms, and a brute-force reference (one curve point per distinct threshold of all the
pixels involved, FPR and TPR counted directly, trapezoids in log10 FPR cut at the bounds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oadbench.metrics import aupimo
from tests.devices import DEVICES

# --- hand example --------------------------------------------------------------------------------------------
# One normal 10x10 image: 1 pixel at 9, 9 pixels at 5, 90 pixels at 0, so the shared FPR steps are
# FPR(9) = 1/100, FPR(5) = 10/100, FPR(0) = 1: log10 FPR = -2, -1, 0.
# Image 1: mask pixels scored 10, 7, 5, -1 (P = 4); its 96 other pixels score 100 and must be ignored.
#   For FPR in (0.01, 0.1) the threshold lies in (5, 9]: TPR = #{10, 7} / 4 = 1/2 just above 5, and at t = 5
#   TPR = #{10, 7, 5} / 4 = 3/4 (the mask pixel tied with the normal ones at 5). So the curve goes from
#   (-2, 1/2) to (-1, 3/4), a straight line in log10 FPR, then stays at 3/4 from -1 to 0 (no mask pixel at 0).
#   bounds (0.01, 1): area = 1 * (1/2 + 3/4) / 2 + 1 * 3/4 = 0.625 + 0.75 = 1.375, / log10(1/0.01) = 2
#     -> 0.6875
#   bounds (10^-1.5, 10^-0.5): TPR at -1.5 is (1/2 + 3/4) / 2 = 5/8; area = 0.5 * (5/8 + 3/4) / 2 + 0.5 * 3/4
#     = 0.34375 + 0.375 = 0.71875, / log10(10^-0.5 / 10^-1.5) = 1 -> 0.71875
# Image 2: 2 mask pixels, both at 5 (tied with the normal pixels at 5); TPR = 0 just above 5, 1 from 5 down.
#   bounds (0.01, 1): (0 + 1) / 2 + 1 = 1.5, / 2 -> 0.75
#   bounds (10^-1.5, 10^-0.5): TPR at -1.5 is 1/2; 0.5 * (1/2 + 1) / 2 + 0.5 * 1 = 0.875, / 1 -> 0.875
# Image 3: normal (label 0). Image 4: anomalous with an empty mask. Both NaN.


def hand_example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    maps = np.zeros((4, 10, 10))
    masks = np.zeros((4, 10, 10), dtype=bool)
    maps[0].flat[0] = 9
    maps[0].flat[1:10] = 5
    maps[1] = 100
    masks[1].flat[:4] = True
    maps[1].flat[:4] = [10, 7, 5, -1]
    maps[2] = -3
    masks[2].flat[:2] = True
    maps[2].flat[:2] = 5
    maps[3] = 50  # anomalous, empty mask: contributes nothing to the FPR
    return maps, masks, np.array([0, 1, 1, 1])


def assert_scores(got: np.ndarray, want: list[float]) -> None:
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.array(want, dtype=np.float64), rtol=0, atol=1e-12)


def test_hand_example_wide_bounds() -> None:
    maps, masks, labels = hand_example()
    got = aupimo(maps, masks, labels, fpr_bounds=(0.01, 1.0))
    assert_scores(got, [math.nan, 0.6875, 0.75, math.nan])


def test_hand_example_interpolated_bounds() -> None:
    maps, masks, labels = hand_example()
    got = aupimo(maps, masks, labels, fpr_bounds=(10**-1.5, 10**-0.5))
    assert_scores(got, [math.nan, 0.71875, 0.875, math.nan])


def test_hand_example_default_bounds() -> None:
    # 100 000 normal pixels in two images: 1 at 10 (FPR 1e-5), 9 at 9 (FPR 1e-4), the rest at 0.
    # Mask scores 9.5, 9.5, 9, 1: TPR just above 9 is 2/4, at 9 it is 3/4; a straight line in log10 FPR from
    # (-5, 1/2) to (-4, 3/4): area (1/2 + 3/4) / 2 = 0.625, / log10(1e-4 / 1e-5) = 1 -> 0.625.
    # The second anomalous image's only mask pixel scores 9.9: TPR 1 over the whole range -> 1.
    maps = np.zeros((4, 250, 200), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    maps[0, 0, 0] = 10
    maps[1, 0, :9] = 9
    masks[2, 5, 5:9] = True
    maps[2, 5, 5:9] = [9.5, 9.5, 9, 1]
    masks[3, 7, 7] = True
    maps[3, 7, 7] = 9.9
    got = aupimo(maps, masks, [0, 0, 1, 1])
    assert_scores(got, [math.nan, math.nan, 0.625, 1.0])


# --- extreme detectors, NaN, errors ------------------------------------------------------------------------------


def random_set(rng: np.random.Generator, n_normal: int, n_anomalous: int, size: int = 256) -> tuple:
    """Normal maps uniform in [0, 1), anomalous images with a random rectangle as mask."""
    n = n_normal + n_anomalous
    maps = rng.random((n, size, size))
    masks = np.zeros(maps.shape, dtype=bool)
    for i in range(n_normal, n):
        h, w = rng.integers(1, size // 4 + 1, 2)
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        masks[i, y : y + h, x : x + w] = True
    labels = np.r_[np.zeros(n_normal, int), np.ones(n_anomalous, int)]
    return maps, masks, labels


def test_perfect_and_worst_detectors() -> None:
    rng = np.random.default_rng(0)
    maps, masks, labels = random_set(rng, 2, 3)  # 131 072 normal pixels, enough for FPR 1e-5
    perfect = maps.copy()
    perfect[masks] = 1 + rng.random(int(masks.sum()))  # every mask pixel above every normal pixel
    assert_scores(aupimo(perfect, masks, labels), [math.nan, math.nan, 1.0, 1.0, 1.0])
    worst = maps.copy()
    worst[masks] = -rng.random(int(masks.sum()))  # every mask pixel below every normal pixel
    assert_scores(aupimo(worst, masks, labels), [math.nan, math.nan, 0.0, 0.0, 0.0])


def test_nan_for_normal_images_and_empty_masks() -> None:
    rng = np.random.default_rng(1)
    maps, masks, labels = random_set(rng, 2, 2, size=8)
    masks[3] = False
    got = aupimo(maps, masks, labels, fpr_bounds=(0.1, 0.5))
    assert np.isnan(got[[0, 1, 3]]).all()
    assert 0 <= got[2] <= 1
    # no anomalous image at all: all NaN, no error
    assert np.isnan(aupimo(maps[:2], masks[:2], labels[:2], fpr_bounds=(0.1, 0.5))).all()


def test_errors() -> None:
    rng = np.random.default_rng(2)
    maps, masks, labels = random_set(rng, 2, 2, size=8)
    with pytest.raises(ValueError, match="at least one normal image"):
        aupimo(maps, masks, np.ones(4, int), fpr_bounds=(0.1, 0.5))
    with pytest.raises(ValueError, match="must have empty masks; image 0"):
        aupimo(maps, masks | (np.arange(4) == 0)[:, None, None], labels, fpr_bounds=(0.1, 0.5))
    with pytest.raises(ValueError, match="labels has 3 entries for 4 images"):
        aupimo(maps, masks, labels[:3], fpr_bounds=(0.1, 0.5))
    for bounds in [(0.5, 0.1), (0.0, 0.5), (0.1, 1.5), (0.2, 0.2)]:
        with pytest.raises(ValueError, match="fpr_bounds"):
            aupimo(maps, masks, labels, fpr_bounds=bounds)
    # 128 normal pixels: lowest non-zero FPR 1/128 > 1/200
    with pytest.raises(ValueError, match="too few normal pixels"):
        aupimo(maps, masks, labels, fpr_bounds=(1 / 200, 0.5))
    aupimo(maps, masks, labels, fpr_bounds=(1 / 128, 0.5))  # exactly reachable: fine
    # default bounds: 99 999 normal pixels are one too few, 100 000 are enough, unless the top two tie
    big = np.zeros((2, 1, 100_000))
    big[0, 0] = rng.random(100_000)
    big_masks = np.zeros(big.shape, dtype=bool)
    big_masks[1, 0, 0] = True
    aupimo(big, big_masks, [0, 1])
    with pytest.raises(ValueError, match="lowest non-zero FPR achievable is 1.00001e-05"):
        aupimo(big[:, :, 1:], big_masks[:, :, 1:], [0, 1])
    big[0, 0, :2] = 2.0
    with pytest.raises(ValueError, match=r"2 of 100000 normal pixels tie at the maximum"):
        aupimo(big, big_masks, [0, 1])


# --- invariance, devices, brute force ----------------------------------------------------------------------------


def ref_aupimo(maps: np.ndarray, masks: np.ndarray, labels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Straightforward AUPIMO: the curve of every distinct threshold, trapezoids in log10 FPR cut at the bounds."""
    neg = maps[labels == 0].ravel()
    out = np.full(len(maps), np.nan)
    x_lo, x_hi = math.log10(lo), math.log10(hi)
    for i in np.flatnonzero(labels):
        pos = maps[i][masks[i]]
        if pos.size == 0:
            continue
        points = []
        for t in sorted(set(neg.tolist()) | set(pos.tolist()), reverse=True):
            fpr = np.mean(neg >= t)
            if fpr > 0:
                points.append((math.log10(fpr), np.mean(pos >= t)))
        area = 0.0
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            a, b = max(x0, x_lo), min(x1, x_hi)
            if b > a:
                ya = y0 + (y1 - y0) * (a - x0) / (x1 - x0)
                yb = y0 + (y1 - y0) * (b - x0) / (x1 - x0)
                area += (b - a) * (ya + yb) / 2
        out[i] = area / (x_hi - x_lo)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    maps, masks, labels = random_set(rng, 3, 4, size=12)
    maps = np.round(maps * 30) / 30  # many ties within and across normal and anomalous pixels
    maps[masks] += 0.2 * rng.integers(0, 3, int(masks.sum())) / 3
    lo, hi = sorted(rng.uniform(0.05, 0.6, 2))  # 432 normal pixels, about 7 tied at the maximum
    got = aupimo(maps, masks, labels, fpr_bounds=(lo, hi))
    np.testing.assert_allclose(got, ref_aupimo(maps, masks, labels, lo, hi), rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_invariant_under_increasing_transform(device: str) -> None:
    rng = np.random.default_rng(5)
    maps, masks, labels = random_set(rng, 2, 4, size=16)
    # dyadic scores, exact in float32: many ties, kept as ties by the transform and the cast
    maps = np.floor(maps * 128) / 128
    maps[masks] += rng.integers(0, 64, int(masks.sum())) / 256
    bounds = (0.05, 0.2)
    base = aupimo(maps, masks, labels, fpr_bounds=bounds)
    assert np.isfinite(base[2:]).all() and (base[2:] > 0).all() and (base[2:] < 1).all()
    transformed = torch.tensor(np.exp(3 * maps) + maps**3, device=device)
    got = aupimo(transformed, torch.tensor(masks, device=device), torch.tensor(labels, device=device), bounds)
    np.testing.assert_allclose(got, base, rtol=0, atol=1e-12)
    got32 = aupimo(torch.tensor(maps, dtype=torch.float32, device=device), masks, labels, bounds)
    np.testing.assert_allclose(got32, base, rtol=0, atol=1e-12)

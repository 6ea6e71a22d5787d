"""Tests of oadbench.metrics against independent, straightforward computations.

References: scikit-learn for AUROC / AP / F1-max, and a brute-force AUPRO written here (own 8-connected
flood fill, one loop iteration per distinct threshold, trapezoid cut at the FPR limit), on random inputs
with many ties.
"""

from __future__ import annotations

import math
import re
import tracemalloc
from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from oadbench.metrics import (
    _ranking,
    area_under_learning_curve,
    aupro,
    final_value,
    image_ap,
    image_auroc,
    image_f1max,
    image_metrics,
    images_to_fraction,
    pixel_ap,
    pixel_auroc,
    pixel_metrics,
    summarise_curve,
)

SEEDS = range(6)
LIMITS = (0.01, 0.05, 0.1, 0.3, 0.5, 1.0)
Pair = tuple[np.ndarray, np.ndarray]


# --- independent references ---------------------------------------------------------------------------------


def ref_f1max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return float(f1.max())


def ref_regions(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a 2-D bool mask, by breadth-first flood fill."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or seen[y, x]:
                continue
            region, queue = [], deque([(y, x)])
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                region.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            regions.append(region)
    return regions


def ref_trapezoid_cut(fprs: list[float], pros: list[float], limit: float) -> float:
    """Trapezoid area of the polyline up to x = limit, last segment interpolated (MVTec AD style)."""
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < limit:
                y = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                area += (limit - x0) * (y0 + y) / 2
            break
    return area


def ref_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Brute force: one curve point per distinct score, regions from :func:`ref_regions`."""
    regions = []  # (image index, list of pixels)
    for i in range(len(maps)):
        regions += [(i, r) for r in ref_regions(masks[i])]
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        fprs.append(float(np.mean(normal >= t)))
        overlaps = [np.mean([maps[i][p] >= t for p in region]) for i, region in regions]
        pros.append(float(np.mean(overlaps)))
    return ref_trapezoid_cut(fprs, pros, limit) / limit


def ref_aupro_vectorised(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Same definition for larger inputs with few distinct scores (scipy labels, one pass per threshold)."""
    structure = np.ones((3, 3), dtype=int)
    region_ids = np.zeros(masks.shape, dtype=np.int64)
    total = 0
    for i in range(len(masks)):
        lab, n = ndimage.label(masks[i], structure=structure)
        region_ids[i][lab > 0] = lab[lab > 0] + total
        total += n
    sizes = np.bincount(region_ids[masks], minlength=total + 1)[1:]
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(float(np.mean(normal >= t)))
        hits = np.bincount(region_ids[masks & (maps >= t)], minlength=total + 1)[1:]
        pros.append(float(np.mean(hits / sizes)))
    return ref_trapezoid_cut(fprs, pros, limit) / limit


# --- data ---------------------------------------------------------------------------------------------------


def tied_image_data(seed: int, n: int = 300, levels: int = 5) -> Pair:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    labels[:2] = [True, False]
    scores = rng.integers(0, levels, n).astype(np.float64) + labels * rng.integers(0, 2, n)
    return scores, labels


def small_maps(seed: int, levels: int | None = 4, n: int = 6, size: int = 16) -> Pair:
    """Maps with ties (``levels`` score levels; None for continuous) and sparse masks with many regions,
    among them pixels that touch only diagonally; one image is fully normal."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, size, size)) < 0.12
    masks[0, 2, 2] = masks[0, 3, 3] = True  # a diagonal pair: one region under 8-connectivity
    masks[0, 2, 3] = masks[0, 3, 2] = False
    masks[-1] = False
    if levels is None:
        maps = rng.random((n, size, size)).astype(np.float32) + 0.3 * masks
    else:
        maps = rng.integers(0, levels, (n, size, size)) + masks * rng.integers(0, 2, (n, size, size))
        maps = maps.astype(np.float32)
    return maps, masks


def blob_maps(n: int, size: int, seed: int = 0, levels: int | None = None) -> Pair:
    """float32 maps with ~5% anomalous pixels in a few discs per image (as in the benchmark)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        k = int(rng.integers(2, 5))
        for _ in range(k):
            r = np.sqrt(0.05 * size * size / (k * np.pi)) * rng.uniform(0.6, 1.3)
            cy, cx = rng.uniform(0, size, 2)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    maps = rng.standard_normal((n, size, size), dtype=np.float32) + 2 * masks
    if levels is not None:
        maps = np.round(maps * levels / 4).astype(np.float32)
    return maps, masks


# --- image level --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_image_metrics_match_sklearn_with_ties(seed: int) -> None:
    scores, labels = tied_image_data(seed)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_ap(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert image_f1max(scores, labels) == pytest.approx(ref_f1max(labels, scores), abs=1e-12)
    together = image_metrics(scores, labels)
    assert together == {
        "image_auroc": image_auroc(scores, labels),
        "image_ap": image_ap(scores, labels),
        "image_f1max": image_f1max(scores, labels),
    }


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([-1.0, 0.0, 0.25, 0.5, 2.0, 1e9]) | st.floats(-5, 5), st.booleans()),
        min_size=2,
        max_size=40,
    )
)
def test_image_metrics_property_vs_sklearn(pairs: list[tuple[float, bool]]) -> None:
    scores = np.array([p[0] for p in pairs])
    labels = np.array([p[1] for p in pairs])
    if labels.all() or not labels.any():
        assert all(math.isnan(v) for v in image_metrics(scores, labels).values())
        return
    got = image_metrics(scores, labels)
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert got["image_f1max"] == pytest.approx(ref_f1max(labels, scores), abs=1e-12)


def test_image_perfect_and_inverted() -> None:
    labels = np.array([0, 1, 0, 1, 1, 0, 0])
    scores = labels * 2.0 + 0.1 * np.arange(7)  # every anomalous score above every normal one
    assert image_metrics(scores, labels) == {"image_auroc": 1.0, "image_ap": 1.0, "image_f1max": 1.0}
    assert image_auroc(-scores, labels) == 0.0


def test_image_hand_computed() -> None:
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, tie, 0.5>0.1) -> U = 3.5 of 4
    scores, labels = [0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]
    assert image_auroc(scores, labels) == pytest.approx(3.5 / 4)
    # thresholds 0.9: R=1/2, P=1; 0.5: R=1, P=2/3 -> AP = 1/2 + 1/2 * 2/3
    assert image_ap(scores, labels) == pytest.approx(0.5 + 1 / 3)
    # F1 at 0.9: 2/(2+0+1) = 2/3; at 0.5: 4/(4+1+0) = 4/5
    assert image_f1max(scores, labels) == pytest.approx(0.8)


def test_image_degenerate_is_nan() -> None:
    for labels in ([0, 0, 0], [1, 1, 1]):
        for value in image_metrics([0.1, 0.2, 0.3], labels).values():
            assert math.isnan(value)
    assert math.isnan(image_auroc(np.zeros(0), np.zeros(0)))


def test_image_torch_equals_numpy() -> None:
    scores, labels = tied_image_data(3)
    want = image_metrics(scores, labels)
    assert image_metrics(torch.from_numpy(scores), torch.from_numpy(labels)) == want
    assert image_metrics(torch.from_numpy(scores).float(), torch.from_numpy(labels).long()) == image_metrics(
        scores.astype(np.float32), labels.astype(np.int64)
    )


def test_image_input_errors() -> None:
    with pytest.raises(ValueError, match=re.escape("(4,)") + ".*" + re.escape("(3,)")):
        image_auroc(np.zeros(4), np.zeros(3))
    with pytest.raises(ValueError, match="0/1"):
        image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0.1, math.nan], [0, 1])
    with pytest.raises(ValueError, match="unknown metric"):
        image_metrics([0.1, 0.2], [0, 1], names=("pixel_auroc",))


# --- pixel level --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("levels", [3, 6, None])
def test_pixel_metrics_match_references(seed: int, levels: int | None) -> None:
    maps, masks = small_maps(seed, levels)
    got = pixel_metrics(maps, masks)
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert got["aupro"] == pytest.approx(ref_aupro(maps, masks, 0.3), abs=1e-9)
    assert pixel_auroc(maps, masks) == got["pixel_auroc"]
    assert pixel_ap(maps, masks) == got["pixel_ap"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("limit", LIMITS)
def test_aupro_fpr_limits_match_brute_force(seed: int, limit: float) -> None:
    maps, masks = small_maps(seed, levels=5 if seed % 2 else None, n=4, size=12)
    want = ref_aupro(maps, masks, limit)
    # aupro alone sorts only the normal pixels above the limit; with the other metrics it sorts all
    assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(want, abs=1e-9)
    assert pixel_metrics(maps, masks, fpr_limit=limit)["aupro"] == pytest.approx(want, abs=1e-9)


def test_aupro_hand_computed_curves() -> None:
    # one region of two pixels scoring 0.35 and 0.05; normal pixels 0.1, 0.2, 0.3, 0.4.
    # curve: (0,0) (1/4,0) (1/4,1/2) (1/2,1/2) (3/4,1/2) (1,1/2) (1,1)
    maps = np.array([[[0.1, 0.2, 0.3], [0.4, 0.35, 0.05]]])
    masks = np.array([[[0, 0, 0], [0, 1, 1]]], dtype=bool)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.375)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.05 * 0.5 / 0.3)
    assert aupro(maps, masks, fpr_limit=0.25) == pytest.approx(0.0)
    # a tie between a normal and an anomalous pixel makes a diagonal: (0,0) -> (1/4, 1/2)
    maps = np.array([[[0.5, 0.1, 0.1], [0.1, 0.5, 0.0]]])
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.25 * 0.25 + 0.75 * 0.5)
    # cut inside the diagonal at 0.2: height 0.4 there, area 0.2 * 0.4 / 2
    assert aupro(maps, masks, fpr_limit=0.2) == pytest.approx(0.2 * 0.4 / 2 / 0.2)


def test_aupro_uses_8_connectivity() -> None:
    # anomalous pixels (0,0), (1,1), (1,2): one region under 8-connectivity (PRO at t=1 is 1/3);
    # under 4-connectivity two regions of sizes 1 and 2 would give (1 + 0) / 2.
    masks = np.zeros((1, 3, 3), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True
    maps = np.where(masks, 0.0, 0.5)
    maps[0, 0, 0] = 1.0
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(1 / 3)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(1 / 3)


@pytest.mark.parametrize("second", [[(0, 0), (0, 1)], [(2, 0), (2, 1)]])
def test_aupro_regions_do_not_span_images(second: list[tuple[int, int]]) -> None:
    # Anomalous pixel (2, 0) in image 0 and two pixels in image 1, either in its first row (adjacent if the
    # images were stacked vertically) or at the same position (adjacent if labelled as a 3-D volume).
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[0, 2, 0] = True
    for y, x in second:
        masks[1, y, x] = True
    maps = np.where(masks, 0.0, 0.5)
    maps[0, 2, 0] = 1.0  # two regions: PRO at t=1 is (1 + 0) / 2; one region would give 1/3
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.5)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(ref_aupro(maps, masks, 1.0))


def test_pixel_perfect_and_inverted() -> None:
    maps, masks = small_maps(1, levels=None)
    perfect = np.where(masks, 1.0 + maps, maps - 2.0).astype(np.float32)
    assert pixel_metrics(perfect, masks) == {"pixel_auroc": 1.0, "pixel_ap": 1.0, "aupro": 1.0}
    for limit in LIMITS:
        assert aupro(perfect, masks, fpr_limit=limit) == pytest.approx(1.0, abs=1e-12)
        assert aupro(perfect, masks, fpr_limit=limit) <= 1.0
    inverted = pixel_metrics(-perfect, masks)
    assert inverted["pixel_auroc"] == 0.0
    assert inverted["aupro"] == 0.0


def test_pixel_torch_equals_numpy() -> None:
    maps, masks = small_maps(2, levels=4)
    want = pixel_metrics(maps, masks)
    assert pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks)) == want
    assert pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks).to(torch.uint8)) == want
    assert aupro(torch.from_numpy(maps), torch.from_numpy(masks).float()) == want["aupro"]
    # a tensor that needs grad and a (H, W) single image
    t = torch.from_numpy(maps[0]).requires_grad_(True)
    assert pixel_metrics(t, masks[0]) == pixel_metrics(maps[0], masks[0])


def test_pixel_degenerate_is_nan() -> None:
    maps = np.random.default_rng(0).random((2, 5, 5))
    for masks in (np.zeros((2, 5, 5), bool), np.ones((2, 5, 5), bool)):
        result = pixel_metrics(maps, masks)
        assert set(result) == {"pixel_auroc", "pixel_ap", "aupro"}
        assert all(math.isnan(v) for v in result.values())
    assert math.isnan(aupro(np.zeros((0, 4, 4)), np.zeros((0, 4, 4), bool)))


def test_pixel_input_errors() -> None:
    with pytest.raises(ValueError, match=re.escape("(2, 4, 4)") + ".*" + re.escape("(2, 4, 5)")):
        pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.zeros((1, 2, 2)), np.eye(2, dtype=bool)[None], fpr_limit=0.0)
    with pytest.raises(ValueError, match="0/1"):
        pixel_auroc(np.zeros((1, 2, 2)), np.full((1, 2, 2), 255, np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        pixel_auroc(np.full((1, 2, 2), np.nan), np.eye(2, dtype=bool)[None])
    with pytest.raises(ValueError, match="unknown metric"):
        pixel_metrics(np.zeros((1, 2, 2)), np.eye(2, dtype=bool)[None], names=("auroc",))


@pytest.mark.parametrize("workers", [1, 3])
def test_chunked_sorting_matches_references(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """The threaded path (negatives sorted in independent chunks) gives the same exact counts."""
    monkeypatch.setattr(_ranking, "n_workers", lambda: workers)
    monkeypatch.setattr(_ranking, "_PARALLEL_MIN", 10)
    maps, masks = small_maps(4, levels=4)
    got = pixel_metrics(maps, masks)
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert got["aupro"] == pytest.approx(ref_aupro(maps, masks, 0.3), abs=1e-9)
    assert aupro(maps, masks, 0.1) == pytest.approx(ref_aupro(maps, masks, 0.1), abs=1e-9)
    scores, labels = tied_image_data(0)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_large_input_with_ties_matches_references() -> None:
    """More than 2**20 normal pixels (the real threaded path on a multi-core machine) with heavy ties."""
    maps, masks = blob_maps(20, 256, seed=5, levels=6)
    got = pixel_metrics(maps, masks, fpr_limit=0.2)
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert got["aupro"] == pytest.approx(ref_aupro_vectorised(maps, masks, 0.2), abs=1e-9)
    assert aupro(maps, masks, 0.2) == pytest.approx(got["aupro"], abs=1e-12)


def test_vectorised_reference_agrees_with_brute_force() -> None:
    maps, masks = small_maps(3, levels=4)
    assert ref_aupro_vectorised(maps, masks, 0.3) == pytest.approx(ref_aupro(maps, masks, 0.3), abs=1e-12)


def test_pixel_metrics_memory_bound() -> None:
    maps, masks = blob_maps(400, 256)
    tracemalloc.start()
    try:
        result = pixel_metrics(maps, masks)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * 2**30, f"peak {peak / 2**30:.2f} GiB"
    assert 0.5 < result["pixel_auroc"] <= 1.0
    assert 0.0 < result["aupro"] <= 1.0


# --- curve summaries ----------------------------------------------------------------------------------------


def test_curve_summaries_hand_made() -> None:
    observed = [10, 20, 30, 40]
    values = [0.5, 0.8, 0.96, 1.0]
    assert final_value(values) == 1.0
    assert area_under_learning_curve(values) == pytest.approx((0.5 + 0.8 + 0.96 + 1.0) / 4)
    assert images_to_fraction(observed, values) == 30
    assert images_to_fraction(observed, values, fraction=0.5) == 10
    assert images_to_fraction(observed, values, fraction=0.81) == 30
    assert summarise_curve(observed, values) == {
        "final": 1.0,
        "aulc": pytest.approx(0.815),
        "images_to_95": 30,
    }


def test_curve_summaries_nan_and_non_monotone() -> None:
    # NaN checkpoints are ignored by the mean and never qualify
    assert area_under_learning_curve([math.nan, 0.5, 1.0]) == pytest.approx(0.75)
    assert images_to_fraction([1, 2, 3], [math.nan, 0.5, 1.0]) == 3
    # an early peak counts: the first checkpoint already reaches 95% of the final value
    assert images_to_fraction([100, 200, 300], [0.97, 0.6, 1.0]) == 100
    # final NaN: no reference value
    summary = summarise_curve([1, 2], [0.9, math.nan])
    assert math.isnan(summary["final"])
    assert summary["aulc"] == pytest.approx(0.9)
    assert summary["images_to_95"] is None
    assert math.isnan(area_under_learning_curve([math.nan, math.nan]))
    assert math.isnan(area_under_learning_curve([]))
    assert math.isnan(final_value([]))


def test_curve_summaries_accept_tensors_and_check_lengths() -> None:
    assert images_to_fraction(torch.tensor([5, 10, 15]), torch.tensor([0.2, 0.99, 1.0])) == 10
    with pytest.raises(ValueError, match=re.escape("(3,)") + ".*" + re.escape("(2,)")):
        images_to_fraction([1, 2, 3], [0.5, 1.0])

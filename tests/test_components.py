"""Shared building blocks: greedy k-center, chunked nearest neighbours, CoordConv, map post-processing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from oadbench.components import (
    CoordConv2d,
    concat_levels,
    coordinate_channels,
    gaussian_blur,
    greedy_kcenter,
    kmeans,
    mutual_nearest_neighbours,
    nearest_neighbours,
    project,
    smallest_k,
    smallest_sq_distances,
)
from tests.devices import DEVICES, HostSyncs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("projection_dim", [None, 8])
def test_kcenter_selects_the_farthest_point_each_step(projection_dim, device):
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(1))
    selected = greedy_kcenter(x.to(device), 40, seed=3, projection_dim=projection_dim).tolist()
    assert len(set(selected)) == 40
    # the distances the selection uses: the same projection, recomputed independently in float64
    z = project(x, projection_dim, torch.Generator().manual_seed(3)).double() if projection_dim else x.double()
    for step in range(1, 40):
        chosen = z[selected[:step]]
        min_dist = torch.cdist(z, chosen).min(1).values
        assert min_dist[selected[step]] == pytest.approx(float(min_dist.max()), rel=1e-5, abs=1e-6)


def test_kcenter_is_deterministic_by_seed_and_covers_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 8, generator=g) * 20
    x = torch.cat([c + torch.randn(50, 8, generator=g) for c in centres])
    a, b, c = greedy_kcenter(x, 5, seed=7), greedy_kcenter(x, 5, seed=7), greedy_kcenter(x, 5, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(int(i) // 50 for i in a) == [0, 1, 2, 3, 4]  # one point per well-separated cluster
    assert torch.equal(greedy_kcenter(x, 1000), torch.arange(250))


def straightforward_kcenter(features: torch.Tensor, k: int, seed: int, projection_dim: int | None) -> torch.Tensor:
    """Greedy k-center as a plain loop that reads each selected index back to the host: the same projection,
    storage and float operations, one ``int(argmax)`` per step."""
    gen = torch.Generator().manual_seed(seed)
    x = project(features, projection_dim, gen)
    sq = (x * x).sum(1)
    x = x.T.contiguous().T
    chosen = [int(torch.randint(x.shape[0], (1,), generator=gen))]
    min_dist = (torch.addmv(sq, x, x[chosen[0]].contiguous(), alpha=-2.0) + sq[chosen[0]]).clamp_min(0.0)
    min_dist[chosen[0]] = -1.0
    while len(chosen) < k:
        j = int(torch.argmax(min_dist))
        chosen.append(j)
        d = torch.addmv(sq, x, x[j].contiguous(), alpha=-2.0) + sq[j]
        min_dist = torch.minimum(min_dist, d)
        min_dist[j] = -1.0
    return torch.tensor(chosen)


@pytest.mark.parametrize("projection_dim", [None, 16, 128])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcenter_selects_bit_for_bit_what_the_per_step_loop_selects(projection_dim, seed):
    x = torch.randn(2500, 200, generator=torch.Generator().manual_seed(seed)) * torch.rand(200)
    assert torch.equal(greedy_kcenter(x, 250, seed=seed, projection_dim=projection_dim),
                       straightforward_kcenter(x, 250, seed, projection_dim))


@pytest.mark.parametrize("device", DEVICES)
def test_kcenter_on_exact_data_is_the_naive_definition_with_lowest_index_ties(device):
    """Small integer features: every distance is exact in float32 whatever the formula and the device, and ties
    are many, so the selection must be the textbook loop's to the last index (ties: the lowest index)."""
    x = torch.randint(-3, 4, (300, 5), generator=torch.Generator().manual_seed(4)).float()
    k = 40
    chosen = [int(torch.randint(300, (1,), generator=torch.Generator().manual_seed(9)))]
    for _ in range(k - 1):
        d = torch.stack([((x - x[c]) ** 2).sum(1) for c in chosen]).min(0).values
        d[chosen] = -1.0
        best = float(d.max())
        chosen.append(min(i for i in range(300) if float(d[i]) == best))
    assert greedy_kcenter(x.to(device), k, seed=9, projection_dim=None).cpu().tolist() == chosen


def test_kcenter_makes_no_host_sync_per_step():
    x = torch.randn(600, 24, generator=torch.Generator().manual_seed(0))
    counts = []
    for k in (5, 80):
        with HostSyncs() as syncs:
            greedy_kcenter(x, k, seed=1, projection_dim=8)
        counts.append(syncs.total)
    assert counts[0] == counts[1] <= 1  # the CPU generator's first index, whatever k


@pytest.mark.parametrize("k", [1, 3, 9])
def test_chunked_nearest_neighbours_match_brute_force(k):
    g = torch.Generator().manual_seed(k)
    q, bank = torch.randn(300, 12, generator=g), torch.randn(1000, 12, generator=g)
    d, i = nearest_neighbours(q, bank, k=k, query_chunk=64, bank_chunk=128)
    ref = torch.cdist(q.double(), bank.double())
    ref_d, ref_i = ref.topk(k, largest=False)
    torch.testing.assert_close(d.double(), ref_d, rtol=1e-4, atol=1e-4)
    assert (i == ref_i).float().mean() > 0.99  # near-ties may swap at float32 precision
    d_small, _ = nearest_neighbours(q, bank[:2], k=5)
    assert d_small.shape == (300, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block", [50, 10 ** 6])  # many blocks of rows of ``a``, or one
def test_mutual_nearest_neighbours_are_the_pairs_nearest_both_ways(block, device):
    g = torch.Generator().manual_seed(block)
    a, b = torch.randn(200, 8, generator=g), torch.randn(330, 8, generator=g)
    rows, partners, dist = mutual_nearest_neighbours(a.to(device), b.to(device), block=block)
    ref = torch.cdist(a.double(), b.double())
    a_to_b, b_to_a = ref.argmin(1), ref.argmin(0)
    expected = [i for i in range(len(a)) if b_to_a[a_to_b[i]] == i]
    assert 0 < len(expected) < len(a)
    assert rows.cpu().tolist() == expected and partners.cpu().tolist() == a_to_b[expected].tolist()
    torch.testing.assert_close(dist.cpu().double(), ref[expected, a_to_b[expected]], rtol=1e-5, atol=1e-5)
    assert partners.unique().numel() == partners.numel()  # one partner per row, either way
    empty = mutual_nearest_neighbours(a[:0].to(device), b.to(device))
    assert all(t.numel() == 0 for t in empty)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [64 * 7, 64 * 20, 64 * 20 + 37])  # one-stage fallback, full blocks, a short last block
@pytest.mark.parametrize("k", [1, 3, 6])
def test_two_stage_selection_returns_the_k_smallest_values_including_ties(n, k, device):
    g = torch.Generator().manual_seed(n + k)
    tied = torch.randint(0, 6, (120, n), generator=g).float()  # many equal values per row
    spread = torch.randn(120, n, generator=g)
    spread[:5, :n - 2] = float("inf")  # rows with fewer finite values than k
    for values in (tied.to(device), spread.to(device)):
        best, cols = smallest_k(values, k)
        ref = torch.topk(values, k, dim=1, largest=False).values
        assert torch.equal(best, ref)
        assert torch.equal(torch.gather(values, 1, cols), best)  # the indices point at those values
        assert (cols < n).all() and all(len(set(row)) == k for row in cols.tolist())  # distinct columns


def test_nearest_neighbours_through_the_two_stage_selection_match_brute_force():
    g = torch.Generator().manual_seed(7)
    q, bank = torch.randn(200, 12, generator=g), torch.randn(3000 + 11, 12, generator=g)
    d, i = nearest_neighbours(q, bank, k=4)  # one bank chunk of 3011 columns: 47 blocks and a short one
    ref_d, ref_i = torch.cdist(q.double(), bank.double()).topk(4, largest=False)
    torch.testing.assert_close(d.double(), ref_d, rtol=1e-4, atol=1e-4)
    assert (i == ref_i).float().mean() > 0.99


def test_coordconv_appends_row_and_column_coordinates():
    coords = coordinate_channels(2, 3, 5, "cpu")
    assert coords.shape == (2, 2, 3, 5)
    assert torch.equal(coords[0, 0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(coords[0, 1, 0], torch.linspace(-1, 1, 5))
    layer = CoordConv2d(4, 6)
    assert layer.conv.in_channels == 6 and layer(torch.zeros(2, 4, 3, 5)).shape == (2, 6, 3, 5)
    # with zero input the output varies with position only through the coordinate channels
    out = layer(torch.zeros(1, 4, 3, 5))
    assert not torch.allclose(out[..., 0, 0], out[..., 2, 4])


def test_gaussian_blur_matches_scipy_and_concat_levels_shapes():
    x = torch.rand(3, 40, 40, dtype=torch.float64)
    ref = np.stack([ndi.gaussian_filter(m, 4.0, mode="mirror", truncate=4.0) for m in x.numpy()])
    np.testing.assert_allclose(gaussian_blur(x, 4.0).numpy(), ref, atol=1e-12)
    feats = [torch.rand(2, 3, 16, 16), torch.rand(2, 5, 8, 8)]
    out = concat_levels(feats, pool=3)
    assert out.shape == (2, 8, 16, 16)
    torch.testing.assert_close(out[:, :3, 5, 5], feats[0][:, :, 4:7, 4:7].mean((2, 3)))
    # channels selected level by level before a nearest resize = the same channels of the concatenation
    keep = torch.tensor([1, 3, 4, 6])
    select = [torch.tensor([1]), torch.tensor([0, 1, 3])]
    full = concat_levels(feats, mode="nearest").index_select(1, keep)
    assert torch.equal(concat_levels(feats, mode="nearest", select=select), full)
    assert torch.equal(concat_levels(feats, mode="nearest", select=[torch.tensor([], dtype=torch.long), select[1]]),
                       full[:, 1:])


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_recovers_separated_clusters_deterministically(device):
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(4, 6, generator=g) * 10
    x = torch.cat([c + 0.1 * torch.randn(30, 6, generator=g) for c in centres]).to(device)
    found, labels = kmeans(x, 4, seed=0)
    again, labels2 = kmeans(x, 4, seed=0)
    assert torch.equal(found, again) and torch.equal(labels, labels2)
    # every true cluster is one k-means cluster, and each centroid is its cluster's mean
    for i in range(4):
        assert labels[i * 30:(i + 1) * 30].unique().numel() == 1
    for j in range(4):
        torch.testing.assert_close(found[j], x[labels == j].mean(0), rtol=1e-5, atol=1e-5)
    few, few_labels = kmeans(x[:3], 5)
    assert few.shape == (5, 6) and few_labels.tolist() == [0, 1, 2]


def straightforward_kmeans(x: torch.Tensor, k: int, seed: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ then Lloyd, testing convergence after every iteration, cluster sizes by ``bincount``."""
    gen = torch.Generator().manual_seed(seed)

    def sq_dist(a, c):
        return (a.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1) - 2.0 * a @ c.T).clamp_min_(0.0)

    centroids = torch.empty(k, x.shape[1])
    centroids[0] = x[int(torch.randint(x.shape[0], (1,), generator=gen))]
    closest = sq_dist(x, centroids[:1]).squeeze(1)
    for i in range(1, k):
        weights = closest.clamp_min(0).double()
        pick = (int(torch.randint(x.shape[0], (1,), generator=gen)) if float(weights.sum()) <= 0
                else int(torch.multinomial(weights, 1, generator=gen)))
        centroids[i] = x[pick]
        closest = torch.minimum(closest, sq_dist(x, centroids[i:i + 1]).squeeze(1))
    labels = sq_dist(x, centroids).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        new_labels = sq_dist(x, centroids).argmin(1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centroids, labels


@pytest.mark.parametrize("seed", range(6))
def test_kmeans_results_do_not_depend_on_how_often_convergence_is_tested(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(int(torch.randint(30, 400, (1,), generator=g)), 7, generator=g)
    k = int(torch.randint(2, 12, (1,), generator=g))
    for iters in (1, 3, 50):  # the cap reached, and convergence
        ref = straightforward_kmeans(x, k, seed, iters)
        for every in (None, 1, 3, 8, 64):
            got = kmeans(x, k, seed=seed, iters=iters, check_every=every)
            assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), (iters, every)


def test_kmeans_tests_convergence_every_check_every_iterations_and_never_bincounts():
    x = torch.randn(500, 6, generator=torch.Generator().manual_seed(3))
    with HostSyncs() as every:
        kmeans(x, 5, seed=0, iters=40, check_every=1)
    with HostSyncs() as sparse:
        kmeans(x, 5, seed=0, iters=40, check_every=8)
    assert every.ops["aten.equal"] > 8 and sparse.ops["aten.equal"] <= math.ceil(every.ops["aten.equal"] / 8)
    assert "aten.bincount" not in every.ops and every.ops["cpu"] == 4  # one read per k-means++ centre after the first


def test_squared_distances_are_exact_sorted_and_never_negative():
    g = torch.Generator().manual_seed(0)
    z, bank = torch.randn(50, 7, generator=g), torch.randn(20, 7, generator=g)
    bank[3] = z[5]  # an exact match: float error must not make d² negative
    d2 = smallest_sq_distances(z, bank, 4)
    ref = torch.cdist(z.double(), bank.double()).pow(2).sort(1).values[:, :4]
    torch.testing.assert_close(d2.double(), ref, rtol=1e-4, atol=1e-4)
    assert (d2 >= 0).all() and smallest_sq_distances(z, bank[:2], 4).shape == (50, 2)


def test_squared_distances_gradient_reaches_the_bank_exactly_and_repeatably():
    g = torch.Generator().manual_seed(1)
    z, bank0 = torch.randn(300, 5, generator=g), torch.randn(12, 5, generator=g)
    grads = []
    for _ in range(3):
        bank = bank0.clone().requires_grad_()
        smallest_sq_distances(z, bank, 3).sqrt().mean().backward()
        grads.append(bank.grad)
    dense = bank0.clone().requires_grad_()
    torch.topk(torch.cdist(z, dense), 3, dim=1, largest=False).values.mean().backward()
    torch.testing.assert_close(grads[0], dense.grad, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(grads[0], x) for x in grads[1:])  # many patches share a row: summed in a fixed order

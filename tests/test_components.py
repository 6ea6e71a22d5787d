"""Shared building blocks: greedy k-center, chunked nearest neighbours, CoordConv, map post-processing."""

from __future__ import annotations

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
    nearest_neighbours,
    project,
)


@pytest.mark.parametrize("projection_dim", [None, 8])
def test_kcenter_selects_the_farthest_point_each_step(projection_dim):
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(1))
    selected = greedy_kcenter(x, 40, seed=3, projection_dim=projection_dim).tolist()
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


def test_kmeans_recovers_separated_clusters_deterministically():
    from oadbench.components import kmeans

    g = torch.Generator().manual_seed(2)
    centres = torch.randn(4, 6, generator=g) * 10
    x = torch.cat([c + 0.1 * torch.randn(30, 6, generator=g) for c in centres])
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

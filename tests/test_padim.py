"""PaDiM: online (Chan merges) and offline (two-pass) Gaussians agree; scores are finite from a cold start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oadbench.method import Batch, MethodContext, build_config, get_method

CHANNELS, STRIDES, SIZE = (24, 40, 112), (4, 8, 16), 64


def make(mode: str, **cfg):
    cls = get_method("padim")
    ctx = MethodContext(mode, torch.device("cpu"), seed=0, image_size=SIZE, backbone="test", channels=CHANNELS,
                        strides=STRIDES)
    return cls(build_config(cls, cfg), ctx)


def batches(n: int, sizes: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(n, c, SIZE // s, SIZE // s, generator=g) * (1 + i) + i
             for i, (c, s) in enumerate(zip(CHANNELS, STRIDES, strict=True))]
    images = torch.zeros(n, 3, SIZE, SIZE)
    pos = 0
    for b in sizes:
        yield Batch(images[pos:pos + b], tuple(f[pos:pos + b] for f in feats))
        pos += b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_online_and_offline_statistics_agree_whatever_the_batch_sizes(seed):
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(1, 6, size=8)]
    n = sum(sizes)
    online, offline = make("online", n_features=32), make("offline", n_features=32)
    for b in batches(n, sizes, seed):
        online.observe(b)
    for b in batches(n, [n], seed):  # offline sees everything in one batch
        offline.observe(b)
    n1, m1, c1 = online.statistics()
    n2, m2, c2 = offline.statistics()
    assert n1 == n2 == n
    # reference: numpy's unbiased covariance of the same embeddings at a few positions
    emb = torch.cat([offline.embed(b) for b in batches(n, [n], seed)]).double().numpy()
    for p in (0, 100, emb.shape[1] - 1):
        np.testing.assert_allclose(m2[p].numpy(), emb[:, p].mean(0), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(c2[p].numpy(), np.cov(emb[:, p], rowvar=False), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(m1, m2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c1, c2, rtol=1e-8, atol=1e-8)
    query = next(batches(4, [4], seed + 10))
    torch.testing.assert_close(online.score(query).maps, offline.score(query).maps, rtol=1e-4, atol=1e-4)


def test_cold_start_scores_are_finite_and_score_does_not_learn():
    m = make("online")
    query = next(batches(2, [2], 5))
    out = m.score(query)
    assert out.image.shape == (2,) and out.maps.shape == (2, SIZE, SIZE)
    assert torch.isfinite(out.image).all() and torch.isfinite(out.maps).all()
    for b in batches(3, [1, 1, 1]):
        m.observe(b)
    before = m.score(query).maps.clone()
    m.score(next(batches(2, [2], 9)))
    assert m.n == 3
    torch.testing.assert_close(m.score(query).maps, before)


def test_image_score_is_the_map_maximum_and_anomalies_score_higher():
    m = make("online", n_features=40)
    for b in batches(30, [5] * 6, seed=1):
        m.observe(b)
    normal = next(batches(2, [2], seed=1))
    shifted = Batch(normal.images, tuple(f.clone() for f in normal.features))
    shifted.features[0][:, :, 4:8, 4:8] += 6.0  # a local defect in level-1 features
    a, b = m.score(normal), m.score(shifted)
    torch.testing.assert_close(a.image, a.maps.flatten(1).amax(1))
    assert (b.image > a.image).all()
    # the score increase is localised at the defect (level-1 positions 4..7 at stride 4 = pixels 16..31)
    peak = (b.maps[0] - a.maps[0]).argmax()
    y, x = divmod(int(peak), SIZE)
    assert 12 <= y <= 36 and 12 <= x <= 36


def test_channel_subset_is_fixed_by_seed_and_sized_by_rule():
    a, b = make("online"), make("online")
    assert torch.equal(a.channel_index, b.channel_index)
    assert a.d == 100  # min(C, 100) for a backbone other than R18 / WRN-50
    assert make("online", n_features=7).d == 7

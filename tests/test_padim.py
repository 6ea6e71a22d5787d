"""PaDiM: online (Chan merges) and offline (two-pass) Gaussians agree; scores are finite from a cold start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oadbench.errors import ConfigError
from oadbench.method import Batch, MethodContext, build_config, config_identity, get_method
from tests.devices import DEVICES

CHANNELS, STRIDES, SIZE = (24, 40, 112), (4, 8, 16), 64


def make(mode: str, device: str = "cpu", **cfg):
    cls = get_method("padim")
    ctx = MethodContext(mode, torch.device(device), seed=0, image_size=SIZE, backbone="test", channels=CHANNELS,
                        strides=STRIDES)
    return cls(build_config(cls, cfg), ctx)


def batches(n: int, sizes: list[int], seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    feats = [(torch.randn(n, c, SIZE // s, SIZE // s, generator=g) * (1 + i) + i).to(device)
             for i, (c, s) in enumerate(zip(CHANNELS, STRIDES, strict=True))]
    images = torch.zeros(n, 3, SIZE, SIZE, device=device)
    pos = 0
    for b in sizes:
        yield Batch(images[pos:pos + b], tuple(f[pos:pos + b] for f in feats))
        pos += b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_online_and_offline_statistics_agree_whatever_the_batch_sizes(seed, device):
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(1, 6, size=8)]
    n = sum(sizes)
    online, offline = make("online", device, n_features=32), make("offline", device, n_features=32)
    for b in batches(n, sizes, seed, device):
        online.observe(b)
    for b in batches(n, [n], seed, device):  # offline sees everything in one batch
        offline.observe(b)
    n1, m1, c1 = online.statistics()
    n2, m2, c2 = offline.statistics()
    assert n1 == n2 == n and m1.dtype == c1.dtype == torch.float64 and m1.device.type == device
    # reference: numpy's unbiased covariance of the same embeddings at a few positions
    emb = torch.cat([offline.embed(b) for b in batches(n, [n], seed, device)]).double().cpu().numpy()
    for p in (0, 100, emb.shape[1] - 1):
        np.testing.assert_allclose(m2[p].cpu().numpy(), emb[:, p].mean(0), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(c2[p].cpu().numpy(), np.cov(emb[:, p], rowvar=False), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(m1, m2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c1, c2, rtol=1e-8, atol=1e-8)
    query = next(batches(4, [4], seed + 10, device))
    torch.testing.assert_close(online.score(query).maps, offline.score(query).maps, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_cold_start_scores_are_finite_and_score_does_not_learn(device):
    m = make("online", device)
    query = next(batches(2, [2], 5, device))
    out = m.score(query)
    assert out.image.shape == (2,) and out.maps.shape == (2, SIZE, SIZE)
    assert torch.isfinite(out.image).all() and torch.isfinite(out.maps).all()
    for b in batches(3, [1, 1, 1], device=device):
        m.observe(b)
    before = m.score(query).maps.clone()
    m.score(next(batches(2, [2], 9, device)))
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["online", "offline"])
def test_float32_statistics_stay_close_to_float64(mode, device):
    """The documented accuracy of ``stats_dtype=float32`` (benchmarks/bench_padim_float32.py measures it on real
    features): statistics within 1e-5 relative, maps within 1e-3 relative, the same ranking of the images."""
    sizes = [1] * 40 + [3] * 20
    wide, narrow = make(mode, device, n_features=48), make(mode, device, n_features=48, stats_dtype="float32")
    for b in batches(sum(sizes), sizes, seed=3, device=device):
        wide.observe(b)
        narrow.observe(b)
    (n64, m64, c64), (n32, m32, c32) = wide.statistics(), narrow.statistics()
    assert n64 == n32 == 100 and m32.dtype == c32.dtype == torch.float32 and c64.dtype == torch.float64
    rel = float(torch.linalg.norm(c32.double() - c64) / torch.linalg.norm(c64))
    assert 0 < rel < 1e-5  # float32 rounding, not float64 computed twice
    torch.testing.assert_close(m32.double(), m64, rtol=1e-5, atol=1e-5)
    query = next(batches(16, [16], seed=11, device=device))
    query.features[0][:4, :, 3:6, 3:6] += 3.0  # four anomalous images
    a, b = wide.score(query), narrow.score(query)
    torch.testing.assert_close(b.maps, a.maps, rtol=1e-3, atol=1e-4)
    assert torch.equal(a.image.argsort(), b.image.argsort())
    assert wide.footprint() - narrow.footprint() == (m64.numel() + c64.numel()) * 4


def test_float64_is_the_default_and_stays_out_of_the_identity():
    cls = get_method("padim")
    assert config_identity(build_config(cls, {})) == {"layers": [1, 2, 3], "n_features": None, "epsilon": 0.01,
                                                      "sigma": 4.0}
    assert config_identity(build_config(cls, {"stats_dtype": "float32"}))["stats_dtype"] == "float32"
    with pytest.raises(ConfigError, match="method.stats_dtype"):
        build_config(cls, {"stats_dtype": "float16"})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["online", "offline"])
def test_the_cholesky_solve_scores_as_the_explicit_precision_did(mode, device):
    """The default Mahalanobis form (triangular solve with the Cholesky factor) against the explicit precision
    matrix it replaced: maps within float32 rounding of each other, and both forms' patch distances within float32
    rounding of a float64 reference computed with numpy's inverse."""
    sizes = [1] * 30 + [4] * 5
    solve, inverse = make(mode, device, n_features=48), make(mode, device, n_features=48, mahalanobis="inverse")
    for b in batches(sum(sizes), sizes, seed=5, device=device):
        solve.observe(b)
        inverse.observe(b)
    query = next(batches(8, [8], seed=12, device=device))
    a, b = solve.score(query), inverse.score(query)
    torch.testing.assert_close(a.maps, b.maps, rtol=2e-6, atol=0)
    assert not torch.equal(a.maps, b.maps)  # two computations, not one twice
    _, mean, cov = solve.statistics()
    emb = solve.embed(query)
    diff = emb.double().cpu().numpy() - mean.cpu().numpy()  # (B, P, d)
    precision = np.linalg.inv(cov.cpu().numpy() + 0.01 * np.eye(48))
    reference = np.sqrt(np.einsum("bpi,pij,bpj->bp", diff, precision, diff))
    errors = {}
    for name, form in (("solve", solve), ("inverse", inverse)):
        got = form.distances(emb.float()).double().cpu().numpy()
        errors[name] = float(np.max(np.abs(got - reference) / reference))
    assert all(0 < e < 2e-6 for e in errors.values()), errors


def test_the_mahalanobis_form_is_checked_and_stays_out_of_the_identity_at_its_default():
    cls = get_method("padim")
    assert "mahalanobis" not in config_identity(build_config(cls, {"mahalanobis": "cholesky"}))
    assert config_identity(build_config(cls, {"mahalanobis": "inverse"}))["mahalanobis"] == "inverse"
    with pytest.raises(ConfigError, match="method.mahalanobis"):
        build_config(cls, {"mahalanobis": "pinv"})

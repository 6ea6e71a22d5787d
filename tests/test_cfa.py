"""CFA: the loss (hard-negative ranks, training decreases it), the online memory update, determinism, cold start,
localisation of a feature-level anomaly and config validation, on small random features (no backbone)."""

from __future__ import annotations

import sys

import pytest
import torch

from oadbench.errors import ConfigError
from oadbench.method import Batch, MethodContext, build_config, get_method

CHANNELS, STRIDES, SIZE = (8, 12, 16), (4, 8, 16), 64


def make(mode: str, seed: int = 0, backbone: str = "test", **cfg):
    cls = get_method("cfa")
    ctx = MethodContext(mode, torch.device("cpu"), seed=seed, image_size=SIZE, backbone=backbone, channels=CHANNELS,
                        strides=STRIDES)
    return cls(build_config(cls, cfg), ctx)


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: one thread avoids OpenMP overhead (and oversubscription on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cfa_module():
    """The imported methods/cfa.py (discovered by the registry, not an importable package)."""
    return sys.modules[get_method("cfa").__module__]


def normal_like(n: int, seed: int = 0, noise: float = 0.2) -> list[torch.Tensor]:
    """Per level (n, C, H, W): one fixed spatial pattern (the 'object') plus independent noise per image."""
    pattern_gen, noise_gen = torch.Generator().manual_seed(1234), torch.Generator().manual_seed(seed)
    return [torch.randn(1, c, SIZE // s, SIZE // s, generator=pattern_gen)
            + noise * torch.randn(n, c, SIZE // s, SIZE // s, generator=noise_gen)
            for c, s in zip(CHANNELS, STRIDES, strict=True)]


def batch(features: list[torch.Tensor], start: int = 0, size: int | None = None) -> Batch:
    stop = features[0].shape[0] if size is None else start + size
    feats = tuple(f[start:stop] for f in features)
    return Batch(torch.zeros(feats[0].shape[0], 3, SIZE, SIZE), feats)


def stream(m, features: list[torch.Tensor], size: int = 1) -> list[float]:
    losses = []
    for s in range(0, features[0].shape[0], size):
        m.observe(batch(features, s, size))
        losses.append(m.last_loss)
    return losses


def state(m) -> list[torch.Tensor]:
    return [t.detach().clone() for t in (m.bank, m.r, *m.descriptor.parameters()) if t is not None]


# ---- the loss -------------------------------------------------------------------------------------------------


def test_hard_negatives_are_the_ranks_after_the_k_attracted_ones():
    soft_boundary_loss = cfa_module().soft_boundary_loss
    # one patch, six bank rows in scrambled order; sorted: 0.1 0.2 | 0.3 0.4 0.5 | 0.9 (K = 2, J = 3)
    d2 = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.2, 0.4]], requires_grad=True)
    r = torch.tensor([1.0])  # r² = 1: no attraction, every negative inside r² - α
    loss = soft_boundary_loss(d2, r, K=2, J=3, alpha=0.1, nu=1.0)
    # ranks 2..4 (0.3, 0.4, 0.5): mean(0.6, 0.5, 0.4); the official [:, :, J:] slice would give ranks 3..5 -> 0.3
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    expected = torch.tensor([[-1, 0, 0, -1, 0, -1]]) / 3.0  # only 0.3, 0.4, 0.5 are repelled
    torch.testing.assert_close(d2.grad, expected)
    # attraction: ranks 0..K-1 beyond r², scaled by 1/ν; no repulsion once r² - α is below the negatives
    small_r = torch.tensor([0.15 ** 0.5])
    att = soft_boundary_loss(d2.detach(), small_r, K=2, J=3, alpha=0.1, nu=1e-3)
    assert att.item() == pytest.approx((0.0 + 0.05) / 2 / 1e-3, rel=1e-4)
    # fewer bank rows than K + J: the negatives present are used, none at all gives attraction only
    four = d2[:, [0, 1, 3, 4]].detach()  # sorted 0.1 0.2 0.3 | 0.5
    assert soft_boundary_loss(four, r, K=3, J=3, alpha=0.1, nu=1.0).item() == pytest.approx(0.4)
    assert soft_boundary_loss(d2[:, :2].detach(), r, K=3, J=3, alpha=0.1, nu=1.0).item() == 0.0


def test_online_loss_falls_along_a_stream():
    m = make("online", lr=1e-2)  # a higher rate than the published 1e-3 so that 30 steps show a clear trend
    losses = stream(m, normal_like(30))
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[1:6]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, losses
    assert m.r.item() > m.config.r_init  # the radius is learned


def test_offline_training_loss_falls_over_epochs_and_runs_once():
    m = make("offline", epochs=8, lr=1e-2)
    m.observe(batch(normal_like(10), 0, 6))
    m.observe(batch(normal_like(10), 6, 4))
    assert m.bank is None and m.footprint() > 0  # stored levels only
    m.consolidate()
    assert len(m.epoch_losses) == 8 and m.epoch_losses[-1] < 0.8 * m.epoch_losses[0]
    assert m.bank.shape == ((SIZE // 4) ** 2, sum(CHANNELS))  # mean descriptor map: one row per position
    before = state(m)
    m.consolidate()  # nothing new: no-op
    for a, b in zip(before, state(m), strict=True):
        assert torch.equal(a, b)


def test_offline_with_fewer_images_than_a_batch_trains_on_the_partial_batch():
    m = make("offline", epochs=3, batch_size=4)
    m.observe(batch(normal_like(2)))
    m.consolidate()
    assert len(m.epoch_losses) == 3 and all(torch.isfinite(torch.tensor(m.epoch_losses)))


def test_offline_bank_is_the_mean_initial_descriptor_map():
    feats = normal_like(5)
    m, fresh = make("offline", epochs=1), make("offline")
    m.observe(batch(feats))
    m.consolidate()
    with torch.no_grad():
        phi = fresh.embed(feats).mean(0)  # untrained descriptor of the same seed
    torch.testing.assert_close(m.bank, phi.permute(1, 2, 0).reshape(-1, phi.shape[0]), rtol=1e-5, atol=1e-5)


# ---- the online memory ----------------------------------------------------------------------------------------


def test_online_bank_starts_from_the_first_image_and_averages_nearest_rows():
    feats = normal_like(2, seed=3)
    m, fresh = make("online"), make("online")
    m.observe(batch(feats, 0, 1))
    with torch.no_grad():
        first = fresh.rows(fresh.embed([f[:1] for f in feats]))  # initial descriptor, same seed
    torch.testing.assert_close(m.bank, first, rtol=0, atol=0)
    assert m.absorbed == 1
    bank = m.bank.clone()
    m.observe(batch(feats, 1, 1))
    with torch.no_grad():  # the second image under the descriptor after its own optimiser step
        z = m.rows(m.embed([f[1:2] for f in feats])).double()
    nearest = torch.cdist(bank.double(), z).argmin(1)
    expected = (bank.double() + z[nearest]) / 2  # β = 1 / (t + 1) with t = 1
    torch.testing.assert_close(m.bank.double(), expected, rtol=1e-5, atol=1e-5)
    assert m.absorbed == 2


def test_constant_bank_momentum_and_images_of_a_batch_are_absorbed_one_by_one():
    feats = normal_like(3, seed=4)
    m = make("online", bank_momentum=0.25)
    m.observe(batch(feats, 0, 1))
    bank = m.bank.clone().double()
    m.observe(batch(feats, 1, 2))
    with torch.no_grad():
        z = m.embed([f[1:3] for f in feats]).double()
    for i in range(2):
        zi = m.rows(z[i:i + 1])
        bank = bank + 0.25 * (zi[torch.cdist(bank, zi).argmin(1)] - bank)
    torch.testing.assert_close(m.bank.double(), bank, rtol=1e-5, atol=1e-5)
    assert m.absorbed == 3


def test_kmeans_bank_when_gamma_c_is_above_one():
    m = make("online", gamma_c=4)
    m.observe(batch(normal_like(1)))
    assert m.bank.shape == ((SIZE // 4) ** 2 // 4, sum(CHANNELS))


# ---- scoring --------------------------------------------------------------------------------------------------


def test_cold_start_is_finite_and_score_does_not_learn():
    m = make("online")
    query = batch(normal_like(2, seed=9))
    out = m.score(query)
    assert out.image.shape == (2,) and out.maps.shape == (2, SIZE, SIZE)
    assert torch.isfinite(out.image).all() and torch.isfinite(out.maps).all()
    stream(m, normal_like(3))
    before, absorbed, opt = state(m), m.absorbed, repr(m.optimizer.state_dict())
    first = m.score(query)
    m.score(batch(normal_like(2, seed=10)))
    second = m.score(query)
    torch.testing.assert_close(first.maps, second.maps, rtol=0, atol=0)
    torch.testing.assert_close(first.image, first.maps.flatten(1).amax(1))
    for a, b in zip(before, state(m), strict=True):
        assert torch.equal(a, b)
    assert m.absorbed == absorbed and repr(m.optimizer.state_dict()) == opt
    offline = make("offline")
    offline.observe(batch(normal_like(2)))
    assert torch.isfinite(offline.score(query).maps).all() and offline.bank is None  # score never trains


def test_same_seed_same_scores_different_seed_different_descriptor():
    feats, query = normal_like(4), batch(normal_like(2, seed=7))
    a, b = make("online", seed=5), make("online", seed=5)
    stream(a, feats), stream(b, feats)
    assert torch.equal(a.score(query).maps, b.score(query).maps)
    c = make("online", seed=6)
    assert not torch.equal(a.descriptor.conv.weight, c.descriptor.conv.weight)
    assert torch.equal(make("online", seed=6).descriptor.conv.weight, c.descriptor.conv.weight)


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_a_local_feature_anomaly_scores_higher_and_is_localised(mode):
    m = make(mode, epochs=5)
    if mode == "online":
        stream(m, normal_like(20))
    else:
        m.observe(batch(normal_like(20)))
        m.consolidate()
    normal = batch(normal_like(2, seed=11))
    shifted = Batch(normal.images, tuple(f.clone() for f in normal.features))
    shifted.features[0][:, :, 4:8, 4:8] += 3.0  # level-1 positions 4..7 at stride 4 = pixels 16..31
    a, b = m.score(normal), m.score(shifted)
    assert (b.image > a.image).all()
    for i in range(2):
        y, x = divmod(int(b.maps[i].argmax()), SIZE)
        assert 12 <= y <= 36 and 12 <= x <= 36


def test_footprint_counts_bank_descriptor_and_stored_features():
    m = make("online")
    params = sum(p.numel() * 4 for p in m.descriptor.parameters()) + 4
    assert m.footprint() == params
    m.observe(batch(normal_like(1)))
    assert m.footprint() == params + m.bank.numel() * 4
    off = make("offline")
    feats = normal_like(2)
    off.observe(batch(feats))
    assert off.footprint() == params + sum(f.numel() * 4 for f in feats)


def test_efficientnet_levels_are_divided_by_their_channel_count_as_in_the_official_code():
    feats = normal_like(1)
    auto = make("online", backbone="tf_efficientnet_lite0")
    raw = make("online", backbone="tf_efficientnet_lite0", feature_scale="none")
    forced = make("online", feature_scale="channels")
    assert auto.divide_by_channels and forced.divide_by_channels and not raw.divide_by_channels
    assert not make("online", backbone="wide_resnet50_2").divide_by_channels
    with torch.no_grad():
        torch.testing.assert_close(auto.embed(feats), raw.embed([f / f.shape[1] for f in feats]))


# ---- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,value", [
    ("K", 0), ("J", 0), ("gamma_d", 0), ("gamma_c", 0), ("epochs", 0), ("batch_size", 0), ("nu", 0.0),
    ("lr", -1.0), ("alpha", -0.1), ("sigma", -1.0), ("bank_momentum", 0.0), ("bank_momentum", 1.5), ("layers", []),
    ("feature_scale", "unit"),
])
def test_config_errors_name_the_key(key, value):
    cls = get_method("cfa")
    with pytest.raises(ConfigError) as err:
        build_config(cls, {key: value})
    assert err.value.key == f"method.{key}"


def test_gamma_d_leaving_no_descriptor_channel_is_rejected():
    with pytest.raises(ConfigError) as err:
        make("online", gamma_d=1000)
    assert err.value.key == "method.gamma_d"

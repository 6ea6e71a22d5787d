"""LeMO: orthonormal initial memory, the AnoNCE loss, the feature-enhanced update, cold start, determinism."""

from __future__ import annotations

import pytest
import torch

from oadbench.errors import ConfigError
from oadbench.method import Batch, MethodContext, build_config, get_method

CHANNELS, STRIDES, SIZE = (24, 40, 112), (4, 8, 16), 64


def make(mode: str = "online", seed: int = 0, **cfg):
    cls = get_method("lemo")
    ctx = MethodContext(mode, torch.device("cpu"), seed=seed, image_size=SIZE, backbone="test", channels=CHANNELS,
                        strides=STRIDES)
    return cls(build_config(cls, cfg), ctx)


def batch(n: int, seed: int, bump: bool = False) -> Batch:
    """Normal-like features: a few fixed patterns repeated over the image plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.Generator().manual_seed(777)
    feats = []
    for c, s in zip(CHANNELS, STRIDES, strict=True):
        h = SIZE // s
        modes = torch.randn(4, c, generator=base) * 2
        layout = torch.randint(0, 4, (h, h), generator=base)
        pattern = modes[layout].permute(2, 0, 1).unsqueeze(0)
        feats.append(pattern + 0.3 * torch.randn(n, c, h, h, generator=g))
    if bump:
        feats[0][:, :, 4:8, 4:8] += 4.0 * torch.randn(1, CHANNELS[0], 1, 1, generator=base)
    return Batch(torch.zeros(n, 3, SIZE, SIZE), tuple(feats))


def test_initial_memory_is_orthonormal():
    m = make(n_prototypes=10)
    mem = m.memory.detach().double()
    torch.testing.assert_close(mem @ mem.T, torch.eye(10, dtype=torch.float64), atol=1e-6, rtol=0)
    assert mem.shape == (10, sum(CHANNELS))
    other = make(seed=1, n_prototypes=10).memory.detach()
    assert not torch.allclose(other, m.memory.detach())


def test_anonce_sign_pulls_positives_closer():
    from oadbench_methods.lemo import anonce_loss

    d = torch.tensor([[0.2, 0.3, 0.4, 1.0, 1.1, 1.2, 1.9]], requires_grad=True)
    loss = anonce_loss(d, q=3, w=3, tau=0.1, margin=0.0)
    loss.backward()
    assert (d.grad[0, :3] > 0).all()  # increasing a positive distance increases the loss
    assert (d.grad[0, 3:6] < 0).all()  # increasing a negative distance decreases it
    assert d.grad[0, 6] == 0  # beyond q + w: ignored
    # computed in log space: huge distances neither underflow nor give NaN
    far = anonce_loss(torch.tensor([[300.0, 301.0, 302.0, 500.0, 510.0, 520.0]]), 3, 3, 0.1, 0.0)
    assert torch.isfinite(far)
    # the margin relaxes distances below r to zero
    assert anonce_loss(torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]), 3, 3, 1.0, margin=0.5) == pytest.approx(
        float(torch.log(torch.tensor(2.0))))


def test_loss_falls_over_a_fixed_stream():
    m = make(update="parameter")
    for i in range(40):
        m.observe(batch(1, seed=i % 5))
    first, last = sum(m.losses[:5]) / 5, sum(m.losses[-5:]) / 5
    assert last < 0.5 * first


def test_after_a_feature_enhanced_update_no_cluster_is_small():
    m = make(update="feature_enhanced", n_prototypes=10)
    for i in range(5):
        m.observe(batch(1, seed=i))
        x = m._features(batch(1, seed=i))
        with torch.no_grad():
            z = m._adapt(x)
            labels = m._distances(z, m._prototypes()).argmin(1)
        sizes = torch.bincount(labels, minlength=10)
        assert sizes.min() >= 0.5 * z.shape[0] / 10, sizes.tolist()
    assert m.replacements > 0  # the orthogonal start has empty clusters that had to be re-seeded


def test_frozen_memory_never_changes_and_parameter_memory_does():
    frozen, learned = make(update="frozen"), make(update="parameter")
    before_f, before_l = frozen.memory.detach().clone(), learned.memory.detach().clone()
    for i in range(3):
        frozen.observe(batch(1, seed=i))
        learned.observe(batch(1, seed=i))
    assert torch.equal(frozen.memory.detach(), before_f)
    assert not torch.equal(learned.memory.detach(), before_l)


def test_kmeans_initialisation_uses_the_first_image():
    m = make(init="kmeans", n_prototypes=8, update="frozen", lr=1e-12)
    first = batch(1, seed=3)
    m.observe(first)
    with torch.no_grad():
        z = m._adapt(m._features(first))
    nearest = torch.cdist(m._prototypes(), z).min(1).values
    assert nearest.max() < 0.5  # every prototype sits in the first image's data


def test_cold_start_is_finite_scoring_is_state_free_and_seeded():
    a, b = make(seed=4), make(seed=4)
    q = batch(2, seed=9)
    out = a.score(q)
    assert torch.isfinite(out.image).all() and torch.isfinite(out.maps).all()
    torch.testing.assert_close(out.image, b.score(q).image, rtol=0, atol=0)
    for i in range(3):
        a.observe(batch(1, seed=i))
        b.observe(batch(1, seed=i))
    mem = a.memory.detach().clone()
    s1 = a.score(q).maps
    a.score(batch(1, seed=10))
    assert torch.equal(a.memory.detach(), mem)
    torch.testing.assert_close(a.score(q).maps, s1, rtol=0, atol=0)
    torch.testing.assert_close(s1, b.score(q).maps, rtol=0, atol=0)  # same seed, same stream: same scores
    c = make(seed=5)
    for i in range(3):
        c.observe(batch(1, seed=i))
    assert not torch.allclose(c.score(q).maps, s1)


def test_offline_form_trains_epochs_over_stored_features():
    m = make("offline", epochs=3, batch_size=2)
    for i in range(4):
        m.observe(batch(1, seed=i))
    assert m.steps == 0
    m.consolidate()
    assert m.steps == 3 * 2
    m.consolidate()
    assert m.steps == 6  # nothing new: no retraining


def test_offline_scoring_before_consolidate_trains_first():
    """score() runs without gradients; the training it triggers must still learn."""
    m = make("offline", epochs=2, batch_size=1)
    for i in range(3):
        m.observe(batch(1, seed=i))
    adapter_before = m.adapter.conv.weight.detach().clone()
    out = m.score(batch(2, seed=9))
    assert m.steps == 6
    assert not torch.equal(adapter_before, m.adapter.conv.weight)
    assert torch.isfinite(out.maps).all()


@pytest.mark.parametrize("values,key", [
    ({"n_prototypes": 5, "q": 3, "w": 3}, "method.n_prototypes"),
    ({"tau": 0.0}, "method.tau"),
    ({"tau": -1.0}, "method.tau"),
    ({"update": "ema"}, "method.update"),
    ({"init": "random"}, "method.init"),
])
def test_bad_values_name_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        make(**values)
    assert key in str(err.value)

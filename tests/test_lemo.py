"""LeMO: orthonormal initial memory, the AnoNCE loss, the feature-enhanced update, cold start, determinism."""

from __future__ import annotations

import pytest
import torch

from oadbench.errors import ConfigError
from oadbench.method import Batch, MethodContext, build_config, get_method

CHANNELS, STRIDES, SIZE = (24, 40, 112), (4, 8, 16), 64
# the paper's form where a test is about its parts (learned adapter, K = 10, feature-enhanced update)
PAPER_FORM = {"adapter": "learned", "n_prototypes": 10, "update": "feature_enhanced", "loss": "anonce"}


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


@pytest.mark.parametrize("loss", ["anonce", "anonce_compact", "attract_repel"])
@pytest.mark.parametrize("normalize", [True, False])
def test_every_loss_is_finite_and_falls_over_a_fixed_stream(loss, normalize):
    m = make(update="parameter", loss=loss, normalize=normalize, feature_scale="channels", adapter="learned",
             n_prototypes=10)
    for i in range(40):
        m.observe(batch(1, seed=i % 5))
    assert all(torch.isfinite(torch.tensor(m.losses)))
    first, last = sum(m.losses[:5]) / 5, sum(m.losses[-5:]) / 5
    assert last < 0.5 * first, (loss, normalize, m.losses[:5], m.losses[-5:])


def test_compactness_is_zero_on_a_prototype_and_grows_with_the_distance():
    from oadbench_methods.lemo import compactness

    d = torch.tensor([[0.0, 0.5, 0.9], [0.3, 0.4, 0.8]])
    assert compactness(d[:1], margin=0.0) == 0.0
    assert compactness(d, margin=0.0) == pytest.approx((0.0 + 0.3 ** 2) / 2)
    assert compactness(d, margin=0.3) == 0.0  # inside the margin nothing pulls
    m = make(loss="anonce_compact", update="frozen", adapter="frozen", normalize=False, n_prototypes=6)
    z = m._adapt(m._features(batch(1, seed=0)))
    with torch.no_grad():
        m.memory[:] = z[:6]  # six patches sit exactly on prototypes
    exact = torch.cdist(z[:6], m._prototypes(), compute_mode="donot_use_mm_for_euclid_dist")
    assert float(compactness(exact, 0.0)) == 0.0
    assert float(compactness(torch.cdist(z[6:50], m._prototypes()), 0.0)) > 0.0


def test_attract_repel_pulls_the_nearest_and_pushes_the_next_inside_the_margin():
    from oadbench_methods.lemo import attract_repel_loss

    d = torch.tensor([[0.2, 0.3, 0.4, 0.25, 0.5, 2.0, 3.0]], requires_grad=True)
    attract_repel_loss(d, q=2, w=2, margin=0.1, repel_margin=0.5).backward()
    # sorted: 0.2, 0.25 attract (pushed down), 0.3, 0.4 repelled (inside 0.1 + 0.5), the rest ignored
    assert d.grad[0, 0] > 0 and d.grad[0, 3] > 0
    assert d.grad[0, 1] < 0 and d.grad[0, 2] < 0
    assert d.grad[0, 4] == 0 and d.grad[0, 5] == 0 and d.grad[0, 6] == 0


def test_more_prototypes_than_dimensions_come_in_orthonormal_blocks():
    from oadbench_methods.lemo import orthogonal_memory

    dim, k = 16, 40
    mem = orthogonal_memory(k, dim, torch.Generator().manual_seed(3)).double()
    assert mem.shape == (k, dim)
    for start in (0, 16, 32):  # blocks of D' rows, the last one partial
        block = mem[start:start + dim]
        torch.testing.assert_close(block @ block.T, torch.eye(block.shape[0], dtype=torch.float64), atol=1e-6,
                                   rtol=0)
    assert (mem[:16] @ mem[16:32].T).abs().max() > 0.05  # independent across blocks
    # K <= D' is the paper's single orthonormal set, the same draw as before blocks existed
    g = torch.Generator().manual_seed(3)
    q, r = torch.linalg.qr(torch.randn(dim, 10, generator=g, dtype=torch.float64))
    expected = (q * torch.sign(torch.diagonal(r)).unsqueeze(0)).T.float()
    assert torch.equal(orthogonal_memory(10, dim, torch.Generator().manual_seed(3)), expected)
    big = make(n_prototypes=500)  # K > D' = 176
    assert big.memory.shape == (500, sum(CHANNELS)) and torch.isfinite(big.score(batch(1, seed=0)).maps).all()


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
            labels = torch.cdist(z, m._prototypes()).argmin(1)
        sizes = torch.bincount(labels, minlength=10)
        assert sizes.min() >= 0.5 * z.shape[0] / 10, sizes.tolist()
    assert m.replacements > 0  # the orthogonal start has empty clusters that had to be re-seeded


def test_odc_update_leaves_no_cluster_below_its_absolute_size():
    m = make(update="odc", n_prototypes=10, min_cluster_size=5)
    for i in range(4):
        m.observe(batch(1, seed=i))
        with torch.no_grad():
            z = m._adapt(m._features(batch(1, seed=i)))
            labels = m._assign(z, cosine=True)
        assert torch.bincount(labels, minlength=10).min() >= 5
    assert m.replacements > 0


def test_coverage_update_reseeds_unused_prototypes_at_the_worst_covered_patches():
    m = make(update="coverage", n_prototypes=12, usage_decay=0.5)
    first = batch(1, seed=0)
    m.observe(first)
    with torch.no_grad():
        z = m._adapt(m._features(first))
        d = torch.cdist(z, m._prototypes()).min(1).values
    # the orthogonal noise is far from the data: after the first image every prototype sits on one of its
    # patches, and each was used (usage >= 1/K) or re-seeded (usage = 1/K)
    assert m.replacements > 0 and (m.usage >= 1 / 12 - 1e-6).sum() >= m.replacements
    on_data = torch.cdist(m._prototypes(), z).min(1).values
    assert (on_data[m.usage == 1 / 12] < 0.3).all()
    assert float(d.mean()) < 1.0
    # a prototype nobody uses for a while dies and is re-seeded; one in use survives
    before = m.replacements
    with torch.no_grad():
        m.memory[0] = 100.0  # far from everything: unused from now on
    for i in range(1, 12):
        m.observe(batch(1, seed=i))
    assert m.replacements > before and float(m.memory.detach()[0].abs().max()) < 100.0


def test_adapters_residual_starts_at_identity_and_frozen_trains_nothing_but_the_memory():
    res = make(adapter="residual", normalize=False)
    x = res._features(batch(1, seed=0))
    torch.testing.assert_close(res._adapt(x), x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]))
    frozen = make(adapter="frozen", update="parameter")
    assert frozen.adapter is None
    before = frozen.memory.detach().clone()
    frozen.observe(batch(1, seed=0))
    assert not torch.equal(frozen.memory.detach(), before)
    assert make(adapter="frozen", update="frozen").optimizer is None
    both = make(update="frozen", adapter="frozen")
    both.observe(batch(1, seed=1))
    assert torch.isfinite(both.score(batch(1, seed=2)).maps).all()


def test_separate_learning_rates_reach_the_optimiser():
    m = make(lr=1e-3, lr_adapter=1e-4, lr_memory=1e-2, adapter="learned", update="parameter")
    assert [g["lr"] for g in m.optimizer.param_groups] == [1e-4, 1e-2]


def test_diagnostics_describe_the_last_image_and_the_memory():
    m = make(update="coverage", n_prototypes=12)
    assert m.diagnostics() == {"replacements": 0.0}
    for i in range(3):
        m.observe(batch(1, seed=i))
    d = m.diagnostics()
    assert set(d) == {"loss", "feature_rank", "cluster_entropy", "cluster_min", "cluster_max", "prototypes_used",
                      "replacements", "nearest_distance"}
    patches = (SIZE // STRIDES[0]) ** 2
    assert 1.0 <= d["feature_rank"] <= sum(CHANNELS) and 0.0 <= d["cluster_entropy"] <= 1.0
    assert d["cluster_min"] <= patches / 12 <= d["cluster_max"] <= patches
    assert 1 <= d["prototypes_used"] <= 12 and d["nearest_distance"] > 0
    assert d["loss"] == pytest.approx(sum(m.losses[-10:]) / len(m.losses[-10:]))


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


@pytest.mark.parametrize("cfg", [PAPER_FORM, {}], ids=["paper_form", "defaults"])
def test_cold_start_is_finite_scoring_is_state_free_and_seeded(cfg):
    a, b = make(seed=4, **cfg), make(seed=4, **cfg)
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
    if a.adapter is not None:  # the seed draws the adapter (and the initial memory, which a frozen adapter's
        c = make(seed=5, **cfg)  # coverage update re-seeds from the data wherever the data is)
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
    m = make("offline", epochs=2, batch_size=1, adapter="learned")
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
    ({"loss": "infonce"}, "method.loss"),
    ({"adapter": "mlp"}, "method.adapter"),
    ({"feature_scale": "unit"}, "method.feature_scale"),
    ({"pool_padding": "reflect"}, "method.pool_padding"),
    ({"compact_weight": 0.0}, "method.compact_weight"),
    ({"lr": -1e-3}, "method.lr"),
    ({"lr_memory": 0.0}, "method.lr_memory"),
    ({"usage_decay": 0.0}, "method.usage_decay"),
    ({"init": "kmeans", "n_prototypes": 300}, "method.n_prototypes"),  # 16 x 16 patches at 64 px
    ({"adapter": "residual", "out_dim": 64}, "method.out_dim"),
])
def test_bad_values_name_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        make(**values)
    assert key in str(err.value)
    if "loss" in values or "adapter" in values:
        assert "allowed" in str(err.value) or "anonce" in str(err.value) or "residual" in str(err.value)
    if values.get("init") == "kmeans":
        assert "256" in str(err.value) and "kmeans" in str(err.value)  # the limit and the initialisation

"""PatchCore: the online bank respects its budget, eq. 7 re-weighting, cold start, state-free scoring."""

from __future__ import annotations

import math

import pytest
import torch

from oadbench.errors import ConfigError
from oadbench.method import Batch, MethodContext, build_config, get_method
from tests.devices import DEVICES

CHANNELS, STRIDES, SIZE = (40, 112), (8, 16), 64  # levels 2 and 3 of EfficientNet-Lite0 at 64 px


def make(mode: str, seed: int = 0, device: str = "cpu", **cfg):
    cls = get_method("patchcore")
    ctx = MethodContext(mode, torch.device(device), seed=seed, image_size=SIZE, backbone="test", channels=CHANNELS,
                        strides=STRIDES)
    return cls(build_config(cls, cfg), ctx)


def batch(n: int, seed: int, bump: bool = False, device: str = "cpu") -> Batch:
    g = torch.Generator().manual_seed(seed)
    base = torch.Generator().manual_seed(12345)  # shared "normal" structure
    feats = []
    for c, s in zip(CHANNELS, STRIDES, strict=True):
        pattern = torch.randn(1, c, SIZE // s, SIZE // s, generator=base)
        feats.append(pattern + 0.3 * torch.randn(n, c, SIZE // s, SIZE // s, generator=g))
    if bump:
        feats[0][:, :, 2:4, 2:4] += 3.0
    return Batch(torch.zeros(n, 3, SIZE, SIZE, device=device), tuple(f.to(device) for f in feats))


@pytest.mark.parametrize("device", DEVICES)
def test_online_bank_never_exceeds_its_budget_over_a_long_stream(device):
    m = make("online", budget=200, keep=0.5, device=device)  # 64 patches per image at this size
    sizes = []
    for i in range(120):
        m.observe(batch(1 + i % 3, seed=i, device=device))
        sizes.append(m.bank.shape[0])
        assert m.bank.shape[0] <= 200
    assert max(sizes) > 150 and m.refreshes > 20
    assert m.footprint() == m.bank.numel() * 4
    # memory does not grow with the stream: the footprint after 120 batches is bounded by the budget
    assert m.footprint() <= 200 * m.bank.shape[1] * 4


@pytest.mark.parametrize("device", DEVICES)
def test_offline_coreset_is_ten_percent_of_all_patches(device):
    m = make("offline", device=device)
    for i in range(5):
        m.observe(batch(2, seed=i, device=device))
    m.consolidate()
    assert m.bank.shape[0] == math.ceil(0.1 * 5 * 2 * 64) and m.bank.device.type == device
    # the stored patches were merged into one tensor (no second copy kept), in observation order
    assert len(m._stored) == 1
    expected = torch.cat([m.embed(batch(2, seed=i, device=device))[0].cpu() for i in range(5)])
    assert torch.equal(m._stored[0], expected)
    assert all((m.bank.cpu()[:, None, :] == m._stored[0][None]).all(-1).any(1))  # bank rows are stored patches
    m.observe(batch(2, seed=7, device=device))
    m.consolidate()  # more data after a consolidation: the coreset is rebuilt over everything
    assert m.bank.shape[0] == math.ceil(0.1 * 6 * 2 * 64) and m._stored[0].shape[0] == 6 * 2 * 64


def test_eq7_reweighting_matches_a_direct_computation():
    m = make("offline", coreset_ratio=0.5, num_neighbors=4)
    for i in range(4):
        m.observe(batch(2, seed=i))
    query = batch(2, seed=99, bump=True)
    out = m.score(query)
    patches, _ = m.embed(query)
    patches = patches.view(2, 64, -1)
    for b in range(2):
        d = torch.cdist(patches[b].double(), m.bank.double())
        scores = d.min(1).values
        p = int(scores.argmax())
        nearest = int(d[p].argmin())
        support = torch.cdist(m.bank[nearest:nearest + 1].double(), m.bank.double())[0].topk(4, largest=False).indices
        dist_support = torch.cdist(patches[b, p:p + 1].double(), m.bank[support].double())[0]
        expected = (1 - torch.exp(dist_support[0]) / torch.exp(dist_support).sum()) * scores[p]
        assert float(out.image[b]) == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_cold_start_is_finite_and_scoring_does_not_change_state(device):
    m = make("online", device=device)
    out = m.score(batch(2, seed=1, device=device))
    assert torch.isfinite(out.image).all() and torch.isfinite(out.maps).all()
    for i in range(3):
        m.observe(batch(1, seed=i, device=device))
    bank = m.bank.clone()
    a = m.score(batch(2, seed=5, device=device))
    m.score(batch(3, seed=6, device=device))
    assert torch.equal(m.bank, bank)
    torch.testing.assert_close(m.score(batch(2, seed=5, device=device)).maps, a.maps)


def test_a_local_anomaly_scores_higher_and_is_localised():
    m = make("online", budget=500)
    for i in range(10):
        m.observe(batch(1, seed=i))
    normal, anomalous = m.score(batch(2, seed=50)), m.score(batch(2, seed=50, bump=True))
    assert (anomalous.image > normal.image).all()
    y, x = divmod(int((anomalous.maps[0] - normal.maps[0]).argmax()), SIZE)
    assert 8 <= y <= 40 and 8 <= x <= 40  # the bump covers level-2 cells 2..3 = pixels 16..31


@pytest.mark.parametrize("key,value", [("coreset_ratio", 0.0), ("keep", 1.5), ("budget", 0), ("num_neighbors", 0)])
def test_out_of_range_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"method.{key}"):
        make("online", **{key: value})

"""InReaCh and Online-InReaCh (methods/inreach.py): channels on hand-made descriptors (mutual nearest neighbours,
the nearest seed, minimum length, the spread filter, expiry after exactly ``time_to_live`` unmatched images, the
member bound), the positional rule, named errors, and Online-InReaCh's protocol on a real run."""

from __future__ import annotations

import pytest
import torch

from oadbench.errors import ConfigError
from oadbench.method import MethodContext, get_method
from oadbench.per_image import read_per_image
from oadbench.runner import run
from tests.conftest import small_run

InReaCh = get_method("inreach")
_module = __import__(InReaCh.__module__, fromlist=["offline_channels"])
offline_channels, transpose_difference = _module.offline_channels, _module.transpose_difference


def make(mode: str = "online", **config) -> InReaCh:
    ctx = MethodContext(mode, torch.device("cpu"), seed=0, image_size=32, backbone="test", channels=(4,),
                        strides=(4,))
    return InReaCh(InReaCh.Config(layers=(1,), **config), ctx)


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def rows_of(bank: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(round(v, 4) for v in r) for r in bank.tolist()}


def test_online_channels_match_by_mutual_nearest_neighbour_and_expire_after_time_to_live_unmatched_images():
    m = make(time_to_live=3, min_channel_length=2)
    a, b = (0.0, 0.0), (10.0, 0.0)
    m.update(t(a, b))  # every patch seeds a channel; none is long enough: the memory is every member
    assert m.seeds.tolist() == [list(a), list(b)] and m.nominal().tolist() == [list(a), list(b)] and m.fallback
    # (0.1, 0) and a are mutual nearest neighbours; (50, 50)'s nearest seed is b, but b's nearest patch is
    # (0.1, 0): not mutual, so (50, 50) seeds a channel of its own
    m.update(t((0.1, 0.0), (50.0, 50.0)))
    assert m.length.tolist() == [2, 1, 1] and m.ttl.tolist() == [3, 2, 3]
    assert rows_of(m.nominal()) == {a, (0.1, 0.0)} and not m.fallback  # only the channel with 2 members
    m.update(t((0.05, 0.0), (50.0, 50.1)))  # b unmatched for the 2nd image: still alive
    assert list(b) in m.seeds.tolist() and m.ttl.tolist() == [3, 1, 3]
    m.update(t((0.02, 0.0), (50.0, 50.2)))  # the 3rd image without a match: b's channel is gone, members too
    assert list(b) not in m.seeds.tolist() and b not in rows_of(m.members)
    assert m.length.tolist() == [4, 3] and m.ttl.tolist() == [3, 3]
    assert rows_of(m.nominal()) == {a, (0.1, 0.0), (0.05, 0.0), (0.02, 0.0), (50.0, 50.0), (50.0, 50.1),
                                    (50.0, 50.2)}


def test_online_memory_bound_evicts_the_oldest_members_and_keeps_the_channel_counts():
    m = make(time_to_live=40, min_channel_length=2, max_members=5)
    for k in range(4):
        m.update(t((0.01 * k, 0.0), (50.0, 0.01 * k)))
    assert m.length.tolist() == [4, 4] and m.evicted == 3 and m.members.shape[0] == 5
    assert rows_of(m.members) == {(50.0, 0.01), (0.02, 0.0), (50.0, 0.02), (0.03, 0.0), (50.0, 0.03)}


def test_offline_channels_keep_the_nearest_seed_the_minimum_length_and_drop_far_members():
    # 6 images x 2 patches in 8 dimensions: patch 0 recurs near the origin (dimensions 6, 7), patch 1 is unique
    # to its image (100 along axis i: √2·100 from another image's, 100 from its patch 0, so never mutual)
    near = [(0.0, 0.0), (0.1, 0.0), (-0.1, 0.0), (0.0, 0.1), (0.0, -0.1), (3.0, 0.0)]
    x = torch.zeros(6, 2, 8)
    for i, p in enumerate(near):
        x[i, 0, 6:] = torch.tensor(p)
        x[i, 1, i] = 100.0
    members, stats = offline_channels(x, assoc_depth=1, min_channel_length=3, max_channel_std=5.0)
    assert members.tolist() == [0, 2, 4, 6, 8, 10] and stats["channels"] == 1  # one channel: every patch 0
    # members' distances to the mean (0.5, 0): 0.5, 0.4, 0.6, 0.51, 0.51, 2.5; std 0.75: 2.5 > 2 std
    members, stats = offline_channels(x, assoc_depth=1, min_channel_length=3, max_channel_std=2.0)
    assert members.tolist() == [0, 2, 4, 6, 8] and stats["members_long"] == 6 and stats["members"] == 5
    # spherical: σ = RMS distance, 1.12: 2.5 is within 3 σ, not within 2 σ
    assert offline_channels(x, 1, 3, 3.0, "spherical")[0].tolist() == [0, 2, 4, 6, 8, 10]
    assert offline_channels(x, 1, 3, 2.0, "spherical")[0].tolist() == [0, 2, 4, 6, 8]
    members, _ = offline_channels(x, assoc_depth=1, min_channel_length=5, max_channel_std=2.0)
    assert members.numel() == 0  # 6 members before the filter, 5 after: no longer more than 5
    # two seed images: (3, 0) is nearer to seed 1's (0.1, 0) than to seed 0's (0, 0), so it joins seed 1's
    # channel, which then has 2 members and is dropped
    members, stats = offline_channels(x, assoc_depth=2, min_channel_length=3, max_channel_std=5.0)
    assert members.tolist() == [0, 2, 4, 6, 8] and stats["channels_formed"] == 2 and stats["channels"] == 1


def test_transpose_rule_in_pixel_values():
    image = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).expand(3, 2, 2).double()  # varies along columns only
    assert transpose_difference(image, (1 / 255,) * 3) == pytest.approx(0.5)
    assert transpose_difference(image, (2 / 255,) * 3) == pytest.approx(2.0)
    assert transpose_difference(image + image.transpose(1, 2), (0.5,) * 3) == 0.0


@pytest.mark.parametrize(("key", "value"), [("time_to_live", 0), ("max_members", 0), ("assoc_depth", 0),
                                            ("max_channel_std", 0.0), ("min_channel_length", 0),
                                            ("positional", "maybe"), ("spread", "wide"), ("sigma", -1.0),
                                            ("embed_dim", 0)])
def test_bad_hyperparameters_name_their_key(key, value):
    with pytest.raises(ConfigError, match=rf"method\.{key}"):
        InReaCh.Config(**{key: value})


def test_online_inreach_protocol_observes_then_scores_and_leaves_the_first_images_unscored(tmp_path):
    record = run(small_run(tmp_path, "protocol=online_inreach", "method=inreach"))
    evaluation = record["config"]["protocol"]["evaluation"]
    assert evaluation["order"] == "observe_then_score" and evaluation["unscored"] == 5
    table = read_per_image(__import__("pathlib").Path(record["path"]), record)
    assert len(table) == record["data"]["stream"] - 5 and table["position"].tolist() == list(range(len(table)))
    assert record["checkpoints"][0]["observed"] > 5  # no checkpoint before anything is scored
    assert record["final"]["image_auroc"] > 0.5

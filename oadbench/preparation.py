"""Preparing a run: the config (as ``oadbench run`` composes it) -> a :class:`Prepared` run, resolved and validated.

Every validation error of a run happens here, before anything is written or any weight is loaded: unknown keys,
out-of-range values, a dataset that is not where the config says (ConfigError / DataError, each naming the key,
value or file). :func:`prepare` resolves the protocol, the method's config, the dataset's categories and
samples, the stream plan (a pure function of the seed), the input transform and the device; the run's identity
(what makes two runs the same run) and so its record's path follow from them.

A CPU run's identity has no device part, so CPU records keep their names; a CUDA run's identity names its device
type and numeric settings (:func:`oadbench.devices.numeric_identity`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from oadbench import devices
from oadbench.data import CategoryData, ImageTransform, get_dataset
from oadbench.errors import ConfigError, DataError
from oadbench.feature_store import FEATURE_DEFAULTS
from oadbench.features import DEFAULT_BACKBONE
from oadbench.method import Method, build_config, config_identity, get_method
from oadbench.protocol import ProtocolSpec
from oadbench.results import identity_hash, record_path
from oadbench.stream import StreamPlan, build_plan
from oadbench.tracking import WANDB_MODES
from oadbench.validate import check_bool, check_int, check_number

RUN_KEYS = ("protocol", "method", "dataset", "backbone", "image_size", "center_crop", "seed", "device",
            "precision", "results_dir", "force", "wandb", "progress", "threads", "features")

@dataclass
class Prepared:
    """A validated run, ready to execute."""

    config: dict[str, Any]  # resolved, plain
    spec: ProtocolSpec
    method_cls: type[Method]
    method_config: Any
    datas: list[CategoryData]
    plan: StreamPlan
    transform: ImageTransform
    device: torch.device
    identity: dict[str, Any]
    run_hash: str
    path: Path



def prepare(config: Mapping[str, Any]) -> Prepared:
    """Validate ``config`` and resolve everything a run needs; raises ConfigError/DataError on bad input."""
    cfg = {k: v for k, v in config.items()}
    unknown = [k for k in cfg if k not in RUN_KEYS]
    if unknown:
        raise ConfigError(unknown[0], "unknown configuration key", allowed=RUN_KEYS)

    proto = _mapping(cfg, "protocol")
    spec = ProtocolSpec.from_dict(proto, source=f"protocol '{proto.get('name', '?')}'")

    mcfg = _mapping(cfg, "method")
    method_cls = get_method(_str(mcfg, "name", "method.name"))
    method_config = build_config(method_cls, mcfg)

    dcfg = _mapping(cfg, "dataset")
    loader = get_dataset(_str(dcfg, "name", "dataset.name"))
    options = {k: v for k, v in dcfg.items() if k not in ("name", "root", "category")}
    for key in options:
        if key not in loader.options:
            raise ConfigError(f"dataset.{key}", f"unknown option of dataset '{loader.name}'",
                              allowed=["dataset.root", "dataset.category", *[f"dataset.{k}" for k in loader.options]])
    root = dcfg.get("root")
    if loader.root_option is not None:  # e.g. hf: dataset.path, an option (so it is part of the run's identity)
        if root is not None:
            raise ConfigError("dataset.root", f"is not used by dataset '{loader.name}'; give "
                              f"dataset.{loader.root_option}")
        root = options.get(loader.root_option)
        if root is None:
            raise ConfigError(f"dataset.{loader.root_option}", f"is required for dataset '{loader.name}'; "
                              f"expected:\n{loader.layout.rstrip()}")
    root = loader.resolve_root(root)
    if spec.categories is not None:
        categories = list(spec.categories)
    elif dcfg.get("category") is not None:
        categories = [str(dcfg["category"])]
    else:
        available = loader.categories(root, **options) if loader.root_option else loader.categories(root)
        if not available:
            raise DataError(f"dataset '{loader.name}' at {root}: no category found; expected layout:\n"
                            f"{loader.layout.rstrip()}")
        categories = [available[0]]
    datas = [loader.load(root, c, **options) for c in categories]

    seed = check_int(cfg.get("seed", 0), "seed", lo=0)
    plan = build_plan(spec, datas, seed)

    image_size = check_int(cfg.get("image_size", 256), "image_size", lo=32)
    crop = cfg.get("center_crop")
    if crop is not None:
        crop = check_int(crop, "center_crop", lo=16)
        if crop > image_size:
            raise ConfigError("center_crop", f"must be <= image_size ({image_size}), got {crop}")
    device = devices.resolve_device(str(cfg.get("device", "cpu")))
    precision = devices.check_precision(cfg.get("precision", devices.DEFAULT_PRECISION), device)

    bcfg = dict(cfg.get("backbone") or {})
    for key in bcfg:
        if key not in ("name", "weights"):
            raise ConfigError(f"backbone.{key}", "unknown key", allowed=["backbone.name", "backbone.weights"])
    backbone = {"name": str(bcfg.get("name", DEFAULT_BACKBONE)), "weights": str(bcfg.get("weights", "auto"))}

    wcfg = dict(cfg.get("wandb") or {})
    wandb_cfg = {"mode": wcfg.pop("mode", "offline"), "project": wcfg.pop("project", "oadbench"),
                 "entity": wcfg.pop("entity", None), "log_images": wcfg.pop("log_images", 4)}
    if wcfg:
        raise ConfigError(f"wandb.{next(iter(wcfg))}", "unknown key",
                          allowed=["wandb.mode", "wandb.project", "wandb.entity", "wandb.log_images"])
    if wandb_cfg["mode"] not in WANDB_MODES:
        raise ConfigError("wandb.mode", f"{wandb_cfg['mode']!r} is not valid", allowed=WANDB_MODES)
    check_int(wandb_cfg["log_images"], "wandb.log_images", lo=0)

    threads = cfg.get("threads")
    if threads is not None:
        check_int(threads, "threads", lo=1)
    force = cfg.get("force", False)
    if not isinstance(force, bool):
        raise ConfigError("force", f"must be true or false, got {force!r}")
    features = _features_config(cfg.get("features"))

    dataset_identity = {"name": loader.name, "categories": categories, "options": options}
    identity = {
        "protocol": spec.to_dict(),
        "method": {"name": method_cls.name, **config_identity(method_config)},
        "dataset": dataset_identity,
        "backbone": backbone,
        "input": {"image_size": image_size, "center_crop": crop},
        "seed": seed,
    }
    numeric = devices.numeric_identity(device, precision)
    if numeric is not None:  # only off the CPU: CPU identities, and so the names of CPU records, stay as they were
        identity["device"] = numeric
    run_hash = identity_hash(identity)
    results_dir = Path(str(cfg.get("results_dir", "results"))).expanduser()
    category_label = categories[0] if len(categories) == 1 else "+".join(categories)
    path = record_path(results_dir, spec.name, loader.name, method_cls.name, category_label, seed, run_hash)
    resolved = {
        "protocol": spec.to_dict(),
        "method": identity["method"],
        "dataset": {"name": loader.name, "root": str(root), "category": category_label, **options},
        "backbone": backbone,
        "image_size": image_size,
        "center_crop": crop,
        "seed": seed,
        "device": str(device),
        "precision": precision,
        "results_dir": str(results_dir),
        "force": force,
        "wandb": wandb_cfg,
        "progress": bool(cfg.get("progress", True)),
        "threads": threads,
        "features": features,
    }
    return Prepared(resolved, spec, method_cls, method_config, datas, plan, ImageTransform(image_size, crop),
                    device, identity, run_hash, path)


def _features_config(value: Any) -> dict[str, Any]:
    """``features.*`` with defaults filled in and checked (not part of a run's identity: the store changes no
    result)."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError("features", f"must be a mapping, got {value!r}")
    unknown = [k for k in value if k not in FEATURE_DEFAULTS]
    if unknown:
        raise ConfigError(f"features.{unknown[0]}", "unknown key", allowed=[f"features.{k}" for k in FEATURE_DEFAULTS])
    out = {**FEATURE_DEFAULTS, **value}
    check_bool(out["cache"], "features.cache")
    if out["cache_dir"] is not None and (not isinstance(out["cache_dir"], str) or not out["cache_dir"]):
        raise ConfigError("features.cache_dir", f"must be a directory path or null, got {out['cache_dir']!r}")
    gb = check_number(out["cache_max_gb"], "features.cache_max_gb")
    if not gb > 0:
        raise ConfigError("features.cache_max_gb", f"must be > 0, got {gb}")
    out["cache_max_gb"] = gb
    return out


def _mapping(cfg: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = cfg.get(key)
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping, got {value!r}")
    return dict(value)


def _str(cfg: Mapping[str, Any], key: str, label: str) -> str:
    value = cfg.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(label, f"must be a non-empty string, got {value!r}")
    return value


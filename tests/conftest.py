"""Shared fixtures: a private cache for the synthetic dataset and a helper composing run configs the way the CLI
does (Hydra + the config store)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# small synthetic variant used across tests: 12 normal training images, 6 normal + 2 per defect type test images
SMALL = {"n_train": 12, "n_test_good": 6, "n_test_defect": 2, "resolution": 64}


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
    """Keep the synthetic dataset and W&B files of the test session out of the user's cache."""
    cache = tmp_path_factory.mktemp("oadbench-cache")
    old = {k: os.environ.get(k) for k in ("OADBENCH_CACHE", "WANDB_DIR", "WANDB_SILENT")}
    os.environ["OADBENCH_CACHE"] = str(cache)
    os.environ["WANDB_DIR"] = str(cache)
    os.environ["WANDB_SILENT"] = "true"
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def compose(*overrides: str) -> dict:
    """The resolved run config for CLI-style overrides (as ``oadbench run`` builds it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize
    from omegaconf import OmegaConf

    from oadbench.config import PRIMARY, register_configs

    register_configs()
    with initialize(version_base="1.3", config_path=None):
        cfg = hydra_compose(config_name=PRIMARY, overrides=list(overrides))
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    return config


def small_run(results_dir: Path, *overrides: str) -> dict:
    """A fast run config: small synthetic dataset at 64 px, no progress bar, W&B disabled unless overridden."""
    base = [f"results_dir={results_dir}", "image_size=64", "progress=false", "wandb.mode=disabled",
            *(f"dataset.{k}={v}" for k, v in SMALL.items())]
    return compose(*base, *overrides)

"""Hydra configuration: the ``oadbench`` primary config and one config group per registry.

Groups are filled from what is installed, at start-up: ``protocol/<name>`` from the protocol YAML files,
``method/<name>`` from each registered method's ``Config`` defaults, ``dataset/<name>`` from each dataset
loader's options. So ``protocol=online_contaminated protocol.stream.contamination=0.2 method=padim
method.n_features=50 dataset=mtd dataset.root=...`` works without any YAML of our own, and a method dropped into
``methods/`` is selectable at once.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore

from oadbench.data import dataset_names, get_dataset
from oadbench.devices import DEFAULT_PRECISION
from oadbench.feature_store import FEATURE_DEFAULTS
from oadbench.features import DEFAULT_BACKBONE
from oadbench.method import config_defaults, get_method, method_names
from oadbench.protocol import ProtocolSpec, protocol_files, read_protocol_file

DEFAULT_PROTOCOL = "online_cold_start"
DEFAULT_METHOD = "padim"
DEFAULT_DATASET = "synthetic"
PRIMARY = "oadbench"


def primary_config() -> dict[str, Any]:
    return {
        "defaults": [
            {"protocol": DEFAULT_PROTOCOL},
            {"method": DEFAULT_METHOD},
            {"dataset": DEFAULT_DATASET},
            {"override hydra/job_logging": "none"},
            {"override hydra/hydra_logging": "none"},
            "_self_",
        ],
        "backbone": {"name": DEFAULT_BACKBONE, "weights": "auto"},
        "image_size": 256,
        "center_crop": None,
        "seed": 0,
        "device": "cpu",
        "precision": DEFAULT_PRECISION,
        "results_dir": "results",
        "force": False,
        "progress": True,
        "threads": None,
        "features": dict(FEATURE_DEFAULTS),
        "wandb": {"mode": "offline", "project": "oadbench", "entity": None, "log_images": 4},
        "hydra": {
            "run": {"dir": "."},
            "output_subdir": None,
            "job": {"chdir": False},
            "sweep": {"dir": "${results_dir}/multirun/${now:%Y-%m-%d_%H-%M-%S}-${oc.env:OADBENCH_SWEEP_ID,0}",
                      "subdir": "${hydra.job.num}"},  # the id keeps two sweeps started together apart
        },
    }


def register_configs(extra_protocols: dict[str, dict[str, Any]] | None = None) -> None:
    """Fill Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name=PRIMARY, node=primary_config())
    # every knob is stored (defaults filled in) so that any of them can be overridden from the command line
    protocols = {name: read_protocol_file(path) for name, path in protocol_files().items()}
    protocols.update(extra_protocols or {})
    for name, node in protocols.items():
        source = f"protocol '{name}'"
        # every protocol node has a drift list (empty: none), an evaluation order, an unscored count and a
        # decisions section, so that protocol.drift=, protocol.evaluation.order=, protocol.evaluation.unscored= and
        # protocol.decisions.protect= / .policy= can be overridden anywhere (records keep the last three only when
        # not the default; decisions only when protect is true)
        spec = ProtocolSpec.from_dict(node, source=source)
        stored = {"drift": [], **spec.to_dict()}
        stored["evaluation"] = {**stored["evaluation"], "order": spec.evaluation.order,
                                "unscored": spec.evaluation.unscored}
        stored["decisions"] = {"protect": spec.decisions.protect, "policy": spec.decisions.policy}
        cs.store(group="protocol", name=name, node=stored)
    for name in method_names():
        cs.store(group="method", name=name, node={"name": name, **config_defaults(get_method(name))})
    for name in dataset_names():
        cs.store(group="dataset", name=name, node=get_dataset(name).config_defaults())

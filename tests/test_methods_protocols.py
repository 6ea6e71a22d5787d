"""Every shipped method under every shipped protocol (tiny synthetic data): the run finishes, every metric is
finite, cold-start checkpoints are scored before any observation, footprints are reported."""

from __future__ import annotations

import math

import pytest

from oadbench.protocol import load_protocol
from oadbench.runner import run
from tests.conftest import small_run

METHODS = ["padim", "patchcore", "cfa", "lemo", "inreach"]
PROTOCOLS = {
    "offline": [],
    "online_cold_start": [],
    "online_contaminated": ["protocol.stream.contamination=0.1"],
    "online_prequential": [],
    "few_shot": ["protocol.warmup.k=2"],
    "continual": ["protocol.categories=[washer,fabric]"],
    "online_drift": [],
    "offline_drift": [],
}
FAST = {"cfa": ["method.epochs=2"], "patchcore": ["method.budget=600"], "lemo": ["method.epochs=2"]}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("method", METHODS)
def test_method_runs_under_protocol(tmp_path, method, protocol):
    record = run(small_run(tmp_path, f"protocol={protocol}", f"method={method}", *PROTOCOLS[protocol],
                           *FAST.get(method, [])))
    assert record["status"] == "finished"
    spec = load_protocol(protocol)
    for m in spec.metrics:
        assert math.isfinite(record["final"][m]), m
    assert all(c["footprint_bytes"] >= 0 for c in record["checkpoints"])
    if spec.training == "online" and spec.evaluation.mode == "holdout" and 0 in spec.evaluation.checkpoints:
        assert record["checkpoints"][0]["observed"] == 0
    if spec.training == "online":
        assert record["checkpoints"][-1]["footprint_bytes"] > 0
    if spec.drift:
        assert all(math.isfinite(record["final_initial"][m]) for m in spec.metrics)
        assert record["checkpoints"][-1]["drift_state"] and any(record["checkpoints"][-1]["drift_state"].values())

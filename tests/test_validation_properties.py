"""Property-based: malformed protocol specs and run overrides always end in a clear validation error naming
the key (a ConfigError whose key is a real configuration key), never in an exception from deep inside."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from oadbench.errors import ConfigError, OadbenchError
from oadbench.protocol import ProtocolSpec, load_protocol
from oadbench.runner import prepare
from tests.conftest import small_run

BASES = {name: load_protocol(name).to_dict() for name in ("online_contaminated", "online_prequential", "few_shot",
                                                           "continual", "online_drift")}


def leaf_paths(node: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, dict):
            out.extend(leaf_paths(value, path + "."))
    return out


KNOWN = sorted({p for base in BASES.values() for p in leaf_paths(base)}
               | {f"drift.{k}" for k in ("kind", "magnitude", "schedule", "color", "direction")}
               | {f"drift.schedule.{k}" for k in ("type", "at", "start", "end", "period", "phase")})

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.one_of(st.integers(-5, 500), st.text(max_size=3)), max_size=5),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def set_path(node: dict, path: str, value: object, delete: bool) -> None:
    *parents, last = path.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    if delete:
        node.pop(last, None)
    else:
        node[last] = value


@settings(max_examples=150, deadline=None, derandomize=True)  # the same examples in every CI run
@given(base=st.sampled_from(sorted(BASES)), mutations=st.lists(
    st.tuples(st.sampled_from(KNOWN + ["stream.speed", "bogus", "evaluation.when"]), junk, st.booleans()),
    min_size=1, max_size=3))
def test_malformed_protocol_specs_fail_with_an_error_naming_a_key(base, mutations):
    spec = copy.deepcopy(BASES[base])
    for path, value, delete in mutations:
        set_path(spec, path, value, delete)
    try:
        ProtocolSpec.from_dict(spec, source="test")
    except ConfigError as exc:
        assert exc.key in str(exc)
        source, _, key = exc.key.rpartition(": ")
        key = re.sub(r"\[\d+\]", "", key)  # an item of a list: evaluation.checkpoints[2], drift[0].kind
        assert source == "test", exc.key  # the error says which protocol file or node is at fault
        bogus = {"stream.speed", "bogus", "evaluation.when"}
        assert key in KNOWN or key in bogus or key.rpartition(".")[0] in KNOWN, exc.key  # or a junk sub-key
        path, value, delete = mutations[0]
        if len(mutations) == 1 and not delete and isinstance(value, dict) and not isinstance(
                BASES[base].get(path), dict) and "." not in path:
            assert key == path  # a mapping where a scalar belongs is blamed on that key


OVERRIDE_KEYS = ["seed", "image_size", "threads", "force", "device", "progress", "center_crop", "wandb.mode",
                 "wandb.log_images", "backbone.weights", "protocol.training", "protocol.stream.contamination",
                 "protocol.stream.batch_size", "protocol.stream.order", "protocol.stream.max_length",
                 "protocol.warmup.k", "protocol.evaluation.checkpoints", "protocol.evaluation.batch_size",
                 "protocol.metrics", "method.n_features", "method.sigma", "dataset.category", "features.cache",
                 "features.cache_max_gb", "features.cache_dir", "protocol.drift"]
values = st.one_of(
    st.just("null"), st.sampled_from(["true", "false"]), st.integers(-10**6, 10**6).map(str),
    st.floats(-1e3, 1e3, allow_nan=False).map(lambda f: f"{f:.3f}"),
    st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8),
    st.lists(st.integers(-3, 300), max_size=4).map(lambda xs: "[" + ",".join(map(str, xs)) + "]"),
)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props")


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.tuples(st.sampled_from(OVERRIDE_KEYS), values), min_size=1, max_size=3,
                          unique_by=lambda kv: kv[0]))
@example(overrides=[("protocol.warmup.k", "13")])  # more than the 12 training images: found by a random run
@example(overrides=[("protocol.stream.max_length", "13")])
def test_malformed_overrides_fail_with_an_error_naming_the_key(results_dir, overrides):
    args = [f"{k}={v}" for k, v in overrides]
    try:
        prepare(small_run(results_dir, "method=padim", *args))
    except ConfigError as exc:
        assert exc.key in str(exc)
        keys = {k for k, _ in overrides}
        key = re.sub(r"^protocol '[^']*': ", "protocol.", exc.key)  # "protocol 'name': stream.batch_size"
        key = re.sub(r"\[\d+\]", "", key)
        # the blamed key is one we set, or a key of the same group that a changed value made inconsistent
        assert key in keys or key.split(".")[0] in {k.split(".")[0] for k in keys if "." in k}, (exc.key, args)
    except OadbenchError as exc:  # data errors (e.g. more stream anomalies than the dataset has) say why
        assert str(exc)

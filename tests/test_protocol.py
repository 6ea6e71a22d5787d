"""Protocol specs: every shipped protocol loads; bad specs fail with an error naming the key."""

from __future__ import annotations

import copy

import pytest

from oadbench.errors import ConfigError
from oadbench.protocol import METRICS, ProtocolSpec, load_protocol, protocol_names

SHIPPED = ["offline", "online_cold_start", "online_contaminated", "online_prequential", "few_shot", "continual",
           "contaminated_prequential"]

BASE = {
    "name": "p",
    "training": "online",
    "stream": {"pool": "train", "contamination": 0.1, "order": "shuffled", "batch_size": 1},
    "evaluation": {"mode": "holdout", "checkpoints": [0, 1, 2]},
}


def test_every_shipped_protocol_loads():
    names = protocol_names()
    for name in SHIPPED:
        assert name in names
        spec = load_protocol(name)
        assert spec.name == name
        assert set(spec.metrics) <= set(METRICS)
    assert load_protocol("online_contaminated").stream.contamination == pytest.approx(0.1)
    assert load_protocol("online_prequential").evaluation.mode == "prequential"
    assert load_protocol("offline").training == "offline"
    assert load_protocol("few_shot").warmup.k > 0


def test_unknown_protocol_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        load_protocol("no_such_protocol")
    assert "online_cold_start" in str(err.value) and "no_such_protocol" in str(err.value)


def _with(path: str, value):
    spec = copy.deepcopy(BASE)
    node = spec
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return spec


@pytest.mark.parametrize(
    "path,value,needle",
    [
        ("stream.order", "random", "shuffled"),
        ("stream.pool", "val", "train+test"),
        ("stream.contamination", 1.0, "[0.0, 1.0)"),
        ("stream.contamination", -0.1, "[0.0, 1.0)"),
        ("stream.contamination", "lots", "number"),
        ("stream.batch_size", 0, ">= 1"),
        ("stream.max_length", -1, ">= 0"),
        ("stream.overlap", "yes", "true or false"),
        ("stream.shuffle", True, "unknown key"),
        ("warmup.k", 1.5, "integer"),
        ("training", "semi", "offline"),
        ("evaluation.mode", "online", "prequential"),
        ("evaluation.checkpoints", "log10", "log2"),
        ("evaluation.checkpoints", [1, -2], ">= 0"),
        ("metrics", ["image_auroc", "iou"], "aupro"),
        ("seeds", "0", "list"),
        ("categories", "bottle", "list"),
        ("colour", "red", "unknown key"),
    ],
)
def test_bad_values_name_the_key(path, value, needle):
    with pytest.raises(ConfigError) as err:
        ProtocolSpec.from_dict(_with(path, value), source="protocol 'p'")
    message = str(err.value)
    leaf = path.split(".")[-1]
    assert leaf in message and needle in message


def test_contamination_needs_train_pool():
    spec = _with("stream.pool", "train+test")
    with pytest.raises(ConfigError, match="stream.contamination"):
        ProtocolSpec.from_dict(spec)
    spec["stream"]["contamination"] = None
    assert ProtocolSpec.from_dict(spec).stream.contamination is None


def test_checkpoints_schedule():
    spec = ProtocolSpec.from_dict(_with("evaluation.checkpoints", "log2"))
    assert spec.checkpoints(10) == [0, 1, 2, 4, 8, 10]
    listed = ProtocolSpec.from_dict(_with("evaluation.checkpoints", [5, 1, 50]))
    assert listed.checkpoints(20) == [1, 5, 20]
    assert listed.checkpoints(20, task_ends=[7, 20]) == [1, 5, 7, 20]


def test_round_trip():
    spec = load_protocol("online_cold_start")
    assert ProtocolSpec.from_dict(spec.to_dict()) == spec


def test_evaluation_order_is_prequential_only_and_written_only_when_not_the_default():
    preq = {**BASE, "stream": {"pool": "train+test", "contamination": None}, "evaluation": {"mode": "prequential"}}
    default = ProtocolSpec.from_dict(preq)
    assert default.evaluation.order == "score_then_observe" and "order" not in default.to_dict()["evaluation"]
    explicit = ProtocolSpec.from_dict({**preq, "evaluation": {"mode": "prequential", "order": "score_then_observe"}})
    assert explicit.to_dict() == default.to_dict()  # the default never changes a run's identity
    ots = ProtocolSpec.from_dict({**preq, "evaluation": {"mode": "prequential", "order": "observe_then_score"}})
    assert ots.to_dict()["evaluation"]["order"] == "observe_then_score"
    assert ProtocolSpec.from_dict(ots.to_dict()) == ots
    with pytest.raises(ConfigError, match=r"evaluation\.order.*allowed: score_then_observe, observe_then_score"):
        ProtocolSpec.from_dict({**preq, "evaluation": {"mode": "prequential", "order": "later"}})
    with pytest.raises(ConfigError, match=r"evaluation\.order: observe_then_score applies to prequential"):
        ProtocolSpec.from_dict({**BASE, "evaluation": {"mode": "holdout", "order": "observe_then_score"}})
    assert "unscored" not in default.to_dict()["evaluation"]  # 0, the default, is not written either
    skip = ProtocolSpec.from_dict({**preq, "evaluation": {"mode": "prequential", "unscored": 5}})
    assert skip.to_dict()["evaluation"]["unscored"] == 5 and ProtocolSpec.from_dict(skip.to_dict()) == skip
    with pytest.raises(ConfigError, match=r"evaluation\.unscored: leaves stream images unscored in prequential"):
        ProtocolSpec.from_dict({**BASE, "evaluation": {"mode": "holdout", "unscored": 5}})
    with pytest.raises(ConfigError, match=r"evaluation\.unscored"):
        ProtocolSpec.from_dict({**preq, "evaluation": {"mode": "prequential", "unscored": -1}})

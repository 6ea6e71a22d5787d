"""Protected learning (``decisions.protect``): a prequential run that withholds from ``observe`` every stream image
its label-free policy rejects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from oadbench.cells import protocol_label
from oadbench.decisions import decide, parse_policy
from oadbench.errors import ConfigError
from oadbench.method import get_method
from oadbench.per_image import read_per_image
from oadbench.protocol import ProtocolSpec
from oadbench.runner import run

PREQUENTIAL = Path(__file__).resolve().parent / "records" / \
    "online_prequential/synthetic/lemo/capsule-seed0-ec53ca1de449fa6f.json"
POLICY = "quantile:q=0.7,min_history=5"  # rejects about 30 % of the images after the first five


def test_rejected_images_never_reach_observe(tmp_path, monkeypatch):
    """Every call the method gets is recorded with the features of its batch: each scored stream image is
    observed right after (the same features) exactly when the sidecar says it was not withheld, the withheld
    column equals the policy replayed on the sidecar's scores, the record counts them, and the same run
    unprotected is a different record in a different table."""
    cls, calls = get_method("patchcore"), []
    for name in ("observe", "score"):
        original = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, batch, _f=original, _n=name:
                            calls.append((_n, batch.features[0].clone())) or _f(self, batch))
    old = json.loads(PREQUENTIAL.read_text())["config"]
    config = {**old, "results_dir": str(tmp_path), "method": {"name": "patchcore"}}
    config["dataset"] = {k: v for k, v in config["dataset"].items() if k != "root"}
    plain = run(config)
    calls.clear()
    protocol = {**config["protocol"], "decisions": {"protect": True, "policy": POLICY}}
    protected = run({**config, "protocol": protocol})

    table = read_per_image(Path(protected["path"]), protected)
    withheld = table["withheld"].astype(bool)
    assert 0 < withheld.sum() < len(withheld)
    assert np.array_equal(withheld, decide(table["score"], parse_policy(POLICY))[0])  # runner == replay
    n = len(table)
    stream = calls[len(calls) - (2 * n - int(withheld.sum())):]  # the stream's calls, after the warm-up's
    j = 0
    for w in withheld:
        name, scored = stream[j]
        assert name == "score"
        j += 1
        if not w:
            assert stream[j][0] == "observe" and torch.equal(stream[j][1], scored)
            j += 1
    assert j == len(stream)
    anomalous = int(table["label"][withheld].sum())
    assert protected["decisions"] == {"policy": parse_policy(POLICY).label(), "withheld": int(withheld.sum()),
                                      "withheld_normal": int(withheld.sum()) - anomalous,
                                      "withheld_anomalous": anomalous}
    assert protected["checkpoints"][-1]["observed"] == plain["checkpoints"][-1]["observed"]  # positions on the line
    assert protected["id"] != plain["id"] and "decisions" not in plain["config"]["protocol"]
    assert "decisions" not in plain and "withheld" not in read_per_image(Path(plain["path"]), plain).columns
    assert protocol_label(protected["config"]["protocol"], {}) == \
        "online_prequential_protected_quantile-min_history-5-q-0.7"


@pytest.mark.parametrize(("decisions", "evaluation", "key"), [
    ({"protect": True}, {"mode": "holdout"}, "decisions.protect"),
    ({"protect": True}, {"mode": "prequential", "order": "observe_then_score"}, "decisions.protect"),
    ({"protect": "yes"}, {"mode": "prequential"}, "decisions.protect"),
    ({"protect": True, "policy": "median"}, {"mode": "prequential"}, "decisions.policy"),
    ({"protect": True, "policy": "quantile:q=2"}, {"mode": "prequential"}, "decisions.quantile.q"),
    ({"protect": True, "budget": 3}, {"mode": "prequential"}, "decisions.budget"),
])
def test_protection_settings_are_checked(decisions, evaluation, key):
    with pytest.raises(ConfigError) as err:
        ProtocolSpec.from_dict({"name": "p", "stream": {"pool": "train+test"}, "evaluation": evaluation,
                                "decisions": decisions}, source="p")
    assert f"p: {key}" in str(err.value)


def test_the_policy_is_written_in_its_canonical_form_and_only_when_protecting():
    base = {"name": "p", "stream": {"pool": "train+test"}, "evaluation": {"mode": "prequential"}}
    off = ProtocolSpec.from_dict({**base, "decisions": {"policy": "pot"}})
    on = ProtocolSpec.from_dict({**base, "decisions": {"protect": True, "policy": "quantile: q=0.99 , window=None"}})
    assert "decisions" not in off.to_dict()
    assert on.to_dict()["decisions"] == {"protect": True, "policy": "quantile"}

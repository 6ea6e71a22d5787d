"""Drift: schedules and states, deterministic transforms, masks moving with images, evaluation in the current and
the initial state, unchanged records without drift, named errors, and a controlled case where it matters."""

from __future__ import annotations

import json
import math

import pytest
import torch

from oadbench.drift import parse_drift
from oadbench.errors import ConfigError
from oadbench.protocol import ProtocolSpec, load_protocol
from oadbench.results import identity_hash
from oadbench.runner import run
from tests.conftest import compose, small_run
from tests.test_published import RECORDS


def drift(*components: dict):
    return parse_drift(list(components), "test")


def test_schedules_give_the_documented_intensities():
    d = drift({"kind": "brightness", "magnitude": 0.4, "schedule": {"type": "gradual", "start": 0.5, "end": 1.0}},
              {"kind": "rotation", "magnitude": 10, "schedule": {"type": "abrupt", "at": 0.25}},
              {"kind": "tint", "magnitude": 0.2, "schedule": {"type": "recurring", "period": 0.5}})
    assert d.state(0.0) == (0.0, 0.0, 0.0)
    assert d.state(0.25) == (0.0, 10.0, pytest.approx(0.2))  # half a period: the recurring peak
    assert d.state(0.5) == (0.0, 10.0, pytest.approx(0.0, abs=1e-12))
    assert d.state(0.75) == (pytest.approx(0.2), 10.0, pytest.approx(0.2))
    assert d.state(1.0)[0] == pytest.approx(0.4) and d.state(1.0) == d.state(1.7)  # clamped at the end
    assert d.describe(d.state(1.0)) == {"0_brightness": pytest.approx(0.4), "1_rotation": 10.0,
                                        "2_tint": pytest.approx(0.0, abs=1e-12)}
    assert ProtocolSpec.from_dict({**load_protocol("online_drift").to_dict()}).drift == load_protocol(
        "online_drift").drift


def test_transforms_are_pure_functions_of_image_id_state_and_seed():
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    d = drift({"kind": "noise", "magnitude": 0.05, "schedule": {"type": "abrupt", "at": 0.0}},
              {"kind": "brightness", "magnitude": 0.2, "schedule": {"type": "abrupt", "at": 0.0}})
    a, _ = d.apply(img, None, d.state(1.0), "cat/img1", seed=0)
    b, _ = d.apply(img.clone(), None, d.state(1.0), "cat/img1", seed=0)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and not torch.equal(a, img)
    assert not torch.equal(a, d.apply(img, None, d.state(1.0), "cat/img2", seed=0)[0])  # noise per image
    assert not torch.equal(a, d.apply(img, None, d.state(1.0), "cat/img1", seed=1)[0])  # and per seed
    same, mask = d.apply(img, None, d.initial(), "cat/img1", seed=0)
    assert same is img and mask is None  # the initial state leaves images untouched
    bright = drift({"kind": "brightness", "magnitude": 0.5, "schedule": {"type": "abrupt", "at": 0.0}})
    out, _ = bright.apply(torch.full((3, 4, 4), 100, dtype=torch.uint8), None, (0.5,), "x", 0)
    assert int(out[0, 0, 0]) == 150
    warm = drift({"kind": "tint", "magnitude": 0.1, "color": [1, 0, -1], "schedule": {"type": "abrupt", "at": 0}})
    out, _ = warm.apply(torch.full((3, 2, 2), 100, dtype=torch.uint8), None, (0.1,), "x", 0)
    assert out[:, 0, 0].tolist() == [110, 100, 90]


@pytest.mark.parametrize("component,move", [
    ({"kind": "rotation", "magnitude": 90.0}, lambda x: torch.rot90(x, k=1, dims=(-2, -1))),  # counter-clockwise
    ({"kind": "translation", "magnitude": 0.25, "direction": [1, 0]}, lambda x: torch.roll(x, 8, dims=-1)),
    ({"kind": "translation", "magnitude": 0.25, "direction": [0, 1]}, lambda x: torch.roll(x, 8, dims=-2)),
])
def test_geometric_drift_moves_masks_exactly_with_images(component, move):
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    img[:, 4:10, 6:12] = 200
    mask[4:10, 6:12] = True
    d = drift({**component, "schedule": {"type": "abrupt", "at": 0.0}})
    out, out_mask = d.apply(img, mask, d.state(1.0), "x", 0)
    assert torch.equal(out_mask, move(mask))
    assert torch.equal(out[0] > 100, out_mask)  # the defect region went where its mask went


def test_zoom_keeps_the_centre_and_grows_the_mask():
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[12:20, 12:20] = True
    img[:, 12:20, 12:20] = 255
    d = drift({"kind": "scale", "magnitude": 1.0, "schedule": {"type": "abrupt", "at": 0.0}})
    out, out_mask = d.apply(img, mask, d.state(1.0), "x", 0)
    assert int(out_mask.sum()) == 4 * int(mask.sum()) and bool(out_mask[15, 15])
    assert torch.equal(out[0] > 127, out_mask)


def test_checkpoints_evaluate_in_the_state_at_their_position_and_in_the_initial_one(tmp_path):
    spec = "[{kind:brightness,magnitude:0.3,schedule:{type:gradual,start:0.5,end:1.0}}]"
    record = run(small_run(tmp_path, "method=padim", f"protocol.drift={spec}"))
    d = ProtocolSpec.from_dict(record["config"]["protocol"]).drift
    total = record["data"]["stream"]
    for c in record["checkpoints"]:
        assert c["drift_state"] == {"0_brightness": pytest.approx(d.state(c["observed"] / total)[0])}
        if c["observed"] <= total / 2:  # nothing has drifted yet: both scorings are the same
            assert c["metrics"] == c["metrics_initial"]
    assert record["final"] == record["checkpoints"][-1]["metrics"]
    assert record["final_initial"] == record["checkpoints"][-1]["metrics_initial"]
    drifted = [c for c in record["checkpoints"] if c["observed"] > total / 2]
    # each drifted checkpoint extracts its drifted evaluation split: distinct images grow by eval per state
    n_eval = record["data"]["eval"]
    assert record["data"]["distinct_images"] == total + n_eval * (1 + len(drifted))
    cost = record["cost"]
    assert cost["backbone_images"] + cost["feature_store_hits"] == record["data"]["distinct_images"]
    assert cost["score"]["images"] == n_eval * (len(record["checkpoints"]) + len(drifted))


def test_prequential_images_are_scored_in_their_own_state(tmp_path):
    spec = "[{kind:rotation,magnitude:20,schedule:{type:abrupt,at:0.5}}]"
    record = run(small_run(tmp_path, "method=padim", "protocol=online_prequential", f"protocol.drift={spec}"))
    plain = run(small_run(tmp_path / "plain", "method=padim", "protocol=online_prequential"))
    assert record["status"] == "finished" and "final_initial" not in record
    assert record["data"]["distinct_images"] == plain["data"]["distinct_images"]  # each streamed once
    half = [c for c in record["checkpoints"] if c["observed"] <= record["data"]["stream"] / 2]
    assert [c["metrics"] for c in half] == [c["metrics"] for c in plain["checkpoints"][:len(half)]]
    assert record["final"] != plain["final"]


def test_without_drift_records_keep_their_names_and_contents(tmp_path):
    """The committed records were written before drift existed: their protocols still parse to the same
    identity, so every record keeps its name; a run without drift has no drift key anywhere."""
    records = sorted(RECORDS.rglob("*.json"))[:: max(1, len(list(RECORDS.rglob("*.json"))) // 25)]
    if not records:
        pytest.skip("no committed records")
    for path in records:
        rec = json.loads(path.read_text())
        protocol = ProtocolSpec.from_dict(rec["identity"]["protocol"]).to_dict()
        assert protocol == rec["identity"]["protocol"], path
        assert identity_hash({**rec["identity"], "protocol": protocol}) == rec["id"], path
    a = run(small_run(tmp_path / "a", "method=padim"))
    b = run(small_run(tmp_path / "b", "method=padim", "protocol.drift=[]"))
    assert a["id"] == b["id"] and "drift" not in a["config"]["protocol"] and "final_initial" not in a
    assert all("metrics_initial" not in c and "drift_state" not in c for c in a["checkpoints"])
    for key in ("checkpoints", "final", "summary", "data", "identity"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("bad,key", [
    ([{"kind": "sunlight", "magnitude": 1, "schedule": {"type": "abrupt", "at": 0.5}}], "drift[0].kind"),
    ([{"kind": "brightness", "magnitude": -2, "schedule": {"type": "abrupt", "at": 0.5}}], "drift[0].magnitude"),
    ([{"kind": "brightness", "magnitude": "a", "schedule": {"type": "abrupt", "at": 0.5}}], "drift[0].magnitude"),
    ([{"kind": "brightness", "magnitude": 0.1, "schedule": {"type": "sudden"}}], "drift[0].schedule.type"),
    ([{"kind": "brightness", "magnitude": 0.1, "schedule": {"type": "abrupt", "at": 1.5}}], "drift[0].schedule.at"),
    ([{"kind": "blur", "magnitude": 1, "schedule": {"type": "gradual", "start": 0.6, "end": 0.4}}],
     "drift[0].schedule.end"),
    ([{"kind": "blur", "magnitude": 1, "schedule": {"type": "recurring", "period": 0}}], "drift[0].schedule.period"),
    ([{"kind": "blur", "magnitude": 1, "schedule": {"type": "abrupt", "at": 0.5, "end": 1}}],
     "drift[0].schedule.end"),
    ([{"kind": "tint", "magnitude": 0.1, "color": [1, 0], "schedule": {"type": "abrupt", "at": 0.5}}],
     "drift[0].color"),
    ([{"kind": "brightness", "magnitude": 0.1, "color": [1, 0, 0], "schedule": {"type": "abrupt", "at": 0.5}}],
     "drift[0].color"),
    ([{"kind": "noise", "magnitude": 0.1}], "drift[0].schedule"),
    ({"kind": "noise"}, "drift"),
])
def test_invalid_drift_specs_name_the_key(bad, key):
    with pytest.raises(ConfigError) as err:
        ProtocolSpec.from_dict({**load_protocol("online_cold_start").to_dict(), "drift": bad}, source="p")
    assert err.value.key == f"p: {key}"


def test_shipped_drift_protocols():
    online, offline = load_protocol("online_drift"), load_protocol("offline_drift")
    assert online.training == "online" and offline.training == "offline"
    assert online.drift.state(1.0) == offline.drift.state(1.0) != online.drift.initial()  # the same end state
    assert not any(offline.drift.state(1 - 1e-9))  # no training image of offline_drift is drifted
    cold, off = load_protocol("online_cold_start").to_dict(), load_protocol("offline").to_dict()
    for spec, base in ((online, cold), (offline, off)):
        mine = spec.to_dict()
        assert {k: v for k, v in mine.items() if k not in ("name", "description", "drift")} == {
            k: v for k, v in base.items() if k not in ("name", "description")}


def test_offline_padim_degrades_under_brightness_drift_and_online_padim_recovers_more(tmp_path):
    """A controlled case: the synthetic capsule at 128 px, 40 training images, 25 % brighter."""
    base = ["image_size=128", "progress=false", "wandb.mode=disabled", "dataset.n_train=40", "dataset.n_test_good=10",
            "dataset.n_test_defect=3", "dataset.resolution=128", "dataset.category=capsule", "method=padim"]
    off = run(compose(*base, f"results_dir={tmp_path / 'off'}", "protocol=offline",
                      "protocol.drift=[{kind:brightness,magnitude:0.25,schedule:{type:abrupt,at:1.0}}]"))
    on = run(compose(*base, f"results_dir={tmp_path / 'on'}", "protocol=online_cold_start",
                     "protocol.evaluation.checkpoints=[]",
                     "protocol.drift=[{kind:brightness,magnitude:0.25,schedule:{type:gradual,start:0.5,end:1.0}}]"))
    loss = off["final_initial"]["image_auroc"] - off["final"]["image_auroc"]
    assert loss > 0.1
    assert on["final"]["image_auroc"] - off["final"]["image_auroc"] > loss / 2
    assert math.isfinite(on["final_initial"]["image_auroc"])

"""Decision metrics against counts made by hand, and the label-using references against sklearn's definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from oadbench.metrics.decision import decision_metrics, hindsight_references


def test_decision_metrics_are_the_line_counts():
    labels = np.array([0] * 8 + [1] * 4)
    rejected = np.array([1, 0, 0, 0, 0, 0, 0, 0] + [1, 1, 1, 0], dtype=bool)  # 1 false alarm, 1 miss
    m = decision_metrics(labels, rejected)
    assert m["false_alarm_rate"] == 1 / 8 and m["miss_rate"] == 1 / 4
    assert m["precision"] == precision_score(labels, rejected) == 3 / 4
    assert m["recall"] == recall_score(labels, rejected) and m["f1"] == pytest.approx(f1_score(labels, rejected))
    assert m["rejections_per_1000"] == 1000 * 4 / 12
    clean = decision_metrics(np.zeros(5), np.zeros(5, bool))  # no defect, nothing rejected
    assert clean["false_alarm_rate"] == 0 and math.isnan(clean["miss_rate"]) and math.isnan(clean["precision"])
    with pytest.raises(ValueError, match="differ in shape"):
        decision_metrics(labels, rejected[:3])


def test_hindsight_references_are_the_best_thresholds_in_hindsight():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.35, 0.75, 0.95])
    labels = np.array([0] * 9 + [1] * 3)
    ref = hindsight_references(scores, labels)
    # every threshold s >= t by brute force
    best_f1 = max(f1_score(labels, scores >= t) for t in scores)
    recall_at = max(np.mean(scores[labels == 1] >= t) for t in scores if np.mean(scores[labels == 0] >= t) <= 0.01)
    fa_at = min(np.mean(scores[labels == 0] >= t) for t in scores if np.mean(scores[labels == 1] >= t) >= 0.99)
    assert ref["hindsight_f1"] == pytest.approx(best_f1)
    assert ref["recall_at_1pct_false_alarms"] == pytest.approx(recall_at) == 1 / 3
    assert ref["false_alarms_at_99pct_recall"] == pytest.approx(fa_at) == 6 / 9
    assert all(math.isnan(v) for v in hindsight_references(scores, np.zeros(12)).values())


def test_a_policy_replayed_on_a_committed_prequential_record(tmp_path):
    """The committed test record's stream: decisions in stream order from its sidecar, metrics whole and at its
    checkpoints, equal to recomputing them from the sidecar's rows by hand."""
    import json
    from pathlib import Path

    from oadbench.decisions import decide, parse_policy
    from oadbench.errors import DataError
    from oadbench.per_image import read_per_image
    from oadbench.stream_decisions import replay

    records = Path(__file__).parent / "records"
    path = next((records / "online_prequential").rglob("*.json"))
    record = json.loads(path.read_text())
    policy = parse_policy("quantile:q=0.9,min_history=10")
    result = replay(path, record, policy)
    table = read_per_image(path, record)
    order = np.argsort(table["position"])
    rejected, _ = decide(table["score"][order], policy)
    np.testing.assert_array_equal(result.rejected, rejected)
    assert result.final["rejections_per_1000"] == pytest.approx(1000 * rejected.mean())
    assert result.curve[-1][0] == len(table) and result.curve[-1][1] == decision_metrics(result.labels, rejected)
    holdout = next((records / "online_cold_start").rglob("*.json"))
    with pytest.raises(DataError, match="no per-image stream results"):
        replay(holdout, json.loads(holdout.read_text()), policy)


def test_oadbench_decisions_on_committed_records_matches_the_leaderboard_columns(tmp_path, capsys):
    """``oadbench decisions`` with the default policy on the committed InReaCh prequential records (with stream
    results): per-run rates whose seed means are the committed leaderboard table's false-alarm and miss columns;
    a holdout record beside them is passed over and said."""
    import csv
    from pathlib import Path

    from oadbench.cli import main
    from oadbench.decisions import DEFAULT_POLICY

    root = Path(__file__).resolve().parents[1] / "leaderboards" / "inreach"
    records = root / "records" / "online_prequential" / "mvtec" / "inreach"
    holdout = Path(__file__).parent / "records" / "online_cold_start"
    out = tmp_path / "d.csv"
    assert main(["decisions", str(records), str(holdout), "--policy", DEFAULT_POLICY, "--out", str(out)]) == 0
    assert "1 finished record(s) without per-image stream results passed over" in capsys.readouterr().out
    rows = [r for r in csv.DictReader(out.open()) if r["protocol"] == "online_prequential"
            and r["category"] == "transistor"]
    assert sorted(int(r["seed"]) for r in rows) == [0, 1, 2]
    table = next(r for r in csv.DictReader((root / "tables" / "online_prequential" / "mvtec.csv").open())
                 if r["method"] == "inreach" and r["category"] == "transistor")
    for key in ("false_alarm_rate", "miss_rate"):
        assert float(table[f"{key}_mean"]) == pytest.approx(np.mean([float(r[key]) for r in rows]), abs=5e-5)
    curves = [r for r in csv.DictReader((tmp_path / "d_curves.csv").open()) if r["record"] == rows[0]["record"]]
    assert [int(r["scored"]) for r in curves] == sorted(int(r["scored"]) for r in curves)
    assert int(curves[-1]["scored"]) == int(rows[0]["scored"])  # the last checkpoint: the whole stream
    assert curves[-1]["miss_rate"] == rows[0]["miss_rate"]


def test_labels_never_change_a_threshold_or_a_decision(monkeypatch):
    """The committed prequential record replayed with its labels shuffled: identical thresholds and decisions
    (only the metrics, which read the labels, change)."""
    import json
    from pathlib import Path

    from oadbench import stream_decisions
    from oadbench.decisions import parse_policy
    from oadbench.per_image import PerImage, read_per_image

    path = next((Path(__file__).parent / "records" / "online_prequential").rglob("*.json"))
    record = json.loads(path.read_text())
    policy = parse_policy("robust:k=1,min_history=5")
    before = stream_decisions.replay(path, record, policy)
    table = read_per_image(path, record)
    shuffled = PerImage(table.kind, {**table.columns,
                                     "label": np.random.default_rng(0).permutation(table["label"])})
    monkeypatch.setattr(stream_decisions, "read_per_image", lambda *_: shuffled)
    after = stream_decisions.replay(path, record, policy)
    np.testing.assert_array_equal(after.thresholds, before.thresholds)
    np.testing.assert_array_equal(after.rejected, before.rejected)
    assert not np.array_equal(after.labels, before.labels)

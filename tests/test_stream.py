"""Stream plans: exact contamination, no leakage into evaluation, orders, determinism, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from oadbench.data.sample import CategoryData, Sample
from oadbench.errors import ConfigError
from oadbench.protocol import ProtocolSpec
from oadbench.stream import build_plan, plan_digest


def fake_category(n_train=100, n_good=20, defects=(("scratch", 30), ("stain", 30), ("hole", 20)), name="cat"):
    def s(split, defect, i):
        label = 0 if defect == "good" else 1
        return Sample(id=f"fake/{name}/{split}/{defect}/{i:03d}", image_path=Path(f"/nonexistent/{split}/{i}.png"),
                      label=label, category=name, defect_type=defect, split=split)

    train = [s("train", "good", i) for i in range(n_train)]
    test = [s("test", "good", i) for i in range(n_good)]
    for d, n in defects:
        test += [s("test", d, i) for i in range(n)]
    return CategoryData("fake", name, Path("/nonexistent"), train, test)


def spec(**stream):
    evaluation = stream.pop("evaluation", {"mode": "holdout", "checkpoints": [0, 1]})
    warmup = stream.pop("warmup", {"k": 0})
    return ProtocolSpec.from_dict({"name": "t", "stream": {"pool": "train", **stream}, "evaluation": evaluation,
                                   "warmup": warmup})


@pytest.mark.parametrize("c", [0.0, 0.05, 0.1, 0.2, 0.3, 0.33])
@pytest.mark.parametrize("n_train", [17, 60, 100])
def test_contamination_ratio_is_exact(c, n_train):
    data = fake_category(n_train=n_train)
    task = build_plan(spec(contamination=c), [data], seed=3).tasks[0]
    samples = data.samples
    n_anom = sum(samples[i].is_anomalous for i in task.stream)
    length = len(task.stream)
    assert length == n_train + n_anom  # every normal training image is streamed
    assert abs(n_anom / length - c) <= 0.5 / length + 1e-12
    # no other count gets closer to c
    assert all(abs(a / (n_train + a) - c) >= abs(n_anom / length - c) - 1e-12 for a in range(0, 80))


@pytest.mark.parametrize("c,cap", [(0.1, 50), (0.25, 40), (0.0, 30)])
def test_contamination_with_length_cap(c, cap):
    data = fake_category()
    task = build_plan(spec(contamination=c, max_length=cap), [data], seed=0).tasks[0]
    n_anom = sum(data.samples[i].is_anomalous for i in task.stream)
    assert len(task.stream) == cap
    assert n_anom == round(c * cap)


def test_stream_anomalies_never_in_evaluation_unless_overlap():
    data = fake_category()
    for seed in range(5):
        task = build_plan(spec(contamination=0.2), [data], seed).tasks[0]
        streamed = {i for i in task.stream if data.samples[i].is_anomalous}
        assert streamed and not streamed & set(task.eval)
        assert all(data.samples[i].split == "test" for i in task.eval)
        assert len(task.eval) == len(data.test) - len(streamed)
    task = build_plan(spec(contamination=0.2, overlap=True), [data], 0).tasks[0]
    assert {i for i in task.stream if data.samples[i].is_anomalous} <= set(task.eval)
    assert len(task.eval) == len(data.test)


def test_test_pool_removes_streamed_images_from_evaluation():
    data = fake_category()
    s = ProtocolSpec.from_dict({"name": "t", "stream": {"pool": "train+test", "contamination": None,
                                                        "max_length": 70},
                                "evaluation": {"mode": "holdout", "checkpoints": []}})
    task = build_plan(s, [data], 1).tasks[0]
    assert len(task.stream) == 70
    assert not set(task.stream) & set(task.eval)
    assert set(task.eval) | (set(task.stream) - set(range(len(data.train)))) == set(
        range(len(data.train), len(data.samples)))


def test_prequential_pool_holds_train_and_test():
    data = fake_category()
    s = ProtocolSpec.from_dict({"name": "t", "stream": {"pool": "train+test", "contamination": None},
                                "evaluation": {"mode": "prequential", "checkpoints": "log2"}})
    task = build_plan(s, [data], 0).tasks[0]
    assert sorted(task.stream) == list(range(len(data.samples)))
    assert task.eval == ()


def test_orders_do_what_their_names_say():
    data = fake_category()
    anomalous = lambda i: data.samples[i].is_anomalous  # noqa: E731
    first = build_plan(spec(contamination=0.2, order="anomalies_first"), [data], 0).tasks[0].stream
    n_anom = sum(map(anomalous, first))
    assert all(map(anomalous, first[:n_anom])) and not any(map(anomalous, first[n_anom:]))
    last = build_plan(spec(contamination=0.2, order="anomalies_last"), [data], 0).tasks[0].stream
    assert not any(map(anomalous, last[:-n_anom])) and all(map(anomalous, last[-n_anom:]))
    listed = build_plan(spec(contamination=0.0, order="as_listed"), [data], 0).tasks[0].stream
    assert list(listed) == list(range(len(data.train)))
    shuffled = build_plan(spec(contamination=0.2, order="shuffled"), [data], 0).tasks[0].stream
    assert list(shuffled) != sorted(shuffled)
    bursts = build_plan(spec(contamination=0.25, order="by_defect"), [data], 0).tasks[0].stream
    kinds = [data.samples[i].defect_type for i in bursts if anomalous(i)]
    # each defect type arrives as one contiguous burst
    runs = [k for j, k in enumerate(kinds) if j == 0 or kinds[j - 1] != k]
    assert len(runs) == len(set(kinds)) >= 2
    positions = [j for j, i in enumerate(bursts) if anomalous(i)]
    for kind in set(kinds):
        pos = [p for p, i in zip(positions, [i for i in bursts if anomalous(i)], strict=True)
               if data.samples[i].defect_type == kind]
        assert pos == list(range(pos[0], pos[0] + len(pos)))


def test_same_seed_same_stream_other_seed_other_stream():
    data = fake_category()
    s = spec(contamination=0.1, warmup={"k": 5})
    a, b, c = (build_plan(s, [data], seed) for seed in (7, 7, 8))
    assert a == b and plan_digest(a, [data]) == plan_digest(b, [data])
    assert a != c and plan_digest(a, [data]) != plan_digest(c, [data])


def test_warmup_is_normal_and_disjoint_from_stream():
    data = fake_category()
    task = build_plan(spec(contamination=0.1, warmup={"k": 8}), [data], 0).tasks[0]
    assert len(task.warmup) == 8
    assert not any(data.samples[i].is_anomalous for i in task.warmup)
    assert not set(task.warmup) & set(task.stream)
    assert task.observed == 8 + len(task.stream)


def test_too_many_anomalies_is_an_error_with_both_numbers():
    data = fake_category(n_train=100, defects=(("scratch", 5),))
    with pytest.raises(ConfigError) as err:
        build_plan(spec(contamination=0.3), [data], 0)
    msg = str(err.value)
    assert "stream.contamination" in msg and "43" in msg and "5" in msg


def test_warmup_larger_than_train_is_an_error():
    with pytest.raises(ConfigError, match="warmup.k"):
        build_plan(spec(warmup={"k": 500}), [fake_category()], 0)


def test_continual_tasks_are_independent_streams():
    a, b = fake_category(name="a"), fake_category(name="b", n_train=40)
    s = spec(contamination=0.0, warmup={"k": 3})
    plan = build_plan(s, [a, b], 0)
    assert [t.category for t in plan.tasks] == ["a", "b"]
    assert len(plan.tasks[0].warmup) == 3 and len(plan.tasks[1].warmup) == 0
    assert plan.task_ends == [100, 140]

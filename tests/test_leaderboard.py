"""Leaderboards from fixture records: rows, means and stds over seeds, the mean row, stable bytes, conflicts."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from oadbench.cli import main
from oadbench.errors import DataError
from oadbench.leaderboard import METRICS, compile_leaderboards
from oadbench.results import write_record

RNG = np.random.default_rng(7)


def make_record(method: str, category: str, seed: int, metrics: dict[str, float], status: str = "finished",
                run_id: str | None = None, protocol: str = "online_cold_start") -> dict:
    return {
        "schema": 1, "id": run_id or f"{method}-{category}-{seed}", "status": status,
        "config": {"protocol": {"name": protocol}, "method": {"name": method},
                   "dataset": {"name": "synthetic", "category": category}, "seed": seed},
        "env": {"oadbench": "0.1.0"}, "backbone": {"name": "tf_efficientnet_lite0"}, "data": {"image_size": 256},
        "final": metrics,
        "summary": {m: {"final": v, "aulc": v / 2, "images_to_95": 10 * (seed + 1)} for m, v in metrics.items()},
        "cost": {"observe": {"median_ms": 2.0 + seed, "total_s": 1.0 + seed}, "consolidate": {"total_s": 0.5},
                 "score": {"median_ms": 5.0}, "peak_rss_mb": 1000.0,
                 "footprint_bytes": 2**20},
    }


@pytest.fixture
def fixture_records(tmp_path):
    root = tmp_path / "records"
    values = {}
    for method in ("padim", "lemo"):
        for category in ("capsule", "fabric"):
            for seed in (0, 1, 2):
                metrics = {m: float(RNG.uniform(0.5, 1.0)) for m in METRICS}
                values[(method, category, seed)] = metrics
                write_record(root / method / f"{category}-{seed}.json", make_record(method, category, seed, metrics))
    write_record(root / "padim" / "failed.json",  # ignored: not finished
                 make_record("padim", "capsule", 3, {m: 0.0 for m in METRICS}, status="failed"))
    return root, values


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_rows_means_and_stds(fixture_records, tmp_path):
    root, values = fixture_records
    out = tmp_path / "lb"
    compile_leaderboards(root, out)
    rows = read_csv(out / "online_cold_start" / "synthetic.csv")
    assert [(r["method"], r["category"]) for r in rows] == [
        ("lemo", "capsule"), ("lemo", "fabric"), ("lemo", "mean"),
        ("padim", "capsule"), ("padim", "fabric"), ("padim", "mean")]
    for r in rows:
        if r["category"] == "mean":
            per_seed = [np.mean([values[(r["method"], c, s)]["aupro"] for c in ("capsule", "fabric")])
                        for s in (0, 1, 2)]
            assert r["n_runs"] == "6"
        else:
            per_seed = [values[(r["method"], r["category"], s)]["aupro"] for s in (0, 1, 2)]
            assert r["n_runs"] == "3" and r["seeds"] == "0 1 2"
        assert float(r["aupro_mean"]) == pytest.approx(np.mean(per_seed), abs=5e-5)
        assert float(r["aupro_std"]) == pytest.approx(np.std(per_seed, ddof=1), abs=5e-5)
        assert float(r["aulc_aupro"]) == pytest.approx(np.mean(per_seed) / 2, abs=5e-5)
        assert float(r["observe_ms"]) == pytest.approx(3.0) and float(r["footprint_mb"]) == pytest.approx(1.0)
        assert float(r["train_s"]) == pytest.approx(2.5)  # observe (1 + seed) + consolidate 0.5, mean over seeds
        assert r["oadbench_version"] == "0.1.0" and r["image_size"] == "256"
    md = (out / "README.md").read_text()
    assert "## online_cold_start / synthetic" in md and md.count("| **mean** |") == 2


def test_output_is_byte_stable_and_the_cli_writes_it(fixture_records, tmp_path, capsys):
    root, _ = fixture_records
    compile_leaderboards(root, tmp_path / "a")
    assert main(["leaderboard", str(root), "--out", str(tmp_path / "b")]) == 0
    for name in ("online_cold_start/synthetic.csv", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "synthetic.csv" in capsys.readouterr().out


def test_a_single_seed_has_no_std_and_each_protocol_its_own_file(tmp_path):
    root = tmp_path / "records"
    write_record(root / "x.json", make_record("padim", "capsule", 0, {m: 0.9 for m in METRICS}, protocol="offline"))
    compile_leaderboards(root, tmp_path / "lb")
    (row, mean) = read_csv(tmp_path / "lb" / "offline" / "synthetic.csv")
    assert row["image_auroc_mean"] == "0.9000" and row["image_auroc_std"] == ""
    assert mean["category"] == "mean" and mean["image_auroc_mean"] == "0.9000"


def test_few_shot_sizes_and_contamination_ratios_get_their_own_tables(tmp_path):
    root = tmp_path / "records"
    settings = [("few_shot", {"warmup": {"k": 1}}), ("few_shot", {"warmup": {"k": 8}}),
                ("online_contaminated", {"stream": {"contamination": 0.1}}),  # the protocol file's ratio
                ("online_contaminated", {"stream": {"contamination": 0.0}}),
                ("online_contaminated", {"stream": {"contamination": 0.05}}),
                ("online_contaminated", {"stream": {"contamination": 0.05, "overlap": True}}),
                ("online_prequential", {"stream": {"contamination": None}, "warmup": {"k": 0}})]
    for i, (protocol, knobs) in enumerate(settings):
        rec = make_record("padim", "capsule", 0, {m: 0.5 + i / 20 for m in METRICS}, run_id=str(i), protocol=protocol)
        rec["config"]["protocol"].update(knobs)
        if protocol == "few_shot":  # offline forms learn from the warm-up images
            rec["cost"]["observe_warmup"] = rec["cost"].pop("observe")
        write_record(root / f"{i}.json", rec)
    written = compile_leaderboards(root, tmp_path / "lb")  # one cell each: no conflict
    assert sorted(p.parent.name for p in written if p.suffix == ".csv") == [
        "few_shot_k1", "few_shot_k8", "online_contaminated", "online_contaminated_c0", "online_contaminated_c5",
        "online_contaminated_c5_overlap", "online_prequential"]
    few = read_csv(tmp_path / "lb" / "few_shot_k8" / "synthetic.csv")[0]
    assert few["image_auroc_mean"] == "0.5500" and few["observe_ms"] == "2.0000" and few["train_s"] == "1.5000"
    assert read_csv(tmp_path / "lb" / "online_contaminated_c5" / "synthetic.csv")[0]["image_auroc_mean"] == "0.7000"


def test_two_configurations_in_one_cell_are_an_error_naming_both_files(tmp_path):
    root = tmp_path / "records"
    write_record(root / "a.json", make_record("padim", "capsule", 0, {m: 0.9 for m in METRICS}, run_id="one"))
    write_record(root / "b.json", make_record("padim", "capsule", 0, {m: 0.8 for m in METRICS}, run_id="two"))
    with pytest.raises(DataError, match=r"a\.json.*b\.json"):
        compile_leaderboards(root, tmp_path / "lb")


def test_no_records_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no finished run record"):
        compile_leaderboards(tmp_path / "empty", tmp_path / "lb")


def test_drift_tables_have_the_initial_state_and_the_drop_against_the_run_without_drift(tmp_path):
    root = tmp_path / "records"
    finals = {}
    for seed in (0, 1):
        for protocol, value in (("online_cold_start", 0.90 + 0.02 * seed), ("online_drift", 0.70 + 0.04 * seed)):
            metrics = {m: value for m in METRICS}
            rec = make_record("padim", "capsule", seed, metrics, run_id=f"{protocol}-{seed}", protocol=protocol)
            rec["identity"] = {"protocol": {"name": protocol, "description": protocol, "stream": {"order": "x"}},
                               "method": {"name": "padim"}, "seed": seed}
            if protocol == "online_drift":
                rec["identity"]["protocol"]["drift"] = [{"kind": "brightness"}]
                rec["final_initial"] = {m: 0.85 for m in METRICS}
            finals[(protocol, seed)] = value
            write_record(root / protocol / f"{seed}.json", rec)
    out = tmp_path / "lb"
    compile_leaderboards(root, out)
    plain = read_csv(out / "online_cold_start" / "synthetic.csv")
    assert "image_auroc_initial_mean" not in plain[0]  # tables without drift keep their columns
    drift = {r["category"]: r for r in read_csv(out / "online_drift" / "synthetic.csv")}
    row = drift["capsule"]
    assert row["image_auroc_mean"] == "0.7200" and row["image_auroc_initial_mean"] == "0.8500"
    expected = np.mean([finals[("online_cold_start", s)] - finals[("online_drift", s)] for s in (0, 1)])
    assert float(row["drop_image_auroc"]) == pytest.approx(expected, abs=1e-4)
    assert drift["mean"]["drop_image_auroc"] == row["drop_image_auroc"]
    text = (out / "README.md").read_text()
    assert "initial image AUROC | drop vs no drift" in text and "0.850" in text


def gpu_record(method: str, category: str, seed: int, value: float, run_id: str, precision: str = "fp32") -> dict:
    rec = make_record(method, category, seed, {m: value for m in METRICS}, run_id=run_id)
    rec["config"]["device"] = "cuda:0"
    rec["identity"] = {"method": {"name": method}, "seed": seed,
                       "device": {"type": "cuda", "precision": precision, "deterministic": True}}
    rec["cost"].update({"cuda_peak_mb": 900.0 + seed, "cuda_method_peak_mb": 300.0 + seed,
                        "cuda_features_peak_mb": 500.0})
    return rec


def test_gpu_records_are_keyed_apart_from_cpu_records_and_show_their_gpu_memory(fixture_records, tmp_path):
    root, values = fixture_records
    plain = tmp_path / "plain"
    compile_leaderboards(root, plain)
    for seed in (0, 1):
        write_record(root / "gpu" / f"capsule-{seed}.json", gpu_record("padim", "capsule", seed, 0.6, f"gpu-{seed}"))
    out = tmp_path / "lb"
    compile_leaderboards(root, out)
    rows = read_csv(out / "online_cold_start" / "synthetic.csv")
    assert [(r["method"], r["device"], r["category"]) for r in rows] == [
        ("lemo", "cpu", "capsule"), ("lemo", "cpu", "fabric"), ("lemo", "cpu", "mean"),
        ("padim", "cpu", "capsule"), ("padim", "cpu", "fabric"), ("padim", "cpu", "mean"),
        ("padim", "cuda", "capsule"), ("padim", "cuda", "mean")]
    cpu_row, gpu_row = rows[3], rows[6]
    # the CPU cell is exactly what it was without the GPU records: nothing was averaged across devices
    before = {r["category"]: r for r in read_csv(plain / "online_cold_start" / "synthetic.csv")
              if r["method"] == "padim"}
    assert {k: v for k, v in cpu_row.items() if k != "device" and not k.startswith("cuda")} == before["capsule"]
    assert cpu_row["cuda_peak_mb"] == cpu_row["cuda_method_peak_mb"] == ""
    assert gpu_row["n_runs"] == "2" and gpu_row["seeds"] == "0 1" and gpu_row["image_auroc_mean"] == "0.6000"
    assert float(gpu_row["cuda_peak_mb"]) == 900.5 and float(gpu_row["cuda_method_peak_mb"]) == 300.5
    assert float(gpu_row["cuda_features_peak_mb"]) == 500.0
    md = (out / "README.md").read_text()
    assert "| method | backbone | device | category |" in md and "| 300 / 900 |" in md and "| – / – |" in md


def test_tables_without_gpu_records_keep_their_columns(fixture_records, tmp_path):
    root, _ = fixture_records
    compile_leaderboards(root, tmp_path / "lb")
    header = (tmp_path / "lb" / "online_cold_start" / "synthetic.csv").read_text().splitlines()[0]
    assert "device" not in header and "cuda" not in header
    assert "| method | backbone | category |" in (tmp_path / "lb" / "README.md").read_text()


def test_two_gpu_configurations_in_one_cell_are_an_error_naming_both_files(tmp_path):
    root = tmp_path / "records"
    write_record(root / "a.json", gpu_record("padim", "capsule", 0, 0.9, "one", precision="fp32"))
    write_record(root / "b.json", gpu_record("padim", "capsule", 0, 0.8, "two", precision="tf32"))
    with pytest.raises(DataError, match=r"padim/tf_efficientnet_lite0/cuda/capsule seed 0.*a\.json.*b\.json"):
        compile_leaderboards(root, tmp_path / "lb")


def _headline_records(root, seeds=(0, 1, 2), skip=()):
    values = {}
    for method in ("cfa", "lemo"):
        for dataset, category in (("synthetic", "capsule"), ("mtd", "tile"), ("mvtec", "transistor")):
            for seed in seeds:
                if (method, category, seed) in skip:
                    continue
                metrics = {m: float(RNG.uniform(0.5, 1.0)) for m in METRICS}
                values[(method, f"{dataset}/{category}", seed)] = metrics
                record = make_record(method, category, seed, metrics)
                record["config"]["dataset"]["name"] = dataset
                write_record(root / method / f"{dataset}-{category}-{seed}.json", record)
    return values


def test_headline_tables_mean_each_real_data_set_once_and_table_synthetic_data_apart(fixture_records, tmp_path):
    root, _ = fixture_records
    values = _headline_records(tmp_path / "headline", skip={("cfa", "tile", 2)})
    out = tmp_path / "lb"
    written = compile_leaderboards(root, out, tmp_path / "headline")
    assert {out / "headline" / f"online_cold_start_256px{s}.csv" for s in ("", "_synthetic")} <= set(written)
    rows = read_csv(out / "headline" / "online_cold_start_256px.csv")
    assert [(r["method"], r["dataset"]) for r in rows] == [
        (m, d) for m in ("cfa", "lemo") for d in ("mtd/tile", "mvtec/transistor", "mean")]
    names = ("mtd/tile", "mvtec/transistor")
    lemo = {r["dataset"]: r for r in rows if r["method"] == "lemo"}
    per_seed = [np.mean([values[("lemo", d, s)]["image_auroc"] for d in names]) for s in (0, 1, 2)]
    assert float(lemo["mean"]["image_auroc_mean"]) == pytest.approx(np.mean(per_seed), abs=5e-5)
    assert float(lemo["mean"]["image_auroc_std"]) == pytest.approx(np.std(per_seed, ddof=1), abs=5e-5)
    tile = [values[("lemo", "mtd/tile", s)]["pixel_auroc"] for s in (0, 1, 2)]
    assert float(lemo["mtd/tile"]["pixel_auroc_mean"]) == pytest.approx(np.mean(tile), abs=5e-5)
    cfa = {r["dataset"]: r for r in rows if r["method"] == "cfa"}
    per_seed = [np.mean([values[("cfa", d, s)]["image_auroc"] for d in names]) for s in (0, 1)]  # seed 2 lacks MTD
    assert cfa["mtd/tile"]["seeds"] == "0 1" and cfa["mean"]["seeds"] == "0 1"
    assert float(cfa["mean"]["image_auroc_mean"]) == pytest.approx(np.mean(per_seed), abs=5e-5)
    smoke = read_csv(out / "headline" / "online_cold_start_256px_synthetic.csv")
    assert [(r["method"], r["dataset"]) for r in smoke] == [
        (m, d) for m in ("cfa", "lemo") for d in ("synthetic/capsule", "mean")]
    capsule = [values[("lemo", "synthetic/capsule", s)]["image_auroc"] for s in (0, 1, 2)]
    assert float(smoke[-1]["image_auroc_mean"]) == pytest.approx(np.mean(capsule), abs=5e-5)
    md = (out / "README.md").read_text()
    assert (md.index("## Headline: online_cold_start at 256 px") < md.index("## online_cold_start / synthetic")
            < md.index("## Smoke test: online_cold_start at 256 px on synthetic data"))
    assert "| image AUROC | mtd/tile | mvtec/transistor | **mean** |" in md


def test_headline_has_a_table_per_protocol_and_a_row_per_evaluation_order(fixture_records, tmp_path):
    root, _ = fixture_records
    _headline_records(tmp_path / "headline", seeds=(0,))
    values = {}
    for method in ("cfa", "lemo"):
        for order in ("score_then_observe", "observe_then_score"):
            for dataset, category in (("mtd", "tile"), ("mvtec", "screw")):
                metrics = {m: float(RNG.uniform(0.5, 1.0)) for m in METRICS}
                values[(method, order, category)] = metrics["image_auroc"]
                record = make_record(method, category, 0, metrics, run_id=f"{method}-{order}-{category}",
                                     protocol="online_prequential")
                record["config"]["dataset"]["name"] = dataset
                record["config"]["protocol"]["evaluation"] = {"mode": "prequential", "order": order}
                write_record(tmp_path / "headline" / "preq" / f"{method}-{order}-{category}.json", record)
    out = tmp_path / "lb"
    compile_leaderboards(root, out, tmp_path / "headline")
    rows = read_csv(out / "headline" / "online_prequential_256px.csv")
    assert [(r["method"], r["variant"], r["dataset"]) for r in rows] == [
        (m, v, d) for m in ("cfa", "lemo") for v in ("", "observe_then_score") for d in ("mtd/tile", "mvtec/screw",
                                                                                         "mean")]
    for r in rows:
        if r["dataset"] != "mean":
            order = "observe_then_score" if r["variant"] else "score_then_observe"
            category = r["dataset"].split("/")[1]
            assert float(r["image_auroc_mean"]) == pytest.approx(values[(r["method"], order, category)], abs=5e-5)
        assert r["false_alarm_rate_mean"] == ""  # no per-image stream results to replay a policy on
    ranks = read_csv(out / "headline" / "online_prequential_256px_ranks.csv")
    assert {(r["method"], r["variant"]) for r in ranks} == {(m, v) for m in ("cfa", "lemo")
                                                            for v in ("", "observe_then_score")}
    md = (out / "README.md").read_text()
    assert md.index("## Headline: online_cold_start at 256 px") < md.index("## Headline: online_prequential at 256")
    assert "| lemo, observe then score |" in md


def test_headline_keeps_a_gpu_run_in_a_row_of_its_own(fixture_records, tmp_path):
    """A method's CUDA records beside its CPU records (one seed, the same data sets) are a row of their own,
    labelled and ranked as such; the CPU row keeps its own values."""
    root, _ = fixture_records
    values = _headline_records(tmp_path / "headline", seeds=(0,))
    for dataset, category in (("mtd", "tile"), ("mvtec", "transistor")):
        record = gpu_record("lemo", category, 0, 0.6, f"gpu-{category}")
        record["config"]["dataset"]["name"] = dataset
        write_record(tmp_path / "headline" / "gpu" / f"{category}.json", record)
    out = tmp_path / "lb"
    compile_leaderboards(root, out, tmp_path / "headline")
    rows = read_csv(out / "headline" / "online_cold_start_256px.csv")
    assert [(r["method"], r["device"], r["dataset"]) for r in rows] == [
        (m, d, s) for m, d in (("cfa", "cpu"), ("lemo", "cpu"), ("lemo", "cuda"))
        for s in ("mtd/tile", "mvtec/transistor", "mean")]
    for r in rows:
        if r["dataset"] != "mean":
            expected = 0.6 if r["device"] == "cuda" else values[(r["method"], r["dataset"], 0)]["image_auroc"]
            assert float(r["image_auroc_mean"]) == pytest.approx(expected, abs=5e-5)
    ranks = read_csv(out / "headline" / "online_cold_start_256px_ranks.csv")
    assert {(r["method"], r["device"]) for r in ranks} == {("cfa", "cpu"), ("lemo", "cpu"), ("lemo", "cuda")}
    md = (out / "README.md").read_text()
    assert "| lemo (cuda) |" in md and "| lemo |" in md and "ran there, its times that machine's" in md
    smoke = read_csv(out / "headline" / "online_cold_start_256px_synthetic.csv")
    assert "device" not in smoke[0]  # a table with CPU records only keeps its columns


def test_headline_ranks_leave_out_a_row_lacking_a_data_set_not_the_data_set():
    from scipy import stats

    from oadbench.headline import headline_ranks

    values = {"a": (0.9, 0.8, 0.7), "b": (0.8, 0.9, 0.6), "c": (0.7, 0.6, 0.8)}
    sets = ("mtd/tile", "mvtec/screw", "mvtec/transistor")
    rows = [{"method": m, "backbone": "b0", "variant": "", "dataset": d, "image_auroc_mean": v[i]}
            for m, v in values.items() for i, d in enumerate(sets)]
    rows.append({"method": "a", "backbone": "b0", "variant": "observe_then_score", "dataset": "mvtec/screw",
                 "image_auroc_mean": 0.99})  # one data set only so far
    ranks = headline_ranks(rows)
    assert ranks.blocks == 3 and set(ranks.average) == {"a", "b", "c"}
    data = [[values[m][i] for m in "abc"] for i in range(3)]
    expected = [sum(stats.rankdata([-x for x in row])[j] for row in data) / 3 for j in range(3)]
    assert [ranks.average[m] for m in "abc"] == pytest.approx(expected)
    assert ranks.friedman_p == pytest.approx(stats.friedmanchisquare(*zip(*data, strict=True)).pvalue)


def test_headline_refuses_two_input_sizes(fixture_records, tmp_path):
    root, _ = fixture_records
    _headline_records(tmp_path / "headline", seeds=(0,))
    other = make_record("cfa", "fabric", 0, {m: 0.9 for m in METRICS})
    other["data"]["image_size"] = 128
    write_record(tmp_path / "headline" / "small.json", other)
    with pytest.raises(DataError, match=r"one input size, got \[128, 256\]"):
        compile_leaderboards(root, tmp_path / "lb", tmp_path / "headline")

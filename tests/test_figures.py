"""`oadbench figs` on fixture records writes every figure the records support, as PDF and PNG."""

from __future__ import annotations

import numpy as np

from oadbench.cli import main
from oadbench.leaderboard import METRICS
from oadbench.results import write_arrays, write_record
from tests.test_leaderboard import make_record


def test_figs_writes_every_figure(tmp_path, capsys):
    rng = np.random.default_rng(3)
    root = tmp_path / "records"
    for protocol, ratio in (("online_cold_start", 0.0), ("online_contaminated", 0.1), ("online_contaminated", 0.2)):
        for method in ("padim", "lemo"):
            for category in ("capsule", "fabric"):
                for seed in (0, 1):
                    rec = make_record(method, category, seed, {m: float(rng.uniform(0.5, 1)) for m in METRICS},
                                      protocol=protocol, run_id=f"{protocol}-{ratio}-{method}-{category}-{seed}")
                    rec["config"]["protocol"].update(training="online", stream={"contamination": ratio})
                    # at 0 the metrics are undefined (null), as at a prequential stream's first one-class checkpoints
                    rec["checkpoints"] = [{"observed": n, "metrics": {m: float(rng.uniform(0.5, 1)) if n else None
                                                                      for m in METRICS},
                                           "footprint_bytes": 1000 * (n + 1)} for n in (0, 1, 10, 100)]
                    folder = root / f"{protocol}-{ratio}" / method
                    if protocol == "online_cold_start":  # maps beside the record, as the runner writes them
                        rec["maps_file"] = f"{category}-{seed}.maps.npz"
                        write_arrays(folder / rec["maps_file"], ids=np.array(["a", "b", "c"]),
                                     labels=np.array([1, 1, 0]), scores=rng.random(3),
                                     images=rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8),
                                     masks=rng.random((3, 16, 16)) > 0.9, maps=rng.random((3, 16, 16)))
                    write_record(folder / f"{category}-{seed}.json", rec)
    out = tmp_path / "figs"
    assert main(["figs", str(root), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    expected = {f"{kind}_{protocol}_synthetic" for kind in ("learning_curves", "categories", "cost_vs_accuracy",
                                                           "footprint")
                for protocol in ("online_cold_start", "online_contaminated", "online_contaminated_c20")} | {
        "contamination_synthetic"} | {
        f"qualitative_online_cold_start_synthetic_{c}" for c in ("capsule", "fabric")}
    assert names == {f"{e}.{ext}" for e in expected for ext in ("pdf", "png")}
    assert all((out / n).stat().st_size > 1000 for n in names)
    assert (out / "learning_curves_online_cold_start_synthetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "contamination_synthetic.pdf").read_bytes()[:4] == b"%PDF"
    assert len(capsys.readouterr().out.splitlines()) == len(names)


def test_figs_draws_diagnostics_over_the_stream_when_records_have_them(tmp_path):
    root = tmp_path / "records"
    for method in ("lemo", "padim"):
        for seed in (0, 1):
            rec = make_record(method, "capsule", seed, {m: 0.8 for m in METRICS}, run_id=f"{method}-{seed}")
            rec["config"]["protocol"].update(training="online", stream={"contamination": 0.0})
            rec["checkpoints"] = [{"observed": n, "metrics": {m: 0.8 for m in METRICS}, "footprint_bytes": 10,
                                   "normal_peaks": {"border_share": 0.2 + 0.01 * n},
                                   **({"diagnostics": {"loss": 1.0 / (n + 1), "feature_rank": 5.0 + n}}
                                      if method == "lemo" else {})} for n in (0, 1, 10)]
            write_record(root / method / f"{seed}.json", rec)
    out = tmp_path / "figs"
    assert main(["figs", str(root), "--out", str(out)]) == 0
    assert (out / "diagnostics_online_cold_start_synthetic.png").stat().st_size > 1000
    from oadbench.figures import BORDER, diagnostic_curves

    curves = diagnostic_curves([make_record("lemo", "c", 0, {}) | {"checkpoints": [
        {"observed": 0, "diagnostics": {"loss": 2.0}}, {"observed": 5, "diagnostics": {"loss": 1.0},
                                                         "normal_peaks": {"border_share": 0.5}}]}])
    assert curves == {"loss": ([0, 5], [2.0, 1.0]), BORDER: ([5], [0.5])}


def test_figs_draws_the_drift_figure_for_drift_protocols(tmp_path):
    root = tmp_path / "records"
    drift = [{"kind": "brightness", "magnitude": 0.25, "schedule": {"type": "gradual", "start": 0.5, "end": 1.0}}]
    for seed in (0, 1):
        rec = make_record("padim", "capsule", seed, {m: 0.8 for m in METRICS}, run_id=f"d{seed}",
                          protocol="online_drift")
        rec["config"]["protocol"].update(training="online", stream={"contamination": 0.0}, drift=drift)
        rec["data"].update(stream=100, warmup=0)
        rec["checkpoints"] = [{"observed": n, "metrics": {m: 0.9 - n / 1000 for m in METRICS},
                               "metrics_initial": {m: 0.9 for m in METRICS}, "footprint_bytes": 10}
                              for n in (0, 10, 50, 100)]
        write_record(root / f"{seed}.json", rec)
    out = tmp_path / "figs"
    assert main(["figs", str(root), "--out", str(out)]) == 0
    assert (out / "drift_online_drift_synthetic.png").stat().st_size > 1000
    assert (out / "drift_online_drift_synthetic.pdf").read_bytes()[:4] == b"%PDF"


def test_figures_keep_gpu_runs_apart_from_cpu_runs():
    from oadbench.figures import method_label

    assert method_label({"config": {"method": {"name": "padim"}, "device": "cuda:1"}}) == "padim (cuda)"
    assert method_label({"config": {"method": {"name": "padim"}, "device": "cpu"}}) == "padim"
    assert method_label({"config": {"method": {"name": "padim"}}}) == "padim"  # records before devices existed


def test_figs_draws_rejections_over_the_stream_for_records_with_stream_results(tmp_path):
    """The committed prequential test record (with its per-image stream results) gets the line engineer's
    rejections figure; the holdout one beside it does not."""
    import shutil
    from pathlib import Path

    records = Path(__file__).parent / "records"
    root = tmp_path / "records"
    for kind in ("online_prequential", "online_cold_start"):
        shutil.copytree(records / kind, root / kind)
    out = tmp_path / "figs"
    assert main(["figs", str(root), "--out", str(out)]) == 0
    drawn = sorted(p.name for p in out.glob("rejections_*"))
    assert drawn == ["rejections_online_prequential_synthetic_capsule.pdf",
                     "rejections_online_prequential_synthetic_capsule.png"]

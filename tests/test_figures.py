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

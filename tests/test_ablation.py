"""`oadbench ablation` on fixture records: variants and stages recognised, collapse and selection rules applied as
pre-registered, baselines, figures; and the diagnostics a real run records."""

from __future__ import annotations

import csv
import io

import pytest
import yaml

from oadbench.ablation import compile_ablation, distance_to_paper, load_spec
from oadbench.cli import main
from oadbench.errors import ConfigError
from oadbench.results import write_record
from oadbench.runner import run
from tests.conftest import small_run

SPEC = {
    "method": "lemo", "protocol": "online_cold_start", "image_size": 64,
    "datasets": {"synthetic/capsule": ["dataset=synthetic", "dataset.category=capsule"],
                 "mtd/tile": ["dataset=mtd", "dataset.root=x"]},
    "stages": {"screen": {"seeds": [0], "checkpoints": [0, 10]}, "final": {"seeds": [0, 1], "checkpoints": None}},
    "reference": {"K": 10, "loss": "anonce", "normalize": True},
    "paper": {"normalize": False},
    "variants": {"reference": {}, "paper": {"normalize": False}, "big": {"K": 1000},
                 "bigger": {"K": 2000, "loss": "compact"}, "fragile": {"loss": "compact"}},
}
FULL = [0, 1, 2, 4, 6, 8, 12, 16, 20, 25, 30, 35, 40, 50, 60, 70, 80, 100, 120, 140, 170, 200]


def record(variant: str, dataset: str, seed: int, curve: list[float], schedule, run_id: str) -> dict:
    config = {**SPEC["reference"], **SPEC["variants"][variant]}
    name, category = ("synthetic", "capsule") if dataset == "synthetic/capsule" else ("mtd", "tile")
    observed = [0, 10, 100][: len(curve)]
    return {"schema": 1, "id": run_id, "status": "finished",
            "config": {"protocol": {"name": "online_cold_start", "evaluation": {"checkpoints": schedule}},
                       "method": {"name": "lemo", **config, "extra_key_of_a_later_version": 1},
                       "dataset": {"name": name, "category": category}, "seed": seed},
            "checkpoints": [{"observed": o, "metrics": {"image_auroc": v},
                             "diagnostics": {"loss": 1.0 / (o + 1)}, "normal_peaks": {"border_share": 0.5}}
                            for o, v in zip(observed, curve, strict=True)],
            "final": {"image_auroc": curve[-1], "pixel_auroc": 0.9, "aupro": 0.8}}


@pytest.fixture
def ablation(tmp_path):
    spec_path = tmp_path / "variants.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    root = tmp_path / "records"
    screen = {"reference": (0.6, 0.5), "paper": (0.5, 0.5), "big": (0.90, 0.80), "bigger": (0.90, 0.805),
              "fragile": (0.99, 0.99)}
    n = 0
    for variant, (capsule, mtd) in screen.items():
        for dataset, final in (("synthetic/capsule", capsule), ("mtd/tile", mtd)):
            curve = [0.5, final] if variant != "fragile" or dataset == "mtd/tile" else [0.5, 0.99, 0.90]
            if variant == "fragile" and dataset == "synthetic/capsule":
                final = 0.90
            write_record(root / f"s{n}.json", record(variant, dataset, 0, curve, [0, 10], f"s{n}"))
            n += 1
    # final stage: big and bigger within 0.005 of each other -> the one closer to the paper wins
    for variant, finals in (("big", (0.91, 0.80)), ("bigger", (0.912, 0.80)), ("paper", (0.5, 0.5))):
        for seed in (0, 1):
            for dataset, final in zip(("synthetic/capsule", "mtd/tile"), finals, strict=True):
                write_record(root / f"f{n}.json", record(variant, dataset, seed, [0.5, 0.7, final], FULL, f"f{n}"))
                n += 1
    write_record(root / "other.json", {**record("big", "mtd/tile", 5, [0.5], [0, 10], "x"), "status": "failed"})
    base = tmp_path / "baselines"
    for seed, v in ((0, 0.8), (1, 0.9)):
        rec = record("reference", "mtd/tile", seed, [v], [], f"b{seed}")
        rec["config"]["method"] = {"name": "cfa"}
        write_record(base / f"b{seed}.json", rec)
    return spec_path, root, base


def rows(path):
    return {r["variant"]: r for r in csv.DictReader(io.StringIO(path.read_text()))}


def test_screen_and_final_tables_follow_the_preregistered_rules(ablation, tmp_path):
    spec_path, root, base = ablation
    out = tmp_path / "out"
    written = compile_ablation(root, spec_path, out, base)
    screen = rows(out / "screen.csv")
    assert set(screen) == {"reference", "paper", "big", "bigger", "fragile"}
    assert screen["big"]["synthetic/capsule"] == "0.9000" and screen["big"]["mean"] == "0.8500"
    # fragile has the best mean but fell from 0.99 to 0.90 (< 0.97 x best): collapsed, not ranked
    assert screen["fragile"]["collapsed_on"] == "synthetic/capsule" and screen["fragile"]["mark"] == ""
    assert [screen[v]["mark"] for v in ("bigger", "big", "reference")] == ["top 1", "top 2", "top 3"]
    final = rows(out / "final.csv")
    assert final["big"]["synthetic/capsule"] == "0.9100 ± 0.0000" and final["big"]["seeds"] == "0 1"
    # bigger is 0.001 better on the mean, within the 0.005 tie: big is closer to the paper (2 vs 3 differences)
    spec = load_spec(spec_path)
    assert distance_to_paper("big", spec) == 2 and distance_to_paper("bigger", spec) == 3
    assert final["big"]["mark"] == "selected" and final["bigger"]["mark"] == ""
    baselines = list(csv.DictReader(io.StringIO((out / "baselines.csv").read_text())))
    assert baselines == [{"method": "cfa", "synthetic/capsule": "", "mtd/tile": "0.8500 ± 0.0707", "mean": "",
                          "seeds": "2"}]
    text = (out / "README.md").read_text()
    assert "## screen" in text and "## final" in text and "## baselines" in text and "| big | selected |" in text
    names = {p.name for p in written}
    assert {"learning_curves.png", "learning_curves.pdf", "diagnostics_mtd_tile.png"} <= names
    assert (out / "learning_curves.png").stat().st_size > 1000
    # regenerating gives the same bytes (tables and figures)
    again = tmp_path / "again"
    compile_ablation(root, spec_path, again, base)
    for p in written:
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name


def test_a_final_stage_with_the_screens_schedule_reuses_the_screens_seed(ablation, tmp_path):
    spec_path, root, base = ablation
    spec = {**SPEC, "stages": {"screen": {"seeds": [0], "checkpoints": [0, 10]},
                               "final": {"seeds": [0, 1], "checkpoints": [0, 10]}}}
    spec_path.write_text(yaml.safe_dump(spec))
    for dataset, final in (("synthetic/capsule", 0.70), ("mtd/tile", 0.60)):
        write_record(root / f"seed1_{dataset.replace('/', '_')}.json",
                     record("big", dataset, 1, [0.5, final], [0, 10], f"seed1_{dataset}"))
    out = tmp_path / "out"
    compile_ablation(root, spec_path, out, base)
    final = rows(out / "final.csv")
    # big: seed 0 from the screen (0.90 / 0.80) and seed 1 (0.70 / 0.60)
    assert final["big"]["seeds"] == "0 1" and final["big"]["synthetic/capsule"] == "0.8000 ± 0.1414"
    assert final["big"]["mean"] == "0.7500" and final["reference"]["seeds"] == "0"
    # only the screen's top three, the reference and the paper's configuration make the final stage, and only a
    # variant with every seed of the stage is ranked: bigger (seed 0 only, better mean) is not selected
    assert set(final) == {"bigger", "big", "reference", "paper"}
    assert final["big"]["mark"] == "selected" and final["bigger"]["mark"] == ""
    assert rows(out / "screen.csv")["big"]["mean"] == "0.8500"
    assert "evaluated at 0, 10 observed images" in (out / "README.md").read_text()


def test_the_command_and_a_bad_spec(ablation, tmp_path, capsys):
    spec_path, root, base = ablation
    out = tmp_path / "cli"
    assert main(["ablation", str(root), "--spec", str(spec_path), "--baselines", str(base), "--out", str(out)]) == 0
    assert (out / "final.csv").is_file() and "final.csv" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SPEC, "variants": {"x": {"no_such_key": 1}}}))
    with pytest.raises(ConfigError, match="no_such_key"):
        load_spec(bad)


def test_diagnostics_and_normal_peaks_appear_in_the_record(tmp_path):
    record = run(small_run(tmp_path, "method=lemo", "method.update=coverage", "method.n_prototypes=50"))
    first, last = record["checkpoints"][0], record["checkpoints"][-1]
    assert first["diagnostics"] == {"replacements": 0.0}  # cold start: nothing observed yet
    assert {"loss", "feature_rank", "cluster_entropy", "nearest_distance"} <= set(last["diagnostics"])
    assert last["diagnostics"]["replacements"] >= 1
    assert 0.0 <= last["normal_peaks"]["border_share"] <= 1.0 and last["normal_peaks"]["border_px"] == 4.0
    padim = run(small_run(tmp_path / "padim", "method=padim"))
    assert all("diagnostics" not in c for c in padim["checkpoints"])  # a method without diagnostics
    assert all("normal_peaks" in c for c in padim["checkpoints"])

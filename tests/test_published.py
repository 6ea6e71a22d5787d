"""The published leaderboards and figures: regenerated from the committed records, byte for byte, and complete."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from oadbench.cli import main
from oadbench.leaderboard import compile_leaderboards, default_headline

REPO = Path(__file__).resolve().parents[1]
BOARDS = REPO / "leaderboards"
RECORDS = BOARDS / "records"
HEADLINE = default_headline(BOARDS)  # the headline table's records, compiled when they exist (as the CLI does)
ABLATION = BOARDS / "lemo_ablation"  # its own tables (`oadbench ablation`), not the leaderboards'
INREACH = BOARDS / "inreach"  # issue 31's records and tables, not the leaderboards'
DECISIONS = BOARDS / "decisions"  # issue 32's records (with per-image stream results) and tables
METHODS = {"cfa", "lemo", "padim", "patchcore"}  # the headline tables' methods (and the contamination sweep's)
FIVE = METHODS | {"inreach"}  # every grid cell (leaderboards/run_grid.sh)
TABLES = ["offline", "online_cold_start", "online_contaminated", "online_prequential",
          *[f"few_shot_k{k}" for k in (1, 2, 4, 8)], "online_drift", "offline_drift"]
DATASETS = {"synthetic": {"capsule", "fabric", "marble", "washer"}, "mtd": {"tile"},
            "mvtec": {"transistor", "screw"}}
SWEEP = [f"online_contaminated_c{c}" for c in (0, 5, 20, 30)]
HEADLINE_SETS = {"mtd/tile", "mvtec/transistor", "mvtec/screw"}  # real data only; synthetic: the smoke-test table
ORDERS = ("", "observe_then_score")  # the prequential table's rows per method: score-then-observe, the other order
HEADLINE_TABLES = {  # stem -> (variants, the (method, variant) rows complete on every data set)
    "online_prequential_256px": (ORDERS, {(m, v) for m in METHODS for v in ORDERS}),
    "online_cold_start_256px": (("",), {(m, "") for m in METHODS}),
}

pytestmark = pytest.mark.skipif(not RECORDS.is_dir(), reason="no committed records")


def test_the_committed_leaderboards_are_what_the_committed_records_compile_to(tmp_path):
    written = compile_leaderboards(RECORDS, tmp_path, HEADLINE)
    generated = {p.relative_to(tmp_path) for p in written}
    diagrams = BOARDS.glob("headline/*critical_difference.*")
    committed = {p.relative_to(BOARDS) for p in [*BOARDS.rglob("*.csv"), *diagrams]
                 if not {ABLATION, INREACH, DECISIONS, RECORDS, BOARDS / "headline" / "records"} & set(p.parents)}
    committed |= {Path("README.md")}
    assert generated == committed
    for rel in sorted(generated):
        assert (tmp_path / rel).read_bytes() == (BOARDS / rel).read_bytes(), f"{rel} differs from its records"


def test_the_inreach_tables_are_what_their_records_compile_to(tmp_path):
    """leaderboards/inreach/tables: ``oadbench leaderboard leaderboards/inreach/records``."""
    written = compile_leaderboards(INREACH / "records", tmp_path)
    committed = {p.relative_to(INREACH / "tables") for p in (INREACH / "tables").rglob("*") if p.is_file()}
    assert {p.relative_to(tmp_path) for p in written} == committed
    for rel in sorted(committed):
        assert (tmp_path / rel).read_bytes() == (INREACH / "tables" / rel).read_bytes(), f"{rel} differs"


def test_the_decisions_tables_are_what_their_records_compile_to(tmp_path):
    """leaderboards/decisions/tables: ``oadbench leaderboard leaderboards/decisions/records
    leaderboards/inreach/records/online_prequential``, the prequential tables with the default policy's false alarms
    and misses."""
    written = compile_leaderboards([DECISIONS / "records", INREACH / "records" / "online_prequential"], tmp_path)
    committed = {p.relative_to(DECISIONS / "tables") for p in (DECISIONS / "tables").rglob("*") if p.is_file()}
    assert {p.relative_to(tmp_path) for p in written} == committed
    for rel in sorted(committed):
        assert (tmp_path / rel).read_bytes() == (DECISIONS / "tables" / rel).read_bytes(), f"{rel} differs"
    rows = list(csv.DictReader((DECISIONS / "tables" / "online_prequential" / "mvtec.csv").open()))
    assert all(r["false_alarm_rate_mean"] and r["miss_rate_mean"] for r in rows)  # every run has stream results


def test_every_protocol_and_dataset_has_its_methods_over_three_seeds():
    expected = [(t, d) for t in TABLES for d in DATASETS] + [(t, "mtd") for t in SWEEP]
    for table, dataset in expected:
        rows = list(csv.DictReader((BOARDS / table / f"{dataset}.csv").open()))
        complete = METHODS if table in SWEEP else FIVE
        assert {r["method"] for r in rows} == complete, (table, dataset)
        for method in complete:
            mine = [r for r in rows if r["method"] == method]
            assert {r["category"] for r in mine} - {"mean"} == DATASETS[dataset], (table, dataset, method)
        for r in rows:
            assert r["image_auroc_mean"], (table, dataset, r["method"], r["category"])
            assert r["seeds"] == "0 1 2", (table, dataset, r["method"])


@pytest.mark.skipif(HEADLINE is None, reason="no committed headline records")
def test_the_headline_tables_hold_real_data_with_per_image_results_over_three_seeds():
    for stem, (variants, complete) in HEADLINE_TABLES.items():
        rows = list(csv.DictReader((BOARDS / "headline" / f"{stem}.csv").open()))
        assert {r["dataset"] for r in rows} <= HEADLINE_SETS | {"mean"}, stem
        assert {r["variant"] for r in rows} <= set(variants), stem
        prequential = stem.startswith("online_prequential")
        for r in rows:  # a mean row is empty until its row has every data set
            assert r["image_size"] == "256", (stem, r["method"], r["dataset"])
            if r["dataset"] != "mean":  # every run has its per-image results
                assert r["image_auroc_mean"] and r["image_auroc_ci_low"], (stem, r["method"], r["dataset"])
                assert r["false_alarm_rate_mean"] or not prequential, (stem, r["method"], r["dataset"])
        for method, variant in complete:
            mine = {r["dataset"]: r for r in rows if (r["method"], r["variant"]) == (method, variant)}
            assert set(mine) == HEADLINE_SETS | {"mean"}, (stem, method, variant)
            assert all(r["seeds"] == "0 1 2" for r in mine.values()), (stem, method, variant)
            assert mine["mean"]["seeds"] == "0 1 2" and mine["mean"]["n_runs"] == "9", (stem, method, variant)
    smoke = list(csv.DictReader((BOARDS / "headline" / "online_cold_start_256px_synthetic.csv").open()))
    assert {r["dataset"] for r in smoke} == {f"synthetic/{c}" for c in DATASETS["synthetic"]} | {"mean"}
    for path in sorted((BOARDS / "headline" / "records").rglob("*.json")):  # the smoke-test table's too
        assert json.loads(path.read_text()).get("per_image"), f"{path.relative_to(REPO)} has no per-image results"


def test_the_published_figures_exist_and_the_readme_shows_them(tmp_path, capsys, monkeypatch):
    figs = REPO / "paper_figs"
    names = {p.stem for p in figs.glob("*.png")}
    for dataset in DATASETS:
        for kind in ("learning_curves", "footprint"):
            assert f"{kind}_online_cold_start_{dataset}" in names
        for kind in ("categories", "cost_vs_accuracy"):
            assert all(f"{kind}_{t}_{dataset}" in names for t in TABLES)
    assert "contamination_mtd" in names and "qualitative_online_cold_start_mtd_tile" in names
    assert {p.stem for p in figs.glob("*.pdf")} == names
    readme = (REPO / "README.md").read_text()
    assert "leaderboards/README.md" in readme and "paper_figs/learning_curves_online_cold_start_mtd.png" in readme
    # the figure command regenerates the same set of figures from the committed records; every figure is drawn,
    # only writing the files is skipped (test_figures covers saving), which keeps this test fast
    import matplotlib.pyplot as plt

    import oadbench.figures

    def names_only(fig, out, name):
        plt.close(fig)
        paths = [out / f"{name}.{ext}" for ext in ("pdf", "png")]
        for path in paths:
            path.touch()
        return paths

    monkeypatch.setattr(oadbench.figures, "save_figure", names_only)
    assert main(["figs", "--out", str(tmp_path)]) == 0  # the defaults: the records and the headline records
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in figs.iterdir()}


@pytest.mark.skipif(not (ABLATION / "records").is_dir(), reason="no committed ablation records")
def test_the_committed_ablation_tables_are_what_its_records_compile_to(tmp_path):
    from oadbench.ablation import compile_ablation

    written = compile_ablation(ABLATION / "records", ABLATION / "variants.yaml", tmp_path, ABLATION / "baselines")
    names = {p.name for p in written}
    assert {"screen.csv", "final.csv", "baselines.csv", "README.md", "learning_curves.png"} <= names
    for name in ("screen.csv", "final.csv", "baselines.csv", "README.md"):
        assert (tmp_path / name).read_bytes() == (ABLATION / name).read_bytes(), f"{name} differs from its records"
    assert names == {p.name for p in ABLATION.iterdir() if p.is_file()} - {"run_ablation.py", "variants.yaml"}


def test_every_committed_lemo_record_uses_lemos_current_defaults():
    import json

    from oadbench.method import config_defaults, discover_methods, get_method

    discover_methods()
    defaults = {"name": "lemo", **json.loads(json.dumps(config_defaults(get_method("lemo"))))}
    paths = list(BOARDS.glob("*records/**/lemo/*.json")) + list((BOARDS / "headline").glob("**/lemo/*.json"))
    assert paths
    for path in paths:
        method = json.loads(path.read_text())["config"]["method"]
        differ = sorted(k for k in method.keys() | defaults.keys() if method.get(k) != defaults.get(k))
        assert not differ, f"{path.relative_to(REPO)}: {differ} differ from LeMO's defaults"


def test_no_committed_record_names_a_path_of_the_machine_that_ran_it():
    """Committed records name their results folder and data roots relative to the checkout (``leaderboards/...``,
    ``../shared/data/...``, ``.cache/synthetic``), never an absolute path of the machine that ran them."""
    paths = sorted(BOARDS.rglob("*.json")) + sorted((REPO / "tests" / "records").rglob("*.json"))
    absolute = []
    for path in paths:
        config = json.loads(path.read_text()).get("config") or {}
        for key, value in (("results_dir", config.get("results_dir")),
                           ("dataset.root", (config.get("dataset") or {}).get("root"))):
            if isinstance(value, str) and (value.startswith("/") or value.startswith("~")):
                absolute.append(f"{path.relative_to(REPO)}: {key}={value}")
    assert paths and not absolute, absolute[:5]

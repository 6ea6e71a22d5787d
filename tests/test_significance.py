"""Statistics in the tables and ``oadbench compare``, on a small grid made here (3 methods × 3 categories × 3 seeds,
records with per-image results): the compiled intervals, top-group marks, ranks and Friedman p equal what the
libraries (scipy, statsmodels, scikit-posthocs) return on the same numbers; unreadable records are named, never
dropped in silence."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from oadbench.cli import main
from oadbench.compare import compare, load_side
from oadbench.delong import delong_contrast
from oadbench.errors import DataError
from oadbench.leaderboard import compile_leaderboards
from oadbench.per_image import HOLDOUT, PerImage, read_per_image, save_per_image
from oadbench.results import identity_hash, record_path, write_record
from oadbench.significance import ResampledAUROC

METHODS = {"alpha": 0.4, "beta": 0.9, "gamma": 1.6}  # method -> shift of its anomalous scores
CATEGORIES = ("capsule", "fabric", "washer")
SHIFTS = {**METHODS, "delta": 1.2}  # a researcher's new method, beside the grid
SEEDS = (0, 1, 2)
N_NORMAL, N_ANOMALOUS = 30, 20


def grid_tables(method: str, category: str, seed: int) -> PerImage:
    """One run's per-image results: the same images for every method and seed, scores that depend on both."""
    rng = np.random.default_rng([sorted(SHIFTS).index(method), [*CATEGORIES, "tile"].index(category), seed])
    labels = np.r_[np.zeros(N_NORMAL, int), np.ones(N_ANOMALOUS, int)]
    scores = rng.normal(size=labels.size) + SHIFTS[method] * labels
    aupimo = np.where(labels == 1, np.clip(rng.normal(0.3 + 0.2 * SHIFTS[method], 0.15, labels.size), 0, 1), np.nan)
    ids = [f"synthetic/{category}/test/{'good' if y == 0 else 'crack'}/{i:03d}" for i, y in enumerate(labels)]
    return PerImage(HOLDOUT, {"category": np.array([category] * labels.size), "id": np.array(ids), "label": labels,
                              "defect_type": np.array(["good" if y == 0 else "crack" for y in labels]),
                              "score": scores.astype(np.float32), "aupimo": aupimo})


def write_run(root: Path, method: str, category: str, seed: int, sidecar: bool = True, image_size: int = 256,
              dataset: str = "synthetic") -> Path:
    table = grid_tables(method, category, seed)
    identity = {"method": method, "category": category, "size": image_size, "dataset": dataset}
    run_hash = identity_hash(identity)
    path = record_path(root, "online_cold_start", dataset, method, category, seed, run_hash)
    record = {
        "schema": 1, "id": run_hash, "status": "finished", "identity": identity,
        "config": {"protocol": {"name": "online_cold_start"}, "method": {"name": method},
                   "dataset": {"name": dataset, "category": category}, "seed": seed},
        "env": {"oadbench": "0.1.0"}, "backbone": {"name": "tf_efficientnet_lite0"},
        "data": {"image_size": image_size},
        "final": {"image_auroc": roc_auc_score(table["label"], table["score"]), "pixel_auroc": 0.9},
        "checkpoints": [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    record["per_image"] = save_per_image(path, table) if sidecar else None
    write_record(path, record)
    return path


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    for method in METHODS:
        for category in CATEGORIES:
            for seed in SEEDS:
                write_run(root / "records", method, category, seed)
    return root / "records"


@pytest.fixture(scope="module")
def compiled(grid, tmp_path_factory):
    out = tmp_path_factory.mktemp("lb")
    compile_leaderboards(grid, out, headline_dirs=grid)
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def seeds_of(method: str, category: str) -> list[PerImage]:
    return [grid_tables(method, category, s) for s in SEEDS]


def test_intervals_are_scipy_bootstrap_of_the_seed_mean(compiled):
    rows = {(r["method"], r["category"]): r for r in read_rows(compiled / "online_cold_start" / "synthetic.csv")}
    for method in ("alpha", "gamma"):
        tables = seeds_of(method, "fabric")
        labels = tables[0]["label"]
        normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)

        def seed_mean_auroc(i0, i1, axis=-1, tables=tables, normal=normal, anomalous=anomalous):
            # AUROC as scipy's Mann-Whitney U / (n0 n1), for every resample at once
            return np.mean([stats.mannwhitneyu(t["score"][anomalous][i1], t["score"][normal][i0], axis=-1,
                                               method="asymptotic").statistic / (i0.shape[-1] * i1.shape[-1])
                            for t in tables], axis=0)

        res = stats.bootstrap((np.arange(len(normal)), np.arange(len(anomalous))), seed_mean_auroc,
                              vectorized=True, n_resamples=2000, method="percentile",
                              rng=np.random.default_rng(0))
        row = rows[(method, "fabric")]
        assert float(row["image_auroc_ci_low"]) == pytest.approx(res.confidence_interval.low, abs=6e-5)
        assert float(row["image_auroc_ci_high"]) == pytest.approx(res.confidence_interval.high, abs=6e-5)
        assert float(row["image_auroc_ci_low"]) < float(row["image_auroc_mean"]) < float(row["image_auroc_ci_high"])
        aup = np.stack([t["aupimo"][anomalous] for t in tables])
        res = stats.bootstrap((np.arange(len(anomalous)),), lambda i, aup=aup: aup[:, i].mean(), vectorized=False,
                              n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
        assert float(row["aupimo_ci_low"]) == pytest.approx(res.confidence_interval.low, abs=6e-5)
        assert float(row["aupimo_mean"]) == pytest.approx(np.mean([np.nanmean(t["aupimo"]) for t in tables]),
                                                          abs=6e-5)
    mean_row = rows[("gamma", "mean")]
    assert float(mean_row["image_auroc_ci_low"]) < float(mean_row["image_auroc_mean"]) \
        < float(mean_row["image_auroc_ci_high"])


def test_resampled_auroc_is_mann_whitney_exactly_with_ties_and_repeats():
    rng = np.random.default_rng(3)
    normal, anomalous = rng.integers(0, 6, (2, 40)).astype(float), rng.integers(2, 9, (2, 25)).astype(float)
    i0, i1 = rng.integers(0, 40, (4, 5, 40)), rng.integers(0, 25, (4, 5, 25))  # resamples with repeats
    got = ResampledAUROC(normal, anomalous)(i0, i1)
    assert got.shape == (2, 4, 5)
    want = np.stack([stats.mannwhitneyu(a[i1], n[i0], axis=-1, method="asymptotic").statistic / (40 * 25)
                     for n, a in zip(normal, anomalous, strict=True)])
    assert np.array_equal(got, want)  # the same float, not merely close


def test_top_group_is_one_sided_delong_and_wilcoxon_against_the_best_with_holm(compiled):
    rows = [r for r in read_rows(compiled / "online_cold_start" / "synthetic.csv") if r["category"] == "washer"]
    by = {r["method"]: r for r in rows}
    best = max(by, key=lambda m: float(by[m]["image_auroc_mean"]))
    others = sorted(m for m in by if m != best)
    labels = grid_tables(best, "washer", 0)["label"]
    raw = []
    for m in others:
        scores = np.stack([t["score"] for t in [*seeds_of(best, "washer"), *seeds_of(m, "washer")]])
        c = delong_contrast(scores, labels, [1 / 3] * 3 + [-1 / 3] * 3)
        raw.append(stats.norm.sf(c.estimate / c.se))
    adjusted = multipletests(raw, method="holm")[1]
    assert by[best]["image_auroc_top"] == "1" and by[best]["image_auroc_p_best"] == ""
    for m, p in zip(others, adjusted, strict=True):
        assert float(by[m]["image_auroc_p_best"]) == pytest.approx(p, abs=6e-5)
        assert by[m]["image_auroc_top"] == ("1" if p >= 0.05 else "0")
    assert by["alpha"]["image_auroc_top"] == "0"  # the weakest method is separated on 20 + 20 images
    best = max(by, key=lambda m: float(by[m]["aupimo_mean"]))
    raw = []
    for m in sorted(x for x in by if x != best):
        diff = np.mean([t["aupimo"][labels == 1] for t in seeds_of(best, "washer")], 0) - \
            np.mean([t["aupimo"][labels == 1] for t in seeds_of(m, "washer")], 0)
        raw.append(stats.wilcoxon(diff, alternative="greater").pvalue)
    for m, p in zip(sorted(x for x in by if x != best), multipletests(raw, method="holm")[1], strict=True):
        assert float(by[m]["aupimo_p_best"]) == pytest.approx(p, abs=6e-5)


def test_headline_ranks_and_friedman_are_scipys_and_the_diagram_is_drawn(compiled):
    import scikit_posthocs as sp

    values = {m: [np.mean([roc_auc_score(t["label"], t["score"]) for t in seeds_of(m, c)]) for c in CATEGORIES]
              for m in sorted(METHODS)}
    data = np.array([values[m] for m in sorted(METHODS)]).T  # blocks (data sets) × methods
    ranks = np.mean([stats.rankdata(-row) for row in data], axis=0)
    friedman = stats.friedmanchisquare(*data.T)
    ranks_csv = compiled / "headline" / "online_cold_start_256px_synthetic_ranks.csv"
    rows = {r["method"]: r for r in read_rows(ranks_csv)}
    for m, rank in zip(sorted(METHODS), ranks, strict=True):
        assert float(rows[m]["average_rank"]) == pytest.approx(rank, abs=6e-5)
        assert float(rows[m]["friedman_p"]) == pytest.approx(friedman.pvalue, abs=6e-5)
        assert rows[m]["data_sets"] == "3"
    assert list(rows) == ["gamma", "beta", "alpha"]  # best first
    assert (compiled / "headline" / "online_cold_start_256px_synthetic_critical_difference.png").stat().st_size > 0
    readme = (compiled / "README.md").read_text()
    assert f"p = {friedman.pvalue:.3g}" in readme and "critical_difference.png" in readme
    assert sp.posthoc_nemenyi_friedman(data).shape == (3, 3)


def test_a_record_without_per_image_results_compiles_with_empty_statistics(grid, tmp_path):
    root = tmp_path / "records"
    for method in METHODS:
        for seed in SEEDS:
            write_run(root, method, "capsule", seed, sidecar=method != "gamma" or seed != 1)
    compile_leaderboards(root, tmp_path / "lb")
    rows = {r["method"]: r for r in read_rows(tmp_path / "lb" / "online_cold_start" / "synthetic.csv")
            if r["category"] == "capsule"}
    assert rows["gamma"]["image_auroc_mean"] and rows["gamma"]["seeds"] == "0 1 2"
    for col in ("image_auroc_ci_low", "aupimo_ci_high", "image_auroc_top", "image_auroc_p_best"):
        assert rows["gamma"][col] == "", col  # not computed on two of its three runs
    assert rows["beta"]["image_auroc_ci_low"]  # its own interval stays
    assert {r["image_auroc_top"] for r in rows.values()} == {""}  # no top group among part of the rows


def test_compare_identical_folders_and_two_methods(grid, tmp_path):
    same_a, same_b = load_side(f"beta@{grid}", []), load_side(f"beta@{grid}", [])
    rows, summary = compare(same_a, same_b)
    assert [r["difference"] for r in rows] == [0.0] * 3 and [r["p"] for r in rows] == [1.0] * 3
    assert summary["wilcoxon_p"] == 1.0  # scipy's convention for all-zero differences
    a, b = load_side("gamma", [grid]), load_side("alpha", [grid])
    rows, summary = compare(a, b)
    labels = grid_tables("alpha", "capsule", 0)["label"]
    for r, category in zip(rows, CATEGORIES, strict=True):
        scores = np.stack([t["score"] for t in [*seeds_of("gamma", category), *seeds_of("alpha", category)]])
        c = delong_contrast(scores, labels, [1 / 3] * 3 + [-1 / 3] * 3)
        assert r["data_set"] == f"synthetic/{category}" and r["test"] == "DeLong"
        assert (r["difference"], r["p"], r["ci_low"]) == pytest.approx((c.estimate, c.p, c.low), rel=1e-12)
    diffs = [np.mean([roc_auc_score(labels, t["score"]) for t in seeds_of("gamma", c)])
             - np.mean([roc_auc_score(labels, t["score"]) for t in seeds_of("alpha", c)]) for c in CATEGORIES]
    assert summary["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs).pvalue, rel=1e-12)
    rows, _ = compare(a, b, "aupimo")
    diff = np.mean([t["aupimo"][labels == 1] for t in seeds_of("gamma", "fabric")], 0) - \
        np.mean([t["aupimo"][labels == 1] for t in seeds_of("alpha", "fabric")], 0)
    assert rows[1]["p"] == pytest.approx(stats.wilcoxon(diff).pvalue, rel=1e-12) and rows[1]["test"] == "Wilcoxon"


def test_compare_refuses_sides_that_differ_or_share_nothing(grid, tmp_path):
    other = tmp_path / "other"
    for seed in SEEDS:
        write_run(other, "delta", "capsule", seed, image_size=128)
        write_run(other, "delta", "tile", seed, dataset="mtd")
    with pytest.raises(DataError, match=r"synthetic/capsule: .*input size: 256 px vs 128 px"):
        compare(load_side("beta", [grid]), load_side(str(other), []))
    only_mtd = tmp_path / "mtd"
    write_run(only_mtd, "delta", "tile", 0, dataset="mtd")
    with pytest.raises(DataError, match="share no data set"):
        compare(load_side("beta", [grid]), load_side(str(only_mtd), []))
    with pytest.raises(DataError, match="several methods .*METHOD@FOLDER"):
        load_side(str(grid), [])


def test_compare_command_prints_and_writes_csv(grid, tmp_path):
    out = tmp_path / "cmp.csv"
    proc = subprocess.run([sys.executable, "-m", "oadbench", "compare", "gamma", "beta", "--records", str(grid),
                           "--out", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "synthetic/washer" in proc.stdout and "Wilcoxon signed-rank p" in proc.stdout
    rows = read_rows(out)
    assert [r["data_set"] for r in rows] == [f"synthetic/{c}" for c in CATEGORIES]
    assert all(r["test"] == "DeLong" and 0 <= float(r["p"]) <= 1 for r in rows)


def test_unreadable_records_are_named_or_listed_when_skipped(grid, tmp_path, capsys):
    root = tmp_path / "records"
    paths = [write_run(root, m, "capsule", s) for m in METHODS for s in SEEDS]
    cut = paths[0]
    cut.write_text(cut.read_text()[: len(cut.read_text()) // 2])  # a record cut in half
    sidecar = paths[4].with_name(paths[4].stem + ".images.csv")
    sidecar.write_text(sidecar.read_text().replace(",1,", ",0,", 1))  # a sidecar that is not the record's any more
    assert main(["leaderboard", str(root), "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert str(cut) in err and "not valid JSON" in err and str(sidecar) in err and "digest" in err
    assert not (tmp_path / "lb").exists()
    assert main(["leaderboard", str(root), "--out", str(tmp_path / "lb"), "--skip-unreadable"]) == 0
    readme = (tmp_path / "lb" / "README.md").read_text()
    assert "Skipped unreadable record files" in readme and cut.name in readme and paths[4].name in readme
    rows = {r["method"]: r for r in read_rows(tmp_path / "lb" / "online_cold_start" / "synthetic.csv")}
    assert rows["alpha"]["seeds"] == "1 2" and rows["beta"]["seeds"] == "0 2"
    with pytest.raises(DataError, match="digest"):
        read_per_image(paths[4], json.loads(paths[4].read_text()))


def test_several_record_folders_compile_into_one_table(grid, tmp_path):
    mine = tmp_path / "mine"
    for category in CATEGORIES:
        for seed in SEEDS:
            write_run(mine, "delta", category, seed)
    compile_leaderboards([mine, grid], tmp_path / "lb", headline_dirs=[mine, grid])
    methods = {r["method"] for r in read_rows(tmp_path / "lb" / "online_cold_start" / "synthetic.csv")}
    assert methods == {"alpha", "beta", "delta", "gamma"}
    ranks = read_rows(tmp_path / "lb" / "headline" / "online_cold_start_256px_synthetic_ranks.csv")
    assert {r["method"] for r in ranks} == {"alpha", "beta", "delta", "gamma"}


def test_stream_rows_round_trip_with_drift_columns(tmp_path):
    from types import SimpleNamespace

    from oadbench.per_image import StreamRows

    rows = StreamRows()
    samples = [SimpleNamespace(id=f"mtd/tile/train/good/{i},x", label=i % 2, defect_type="good") for i in range(3)]
    rows.add("tile", samples[:2], np.array([0.1, 1e-8], np.float32), [{"0_brightness": 0.0}, {"0_brightness": 0.25}])
    rows.add("tile", samples[2:], np.array([123456.7], np.float32), [{"0_brightness": 0.5}])
    record_path = tmp_path / "tile-seed0-0123456789abcdef.json"
    entry = save_per_image(record_path, rows.table())
    back = read_per_image(record_path, {"per_image": entry})
    assert entry["rows"] == 3 and back.kind == "prequential"
    assert back["position"].tolist() == [0, 1, 2] and back["id"][0] == "mtd/tile/train/good/0,x"  # quoted comma
    assert back["score"].astype(np.float32).tolist() == np.array([0.1, 1e-8, 123456.7], np.float32).tolist()
    assert back["drift_0_brightness"].tolist() == [0.0, 0.25, 0.5]
    assert save_per_image(tmp_path / "again.json", rows.table())["sha256"] == entry["sha256"]  # same bytes


def test_several_categories_in_one_run_combine_as_independent_test_sets():
    """A continual run's results hold several categories: its value is their mean, and the paired test combines
    the categories' DeLong contrasts as independent estimates (disjoint test images)."""
    from oadbench.significance import bootstrap_ci, paired_test

    def joined(method: str, seed: int) -> PerImage:
        parts = [grid_tables(method, c, seed) for c in ("capsule", "fabric")]
        return PerImage(HOLDOUT, {k: np.concatenate([p[k] for p in parts]) for k in parts[0].columns})

    a, b = [joined("beta", s) for s in SEEDS], [joined("alpha", s) for s in SEEDS]
    contrasts = []
    for category in ("capsule", "fabric"):
        scores = np.stack([t["score"] for t in [*seeds_of("beta", category), *seeds_of("alpha", category)]])
        contrasts.append(delong_contrast(scores, grid_tables("beta", category, 0)["label"],
                                         [1 / 3] * 3 + [-1 / 3] * 3))
    estimate = np.mean([c.estimate for c in contrasts])
    se = np.sqrt(sum(c.se ** 2 for c in contrasts)) / 2
    result = paired_test(a, b, "image_auroc")
    assert result.difference == pytest.approx(estimate, rel=1e-12) and result.n_images == 2 * (N_NORMAL + N_ANOMALOUS)
    assert result.p == pytest.approx(2 * stats.norm.sf(abs(estimate / se)), rel=1e-9)
    low, high = bootstrap_ci({"capsule+fabric": a}, "image_auroc")
    value = np.mean([roc_auc_score(t["label"], t["score"]) for c in ("capsule", "fabric") for t in seeds_of("beta", c)])
    assert low < value < high

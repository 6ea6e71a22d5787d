"""The embedded synthetic dataset: layout, determinism, exact masks, variation, caching and concurrency."""

from __future__ import annotations

import itertools
import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

import oadbench.data.synthetic as syn
from oadbench.data import get_dataset
from oadbench.errors import ConfigError

SMALL = {"n_train": 3, "n_test_good": 2, "n_test_defect": 2, "resolution": 64, "seed": 0}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _grey(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64).mean(-1)


def _auroc(labels: list[int], scores: list[float]) -> float:
    """Probability that an anomalous image outscores a normal one (ties count half)."""
    s, y = np.asarray(scores), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def test_categories_and_defect_types() -> None:
    assert len(syn.CATEGORIES) >= 4
    assert {"fabric", "marble"} <= set(syn.CATEGORIES)  # textures
    assert {"washer", "capsule"} <= set(syn.CATEGORIES)  # objects
    assert len(syn.DEFECT_TYPES) >= 3
    assert set(syn.CATEGORY_DEFECTS) == set(syn.CATEGORIES)
    for defects in syn.CATEGORY_DEFECTS.values():
        assert len(defects) >= 3
        assert set(defects) <= set(syn.DEFECT_TYPES)


def test_categories_listed_without_generating(tmp_path: Path) -> None:
    loader = get_dataset("synthetic")
    assert loader.categories(tmp_path / "nothing") == list(syn.CATEGORIES)
    assert not (tmp_path / "nothing").exists()


def test_default_root_is_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OADBENCH_CACHE", str(tmp_path))
    assert get_dataset("synthetic").default_root() == tmp_path / "synthetic"
    monkeypatch.delenv("OADBENCH_CACHE")
    assert get_dataset("synthetic").default_root() == Path.home() / ".cache" / "oadbench" / "synthetic"


def test_write_synthetic_defaults_to_the_loader_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OADBENCH_CACHE", str(tmp_path))
    out = syn.write_synthetic(categories=["washer"], **SMALL)
    assert out == tmp_path / "synthetic" / "v1-n3-2-2-s64-seed0"
    assert syn.is_complete(out / "washer", "washer", syn.SyntheticParams(**SMALL))
    loader = get_dataset("synthetic")
    assert loader.load(loader.default_root(), "washer", **SMALL).root == out
    assert syn.write_synthetic(tmp_path / "x", ["washer"], **SMALL, versioned=True) == tmp_path / "x" / out.name


def test_generation_is_byte_identical(tmp_path: Path) -> None:
    a = syn.write_synthetic(tmp_path / "a", **SMALL)
    b = syn.write_synthetic(tmp_path / "b", **SMALL)
    files_a, files_b = _files(a), _files(b)
    assert len(files_a) > 0
    assert files_a.keys() == files_b.keys()
    assert all(files_a[k] == files_b[k] for k in files_a)
    c = syn.write_synthetic(tmp_path / "c", **{**SMALL, "seed": 1})
    assert _files(c)["washer/train/good/000.png"] != files_a["washer/train/good/000.png"]


def test_written_layout_is_mvtec(tmp_path: Path) -> None:
    root = syn.write_synthetic(tmp_path, ["washer"], **SMALL)
    cat = root / "washer"
    assert sorted(p.name for p in (cat / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png"]
    assert sorted(p.name for p in (cat / "test").iterdir()) == sorted(["good", *syn.CATEGORY_DEFECTS["washer"]])
    for defect in syn.CATEGORY_DEFECTS["washer"]:
        assert sorted(p.name for p in (cat / "ground_truth" / defect).iterdir()) == ["000_mask.png", "001_mask.png"]
    with Image.open(cat / "test" / "good" / "000.png") as img:
        assert (img.mode, img.size) == ("RGB", (64, 64))
    with Image.open(cat / "ground_truth" / "crack" / "000_mask.png") as img:
        assert img.mode == "L"
        assert set(np.unique(np.asarray(img))) == {0, 255}
    data = get_dataset("mvtec").load(root, "washer")
    assert data.summary() == {"train": 3, "train_anomalous": 0, "test": 10, "test_anomalous": 8}


@pytest.mark.parametrize("category", syn.CATEGORIES)
def test_masks_are_exact(category: str) -> None:
    for defect in syn.CATEGORY_DEFECTS[category]:
        for index in range(4):
            image, mask, clean = syn.generate_sample(category, defect, index, resolution=64)
            assert image.shape == clean.shape == (64, 64, 3) and mask.shape == (64, 64)
            diff = np.abs(image.astype(int) - clean.astype(int)).max(-1)
            assert mask.any()
            np.testing.assert_array_equal(diff > 0, mask)  # changed on every mask pixel, nowhere else
            assert (diff[mask] >= 3).mean() > 0.95  # and visibly so
    image, mask, clean = syn.generate_sample(category, None, 0, split="train", resolution=64)
    assert not mask.any()
    np.testing.assert_array_equal(image, clean)


def test_written_files_match_in_memory_samples(tmp_path: Path) -> None:
    root = syn.write_synthetic(tmp_path, ["capsule"], **SMALL)
    image, mask, _ = syn.generate_sample("capsule", "stain", 1, resolution=64)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "capsule/test/stain/001.png")), image)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "capsule/ground_truth/stain/001_mask.png")) > 0, mask)
    train, _, _ = syn.generate_sample("capsule", None, 2, split="train", resolution=64)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "capsule/train/good/002.png")), train)


@pytest.mark.parametrize("category", syn.CATEGORIES)
def test_normal_images_vary(category: str) -> None:
    # blurred, so that sensor noise alone does not count as variation
    images = [
        gaussian_filter(syn.generate_sample(category, None, i, "train", 64).image.astype(np.float64), (1.5, 1.5, 0))
        for i in range(5)
    ]
    for a, b in itertools.combinations(images, 2):
        assert np.abs(a - b).mean() > 2.0


def test_load_through_registry(tmp_path: Path) -> None:
    loader = get_dataset("synthetic")
    assert loader.config_defaults() == {
        "name": "synthetic", "root": None, "category": None,
        "n_train": 100, "n_test_good": 30, "n_test_defect": 10, "resolution": 256, "seed": 0,
    }
    options = {k: v for k, v in SMALL.items() if k != "seed"}
    data = loader.load(tmp_path, "fabric", **options)
    defects = syn.CATEGORY_DEFECTS["fabric"]
    assert data.root == tmp_path / "v1-n3-2-2-s64-seed0"
    assert data.dataset == "synthetic" and data.category == "fabric"
    assert data.summary() == {"train": 3, "train_anomalous": 0, "test": 2 + 2 * len(defects),
                              "test_anomalous": 2 * len(defects)}
    assert data.defect_types == sorted(defects)
    assert data.samples[0].id == "synthetic/fabric/train/good/000"
    for sample in data.test:
        if sample.is_anomalous:
            assert sample.mask_path is not None
            assert (np.asarray(Image.open(sample.mask_path)) > 0).any()
        else:
            assert sample.mask_path is None and sample.defect_type == "good"
    assert (data.root / "fabric" / syn.DONE_FILE).is_file()
    assert not [p for p in data.root.iterdir() if p.name.startswith(".")]  # no temporary directories left
    # a second load reuses the files
    mtime = (data.root / "fabric" / syn.DONE_FILE).stat().st_mtime_ns
    loader.load(tmp_path, "fabric", **options)
    assert (data.root / "fabric" / syn.DONE_FILE).stat().st_mtime_ns == mtime


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    loader = get_dataset("synthetic")
    with pytest.raises(ConfigError, match="dataset.category"):
        loader.load(tmp_path, "bottle", **SMALL)
    with pytest.raises(ConfigError, match="dataset.colour"):
        loader.load(tmp_path, "fabric", colour=1, **SMALL)
    with pytest.raises(ConfigError, match="dataset.n_train"):
        loader.load(tmp_path, "fabric", **{**SMALL, "n_train": 0})
    with pytest.raises(ConfigError, match="dataset.resolution"):
        loader.load(tmp_path, "fabric", **{**SMALL, "resolution": "64"})


def test_half_written_category_is_regenerated(tmp_path: Path) -> None:
    reference = _files(syn.write_synthetic(tmp_path / "ref", ["marble"], **SMALL) / "marble")
    base = tmp_path / "cache" / syn.SyntheticParams(**SMALL).dirname
    broken = base / "marble" / "train" / "good"
    broken.mkdir(parents=True)
    (broken / "000.png").write_bytes(b"truncated")  # a killed process left this, and no DONE
    get_dataset("synthetic").load(tmp_path / "cache", "marble", **SMALL)
    assert _files(base / "marble") == reference
    # a DONE manifest for other parameters does not count either
    (base / "marble" / syn.DONE_FILE).write_text("{}\n")
    get_dataset("synthetic").load(tmp_path / "cache", "marble", **SMALL)
    assert _files(base / "marble") == reference
    assert sorted(p.name for p in base.iterdir()) == ["marble"]


def test_losing_the_race_keeps_the_other_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = syn.SyntheticParams(**SMALL)
    real_write = syn._write_category

    def write_while_another_process_finishes(dest: Path, category: str, p: syn.SyntheticParams) -> None:
        real_write(dest, category, p)
        other = tmp_path / "other"
        real_write(other, category, p)
        (other / "winner").write_text("1")
        (other / syn.DONE_FILE).write_text(syn._manifest_text(category, p))
        other.rename(tmp_path / "washer")

    monkeypatch.setattr(syn, "_write_category", write_while_another_process_finishes)
    target = syn.ensure_category(tmp_path, "washer", params)
    assert target == tmp_path / "washer"
    assert (target / "winner").is_file()
    assert syn.is_complete(target, "washer", params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["washer"]


def _load_in_process(root: str, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=120)
    data = get_dataset("synthetic").load(Path(root), "capsule", **SMALL)
    results.put(len(data.samples))


def test_concurrent_generation(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_load_in_process, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    n = 3 + 2 + 2 * len(syn.CATEGORY_DEFECTS["capsule"])
    assert sorted(results.get(timeout=10) for _ in procs) == [n, n]
    base = tmp_path / syn.SyntheticParams(**SMALL).dirname
    assert sorted(p.name for p in tmp_path.iterdir()) == [base.name]
    assert sorted(p.name for p in base.iterdir()) == ["capsule"]  # one copy, no temporaries left
    reference = syn.write_synthetic(tmp_path / "ref", ["capsule"], **SMALL) / "capsule"
    assert _files(base / "capsule") == _files(reference)


@pytest.mark.parametrize("category", syn.CATEGORIES)
def test_defects_are_not_trivial_for_a_simple_detector(category: str) -> None:
    """Per-pixel z-scores of grey values against the training images must not separate perfectly."""
    size, n_train, n_good, n_defect = 64, 30, 20, 10
    train = np.stack([_grey(syn.generate_sample(category, None, i, "train", size).image) for i in range(n_train)])
    mean, std = train.mean(0), train.std(0) + 2.0
    labels: list[int] = []
    scores: list[float] = []
    tests = [(None, i) for i in range(n_good)]
    tests += [(d, i) for d in syn.CATEGORY_DEFECTS[category] for i in range(n_defect)]
    for defect, index in tests:
        image = syn.generate_sample(category, defect, index, "test", size).image
        scores.append(float(gaussian_filter(np.abs(_grey(image) - mean) / std, 1.0).max()))
        labels.append(int(defect is not None))
    assert _auroc(labels, scores) < 0.999

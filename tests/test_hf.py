"""dataset=hf on the real ``datasets`` library, without network: tiny datasets in both Hub layouts (MVTec AD's
``TheoM55/mvtec_all_objects_split``, VisA's ``BrachioLab/visa``) as Parquet, Arrow and save_to_disk folders; a
synthetic category exported and read back; bad input; the Hub code path up to the network boundary."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")

from oadbench.cli import main  # noqa: E402
from oadbench.data import ImageTransform, get_dataset  # noqa: E402
from oadbench.data.hf import export_features  # noqa: E402
from oadbench.data.sample import ANOMALOUS, NORMAL  # noqa: E402
from oadbench.errors import ConfigError, DataError, DatasetUnavailableError  # noqa: E402
from oadbench.runner import prepare, run  # noqa: E402
from tests.conftest import SMALL, compose, small_run  # noqa: E402

SIDE = 32
HF = get_dataset("hf")


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """Keep the Arrow files datasets prepares out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def pixels(seed: int, mode: str = "RGB") -> np.ndarray:
    shape = (SIDE, SIDE, 3) if mode == "RGB" else (SIDE, SIDE)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def box_mask(value: int = 255) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[4:12, 6:20] = value
    return mask


# Hub-layout fixtures ---------------------------------------------------------------------------------------------

MVTEC_ROWS = {  # split -> (defect, seed) per row, in row order
    "train": [("good", 0), ("good", 1), ("good", 2)],
    "test": [("good", 10), ("broken_large", 11), ("good", 12), ("contamination", 13)],
}


def mvtec_split(category: str, split: str, offset: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_dict(mvtec_columns(category, split, offset), features=export_features())


def mvtec_columns(category: str, split: str, offset: int = 0) -> dict[str, list]:
    """Rows in the TheoM55/mvtec_all_objects_split schema (null masks for normal images)."""
    rows = MVTEC_ROWS[split]
    return {
        "image_path": [{"bytes": png(pixels(seed + offset)), "path": f"{i:03d}.png"} for i, (_, seed) in
                       enumerate(rows)],
        "split": [split] * len(rows),
        "object": [category] * len(rows),
        "defect": [d for d, _ in rows],
        "label": [int(d != "good") for d, _ in rows],
        "mask_path": [None if d == "good" else {"bytes": png(box_mask()), "path": f"{i:03d}_mask.png"}
                      for i, (d, _) in enumerate(rows)],
    }


def visa_split(split: str) -> datasets.Dataset:
    """Rows in the BrachioLab/visa schema: image, mask, label; normal masks null or all-zero, anomalous masks
    with a small class value (and, last, an anomalous image without a mask)."""
    labels = [0, 0, 0] if split == "train" else [0, 1, 0, 1, 1]
    masks = []
    for i, label in enumerate(labels):
        if label and i == 4:
            masks.append(None)
        elif label:
            masks.append({"bytes": png(box_mask(value=1)), "path": None})
        else:
            masks.append(None if i % 2 == 0 else {"bytes": png(np.zeros((SIDE, SIDE), np.uint8)), "path": None})
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(),
                                  "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({
        "image": [{"bytes": png(pixels(50 + i + 10 * (split == "test"))), "path": None} for i in range(len(labels))],
        "mask": masks,
        "label": labels,
    }, features=features)


def write(splits: dict[str, datasets.Dataset], root: Path, storage: str) -> Path:
    """Store ``splits`` as the Hub stores them (data/<split>-00000-of-00001.parquet), as Arrow files in the same
    layout, or with save_to_disk."""
    if storage == "save_to_disk":
        datasets.DatasetDict(splits).save_to_disk(str(root))
        return root
    (root / "data").mkdir(parents=True)
    for name, ds in splits.items():
        target = root / "data" / f"{name}-00000-of-00001.{storage}"
        if storage == "parquet":
            ds.to_parquet(str(target))
        else:
            saved = root / f"saved-{name}"
            ds.save_to_disk(str(saved))
            (saved / "data-00000-of-00001.arrow").rename(target)
    return root


def mvtec_hub(root: Path, storage: str = "parquet") -> Path:
    return write({f"{c}.{s}": mvtec_split(c, s, offset=100 * k) for k, c in enumerate(("bottle", "cable"))
                  for s in ("train", "test")}, root, storage)


def loaded(sample) -> tuple[torch.Tensor, torch.Tensor]:
    return ImageTransform(SIDE).load(sample)


# the two Hub layouts --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["parquet", "arrow", "save_to_disk"])
def test_mvtec_hub_layout_is_read_without_column_options(tmp_path, storage):
    root = mvtec_hub(tmp_path / "mvtec", storage)
    assert HF.categories(root) == ["bottle", "cable"]
    data = HF.load(root, "bottle", path=str(root))
    assert data.dataset == "hf" and data.category == "bottle"
    assert [s.id for s in data.train] == ["hf/bottle/train/good/000", "hf/bottle/train/good/001",
                                          "hf/bottle/train/good/002"]
    assert [s.id for s in data.test] == ["hf/bottle/test/good/000", "hf/bottle/test/broken_large/001",
                                         "hf/bottle/test/good/002", "hf/bottle/test/contamination/003"]
    assert [s.label for s in data.test] == [NORMAL, ANOMALOUS, NORMAL, ANOMALOUS]
    assert data.defect_types == ["broken_large", "contamination"]
    assert all(s.mask_path is None for s in data.samples if s.label == NORMAL)
    assert all(s.mask_path is not None for s in data.samples if s.label == ANOMALOUS)
    for sample, (_, seed) in zip(data.train + data.test, MVTEC_ROWS["train"] + MVTEC_ROWS["test"], strict=True):
        image, mask = loaded(sample)
        assert torch.equal(image, torch.from_numpy(pixels(seed)).permute(2, 0, 1))
        assert torch.equal(mask, torch.from_numpy(box_mask() > 0) if sample.is_anomalous else torch.zeros_like(mask))
    cable = HF.load(root, "cable", path=str(root))
    assert torch.equal(loaded(cable.train[0])[0], torch.from_numpy(pixels(100)).permute(2, 0, 1))
    assert [s.id for s in HF.load(root, "bottle").samples] == [s.id for s in data.samples]  # stable ids


@pytest.mark.parametrize("storage", ["parquet", "save_to_disk"])
def test_visa_hub_layout_null_and_zero_normal_masks_and_class_value_masks(tmp_path, storage):
    root = write({f"pcb1.{s}": visa_split(s) for s in ("train", "test")}, tmp_path / "visa", storage)
    assert HF.categories(root) == ["pcb1"]
    data = HF.load(root, "pcb1")
    assert data.summary() == {"train": 3, "train_anomalous": 0, "test": 5, "test_anomalous": 3}
    assert [s.defect_type for s in data.test] == ["good", "anomaly", "good", "anomaly", "anomaly"]
    # no stored paths: ids from split and row
    assert [s.id for s in data.test] == [f"hf/pcb1/test/{d}/pcb1.test-{i:06d}" for i, d in
                                         enumerate(["good", "anomaly", "good", "anomaly", "anomaly"])]
    assert data.test[4].mask_path is None  # a null mask of an anomalous image: no pixel annotation
    for s in data.test[:4]:
        image, mask = loaded(s)
        assert mask.dtype == torch.bool and mask.shape == (SIDE, SIDE)
        if s.is_anomalous:
            assert torch.equal(mask, torch.from_numpy(box_mask(value=1) > 0))  # class value 1 counts as anomalous
        else:
            assert s.mask_path is None and not mask.any()


def test_plain_pyarrow_parquet_structs_explicit_columns_string_labels_and_a_category_column(tmp_path):
    """No datasets metadata (images come back as {bytes, path} structs), columns named explicitly, plain
    train/test splits with the category in a column, labels as strings."""
    import pyarrow as pa

    (tmp_path / "own" / "data").mkdir(parents=True)
    for split, rows in {"train": [("a", "OK", 0), ("b", "ok", 1), ("a", "good", 2)],
                        "test": [("a", "normal", 3), ("a", "NG", 4), ("b", "scratch", 5)]}.items():
        table = pa.table({
            "img": [{"bytes": png(pixels(seed)), "path": f"{split}/{seed}.png"} for _, _, seed in rows],
            "part": [c for c, _, _ in rows],
            "y": [y for _, y, _ in rows],
        })
        pq.write_table(table, tmp_path / "own" / "data" / f"{split}-00000-of-00001.parquet")
    root = tmp_path / "own"
    with pytest.raises(ConfigError) as err:
        HF.load(root, "a")
    assert err.value.key == "dataset.columns.image" and "img (struct{bytes, path})" in str(err.value)
    columns = {"image": "img", "label": "y", "category": "part"}
    assert HF.categories(root, columns=columns) == ["a", "b"]
    data = HF.load(root, "a", columns=columns)
    assert [(s.split, s.label, s.defect_type, s.id) for s in data.samples] == [
        ("train", NORMAL, "good", "hf/a/train/good/0"), ("train", NORMAL, "good", "hf/a/train/good/2"),
        ("test", NORMAL, "good", "hf/a/test/good/3"), ("test", ANOMALOUS, "anomaly", "hf/a/test/anomaly/4")]
    assert data.test[1].mask_path is None  # no mask column: anomalous without a pixel annotation
    assert torch.equal(loaded(data.test[1])[0], torch.from_numpy(pixels(4)).permute(2, 0, 1))
    with pytest.raises(ConfigError) as err:
        HF.load(root, "c", columns=columns)
    assert err.value.key == "dataset.category" and err.value.allowed == ["a", "b"]
    # without dataset.category a run takes the first category, found with the run's column mapping
    prep = prepare(compose("dataset=hf", f"dataset.path={root}", "dataset.columns.image=img",
                           "dataset.columns.label=y", "dataset.columns.category=part"))
    assert [d.category for d in prep.datas] == ["a"] and prep.config["dataset"]["columns"]["image"] == "img"


def test_images_decode_lazily_and_a_broken_row_names_split_and_row(tmp_path):
    broken = mvtec_columns("bottle", "test")
    broken["image_path"][1] = {"bytes": b"not an image", "path": "001.png"}
    splits = {"bottle.train": mvtec_split("bottle", "train"),
              "bottle.test": datasets.Dataset.from_dict(broken, features=export_features())}
    root = write(splits, tmp_path / "broken", "parquet")
    data = HF.load(root, "bottle")  # reading the category decodes nothing
    assert loaded(data.test[0])[0].shape == (3, SIDE, SIDE)
    with pytest.raises(DataError, match=r"split 'bottle.test', row 1: cannot decode the image \(001.png\)"):
        loaded(data.test[1])


# export and read back --------------------------------------------------------------------------------------------


def test_a_synthetic_category_exported_and_read_back_gives_identical_samples_images_and_masks(tmp_path, capsys):
    small = [f"dataset.{k}={v}" for k, v in SMALL.items()]
    out = tmp_path / "export"
    assert main(["data", "export", "--out", str(out), "dataset=synthetic", "dataset.category=capsule", *small]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(out / "data" / "capsule.train-00000-of-00001.parquet"),
                       str(out / "data" / "capsule.test-00000-of-00001.parquet")]
    table = pq.read_table(written[1])
    assert table.column_names == ["image_path", "split", "object", "defect", "label", "mask_path"]
    assert table.column("image_path")[0].as_py()["path"].startswith("capsule/test/")  # the original relative path

    synthetic = get_dataset("synthetic")
    original = synthetic.load(synthetic.default_root(), "capsule", **SMALL)
    back = HF.load(out, "capsule", path=str(out))
    assert len(back.train) == len(original.train) and len(back.test) == len(original.test)
    transform = ImageTransform(SMALL["resolution"])
    for a, b in zip(original.samples, back.samples, strict=True):
        assert b.id == a.id.replace("synthetic/", "hf/", 1)
        assert (b.label, b.defect_type, b.split, b.category) == (a.label, a.defect_type, a.split, a.category)
        assert (a.mask_path is None) == (b.mask_path is None)
        assert b.image_path.as_posix() == a.image_path.relative_to(original.root).as_posix()
        (ia, ma), (ib, mb) = transform.load(a), transform.load(b)
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
    assert any(transform.load(s)[1].any() for s in back.test)  # the masks are not all empty


def test_export_of_soft_masks_keeps_the_loaders_threshold(tmp_path):
    """A loader reading masks with threshold 127 (as MTD) exports the binarised mask, so '> 0' reads it back."""
    root = tmp_path / "parts"
    for i in range(3):
        (root / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels(i)).save(root / "good" / f"n{i}.png")
    (root / "defect").mkdir()
    (root / "masks").mkdir()
    Image.fromarray(pixels(9)).save(root / "defect" / "d0.png")
    soft = box_mask(value=200)
    soft[0:3, 0:3] = 100  # below the threshold: normal
    Image.fromarray(soft).save(root / "masks" / "d0.png")
    options = {"mask_dir": "masks", "mask_threshold": 127, "test_split_ratio": 0.34}
    original = get_dataset("folder").load(root, "default", **options)
    from oadbench.data.hf import export_category

    export_category(original, tmp_path / "out")
    back = HF.load(tmp_path / "out", "default")
    assert [s.id.split("/", 1)[1] for s in back.samples] == [s.id.split("/", 1)[1] for s in original.samples]
    a, b = (next(s for s in d.test if s.is_anomalous) for d in (original, back))
    assert b.mask_path == Path("masks/d0.png")
    assert torch.equal(loaded(a)[1], loaded(b)[1]) and loaded(b)[1].sum() == (soft > 127).sum()


@pytest.mark.parametrize("protocol", ["offline", "online_cold_start"])
def test_runs_on_an_export_give_exactly_the_final_metrics_of_the_original(tmp_path, protocol):
    small = [f"dataset.{k}={v}" for k, v in SMALL.items()]
    out = tmp_path / "export"
    assert main(["data", "export", "--out", str(out), "dataset=synthetic", "dataset.category=capsule", *small]) == 0
    common = [f"protocol={protocol}", "method=padim", "features.cache=false", "threads=1"]
    original = run(small_run(tmp_path / "a", *common, "dataset.category=capsule"))
    back = run(compose(f"results_dir={tmp_path / 'b'}", "image_size=64", "progress=false", "wandb.mode=disabled",
                       *common, "dataset=hf", f"dataset.path={out}", "dataset.category=capsule"))
    assert original["status"] == back["status"] == "finished"
    assert back["config"]["dataset"]["name"] == "hf" and back["config"]["dataset"]["path"] == str(out)
    assert back["final"] == original["final"]
    assert np.isfinite(back["final"]["image_auroc"]) and back["final"]["pixel_auroc"] > 0.5


# bad input --------------------------------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error_and_leaves_no_record(tmp_path):
    root = mvtec_hub(tmp_path / "mvtec")
    empty = tmp_path / "empty"
    empty.mkdir()
    base = [f"results_dir={tmp_path / 'res'}", "progress=false", "wandb.mode=disabled", "dataset=hf"]
    cases = [
        ([f"dataset.path={root}", "dataset.category=screw"], ConfigError, "dataset.category", "allowed: bottle, cable"),
        ([f"dataset.path={root}", "dataset.columns.mask=ground_truth"], ConfigError, "dataset.columns.mask",
         "columns found: image_path (Image), split (string)"),
        ([f"dataset.path={root}", "dataset.revision=main"], ConfigError, "dataset.revision", "local directory"),
        ([f"dataset.path={empty}"], DataError, None, "datasets cannot read it"),
        ([f"dataset.path={tmp_path / 'nowhere' / 'deeper'}"], DataError, None, "neither a directory nor a Hub"),
        (["dataset.root=/data", f"dataset.path={root}"], ConfigError, "dataset.root", "give dataset.path"),
        ([], ConfigError, "dataset.path", "is required"),
    ]
    for overrides, error, key, text in cases:
        with pytest.raises(error) as err:
            prepare(compose(*base, *overrides))
        assert text in str(err.value), str(err.value)
        if key is not None:
            assert err.value.key == key
    only_test = write({"bottle.test": mvtec_split("bottle", "test")}, tmp_path / "only_test", "parquet")
    with pytest.raises(DataError, match="category 'bottle' has no training images"):
        HF.load(only_test, "bottle")
    assert not (tmp_path / "res").exists()


def test_export_errors_name_the_key_or_file_and_leave_no_file(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "export", "--out", str(out), "dataset=mvtec", "dataset.root=/x", "dataset.foo=1"]) == 2
    assert "error: dataset.foo: unknown option of dataset 'mvtec'" in capsys.readouterr().err
    assert main(["data", "export", "--out", str(out), "dataset=hf", f"dataset.path={tmp_path}"]) == 2
    assert "dataset 'hf' is already Parquet/Arrow data" in capsys.readouterr().err
    root = tmp_path / "parts"
    for i in range(4):
        (root / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels(i)).save(root / "good" / f"n{i}.png")
    (root / "defect").mkdir()
    (root / "defect" / "d0.png").write_bytes(b"truncated")  # a test image: the train part is written first
    assert main(["data", "export", "--out", str(out), "dataset=folder", f"dataset.root={root}"]) == 2
    assert f"cannot read image {root / 'defect' / 'd0.png'}" in capsys.readouterr().err
    assert [f for f in out.rglob("*") if f.is_file()] == []  # neither the complete train part nor temp files


def test_offline_hub_is_the_named_error_at_once_and_names_the_way_to_work_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "WANDB_SILENT": "true"}
    out = subprocess.run([sys.executable, "-m", "oadbench", "run", "dataset=hf",
                          "dataset.path=TheoM55/mvtec_all_objects_split", "dataset.category=bottle",
                          "results_dir=results", "wandb.mode=disabled", "progress=false"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    message = out.stderr.strip().splitlines()[-1]
    assert message.startswith("error: dataset.path: cannot reach the Hub repository 'TheoM55/mvtec_all_objects_split'")
    assert "HF_HUB_OFFLINE" in message and "hf download TheoM55/mvtec_all_objects_split" in message
    assert "dataset.path=DIR" in message and "Traceback" not in out.stderr
    assert not (tmp_path / "results").exists()


def test_offline_hub_in_process_raises_dataset_unavailable(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetUnavailableError) as err:
        HF.load(Path("BrachioLab/visa"), "pcb1")
    assert isinstance(err.value, DataError)  # bad input: the runner writes no record
    assert str(err.value).startswith("dataset.path: cannot reach the Hub repository 'BrachioLab/visa'")
    assert "hf download BrachioLab/visa --repo-type dataset --local-dir DIR" in str(err.value)


def test_list_datasets_shows_hf(capsys):
    assert main(["list", "datasets"]) == 0
    assert any(line.startswith("hf ") for line in capsys.readouterr().out.splitlines())


def test_dataset_category_all_lists_the_categories_of_a_hub_layout(tmp_path):
    from oadbench.cli import _expand_all_categories

    root = mvtec_hub(tmp_path / "hub")
    out = _expand_all_categories(["dataset=hf", f"dataset.path={root}", "dataset.category=all"])
    assert "dataset.category=bottle,cable" in out and "--multirun" in out
    with pytest.raises(ConfigError, match="dataset.path"):
        _expand_all_categories(["dataset=hf", "dataset.category=all"])

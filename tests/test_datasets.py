"""Dataset loaders: tiny fixtures in every supported layout, bad input, and the real MTD copy when present."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oadbench.data.mtd as mtd_module
from oadbench.data import ImageTransform, get_dataset
from oadbench.data.sample import ANOMALOUS, NORMAL, CategoryData, Sample
from oadbench.errors import ConfigError, DataError

SIZE = (24, 20)  # (width, height) of the fixture images
BOX = (4, 6, 12, 14)  # (left, top, right, bottom), right/bottom exclusive: where fixture masks are anomalous
MTD_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mtd"
MVTEC_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec"


# fixture writers ------------------------------------------------------------------------------------------------


def write_image(path: Path, size: tuple[int, int] = SIZE, mode: str = "RGB", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def write_mask(
    path: Path, size: tuple[int, int] = SIZE, value: int = 255, box: tuple[int, int, int, int] = BOX
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    left, top, right, bottom = box
    arr[top:bottom, left:right] = value
    Image.fromarray(arr, mode="L").save(path)
    return path


def sha1(stem: str) -> str:
    return hashlib.sha1(stem.encode("utf-8")).hexdigest()


def make_mvtec(root: Path) -> Path:
    cat = root / "bottle"
    for i in range(3):
        write_image(cat / "train" / "good" / f"{i:03d}.png", seed=i)
    write_image(cat / "test" / "good" / "000.png", seed=10)
    for i in range(2):
        write_image(cat / "test" / "broken_large" / f"{i:03d}.png", seed=20 + i)
        write_mask(cat / "ground_truth" / "broken_large" / f"{i:03d}_mask.png")
    write_image(cat / "test" / "contamination" / "000.png", seed=30)
    write_mask(cat / "ground_truth" / "contamination" / "000_mask.png")
    write_image(root / "cable" / "train" / "good" / "000.png")
    (root / "cable" / "test").mkdir(parents=True)
    return root


VISA_ROWS = [  # object, split, label, stem
    ("candle", "train", "normal", "0002"),
    ("candle", "train", "normal", "0000"),
    ("candle", "train", "normal", "0001"),
    ("candle", "test", "normal", "0003"),
    ("candle", "test", "anomaly", "001"),
    ("candle", "test", "anomaly", "000"),
    ("pcb1", "train", "normal", "0000"),
    ("pcb1", "test", "anomaly", "000"),
]


def make_visa_raw(root: Path, write_csv: bool = True) -> Path:
    lines = ["object,split,label,image,mask"]
    for i, (obj, split, label, stem) in enumerate(VISA_ROWS):
        folder = "Normal" if label == "normal" else "Anomaly"
        image = f"{obj}/Data/Images/{folder}/{stem}.JPG"
        write_image(root / image, seed=i)
        mask = ""
        if label == "anomaly":
            mask = f"{obj}/Data/Masks/Anomaly/{stem}.png"
            write_mask(root / mask, value=2)  # VisA masks hold small class values
        lines.append(f"{obj},{split},{label},{image},{mask}")
    if write_csv:
        (root / "split_csv").mkdir(parents=True)
        (root / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    return root


def make_visa_1cls(root: Path) -> Path:
    for i, (obj, split, label, stem) in enumerate(VISA_ROWS):
        folder = "good" if label == "normal" else "bad"
        write_image(root / obj / split / folder / f"{stem}.JPG", seed=i)
        if label == "anomaly":
            write_mask(root / obj / "ground_truth" / "bad" / f"{stem}.png", value=2)
    return root


def make_btad(root: Path) -> Path:
    """BTech_Dataset_transformed with 01 (.bmp images, .png masks), 02 (.png/.png) and 03 (.bmp/.bmp)."""
    data = root / "BTech_Dataset_transformed"
    spec = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}
    for cat, (img_ext, mask_ext) in spec.items():
        for i in range(3):
            write_image(data / cat / "train" / "ok" / f"{i:04d}{img_ext}", seed=i)
        write_image(data / cat / "test" / "ok" / f"0000{img_ext}", seed=5)
        for i in range(2):
            write_image(data / cat / "test" / "ko" / f"{i:04d}{img_ext}", seed=6 + i)
            write_mask(data / cat / "ground_truth" / "ko" / f"{i:04d}{mask_ext}")
    return root


MTD_FIXTURE_DEFECTS = {"Blowhole": 2, "Break": 1, "Crack": 1, "Fray": 1, "Uneven": 1}


def make_mtd(root: Path, normal_stems: list[str]) -> Path:
    """MTD layout: grayscale JPEGs of varying size, soft .png masks (zero masks next to the normals too)."""
    for k, stem in enumerate(normal_stems):
        size = (24 + k % 3, 20 + k % 2)
        write_image(root / "MT_Free" / "Imgs" / f"{stem}.jpg", size=size, mode="L", seed=k)
        write_mask(root / "MT_Free" / "Imgs" / f"{stem}.png", size=size, value=0)
    for d, n in MTD_FIXTURE_DEFECTS.items():
        for i in range(n):
            stem = f"exp1_num_{d.lower()}{i}"
            write_image(root / f"MT_{d}" / "Imgs" / f"{stem}.jpg", mode="L", seed=100 + i)
            mask = write_mask(root / f"MT_{d}" / "Imgs" / f"{stem}.png", value=200)
            arr = np.asarray(Image.open(mask)).copy()
            arr[0:3, 0:3] = 100  # soft value below the 127 threshold: not anomalous
            Image.fromarray(arr, mode="L").save(mask)
    return root


MTD_STEMS = [f"exp{i % 3}_num_{1000 + 37 * i}" for i in range(10)]


def make_folder(root: Path) -> Path:
    for i in range(10):
        write_image(root / "good" / f"n{i:02d}.png", seed=i)
    write_image(root / "defect" / "d0.png", seed=50)
    write_image(root / "defect" / "d1.png", seed=51)
    write_mask(root / "masks" / "d0_m.png")
    return root


# shared checks ---------------------------------------------------------------------------------------------------


def check_invariants(data: CategoryData) -> None:
    """What every loader guarantees: normal-only train, stable ids, path order, masks only on anomalies."""
    assert data.train and all(s.label == NORMAL and s.split == "train" for s in data.train)
    assert all(s.split == "test" for s in data.test)
    for part in (data.train, data.test):
        assert [str(s.image_path) for s in part] == sorted(str(s.image_path) for s in part)
    ids = [s.id for s in data.samples]
    assert len(ids) == len(set(ids))
    for s in data.samples:
        assert s.id == f"{data.dataset}/{data.category}/{s.split}/{s.defect_type}/{s.image_path.stem}"
        assert s.category == data.category
        assert s.label in (NORMAL, ANOMALOUS)
        assert (s.defect_type == "good") == (s.label == NORMAL)
        if s.label == NORMAL:
            assert s.mask_path is None
        assert s.image_path.is_file()
        assert s.mask_path is None or s.mask_path.is_file()


def check_loaded(sample: Sample, size: int = 16, box: tuple[int, int, int, int] = BOX) -> torch.Tensor:
    """Load through ImageTransform; the mask must be set only inside the (scaled) box the fixture drew."""
    image, mask = ImageTransform(size=size).load(sample)
    assert image.shape == (3, size, size) and image.dtype == torch.uint8
    assert mask.shape == (size, size) and mask.dtype == torch.bool
    if sample.mask_path is None:
        assert not mask.any()
        return mask
    sx, sy = size / SIZE[0], size / SIZE[1]
    left, top, right, bottom = box
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert len(ys) > 0
    assert xs.min() >= math.floor(left * sx) - 1 and xs.max() <= math.ceil(right * sx)
    assert ys.min() >= math.floor(top * sy) - 1 and ys.max() <= math.ceil(bottom * sy)
    assert mask[int((top + bottom) / 2 * sy), int((left + right) / 2 * sx)]
    assert not mask[0, 0] and not mask[-1, -1]
    return mask


def by_id(data: CategoryData) -> dict[str, Sample]:
    return {s.id: s for s in data.samples}


# MVTec -----------------------------------------------------------------------------------------------------------


def test_mvtec_layout(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    loader = get_dataset("mvtec")
    assert loader.categories(root) == ["bottle", "cable"]
    data = loader.load(root, "bottle")
    check_invariants(data)
    assert data.summary() == {"train": 3, "train_anomalous": 0, "test": 4, "test_anomalous": 3}
    assert [s.id for s in data.train] == [f"mvtec/bottle/train/good/{i:03d}" for i in range(3)]
    assert [s.id for s in data.test] == [
        "mvtec/bottle/test/broken_large/000",
        "mvtec/bottle/test/broken_large/001",
        "mvtec/bottle/test/contamination/000",
        "mvtec/bottle/test/good/000",
    ]
    assert data.defect_types == ["broken_large", "contamination"]
    s = by_id(data)["mvtec/bottle/test/broken_large/001"]
    assert s.mask_path == root / "bottle" / "ground_truth" / "broken_large" / "001_mask.png"
    assert s.mask_threshold == 0
    check_loaded(s)
    check_loaded(data.train[0])


# VisA ------------------------------------------------------------------------------------------------------------


def test_visa_raw_layout(tmp_path: Path) -> None:
    root = make_visa_raw(tmp_path)
    loader = get_dataset("visa")
    assert loader.categories(root) == ["candle", "pcb1"]
    data = loader.load(root, "candle")
    check_invariants(data)
    assert data.summary() == {"train": 3, "train_anomalous": 0, "test": 3, "test_anomalous": 2}
    assert [s.id for s in data.train] == [f"visa/candle/train/good/{i:04d}" for i in range(3)]
    assert [s.id for s in data.test] == [
        "visa/candle/test/anomaly/000", "visa/candle/test/anomaly/001", "visa/candle/test/good/0003",
    ]
    assert data.defect_types == ["anomaly"]
    s = data.test[0]
    assert s.mask_path == root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png"
    assert s.mask_threshold == 0 and s.image_path.suffix == ".JPG"
    check_loaded(s)  # mask value 2 counts as anomalous
    pcb = loader.load(root, "pcb1")
    assert pcb.summary() == {"train": 1, "train_anomalous": 0, "test": 1, "test_anomalous": 1}


def test_visa_prepared_1cls_layout_gives_the_same_ids(tmp_path: Path) -> None:
    raw = get_dataset("visa").load(make_visa_raw(tmp_path / "raw"), "candle")
    root = make_visa_1cls(tmp_path / "prepared")
    loader = get_dataset("visa")
    assert loader.categories(root) == ["candle", "pcb1"]
    data = loader.load(root, "candle")
    check_invariants(data)
    assert [s.id for s in data.train] == [s.id for s in raw.train]
    assert sorted(s.id for s in data.test) == sorted(s.id for s in raw.test)
    s = by_id(data)["visa/candle/test/anomaly/001"]
    assert s.mask_path == root / "candle" / "ground_truth" / "bad" / "001.png"
    assert s.defect_type == "anomaly" and s.label == ANOMALOUS
    check_loaded(s)


def test_visa_raw_without_split_csv(tmp_path: Path) -> None:
    root = make_visa_raw(tmp_path, write_csv=False)
    with pytest.raises(DataError) as err:
        get_dataset("visa").load(root, "candle")
    assert "expected layout" in str(err.value)
    assert str(root / "split_csv" / "1cls.csv") in str(err.value)


def test_visa_bad_split_csv(tmp_path: Path) -> None:
    root = make_visa_raw(tmp_path)
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(DataError, match="expected the header object,split,label,image,mask"):
        get_dataset("visa").load(root, "candle")
    csv_path.write_text("object,split,label,image,mask\ncandle,val,normal,candle/Data/Images/Normal/0000.JPG,\n")
    with pytest.raises(DataError, match="line 2"):
        get_dataset("visa").load(root, "candle")


def test_visa_missing_mask(tmp_path: Path) -> None:
    root = make_visa_raw(tmp_path)
    mask = root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    mask.unlink()
    with pytest.raises(DataError) as err:
        get_dataset("visa").load(root, "candle")
    assert str(mask) in str(err.value) and "expected layout" in str(err.value)


# BTAD ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "img_ext", "mask_ext"), [("01", ".bmp", ".png"), ("02", ".png", ".png"), ("03", ".bmp", ".bmp")]
)
def test_btad_layout(tmp_path: Path, category: str, img_ext: str, mask_ext: str) -> None:
    make_btad(tmp_path)
    loader = get_dataset("btad")
    data_root = tmp_path / "BTech_Dataset_transformed"
    for root in (tmp_path, data_root):  # the parent folder and the dataset folder itself both work
        assert loader.categories(root) == ["01", "02", "03"]
        data = loader.load(root, category)
        check_invariants(data)
        assert data.summary() == {"train": 3, "train_anomalous": 0, "test": 3, "test_anomalous": 2}
        assert [s.id for s in data.train] == [f"btad/{category}/train/good/{i:04d}" for i in range(3)]
        assert [s.id for s in data.test] == [
            f"btad/{category}/test/ko/0000", f"btad/{category}/test/ko/0001", f"btad/{category}/test/good/0000",
        ]
        assert data.defect_types == ["ko"]
        assert all(s.image_path.suffix == img_ext for s in data.samples)
        s = data.test[1]
        assert s.mask_path == data_root / category / "ground_truth" / "ko" / f"0001{mask_ext}"
    check_loaded(s)


def test_btad_missing_mask_names_expected_file(tmp_path: Path) -> None:
    make_btad(tmp_path)
    data_root = tmp_path / "BTech_Dataset_transformed"
    (data_root / "03" / "ground_truth" / "ko" / "0001.bmp").unlink()
    with pytest.raises(DataError) as err:
        get_dataset("btad").load(tmp_path, "03")
    assert str(data_root / "03" / "ground_truth" / "ko" / "0001.bmp") in str(err.value)


# MTD -------------------------------------------------------------------------------------------------------------


def test_mtd_layout(tmp_path: Path) -> None:
    root = make_mtd(tmp_path, MTD_STEMS)
    loader = get_dataset("mtd")
    assert loader.categories(root) == ["tile"]
    data = loader.load(root, "tile")
    check_invariants(data)
    n_defects = sum(MTD_FIXTURE_DEFECTS.values())
    assert data.summary() == {"train": 8, "train_anomalous": 0, "test": 2 + n_defects, "test_anomalous": n_defects}
    assert data.defect_types == ["blowhole", "break", "crack", "fray", "uneven"]
    by_hash = sorted(MTD_STEMS, key=sha1)
    assert sorted(s.image_path.stem for s in data.train) == sorted(by_hash[:8])
    assert sorted(s.image_path.stem for s in data.test if s.label == NORMAL) == sorted(by_hash[8:])
    assert all(s.mask_path is None for s in data.samples if s.label == NORMAL)  # the zero .png masks are ignored
    s = by_id(data)["mtd/tile/test/blowhole/exp1_num_blowhole1"]
    assert s.mask_path == root / "MT_Blowhole" / "Imgs" / "exp1_num_blowhole1.png"
    assert s.mask_threshold == 127
    mask = check_loaded(s)  # the 100-valued corner is below the threshold
    assert not mask[:2, :2].any()
    image, _ = ImageTransform(size=16).load(data.train[0])  # grayscale JPEG, other size: RGB 16x16
    assert image.shape == (3, 16, 16)
    half = loader.load(root, "tile", train_fraction=0.5)
    assert len(half.train) == 5 and len(half.test) == 5 + n_defects


def test_mtd_split_does_not_depend_on_listing_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loader = get_dataset("mtd")
    first = loader.load(make_mtd(tmp_path / "a", MTD_STEMS), "tile")
    second = loader.load(make_mtd(tmp_path / "b", list(reversed(MTD_STEMS))), "tile")
    assert [s.id for s in first.train] == [s.id for s in second.train]
    assert [s.id for s in first.test] == [s.id for s in second.test]

    original = mtd_module.list_images

    def shuffled(directory: Path, extensions: tuple[str, ...]) -> list[Path]:
        files = original(directory, extensions)
        random.Random(7).shuffle(files)
        return files

    monkeypatch.setattr(mtd_module, "list_images", shuffled)
    third = loader.load(tmp_path / "a", "tile")
    assert [s.id for s in third.train] == [s.id for s in first.train]
    assert [s.id for s in third.test] == [s.id for s in first.test]


def test_mtd_missing_mask_and_bad_fraction(tmp_path: Path) -> None:
    root = make_mtd(tmp_path, MTD_STEMS)
    loader = get_dataset("mtd")
    with pytest.raises(ConfigError, match="train_fraction"):
        loader.load(root, "tile", train_fraction=1.0)
    mask = root / "MT_Crack" / "Imgs" / "exp1_num_crack0.png"
    mask.unlink()
    with pytest.raises(DataError) as err:
        loader.load(root, "tile")
    assert str(mask) in str(err.value)


@pytest.mark.skipif(not MTD_DATA.is_dir(), reason=f"real MTD data not found at {MTD_DATA}")
def test_mtd_real_data() -> None:
    loader = get_dataset("mtd")
    data = loader.load(MTD_DATA, "tile")
    check_invariants(data)
    assert data.defect_types == ["blowhole", "break", "crack", "fray", "uneven"]
    anomalous = [s for s in data.test if s.label == ANOMALOUS]
    assert anomalous and all(s.mask_path is not None and s.mask_path.is_file() for s in anomalous)
    n_free = len(list((MTD_DATA / "MT_Free" / "Imgs").glob("*.jpg")))
    normals_test = [s for s in data.test if s.label == NORMAL]
    assert len(data.train) + len(normals_test) == n_free
    assert len(data.train) == math.floor(0.8 * n_free)
    assert {s.image_path for s in data.train}.isdisjoint(s.image_path for s in data.test)
    again = loader.load(MTD_DATA, "tile")
    assert [s.id for s in again.samples] == [s.id for s in data.samples]
    picks = [data.train[0], normals_test[0]] + [next(s for s in anomalous if s.defect_type == d)
                                                 for d in data.defect_types]
    for s in picks:
        image, mask = ImageTransform(size=32).load(s)
        assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
        assert mask.any() == (s.label == ANOMALOUS)


@pytest.mark.skipif(not (MVTEC_DATA / "transistor").is_dir(),
                    reason=f"real MVTec AD transistor not found at {MVTEC_DATA}")
def test_mvtec_transistor_real_data() -> None:
    loader = get_dataset("mvtec")
    assert "transistor" in loader.categories(MVTEC_DATA)
    data = loader.load(MVTEC_DATA, "transistor")
    check_invariants(data)
    assert len(data.train) == 213 and len(data.test) == 100
    assert data.defect_types == ["bent_lead", "cut_lead", "damaged_case", "misplaced"]
    anomalous = [s for s in data.test if s.label == ANOMALOUS]
    assert len(anomalous) == 40 and all(s.mask_path is not None and s.mask_path.is_file() for s in anomalous)
    for s in [data.train[0], *(next(a for a in anomalous if a.defect_type == d) for d in data.defect_types)]:
        image, mask = ImageTransform(size=64).load(s)
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
        assert mask.any() == (s.label == ANOMALOUS)


# folder ----------------------------------------------------------------------------------------------------------


def test_folder_layout(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    loader = get_dataset("folder")
    assert loader.categories(root) == ["default"]
    data = loader.load(root, "default", mask_dir="masks", mask_suffix="_m")
    check_invariants(data)
    assert data.summary() == {"train": 8, "train_anomalous": 0, "test": 4, "test_anomalous": 2}
    stems = sorted((f"n{i:02d}" for i in range(10)), key=sha1)
    assert [s.image_path.stem for s in data.train] == sorted(stems[:8])
    assert [s.id for s in data.test] == [
        "folder/default/test/defect/d0", "folder/default/test/defect/d1",
        *(f"folder/default/test/good/{stem}" for stem in sorted(stems[8:])),
    ]
    d0, d1 = data.test[0], data.test[1]
    assert d0.mask_path == root / "masks" / "d0_m.png"
    assert d1.mask_path is None  # anomalous without a mask
    check_loaded(d0)
    check_loaded(d1)
    without_masks = loader.load(root, "default")
    assert all(s.mask_path is None for s in without_masks.samples)


def test_folder_options(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    write_image(root / "good_test" / "t0.png")
    loader = get_dataset("folder")
    data = loader.load(root, "default", normal_test_dir="good_test", abnormal_dir=None)
    assert data.summary() == {"train": 10, "train_anomalous": 0, "test": 1, "test_anomalous": 0}
    all_train = loader.load(root, "default", test_split_ratio=0.0)
    assert len(all_train.train) == 10
    with pytest.raises(ConfigError, match="test_split_ratio"):
        loader.load(root, "default", test_split_ratio=1.5)
    with pytest.raises(DataError) as err:
        loader.load(root, "default", mask_dir="nowhere")
    assert str(root / "nowhere") in str(err.value)


def test_folder_categories(tmp_path: Path) -> None:
    make_folder(tmp_path / "part_a")
    make_folder(tmp_path / "part_b")
    (tmp_path / "notes").mkdir()
    loader = get_dataset("folder")
    assert loader.categories(tmp_path) == ["part_a", "part_b"]
    data = loader.load(tmp_path, "part_b", mask_dir="masks", mask_suffix="_m")
    check_invariants(data)
    assert data.test[0].id == "folder/part_b/test/defect/d0"
    assert data.test[0].mask_path == tmp_path / "part_b" / "masks" / "d0_m.png"


# bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "category"),
    [("mvtec", "bottle"), ("visa", "candle"), ("btad", "01"), ("mtd", "tile"), ("folder", "default")],
)
def test_missing_root(tmp_path: Path, name: str, category: str) -> None:
    root = tmp_path / "no_such_dir"
    with pytest.raises(DataError) as err:
        get_dataset(name).load(root, category)
    assert "expected layout" in str(err.value) and str(root) in str(err.value)


def _partial_mvtec(root: Path) -> Path:
    (root / "bottle" / "test").mkdir(parents=True)
    return root / "bottle" / "train"


def _partial_visa(root: Path) -> Path:
    root.mkdir()
    return root / "split_csv" / "1cls.csv"


def _partial_btad(root: Path) -> Path:
    make_btad(root)
    ko = root / "BTech_Dataset_transformed" / "01" / "test" / "ko"
    for p in ko.iterdir():
        p.unlink()
    ko.rmdir()
    return ko


def _partial_mtd(root: Path) -> Path:
    write_image(root / "MT_Free" / "Imgs" / "a.jpg")
    return root / "MT_Blowhole"


def _partial_folder(root: Path) -> Path:
    write_image(root / "defect" / "d0.png")
    return root / "good"


@pytest.mark.parametrize(
    ("name", "category", "make"),
    [
        ("mvtec", "bottle", _partial_mvtec),
        ("visa", "candle", _partial_visa),
        ("btad", "01", _partial_btad),
        ("mtd", "tile", _partial_mtd),
        ("folder", "default", _partial_folder),
    ],
)
def test_wrong_root_names_first_missing_path(
    tmp_path: Path, name: str, category: str, make: Callable[[Path], Path]
) -> None:
    root = tmp_path / "data"
    missing = make(root)
    with pytest.raises(DataError) as err:
        get_dataset(name).load(root, category)
    message = str(err.value)
    assert "expected layout" in message
    assert message.splitlines()[0].endswith(f" {missing}")


@pytest.mark.parametrize(
    ("name", "make", "valid"),
    [
        ("mvtec", make_mvtec, ["bottle", "cable"]),
        ("visa", make_visa_raw, ["candle", "pcb1"]),
        ("visa", make_visa_1cls, ["candle", "pcb1"]),
        ("btad", make_btad, ["01", "02", "03"]),
        ("mtd", lambda root: make_mtd(root, MTD_STEMS), ["tile"]),
        ("folder", make_folder, ["default"]),
    ],
)
def test_unknown_category_lists_valid_names(
    tmp_path: Path, name: str, make: Callable[[Path], Path], valid: list[str]
) -> None:
    root = make(tmp_path)
    with pytest.raises(ConfigError) as err:
        get_dataset(name).load(root, "no_such_category")
    assert err.value.key == "dataset.category"
    assert err.value.allowed == valid
    assert all(v in str(err.value) for v in valid)


def test_mvtec_missing_mask_names_expected_file(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    mask = root / "bottle" / "ground_truth" / "broken_large" / "001_mask.png"
    mask.unlink()
    with pytest.raises(DataError) as err:
        get_dataset("mvtec").load(root, "bottle")
    assert str(mask) in str(err.value) and "expected layout" in str(err.value)


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    bad = root / "bottle" / "test" / "good" / "000.png"
    bad.write_bytes(b"this is not a png at all")
    data = get_dataset("mvtec").load(root, "bottle")  # listing does not open files
    with pytest.raises(DataError) as err:
        ImageTransform(size=16).load(by_id(data)["mvtec/bottle/test/good/000"])
    assert str(bad) in str(err.value)


def test_mask_of_other_size_names_the_mask(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    mask = root / "bottle" / "ground_truth" / "contamination" / "000_mask.png"
    write_mask(mask, size=(SIZE[0] + 2, SIZE[1]))
    data = get_dataset("mvtec").load(root, "bottle")
    with pytest.raises(DataError) as err:
        ImageTransform(size=16).load(by_id(data)["mvtec/bottle/test/contamination/000"])
    assert str(mask) in str(err.value)

"""End-to-end runs through the runner: records, skipping, determinism, every protocol, failures, bad input."""

from __future__ import annotations

import gc
import json
import shutil
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest

from oadbench.errors import ConfigError, DataError, MethodError
from oadbench.method import discover_methods
from oadbench.protocol import EVAL_MODES, load_protocol
from oadbench.results import read_record
from oadbench.runner import STRATEGIES, Execution, prepare, run
from tests.conftest import SMALL, small_run
from tests.devices import DEVICES

METRICS = ["image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "aupro"]


def records_in(results_dir: Path) -> list[Path]:
    return sorted(p for p in Path(results_dir).rglob("*.json") if "wandb" not in p.parts)


def test_cold_start_run_writes_a_complete_record_and_a_wandb_run(tmp_path):
    record = run(small_run(tmp_path, "protocol=online_cold_start", "method=padim", "wandb.mode=offline"))
    path = Path(record["path"])
    on_disk = read_record(path)
    assert on_disk is not None and on_disk["status"] == "finished"
    for key in ("config", "env", "checkpoints", "final", "cost", "status", "summary", "backbone", "data"):
        assert key in on_disk
    spec = load_protocol("online_cold_start")
    n = SMALL["n_train"]
    assert [c["observed"] for c in on_disk["checkpoints"]] == spec.checkpoints(n)
    assert on_disk["checkpoints"][0]["observed"] == 0  # cold start is evaluated, with finite scores
    assert on_disk["final"] == on_disk["checkpoints"][-1]["metrics"]
    for m in METRICS:
        assert 0.0 <= on_disk["final"][m] <= 1.0
        assert set(on_disk["summary"][m]) >= {"final", "aulc", "images_to_95"}
    cost = on_disk["cost"]
    assert cost["observe"]["images"] == n and cost["observe"]["median_ms"] > 0
    assert cost["score"]["images"] == len(spec.checkpoints(n)) * on_disk["data"]["eval"]
    assert cost["peak_rss_mb"] > 0 and cost["footprint_bytes"] > 0
    # frozen features are obtained once per distinct image (extracted, or read from the feature store), though
    # the eval split is scored at every checkpoint
    assert cost["backbone_images"] + cost["feature_store_hits"] == on_disk["data"]["distinct_images"]
    assert on_disk["data"]["distinct_images"] == n + on_disk["data"]["eval"]
    assert on_disk["backbone"]["weights"] == "bundled"
    assert on_disk["config"]["dataset"]["name"] == "synthetic"
    wandb_dir = Path(on_disk["tracking"]["wandb_dir"])
    assert on_disk["tracking"]["wandb_mode"] == "offline"
    assert wandb_dir.is_dir() and list(wandb_dir.glob("*.wandb"))
    assert len(list(wandb_dir.rglob("media/images/*.png"))) == 4  # wandb.log_images anomaly-map panels
    assert path.name.endswith(".json") and on_disk["id"][:16] in path.name


def test_finished_run_is_skipped_unless_forced(tmp_path):
    cfg = small_run(tmp_path, "protocol=offline")
    first = run(cfg)
    path = Path(first["path"])
    stamp = path.stat().st_mtime_ns
    again = run(cfg)
    assert again.get("skipped") and path.stat().st_mtime_ns == stamp
    forced = run({**cfg, "force": True})
    assert not forced.get("skipped") and path.stat().st_mtime_ns != stamp
    assert len(records_in(tmp_path)) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_same_config_and_seed_give_identical_results(tmp_path, device):
    # on CUDA without the feature store, so that the backbone itself is run (and must repeat) twice
    extra = [f"device={device}", *(["features.cache=false"] if device != "cpu" else [])]
    a = run(small_run(tmp_path / "a", "protocol=online_contaminated", "protocol.stream.contamination=0.1", *extra))
    b = run(small_run(tmp_path / "b", "protocol=online_contaminated", "protocol.stream.contamination=0.1", *extra))
    for key in ("checkpoints", "final", "summary", "data", "id", "identity"):
        assert a[key] == b[key], key
    assert ("device" in a["identity"]) is (device != "cpu")
    c = run(small_run(tmp_path / "c", "protocol=online_contaminated", "protocol.stream.contamination=0.1",
                      "seed=1", *extra))
    assert c["data"]["stream_digest"] != a["data"]["stream_digest"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("protocol,extra", [
    ("offline", []),
    ("online_contaminated", ["protocol.stream.contamination=0.1", "protocol.stream.overlap=true"]),
    ("online_prequential", []),
    ("few_shot", ["protocol.warmup.k=2"]),
    ("continual", ["protocol.categories=[fabric,washer]"]),
])
def test_every_protocol_runs(tmp_path, protocol, extra, device):
    record = run(small_run(tmp_path, f"protocol={protocol}", f"device={device}", *extra))
    assert record["status"] == "finished"
    assert record["checkpoints"] and all(np.isfinite(record["final"][m]) for m in METRICS)
    cost = record["cost"]
    assert cost["backbone_images"] + cost["feature_store_hits"] == record["data"]["distinct_images"]
    if protocol == "online_prequential":
        assert record["data"]["eval"] == 0 and record["data"]["stream_anomalous"] > 0
        assert record["cost"]["score"]["images"] == record["data"]["stream"]
    if protocol == "few_shot":
        assert record["data"]["warmup"] == 2 and record["data"]["stream"] == 0
        assert [c["observed"] for c in record["checkpoints"]] == [2]
    if protocol == "continual":
        assert record["data"]["categories"] == ["fabric", "washer"]
        last = record["checkpoints"][-1]
        assert set(last["per_category"]) == {"fabric", "washer"}
        assert "image_auroc" in record["forgetting"]
    if protocol == "online_contaminated":  # overlap: stream anomalies are also evaluated, extracted once
        assert record["data"]["eval"] == SMALL["n_test_good"] + 4 * SMALL["n_test_defect"]


@pytest.fixture()
def test_methods(tmp_path):
    d = tmp_path / "test_methods"
    d.mkdir()
    (d / "misbehaving.py").write_text(textwrap.dedent("""
        import os
        from dataclasses import dataclass
        import torch
        from oadbench.method import Method, Scores, register_method

        @register_method("nan_after_two")
        class NanAfterTwo(Method):
            @dataclass(frozen=True)
            class Config:
                layers: tuple = (1,)

            seen = 0

            def observe(self, batch):
                self.seen += len(batch)
                if os.environ.get("OADBENCH_TEST_CRASH"):
                    raise RuntimeError("crash requested by the test")

            def score(self, batch):
                b, _, h, w = batch.images.shape
                value = float("nan") if self.seen >= 2 else 0.0
                return Scores(torch.full((b,), value), torch.rand(b, h, w))

            def footprint(self):
                return 8
    """))
    discover_methods([d])
    return d


def test_non_finite_scores_fail_the_run_with_a_failed_record(tmp_path, test_methods):
    cfg = small_run(tmp_path, "protocol=online_cold_start", "method=nan_after_two")
    with pytest.raises(MethodError) as err:
        run(cfg)
    assert "nan_after_two" in str(err.value) and "after 2 observed" in str(err.value)
    [path] = records_in(tmp_path)
    record = read_record(path)
    assert record["status"] == "failed" and "nan_after_two" in record["error"]
    assert [c["observed"] for c in record["checkpoints"]] == [0, 1]  # what finished before the failure is kept


def test_a_failure_never_replaces_a_finished_record(tmp_path, test_methods, monkeypatch):
    cfg = small_run(tmp_path, "protocol=offline", "method=nan_after_two", "protocol.stream.max_length=1")
    path = Path(run(cfg)["path"])
    before = path.read_bytes()
    assert json.loads(before)["status"] == "finished"
    monkeypatch.setenv("OADBENCH_TEST_CRASH", "1")
    with pytest.raises(RuntimeError, match="crash requested"):
        run({**cfg, "force": True})
    assert path.read_bytes() == before


def test_bad_input_is_a_clear_error_and_leaves_no_record(tmp_path, private_cache):
    with pytest.raises(ConfigError) as err:
        run(small_run(tmp_path, "dataset.category=bottle"))
    assert "fabric" in str(err.value) and "bottle" in str(err.value)
    with pytest.raises(ConfigError) as err:
        run(small_run(tmp_path, "protocol=online_contaminated", "protocol.stream.contamination=0.8"))
    assert "48" in str(err.value) and "7" in str(err.value)  # asked for 48, category can give 7 of its 8
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        run(_mvtec_run(tmp_path, missing, "bottle"))
    assert "expected layout" in str(err.value) and str(missing) in str(err.value)
    assert not records_in(tmp_path)


def _copy_small_dataset(tmp_path: Path, private_cache: Path) -> Path:
    run(small_run(tmp_path / "warm", "protocol=offline", "protocol.metrics=[image_auroc]"))
    [generated] = [p for p in (private_cache / "synthetic").iterdir() if p.is_dir() and "n12" in p.name]
    root = tmp_path / "mvtec_copy"
    shutil.copytree(generated, root)
    return root


def test_unreadable_image_or_mismatched_mask_names_the_file(tmp_path, private_cache):
    root = _copy_small_dataset(tmp_path, private_cache)
    category = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())[0]
    broken = sorted((root / category / "train" / "good").glob("*.png"))[3]
    broken.write_bytes(b"not a png")
    out = tmp_path / "results"
    with pytest.raises(DataError, match=str(broken)):
        run(_mvtec_run(out, root, category))
    assert not records_in(out)
    broken.unlink()
    from PIL import Image
    mask = sorted((root / category / "ground_truth").rglob("*_mask.png"))[0]
    Image.new("L", (10, 12)).save(mask)
    with pytest.raises(DataError, match=str(mask)):
        run(_mvtec_run(out, root, category))
    assert not records_in(out)


def _mvtec_run(results_dir: Path, root: Path, category: str) -> dict:
    from tests.conftest import compose
    return compose(f"results_dir={results_dir}", "image_size=64", "progress=false", "wandb.mode=disabled",
                   "protocol=online_cold_start", "dataset=mvtec", f"dataset.root={root}",
                   f"dataset.category={category}")


def test_prepare_rejects_bad_top_level_values(tmp_path):
    for override, key in [("device=tpu", "device"), ("image_size=8", "image_size"), ("precision=tf32", "precision"),
                          ("wandb.mode=sometimes", "wandb.mode"), ("center_crop=512", "center_crop")]:
        with pytest.raises(ConfigError) as err:
            prepare(small_run(tmp_path, override))
        assert key in str(err.value)


def test_every_evaluation_mode_a_protocol_may_name_has_its_strategy():
    assert set(STRATEGIES) == set(EVAL_MODES)
    assert all(STRATEGIES[mode].mode == mode for mode in EVAL_MODES)


def test_stream_batches_are_released_once_consumed(tmp_path):
    """Memory must not grow with the stream: a consumed batch's images are not kept by the runner."""
    execution = Execution(prepare(small_run(tmp_path, "protocol.stream.batch_size=2")))
    execution.setup()
    alive = []
    for idx, future in execution.data.batches(0, list(range(SMALL["n_train"])), set(), observed=0):
        images, _ = future.result()
        assert images.shape[0] == len(idx)
        alive.append(weakref.ref(images))
        del images, future
        gc.collect()
        assert sum(ref() is not None for ref in alive) == 0, "consumed batches are still referenced"
    assert len(alive) == SMALL["n_train"] // 2


def test_a_holdout_run_saves_a_few_maps_beside_its_record(tmp_path):
    record = run(small_run(tmp_path, "protocol=offline", "method=padim"))
    maps_path = Path(record["path"]).with_name(record["maps_file"])
    with np.load(maps_path) as data:
        assert list(data["labels"]) == [1, 1, 0, 0]  # two anomalous, then two normal evaluation images
        assert data["images"].shape == (4, 128, 128, 3) and data["images"].dtype == np.uint8
        assert data["maps"].shape == (4, 128, 128) and data["masks"].shape == (4, 128, 128)
        assert data["masks"][:2].any() and not data["masks"][2:].any()
        assert all(i.startswith("synthetic/capsule/test/") for i in data["ids"])
        defects = [i.split("/")[3] for i in data["ids"]]
        assert defects[0] != defects[1] and "good" not in defects[:2] and defects[2:] == ["good", "good"]
        # PaDiM's image score is the max of its full-size map; area downsampling can only lower the max
        small_max = data["maps"].astype(np.float32).max(axis=(1, 2))
        assert np.all(data["scores"] >= small_max * (1 - 1e-3)) and np.all(small_max > 0)

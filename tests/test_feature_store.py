"""The feature store: exact reuse of frozen backbone features across runs, safe under corruption, concurrency and a
size cap."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from oadbench.cost import CostMeter
from oadbench.errors import ConfigError
from oadbench.extraction import FeatureSource
from oadbench.feature_store import FeatureStore, image_digest, store_levels
from oadbench.features import FrozenBackbone
from oadbench.runner import prepare, run
from tests.conftest import SMALL, small_run


@pytest.fixture(autouse=True)
def keep_threads():
    """Runs here set torch's thread count; later tests get the count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


VOLATILE = ("cost", "started_at", "finished_at", "duration_s", "tracking", "path", "skipped")


def comparable(record: dict) -> dict:
    """A record without what may differ between two executions of one run: cost, timestamps, where it went."""
    out = json.loads(json.dumps({k: v for k, v in record.items() if k not in VOLATILE}))
    for key in ("features", "results_dir"):
        out["config"].pop(key)
    return out


def entries(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.safetensors"))


def store_run(results: Path, cache: Path | None, *overrides: str) -> dict:
    features = ["features.cache=false"] if cache is None else [f"features.cache_dir={cache}"]
    return run(small_run(results, "threads=2", *features, *overrides))


def test_store_on_and_off_give_identical_records_and_a_second_method_extracts_nothing(tmp_path):
    cache = tmp_path / "cache"
    # offline streams the training images in batches of 16, online_cold_start one at a time: the store must give
    # a batch-of-one run exactly the features a batch-of-16 run extracted (2 threads: oneDNN's sums depend on the
    # batch, which is why the CPU backbone sees one image at a time)
    first = store_run(tmp_path / "a", cache, "protocol=offline", "method=padim")
    assert first["cost"]["backbone_images"] == first["data"]["distinct_images"] > 0
    assert first["cost"]["feature_store_hits"] == 0
    assert len(entries(cache)) == first["data"]["distinct_images"]
    for method in ("patchcore", "padim", "cfa"):
        on = store_run(tmp_path / f"on-{method}", cache, "protocol=online_cold_start", f"method={method}")
        off = store_run(tmp_path / f"off-{method}", None, "protocol=online_cold_start", f"method={method}")
        assert on["cost"]["backbone_images"] == 0, method  # every image was in the store
        assert on["cost"]["feature_store_hits"] == on["data"]["distinct_images"] == off["cost"]["backbone_images"]
        assert off["cost"]["feature_store_hits"] == 0 and "feature_store_read" not in off["cost"]
        assert on["cost"]["feature_store_read"]["images"] == on["data"]["distinct_images"]
        assert comparable(on) == comparable(off), method
        assert on["final"] and on["id"] == off["id"]
        with np.load(Path(on["path"]).with_name(on["maps_file"])) as a, \
                np.load(Path(off["path"]).with_name(off["maps_file"])) as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert len(entries(cache)) == first["data"]["distinct_images"]  # nothing stored twice


def test_levels_stored_by_a_shallow_method_serve_a_deeper_one():
    assert store_levels((2, 3)) == store_levels((1, 2, 3)) == (1, 2, 3)
    assert store_levels((0, 2)) == (0, 1, 2) and store_levels((3,)) == (1, 2, 3)


def test_a_hit_is_bit_identical_to_extraction(tmp_path):
    backbone = FrozenBackbone(out_indices=(1, 2, 3))
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    feats = backbone(images)
    store = FeatureStore(tmp_path, {"levels": [1, 2, 3], "test": True}, max_bytes=2**30)
    digests = [image_digest(im) for im in images]
    assert len(set(digests)) == 3 and digests[0] == image_digest(images[0].clone())
    for i, d in enumerate(digests):
        store.put(d, [f[i] for f in feats])
    for i, d in enumerate(digests):
        got = store.get(d, [2, 0])  # levels 3 and 1, in that order
        assert torch.equal(got[0], feats[2][i]) and torch.equal(got[1], feats[0][i])
        assert got[0].dtype == torch.float32 and got[0].is_contiguous()
    assert store.get("0" * 32, [0]) is None and store.hits == 3


def test_a_truncated_or_corrupt_entry_is_recomputed_never_used(tmp_path):
    cache = tmp_path / "cache"
    first = store_run(tmp_path / "a", cache, "method=padim")
    paths = entries(cache)
    truncated, flipped = paths[0], paths[1]
    truncated.write_bytes(truncated.read_bytes()[:-100])
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0xFF  # one byte of the deepest level's tensor data
    flipped.write_bytes(bytes(data))
    again = store_run(tmp_path / "b", cache, "method=padim")
    assert again["cost"]["backbone_images"] == 2
    assert again["cost"]["feature_store_hits"] == again["data"]["distinct_images"] - 2
    assert comparable(again) == comparable(first)
    third = store_run(tmp_path / "c", cache, "method=padim")  # the two entries were rewritten whole
    assert third["cost"]["backbone_images"] == 0


def _hammer(root: str, digest: str, seed: int, rounds: int) -> None:
    store = FeatureStore(Path(root), {"levels": [1, 2], "test": "race"}, max_bytes=2**30)
    value = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 64, 64)
    for _ in range(rounds):
        store.put(digest, [value, value[:1] * 2])


def test_concurrent_writers_of_one_entry_never_expose_a_partial_one(tmp_path):
    digest = "ab" * 16
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_hammer, args=(str(tmp_path), digest, s, 150)) for s in range(2)]
    for w in writers:
        w.start()
    reader = FeatureStore(tmp_path, {"levels": [1, 2], "test": "race"}, max_bytes=2**30)
    expected = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 64, 64)
    seen = 0
    while any(w.is_alive() for w in writers):
        got = reader.get(digest, [0, 1])
        if got is not None:
            seen += 1
            assert torch.equal(got[0], expected) and torch.equal(got[1], expected[:1] * 2)
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert reader.corrupt == 0 and reader.get(digest, [0, 1]) is not None and seen > 0


def test_two_processes_filling_the_same_entries_both_finish_with_correct_features(tmp_path):
    cache = tmp_path / "cache"
    small = [f"dataset.{k}={v}" for k, v in SMALL.items()]
    args = ["protocol=offline", "method=padim", "image_size=64", "progress=false", "wandb.mode=disabled",
            f"features.cache_dir={cache}", "threads=1", *small]
    env = {**os.environ, "WANDB_SILENT": "true"}
    procs = [subprocess.Popen([sys.executable, "-m", "oadbench", "run", *args, f"results_dir={tmp_path / name}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("p", "q")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    records = [json.loads(next((tmp_path / name).rglob("*.json")).read_text()) for name in ("p", "q")]
    assert comparable(records[0]) == comparable(records[1])
    n = records[0]["data"]["distinct_images"]
    assert sum(r["cost"]["backbone_images"] + r["cost"]["feature_store_hits"] for r in records) == 2 * n
    # every stored entry holds exactly what the backbone gives for its image
    prep = prepare(small_run(tmp_path / "check", "protocol=offline", "method=padim", "threads=1",
                             f"features.cache_dir={cache}"))
    task = prep.plan.tasks[0]
    images = torch.stack([prep.transform.load(prep.datas[0].samples[i])[0] for i in (*task.stream, *task.eval)])
    torch.set_num_threads(1)  # the runs' thread count: part of the store's namespace
    source = FeatureSource(prep.config["backbone"], (1, 2, 3), prep.config["features"], prep.device,
                           prep.config["image_size"], None, CostMeter(prep.device))
    stored = source(images, "backbone")
    assert source.hits == n == len(entries(cache)) and source.extracted == 0
    extracted = source.backbone(images)
    assert all(torch.equal(s, e) for s, e in zip(stored, extracted, strict=True))


def test_eviction_keeps_the_cache_under_its_cap_and_drops_the_least_recently_used(tmp_path):
    value = [torch.zeros(16, 32, 32)]  # 64 KiB of tensor data per entry
    probe = FeatureStore(tmp_path / "probe", {"levels": [1]}, max_bytes=2**30)
    probe.put("00" * 16, value)
    size = probe.path("00" * 16).stat().st_size
    cap = 10 * size + size // 2
    store = FeatureStore(tmp_path / "cache", {"levels": [1]}, max_bytes=cap)
    keep = f"{0:032x}"
    for i in range(40):
        store.put(f"{i:032x}", value)
        os.utime(store.path(f"{i:032x}"), (1000.0 + i, 1000.0 + i))  # a clear order of use
        assert store.get(keep, [0]) is not None  # used after every write: the most recently used
        total = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*.safetensors"))
        assert total <= cap
    survivors = {p.stem for p in (tmp_path / "cache").rglob("*.safetensors")}
    assert keep in survivors and f"{39:032x}" in survivors and f"{1:032x}" not in survivors
    assert 8 <= len(survivors) <= 10


def test_a_store_that_cannot_be_written_does_not_fail_the_run(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    record = store_run(tmp_path / "r", blocker, "method=padim")
    assert record["status"] == "finished"
    assert record["cost"]["backbone_images"] == record["data"]["distinct_images"]


@pytest.mark.parametrize("override,key", [
    ("features.cache=maybe", "features.cache"),
    ("features.cache_max_gb=0", "features.cache_max_gb"),
    ("features.cache_max_gb=lots", "features.cache_max_gb"),
    ("+features.size=3", "features.size"),
])
def test_bad_feature_settings_name_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError) as err:
        prepare(small_run(tmp_path, override))
    assert err.value.key == key


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    store = FeatureStore(tmp_path, {"levels": [1]}, max_bytes=2**30)
    store.put("cd" * 16, [torch.ones(2, 4, 4)])
    stale = store.path("cd" * 16).with_name(".x.safetensors.abc.tmp")
    fresh = store.path("cd" * 16).with_name(".y.safetensors.abc.tmp")
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    total, listed = store.scan()
    assert not stale.exists() and fresh.exists()  # a live writer's temp file stays
    assert [p for _, _, p in listed] == [store.path("cd" * 16)] and total == store.path("cd" * 16).stat().st_size

"""Devices: a CUDA run is its own record, CPU records keep their names, bad device indices are named errors, the
numeric settings of a CUDA run are set and restored, the GPU memory split, no host sync per step in the loops
that run per selected point or per replacement, and (with a GPU) every method under every protocol on CUDA."""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import textwrap
import types

import pytest
import torch
import torch.nn.functional as F

from oadbench import devices
from oadbench.cost import CostMeter
from oadbench.errors import ConfigError
from oadbench.feature_store import numerics
from oadbench.method import Batch, MethodContext, build_config, discover_methods, get_method
from oadbench.protocol import load_protocol
from oadbench.results import identity_hash
from oadbench.runner import Execution, prepare, run
from tests.conftest import small_run
from tests.devices import CUDA, HostSyncs
from tests.test_methods_protocols import FAST, METHODS, PROTOCOLS
from tests.test_published import RECORDS


@pytest.fixture
def two_fake_gpus(monkeypatch):
    """A CPU machine that says it has two CUDA devices (nothing here launches a kernel)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# --------------------------------------------------------------------------------------------------------------
# bad input


def test_a_cuda_index_beyond_the_devices_there_are_names_the_key_and_the_devices(two_fake_gpus, tmp_path):
    with pytest.raises(ConfigError) as err:
        devices.resolve_device("cuda:2")
    assert err.value.key == "device" and "2 CUDA devices" in str(err.value)
    assert err.value.allowed == ["cpu", "cuda", "cuda:0", "cuda:1"]
    with pytest.raises(ConfigError, match=r"device: 'cuda:7'.*cuda:1"):
        prepare(small_run(tmp_path, "device=cuda:7"))
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_cuda_without_cuda_and_unknown_devices_are_errors_naming_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, text in (("cuda", "not available"), ("cuda:0", "not available"), ("tpu", "device"),
                       ("meta", "not supported")):
        with pytest.raises(ConfigError, match=text) as err:
            devices.resolve_device(name)
        assert err.value.key == "device"


def test_precision_is_checked_and_tf32_is_a_cuda_setting(tmp_path, two_fake_gpus):
    with pytest.raises(ConfigError, match="precision: 'tf32' applies to CUDA devices only"):
        prepare(small_run(tmp_path, "precision=tf32"))
    with pytest.raises(ConfigError, match=r"precision: 'bf16' is not valid \(allowed: fp32, tf32\)"):
        prepare(small_run(tmp_path, "device=cuda:0", "precision=bf16"))
    assert prepare(small_run(tmp_path, "device=cuda:0", "precision=tf32")).config["precision"] == "tf32"


# --------------------------------------------------------------------------------------------------------------
# identity


def test_a_cuda_run_is_its_own_record_and_a_cpu_identity_has_no_device(tmp_path, two_fake_gpus):
    cpu = prepare(small_run(tmp_path, "method=padim"))
    assert "device" not in cpu.identity and cpu.config["precision"] == "fp32"
    assert cpu.run_hash == identity_hash(cpu.identity)
    gpu = prepare(small_run(tmp_path, "method=padim", "device=cuda:1"))
    assert gpu.identity["device"] == {"type": "cuda", "precision": "fp32", "deterministic": True}
    assert {k: v for k, v in gpu.identity.items() if k != "device"} == cpu.identity
    assert gpu.run_hash != cpu.run_hash and gpu.path != cpu.path and gpu.path.parent == cpu.path.parent
    other_index = prepare(small_run(tmp_path, "method=padim", "device=cuda:0"))
    assert other_index.run_hash == gpu.run_hash  # the index is where it ran, not what it computed
    tf32 = prepare(small_run(tmp_path, "method=padim", "device=cuda:0", "precision=tf32"))
    assert tf32.identity["device"]["precision"] == "tf32" and tf32.run_hash not in (cpu.run_hash, gpu.run_hash)


def _committed() -> list:
    paths = sorted(RECORDS.rglob("*.json"))
    if not paths:
        pytest.skip("no committed records")
    return paths


def test_every_committed_record_is_a_cpu_record_whose_identity_hashes_to_its_id():
    for path in _committed():
        record = json.loads(path.read_text())
        assert "device" not in record["identity"] and record["config"]["device"] == "cpu", path
        assert identity_hash(record["identity"]) == record["id"] and record["id"][:16] in path.name, path


def test_committed_records_are_found_again_by_a_fresh_run_of_their_config(tmp_path):
    """What ``oadbench run`` computes today for a committed record's config is that record's name: the device
    entry and the PaDiM precision key change no CPU identity."""
    paths = [p for p in _committed() if p.parts[-3] == "synthetic" and p.parts[-2] in ("padim", "patchcore", "cfa")]
    sample = paths[:: max(1, len(paths) // 9)]
    assert {p.parts[-2] for p in sample} == {"padim", "patchcore", "cfa"}
    for path in sample:
        record = json.loads(path.read_text())
        config = {**record["config"], "results_dir": str(tmp_path)}
        config["dataset"] = {k: v for k, v in config["dataset"].items() if k != "root"}  # generated in the cache
        prep = prepare(config)
        assert prep.run_hash == record["id"] and prep.path.name == path.name, path
        assert prep.identity == record["identity"], path


# --------------------------------------------------------------------------------------------------------------
# numeric settings


def test_the_numeric_mode_of_a_cuda_run_is_set_and_restored(monkeypatch):
    """The flags are host-side state: set here for a CUDA device without launching anything."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark, devices.tf32_state())
    assert before[3]["conv"]  # this torch's default: TF32 convolutions
    cuda = torch.device("cuda", 0)
    for precision, tf32 in (("fp32", False), ("tf32", True)):
        with devices.numeric_mode(cuda, precision):
            assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
            assert not torch.backends.cudnn.benchmark
            assert devices.tf32_state() == {"matmul": tf32, "conv": tf32}
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark, devices.tf32_state()) == before
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own choice is kept
    with devices.numeric_mode(cuda):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    with devices.numeric_mode(torch.device("cpu"), "fp32"):  # the CPU: nothing changes
        assert not torch.are_deterministic_algorithms_enabled() and devices.tf32_state() == before[3]


def test_the_feature_store_namespace_follows_the_precision_and_the_cpu_namespace_is_unchanged(monkeypatch):
    assert set(numerics(torch.device("cpu"))) == {"torch", "device", "threads"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    cuda = torch.device("cuda", 0)
    with devices.numeric_mode(cuda, "fp32"):
        fp32 = numerics(cuda)
    with devices.numeric_mode(cuda, "tf32"):
        tf32 = numerics(cuda)
    assert fp32["cudnn_allow_tf32"] is fp32["matmul_allow_tf32"] is False and fp32["deterministic"] is True
    assert tf32["cudnn_allow_tf32"] is tf32["matmul_allow_tf32"] is True
    assert {k for k in fp32 if fp32[k] != tf32[k]} == {"cudnn_allow_tf32", "matmul_allow_tf32"}


def test_warm_up_does_nothing_on_the_cpu():
    state = torch.get_rng_state()
    assert devices.warm_up(torch.device("cpu"), None) == 0.0
    assert torch.equal(torch.get_rng_state(), state)


@CUDA
def test_warm_up_on_cuda_draws_no_random_numbers_and_keeps_nothing_new():
    device = torch.device("cuda", torch.cuda.current_device())
    devices.warm_up(device, None)  # the first call makes the libraries' handles and workspaces, which stay
    cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state(device)
    allocated = torch.cuda.memory_allocated(device)
    assert devices.warm_up(device, None) > 0
    assert torch.equal(torch.get_rng_state(), cpu_state) and torch.equal(torch.cuda.get_rng_state(device), cuda_state)
    assert torch.cuda.memory_allocated(device) == allocated


# --------------------------------------------------------------------------------------------------------------
# cost: the GPU memory split, with a simulated allocator


class FakeAllocator:
    def __init__(self) -> None:
        self.allocated = self.peak = 0

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: setattr(self, "peak",
                                                                                                  self.allocated))
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)


def test_cuda_peak_is_split_into_the_features_share_and_the_methods_own(monkeypatch):
    mem = FakeAllocator()
    mem.install(monkeypatch)
    runner = {"bytes": 0}
    meter = CostMeter(torch.device("cuda", 0), resident=lambda: runner["bytes"])
    mem.alloc(100)  # backbone weights
    runner["bytes"] = 100
    mem.alloc(500)  # the warm-up's temporaries: gone before the meters start
    mem.free(500)
    mem.alloc(32)  # ... and a cuBLAS workspace, which stays: the libraries'
    meter.start(warmup_s=1.5)
    mem.alloc(8)  # the method's initial state, built after the start
    with meter.measure("backbone_eval", 4):
        mem.alloc(300)  # activations, freed
        mem.free(300)
        mem.alloc(40)  # the evaluation features, kept
    runner["bytes"] = 140
    with meter.measure("observe", 1):
        mem.alloc(1000)  # the method's state grows, and stays
        mem.alloc(250)  # working memory
        mem.free(250)
    with meter.measure("backbone_stream", 1):
        mem.alloc(60)  # activations while the method holds its 1008
        mem.free(60)
    with meter.measure("score", 4):
        mem.alloc(400)
        mem.free(400)
    mem.alloc(700)  # between calls (a concatenation): only the run's peak sees it
    mem.free(700)
    cost = meter.summary(1)
    mib = 2**20
    assert cost["cuda_method_peak_mb"] * mib == 8 + 1000 + 400
    assert cost["cuda_features_peak_mb"] * mib == 100 + 300
    assert cost["cuda_library_mb"] * mib == 32
    assert cost["cuda_peak_mb"] * mib == 140 + 32 + 1008 + 700
    assert cost["device_warmup_s"] == 1.5 and cost["observe"]["images"] == 1


def test_cpu_costs_have_no_gpu_keys():
    meter = CostMeter(torch.device("cpu"), resident=lambda: pytest.fail("not asked on the CPU"))
    meter.start()
    with meter.measure("observe", 1):
        pass
    assert not any(k.startswith(("cuda", "device")) for k in meter.summary(1))


def test_the_runner_counts_its_backbone_and_kept_features_as_its_own(tmp_path):
    execution = Execution(prepare(small_run(tmp_path, "method=padim")))
    execution.setup()
    backbone = execution.data.features.backbone
    weights = sum(t.numel() * t.element_size() for t in [*backbone.parameters(), *backbone.buffers()])
    assert execution.meter.resident() == weights
    es = execution.data.eval_set(0)
    assert execution.meter.resident() == weights + sum(f.numel() * f.element_size() for f in es.features)


# --------------------------------------------------------------------------------------------------------------
# one normalised copy, made only for a method that reads it


def test_a_deferred_batch_normalises_once_and_only_when_read():
    calls = []

    def normalise(x):
        calls.append(1)
        return x.float() / 255

    source = torch.full((2, 3, 8, 6), 255, dtype=torch.uint8)
    batch = Batch.deferred(source, normalise, [torch.zeros(2, 4, 2, 2)])
    assert len(batch) == 2 and batch.image_size == (8, 6) and batch.materialised is None and not calls
    assert torch.equal(batch.images, torch.ones(2, 3, 8, 6)) and batch.images is batch.materialised
    assert calls == [1]
    with pytest.raises(AttributeError):
        batch.features = ()
    eager = Batch(torch.zeros(3, 3, 5, 7), (torch.zeros(3, 1, 1, 1),))
    assert len(eager) == 3 and eager.image_size == (5, 7) and isinstance(eager.features, tuple)


@pytest.fixture()
def pixel_reader(tmp_path):
    """A dropped-in method that scores from the normalised pixels (``needs_images`` left at its default)."""
    d = tmp_path / "pixel_methods"
    d.mkdir()
    (d / "pixel_mean.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from oadbench.method import Method, Scores, register_method

        @register_method("pixel_mean_test")
        class PixelMean(Method):
            @dataclass(frozen=True)
            class Config:
                layers: tuple = (1,)

            def observe(self, batch):
                pass

            def score(self, batch):
                x = batch.images
                return Scores(x.mean(dim=(1, 2, 3)), x.mean(dim=1))

            def footprint(self):
                return 0
    """))
    discover_methods([d])
    return "pixel_mean_test"


@pytest.mark.parametrize("method", ["padim", "patchcore", "cfa", "lemo", "pixels"])
def test_the_runner_makes_normalised_images_only_for_methods_that_read_them(tmp_path, monkeypatch, method,
                                                                              request):
    from oadbench.extraction import FeatureSource

    copies = method == "pixels"
    if copies:
        method = request.getfixturevalue("pixel_reader")
    calls = []
    original = FeatureSource.normalise
    monkeypatch.setattr(FeatureSource, "normalise", lambda self, x: calls.append(len(x)) or original(self, x))
    record = run(small_run(tmp_path, f"method={method}", "protocol=online_prequential", *FAST.get(method, [])))
    assert record["status"] == "finished"
    assert bool(calls) is copies and get_method(method).needs_images is copies


# --------------------------------------------------------------------------------------------------------------
# LeMO's memory updates: one host round trip per iteration, results bit-identical to the loops they replace

CHANNELS, STRIDES, SIZE = (24, 40, 112), (4, 8, 16), 64


def lemo(**cfg):
    cls = get_method("lemo")
    ctx = MethodContext("online", torch.device("cpu"), seed=0, image_size=SIZE, backbone="test", channels=CHANNELS,
                        strides=STRIDES)
    return cls(build_config(cls, cfg), ctx)


def stream(n: int):
    base = torch.Generator().manual_seed(5)
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        feats = [torch.randn(1, c, 1, 1, generator=base).expand(1, c, SIZE // s, SIZE // s)
                 + torch.randn(1, c, SIZE // s, SIZE // s, generator=g) for c, s in zip(CHANNELS, STRIDES, strict=True)]
        yield Batch(torch.zeros(1, 3, SIZE, SIZE), feats)


def straightforward_split_update(self, z, threshold, cosine):
    """The feature-enhanced / ODC update as written before: host reads where the loop needs a value."""
    from oadbench.components import kmeans

    k = self.config.n_prototypes
    if z.shape[0] < k:
        return
    for _ in range(2 * k):
        labels = self._assign(z, cosine)
        sizes = torch.bincount(labels, minlength=k)
        small = torch.nonzero(sizes < threshold).flatten()
        if small.numel() == 0:
            return
        target = int(small[torch.argmin(sizes[small])])
        largest = int(torch.argmax(sizes))
        members = z[labels == largest]
        if members.shape[0] < 2:
            return
        halves, _ = kmeans(members, 2, seed=self.context.seed + self.replacements)
        if self.config.normalize:
            halves = F.normalize(halves, dim=1)
        self.memory[largest] = halves[0]
        self.memory[target] = halves[1]
        self._reset_moments([largest, target])
        self.replacements += 1


def dense_distances(z, m):
    """All distances (N, K) of patches to prototypes, the straightforward way."""
    return (z.pow(2).sum(1, keepdim=True) + m.pow(2).sum(1) - 2.0 * z @ m.T).clamp_min(1e-12).sqrt()


def straightforward_coverage_update(self, z):
    k = self.config.n_prototypes
    d = dense_distances(z, self._prototypes())
    nearest, labels = d.min(1)
    share = torch.bincount(labels, minlength=k).float() / z.shape[0]
    rho = self.config.usage_decay
    self.usage.mul_(1.0 - rho).add_(rho * share)
    dead = torch.nonzero(self.usage < self.config.dead_usage / k).flatten()
    if dead.numel() == 0:
        return
    dead = dead[: z.shape[0]]
    worst = torch.topk(nearest, dead.numel()).indices
    self.memory[dead] = F.normalize(z[worst], dim=1) if self.config.normalize else z[worst]
    self.usage[dead] = 1.0 / k
    self._reset_moments(dead.tolist())
    self.replacements += int(dead.numel())


@pytest.mark.parametrize("cfg", [{"update": "feature_enhanced"}, {"update": "odc", "min_cluster_size": 30},
                                 {"update": "coverage", "usage_decay": 0.5},
                                 {"update": "coverage", "normalize": False}])
def test_lemo_memory_updates_are_bit_identical_to_the_straightforward_loops(cfg):
    new, old = lemo(n_prototypes=12, adapter="learned", **cfg), lemo(n_prototypes=12, adapter="learned", **cfg)
    old._split_update = types.MethodType(straightforward_split_update, old)
    old._coverage_update = types.MethodType(straightforward_coverage_update, old)
    for batch in stream(12):
        new.observe(batch)
        old.observe(copy.copy(batch))
    assert new.replacements == old.replacements > 0
    assert torch.equal(new.memory, old.memory) and torch.equal(new.usage, old.usage)
    for a, b in zip(new.adapter.parameters(), old.adapter.parameters(), strict=True):
        assert torch.equal(a, b)
    assert new.losses == old.losses


def test_lemo_split_update_reads_the_host_once_per_iteration(monkeypatch):
    m = lemo(n_prototypes=12)
    with torch.no_grad():
        z = m._adapt(m._features(next(stream(1))))
    module = sys.modules[type(m).__module__]
    original = module.kmeans
    with HostSyncs() as syncs:
        def kmeans(*args, **kwargs):
            with syncs.paused():  # its own round trips are the k-means test's
                return original(*args, **kwargs)

        monkeypatch.setattr(module, "kmeans", kmeans)
        m._split_update(z, 0.5 * z.shape[0] / 12, cosine=False)
    assert m.replacements > 0
    assert syncs.ops == {"tolist": m.replacements + 1}  # each replacement's iteration and the one that ends it


def test_lemo_coverage_update_reads_the_host_once_per_image():
    m = lemo(n_prototypes=12, update="coverage")
    with torch.no_grad():
        z = m._adapt(m._features(next(stream(1))))
    with HostSyncs() as syncs:
        m._coverage_update(z)
    assert m.replacements > 0 and syncs.ops == {"aten.nonzero": 1, "tolist": 1}  # nothing queued between them


# --------------------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@CUDA
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("method", METHODS)
def test_method_runs_under_protocol_on_cuda(tmp_path, method, protocol):
    record = run(small_run(tmp_path, f"protocol={protocol}", f"method={method}", "device=cuda",
                           *PROTOCOLS[protocol], *FAST.get(method, [])))
    assert record["status"] == "finished" and record["identity"]["device"]["type"] == "cuda"
    for m in load_protocol(protocol).metrics:
        assert math.isfinite(record["final"][m]), m
    env, cost = record["env"], record["cost"]
    assert env["deterministic_algorithms"] and env["tf32"] == {"matmul": False, "conv": False}
    assert env["cublas_workspace_config"] and not torch.are_deterministic_algorithms_enabled()  # restored
    assert 0 < cost["cuda_method_peak_mb"] <= cost["cuda_peak_mb"] and cost["device_warmup_s"] > 0


@CUDA
def test_kcenter_queues_its_steps_without_host_syncs_on_cuda():
    import warnings

    from oadbench.components import greedy_kcenter

    x = torch.randn(2000, 32, device="cuda")

    def syncs(k: int) -> int:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                greedy_kcenter(x, k, seed=0, projection_dim=16)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(5) == syncs(300)

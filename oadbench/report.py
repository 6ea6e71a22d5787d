"""The readable summary printed at the end of a run: checkpoints x metrics, then cost."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

SHORT = {"image_auroc": "img_AUROC", "image_ap": "img_AP", "image_f1max": "img_F1max",
         "pixel_auroc": "pix_AUROC", "pixel_ap": "pix_AP", "aupro": "AUPRO"}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def format_record(record: Mapping[str, Any]) -> str:
    cfg = record["config"]
    if record.get("status") == "claimed":
        owner = record.get("claimed_by") or {}
        return (f"{cfg['protocol']['name']} | {cfg['method']['name']} | {cfg['dataset']['name']}/"
                f"{cfg['dataset']['category']} | seed {cfg['seed']}  [skipped: being run by {owner.get('host')} "
                f"pid {owner.get('pid')}; rerun later to complete it if that process dies]")
    head = (f"{cfg['protocol']['name']} | {cfg['method']['name']} | {cfg['dataset']['name']}/"
            f"{cfg['dataset']['category']} | seed {cfg['seed']} | {record['backbone']['name']} "
            f"({record['backbone']['weights']}) | {record['data']['image_size']} px")
    if record.get("skipped"):
        head += "  [skipped: finished record exists; force=true reruns]"
    metrics = list(cfg["protocol"]["metrics"])
    rows = [[str(c["observed"]), *(_fmt(c["metrics"].get(m)) for m in metrics), _bytes(c.get("footprint_bytes"))]
            for c in record.get("checkpoints", [])]
    parts = [head, table(["observed", *(SHORT.get(m, m) for m in metrics), "footprint"], rows)]
    cost = record.get("cost", {})
    cost_rows = []
    for kind in ("backbone_stream", "backbone_eval", "feature_store_read", "feature_store_write", "observe_warmup",
                 "observe", "consolidate", "score"):
        t = cost.get(kind)
        if t:
            cost_rows.append([kind, _fmt(t.get("median_ms"), 2), _fmt(t.get("p95_ms"), 2), str(t.get("images")),
                              _fmt(t.get("total_s"), 2)])
    if cost_rows:
        parts.append(table(["cost", "median ms/img", "p95 ms/img", "images", "total s"], cost_rows))
    extras = [f"features: {cost.get('backbone_images', '-')} extracted, {cost.get('feature_store_hits', 0)} from the "
              "store",
              f"throughput {_fmt(cost.get('throughput_images_per_s'), 1)} img/s",
              f"peak RSS {_fmt(cost.get('peak_rss_mb'), 0)} MiB"]
    if cost.get("cuda_peak_mb") is not None:
        extras.append(f"CUDA peak {_fmt(cost['cuda_peak_mb'], 0)} MiB")
    if record.get("duration_s") is not None:
        extras.append(f"run {record['duration_s']:.1f} s")
    parts.append(" | ".join(extras))
    if record.get("forgetting"):
        items = record["forgetting"].items()
        parts.append("forgetting: " + ", ".join(f"{SHORT.get(k, k)} {_fmt(v)}" for k, v in items))
    status = record.get("status")
    where = record.get("path", "")
    tracking = record.get("tracking") or {}
    line = f"status: {status}  record: {where}"
    if tracking.get("wandb_dir"):
        line += f"  W&B ({tracking.get('wandb_mode')}): {tracking['wandb_dir']}"
    parts.append(line)
    return "\n".join(parts)

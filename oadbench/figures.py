"""Paper figures drawn from run records (seaborn; each figure written as PDF and PNG).

``<protocol>`` in a name is the leaderboard's table label (:func:`oadbench.cells.protocol_label`).

- ``learning_curves_<protocol>_<dataset>``: image AUROC vs observed images, one line per method, mean ± std
  over seeds of the category average, at the checkpoints every run of that method shares;
- ``contamination_<dataset>``: final image AUROC vs the stream's contamination ratio (``online_contaminated``
  and ``online_cold_start`` records; cold start counts as 0 unless ``online_contaminated`` was run at 0), one
  line per method, mean ± std over seeds;
- ``categories_<protocol>_<dataset>``: final image AUROC per category, one bar per method, std over seeds;
- ``cost_vs_accuracy_<protocol>_<dataset>``: observe + score ms per image (median, the method's own work; the
  leaderboard's ``observe_ms`` and ``score_ms``, so warm-up observe for offline and few-shot runs) vs final image
  AUROC, one point per (method, category) run average;
- ``footprint_<protocol>_<dataset>``: the method's footprint (MiB) vs observed images, one line per method;
- ``drift_<protocol>_<dataset>``: for drift protocols, image AUROC vs observed images in the current drift state
  (solid) and in the initial state (dashed), one colour per method, mean over seeds of the category average, the
  stretch of the stream where the drift changes shaded;
- ``diagnostics_<protocol>_<dataset>``: each method's diagnostics (``Method.diagnostics``, recorded at every
  checkpoint) and where normal test images peak (share at the image border) vs observed images, one panel per
  quantity, one line per method (mean over the runs at each checkpoint); drawn when records have diagnostics;
- ``qualitative_<protocol>_<dataset>_<category>``: a few test images (rows) with their ground truth and each
  method's final anomaly map (columns), from the ``.maps.npz`` files the runner writes beside holdout records
  (lowest seed; each method's maps share one colour scale, min to max over the images shown);
- ``rejections_<protocol>_<dataset>_<category>``: cumulative false alarms and misses of the default threshold
  policy against parts scored (:mod:`oadbench.decision_figures`), where records have per-image stream results.

Records that are not finished are ignored. Figures are only drawn where their data exist (a learning curve needs
an online protocol with at least two checkpoints, a contamination plot at least two ratios).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from oadbench.cells import file_contaminations, run_values, table_of
from oadbench.decision_figures import draw_rejections
from oadbench.errors import DataError
from oadbench.figure_files import method_label, save_figure
from oadbench.headline import build_headlines, has_per_image, headline_heading, headline_ranks
from oadbench.record_sets import folders_of, load_records
from oadbench.significance import ALPHA

METRIC = "image_auroc"


def critical_difference_figure(ranks: Any, out: Path, name: str, title: str) -> list[Path]:
    """The critical-difference diagram of ``ranks`` (:class:`oadbench.significance.Ranks`: average ranks and the
    Nemenyi p-values), drawn by ``scikit_posthocs.critical_difference_diagram``: methods on the rank axis, a bar
    joining each group the post-hoc test does not separate; saved with :func:`save_figure`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import scikit_posthocs as sp

    with plt.style.context("default"):  # the same bytes whether or not another figure set a theme before
        fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.32 * len(ranks.average)))
        drawn = sp.critical_difference_diagram(pd.Series(ranks.average), ranks.nemenyi, ax=ax,
                                               crossbar_props={"color": (0.0, 0.0, 0.0)})  # seaborn remaps "k"
        for lines in drawn["crossbars"]:  # its points come from a set (hash order): sort for stable bytes
            for line in lines:
                line.set_xdata(sorted(line.get_xdata()))
        ax.set_title(title, fontsize=8)
        return save_figure(fig, out, name)


def draw_headline_cd(rows: Sequence[Mapping[str, Any]], out: Path, name: str = "critical_difference",
                     heading: str = "Headline") -> list[Path]:
    """A headline table's critical-difference diagram (:func:`critical_difference_figure`) as
    ``<out>/<name>.pdf`` and ``.png``, titled ``heading``; nothing with fewer than three rows or two data sets."""
    ranks = headline_ranks(rows)
    if ranks.nemenyi is None:
        return []
    basis = ("per-image results present" if has_per_image(rows) else
             "from final values across data sets and seeds: the records have no per-image results")
    out.mkdir(parents=True, exist_ok=True)
    p = "–" if ranks.friedman_p is None else f"{ranks.friedman_p:.3g}"
    return critical_difference_figure(ranks, out, name, f"{heading}: average rank of seed-mean final image AUROC "
                                      f"on {ranks.blocks} data sets\n(Friedman p = {p}; bars: Nemenyi p ≥ {ALPHA}; "
                                      f"{basis})")


def _finish(fig: Any, ax: Any, out: Path, name: str, title: str, ylabel: str, xlabel: str | None = None) -> list[Path]:
    """Title, axis labels (the x label only when given) and legend of a one-axes figure, then :func:`save_figure`."""
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save_figure(fig, out, name)


def _seed_average(runs: list[Mapping[str, Any]], value: Any) -> dict[int, float]:
    """seed -> the category average of ``value(run)`` over that seed's runs (None values skipped)."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        v = value(r)
        if v is not None:
            by_seed[int(r["config"]["seed"])].append(float(v))
    return {s: statistics.fmean(v) for s, v in sorted(by_seed.items()) if v}


def _over_seeds(series: Iterable[tuple[float, list[Mapping[str, Any]], Callable[[Mapping[str, Any]], Any]]],
                ) -> tuple[list[float], list[float], list[float]]:
    """``(x, runs, value)`` points -> xs, means, stds over seeds of the category average of ``value(run)`` (std 0
    with one seed); a point whose value is undefined in every run is left out."""
    xs: list[float] = []
    means: list[float] = []
    stds: list[float] = []
    for x, runs, value in series:
        per_seed = list(_seed_average(runs, value).values())
        if per_seed:
            xs.append(x)
            means.append(statistics.fmean(per_seed))
            stds.append(statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0)
    return xs, means, stds


def draw_figures(records_dirs: Path | Sequence[Path], out_dir: Path, headline_dirs: Sequence[Path] = (),
                 skip_unreadable: bool = False) -> list[Path]:
    """Draw every figure the records under ``records_dirs`` (one folder or several) support into ``out_dir``, and
    the headline's critical-difference diagram from the records under ``headline_dirs``; returns the written
    files. Unreadable record files: :func:`oadbench.record_sets.load_records`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    folders = folders_of(records_dirs)
    pairs = load_records(folders, skip_unreadable).finished
    records = [r for _, r in pairs]
    if not records:
        raise DataError(f"no finished run record under {', '.join(map(str, folders))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    written: list[Path] = []
    if headline_dirs:
        for table in build_headlines(load_records(headline_dirs, skip_unreadable).pairs):
            written += draw_headline_cd(table.rows, out, f"headline_{table.stem}_critical_difference",
                                        headline_heading(table))
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    file_ratios = file_contaminations()
    for r in records:
        groups[table_of(r, file_ratios)].append(r)
    methods = sorted({method_label(r) for r in records})
    palette = dict(zip(methods, sns.color_palette("tab10", len(methods)), strict=True))

    for (protocol, dataset), runs in sorted(groups.items()):
        by_method: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in runs:
            by_method[method_label(r)].append(r)

        # learning curves
        if any(r["config"]["protocol"].get("training") == "online" and len(r["checkpoints"]) > 1 for r in runs):
            fig, ax = plt.subplots(figsize=(5, 3.2))
            for method, mruns in sorted(by_method.items()):
                shared = set.intersection(*({c["observed"] for c in r["checkpoints"]} for r in mruns))
                xs, means, stds = _over_seeds((x, mruns, lambda r, x=x: next(
                    c["metrics"].get(METRIC) for c in r["checkpoints"] if c["observed"] == x)) for x in sorted(shared))
                if len(xs) < 2:
                    continue
                ax.plot(xs, means, marker="o", ms=3, label=method, color=palette[method])
                ax.fill_between(xs, [m - s for m, s in zip(means, stds, strict=True)],
                                [m + s for m, s in zip(means, stds, strict=True)], alpha=0.2, color=palette[method])
            ax.set_xscale("symlog", linthresh=1)
            written += _finish(fig, ax, out, f"learning_curves_{protocol}_{dataset}", f"{protocol} / {dataset}",
                               "image AUROC", "observed images")

        # per-category bars
        rows = [{"method": method_label(r), "category": r["config"]["dataset"]["category"],
                 "value": r["final"].get(METRIC)} for r in runs if r["final"].get(METRIC) is not None]
        if rows:
            import pandas as pd

            frame = pd.DataFrame(rows).sort_values(["category", "method"])
            fig, ax = plt.subplots(figsize=(max(4, 1.2 * frame["category"].nunique() + 2), 3.2))
            sns.barplot(frame, x="category", y="value", hue="method", palette=palette, errorbar="sd", ax=ax,
                        hue_order=sorted(frame["method"].unique()))
            ax.set_ylim(0, 1)
            written += _finish(fig, ax, out, f"categories_{protocol}_{dataset}", f"{protocol} / {dataset}",
                               "final image AUROC")

        # cost vs accuracy
        points = []
        for method, mruns in sorted(by_method.items()):
            for category in sorted({r["config"]["dataset"]["category"] for r in mruns}):
                cruns = [r for r in mruns if r["config"]["dataset"]["category"] == category]
                values = [run_values(r) for r in cruns]  # the leaderboard's observe and score ms
                cost = [(v["observe_ms"] or 0.0) + (v["score_ms"] or 0.0) for v in values]
                acc = [r["final"].get(METRIC) for r in cruns if r["final"].get(METRIC) is not None]
                if acc:
                    points.append((method, statistics.fmean(cost), statistics.fmean(acc)))
        if points:
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            for method in sorted({p[0] for p in points}):
                xs = [p[1] for p in points if p[0] == method]
                ys = [p[2] for p in points if p[0] == method]
                ax.scatter(xs, ys, label=method, color=palette[method], s=18)
            ax.set_xscale("log")
            written += _finish(fig, ax, out, f"cost_vs_accuracy_{protocol}_{dataset}", f"{protocol} / {dataset}",
                               "final image AUROC", "observe + score ms per image")

        # footprint vs stream length
        if any(len(r["checkpoints"]) > 1 for r in runs):
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            for method, mruns in sorted(by_method.items()):
                curve: dict[int, list[float]] = defaultdict(list)
                for r in mruns:
                    for c in r["checkpoints"]:
                        if c.get("footprint_bytes") is not None:
                            curve[int(c["observed"])].append(c["footprint_bytes"] / 2**20)
                xs = sorted(curve)
                ax.plot(xs, [statistics.fmean(curve[x]) for x in xs], marker="o", ms=3, label=method,
                        color=palette[method])
            ax.set_xscale("symlog", linthresh=1)
            ax.set_yscale("symlog", linthresh=0.01)
            written += _finish(fig, ax, out, f"footprint_{protocol}_{dataset}", f"{protocol} / {dataset}",
                               "footprint (MiB)", "observed images")

        if any("metrics_initial" in c for r in runs for c in r["checkpoints"]) and any(
                len(r["checkpoints"]) > 1 for r in runs):
            written += _drift(by_method, out, palette, f"drift_{protocol}_{dataset}", f"{protocol} / {dataset}")

        if any(c.get("diagnostics") for r in runs for c in r["checkpoints"]):
            written += diagnostics_figure(by_method, out, palette, f"diagnostics_{protocol}_{dataset}",
                                    f"{protocol} / {dataset}")

    written += _qualitative(pairs, out, palette, file_ratios)
    written += draw_rejections(pairs, out, palette, file_ratios)

    # contamination sweep
    by_dataset: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        if r["config"]["protocol"]["name"] in ("online_contaminated", "online_cold_start"):
            by_dataset[r["config"]["dataset"]["name"]].append(r)
    for dataset, runs in sorted(by_dataset.items()):
        if any(r["config"]["protocol"]["name"] == "online_contaminated"
               and float(r["config"]["protocol"]["stream"]["contamination"]) == 0.0 for r in runs):
            runs = [r for r in runs if r["config"]["protocol"]["name"] == "online_contaminated"]
        ratios = {float(r["config"]["protocol"]["stream"]["contamination"]) for r in runs}
        if len(ratios) < 2:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for method in sorted({method_label(r) for r in runs}):
            xs, means, stds = _over_seeds(
                (100 * ratio, [r for r in runs if method_label(r) == method
                               and float(r["config"]["protocol"]["stream"]["contamination"]) == ratio],
                 lambda r: r["final"].get(METRIC)) for ratio in sorted(ratios))
            ax.errorbar(xs, means, yerr=stds, marker="o", ms=3, capsize=2, label=method, color=palette[method])
        written += _finish(fig, ax, out, f"contamination_{dataset}", dataset, "final image AUROC",
                           "anomalous images in the stream (%)")
    return written


def _drift(groups: Mapping[str, list[Mapping[str, Any]]], out: Path, palette: Mapping[str, Any], name: str,
           title: str) -> list[Path]:
    import matplotlib.pyplot as plt

    from oadbench.protocol import ProtocolSpec

    fig, ax = plt.subplots(figsize=(5, 3.2))
    spans: set[tuple[float, float]] = set()
    for method, runs in sorted(groups.items()):
        shared = set.intersection(*({c["observed"] for c in r["checkpoints"]} for r in runs))
        for key, style in (("metrics", "-"), ("metrics_initial", "--")):
            xs, means, _ = _over_seeds((x, runs, lambda r, x=x, key=key: next(
                (c.get(key) or {}).get(METRIC) for c in r["checkpoints"] if c["observed"] == x))
                for x in sorted(shared))
            ax.plot(xs, means, style, marker="o", ms=2, color=palette[method],
                    label=f"{method} ({'current' if key == 'metrics' else 'initial'} state)")
        for r in runs:
            total = int(r["data"]["stream"]) + int(r["data"]["warmup"])
            for comp in ProtocolSpec.from_dict(r["config"]["protocol"]).drift.components:
                if comp.schedule == "gradual":
                    spans.add((comp.start * total, comp.end * total))
                elif comp.schedule == "abrupt":
                    spans.add((comp.at * total, comp.at * total))
                else:
                    spans.add((0.0, float(total)))
    for lo, hi in sorted(spans):
        if hi > lo:
            ax.axvspan(lo, hi, color="grey", alpha=0.15, lw=0)
        else:
            ax.axvline(lo, color="grey", alpha=0.5, lw=1)
    ax.set_xscale("symlog", linthresh=1)
    return _finish(fig, ax, out, name, f"{title}: current (solid) and initial (dashed) state", "image AUROC",
                   "observed images")


BORDER = "normal peaks at the border"


def diagnostic_curves(runs: Iterable[Mapping[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """Quantity -> (observed, mean over ``runs`` at each checkpoint) of the runs' checkpoint diagnostics and of
    the share of normal images peaking at the border (:data:`BORDER`)."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for c in r["checkpoints"]:
            for k, v in (c.get("diagnostics") or {}).items():
                if v is not None:
                    values[k][int(c["observed"])].append(float(v))
            border = (c.get("normal_peaks") or {}).get("border_share")
            if border is not None:
                values[BORDER][int(c["observed"])].append(float(border))
    return {k: (sorted(v), [statistics.fmean(v[x]) for x in sorted(v)]) for k, v in sorted(values.items())}


def diagnostics_figure(groups: Mapping[str, list[Mapping[str, Any]]], out: Path, palette: Mapping[str, Any],
                       name: str, title: str) -> list[Path]:
    """One panel per diagnostic quantity, one line per group (a method, or an ablation variant)."""
    import matplotlib.pyplot as plt

    curves = {g: diagnostic_curves(runs) for g, runs in sorted(groups.items())}
    keys = sorted({k for c in curves.values() for k in c})
    ncol = min(4, len(keys))
    nrow = -(-len(keys) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for g, c in curves.items():
            if key in c:
                ax.plot(*c[key], marker="o", ms=2, label=g, color=palette[g])
        ax.set_xscale("symlog", linthresh=1)
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"{title}: diagnostics vs observed images", fontsize=9)
    return save_figure(fig, out, name)


def _qualitative(pairs: list[tuple[Path, Mapping[str, Any]]], out: Path, palette: Mapping[str, Any],
                 file_ratios: Mapping[str, float | None]) -> list[Path]:
    import matplotlib.pyplot as plt
    import numpy as np

    cells: dict[tuple[str, str, str], dict[str, tuple[int, Path]]] = defaultdict(dict)
    for path, r in pairs:
        name = r.get("maps_file")
        if not name or not (path.parent / name).is_file():
            continue
        key = (*table_of(r, file_ratios), str(r["config"]["dataset"]["category"]))
        method, seed = method_label(r), int(r["config"]["seed"])
        if method not in cells[key] or seed < cells[key][method][0]:
            cells[key][method] = (seed, path.parent / name)
    written: list[Path] = []
    for (protocol, dataset, category), by_method in sorted(cells.items()):
        methods = sorted(by_method)
        data = {}
        for m in methods:
            with np.load(by_method[m][1]) as npz:  # an NpzFile decompresses an array again at every access
                data[m] = {k: npz[k] for k in npz.files}
        ids = [i for i in data[methods[0]]["ids"] if all(i in data[m]["ids"] for m in methods)]
        if not ids:
            continue
        first = data[methods[0]]
        rows = [int(np.flatnonzero(first["ids"] == i)[0]) for i in ids]
        maps = {m: data[m]["maps"].astype(np.float32) for m in methods}
        scale = {m: (float(maps[m].min()), float(maps[m].max())) for m in methods}
        ncol = 2 + len(methods)
        fig, axes = plt.subplots(len(ids), ncol, figsize=(1.6 * ncol, 1.6 * len(ids)), squeeze=False)
        for r, (sample_id, row) in enumerate(zip(ids, rows, strict=True)):
            axes[r, 0].imshow(first["images"][row])
            axes[r, 1].imshow(first["masks"][row], cmap="gray", vmin=0, vmax=1)
            axes[r, 0].set_ylabel(f"{'anomalous' if first['labels'][row] else 'normal'}", fontsize=7)
            for c, m in enumerate(methods):
                k = int(np.flatnonzero(data[m]["ids"] == sample_id)[0])
                axes[r, 2 + c].imshow(maps[m][k], cmap="jet", vmin=scale[m][0], vmax=scale[m][1])
        for c, title in enumerate(["image", "ground truth", *methods]):
            axes[0, c].set_title(title, fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{protocol} / {dataset} / {category}", fontsize=9)
        written += save_figure(fig, out, f"qualitative_{protocol}_{dataset}_{category}")
    return written

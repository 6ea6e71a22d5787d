"""Ablation tables compiled from run records and an ablation spec, never edited by hand.

The spec (YAML; ``leaderboards/lemo_ablation/variants.yaml`` is one) names the method, the data sets
(label -> dataset overrides), the stages (``screen``: seeds and checkpoint schedule; ``final``: seeds, schedule
``null`` = the protocol's own), the ``reference`` configuration, the ``paper`` configuration (overrides of the
reference) and the ``variants`` (name -> overrides of the reference). A record belongs to a variant when its
method configuration equals reference + overrides on every key of the reference, and to every stage whose seeds
hold its seed and whose evaluation schedule is its own.

:func:`compile_ablation` writes ``screen.csv``, ``final.csv`` and ``README.md`` (the same tables in Markdown) and
the figures ``learning_curves`` (image AUROC vs observed images per data set: the paper's configuration, the
reference and the selected variant, mean ± std over seeds) and ``diagnostics_<dataset>`` (their diagnostics).
The rules, as pre-registered in the README's LeMO section:

- a run *collapses* when its final image AUROC is below 0.97 x its best checkpoint's; a variant collapses when
  one of its runs does (final stage: the mean over seeds at each checkpoint);
- the screen's top three are the non-collapsing variants with the highest mean over data sets of final image
  AUROC (a variant missing a data set is not ranked);
- the final stage holds the screen's top three, the reference and the paper's configuration (records of other
  variants are left out of it); the *selected* variant is the non-collapsing final-stage variant, with every seed
  of the stage on every data set, with the highest mean over data sets of the mean over seeds; ties within 0.005
  go to the one with fewer configuration values different from the paper's.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from oadbench.errors import ConfigError, DataError
from oadbench.record_sets import load_records
from oadbench.results import FINISHED

ABLATION_KEYS = (("config", "method", "name"), ("config", "dataset", "name"), ("config", "seed"), ("final",))

METRIC = "image_auroc"
COLLAPSE = 0.97  # final < COLLAPSE x best checkpoint
TIE = 0.005


@dataclass
class Cell:
    """The runs of one variant on one data set in one stage: seed -> (observed, image AUROC) curve, and the
    pixel metrics' final values."""

    curves: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    pixel: dict[int, dict[str, float | None]] = field(default_factory=dict)
    runs: list[Mapping[str, Any]] = field(default_factory=list)

    def finals(self) -> list[float]:
        return [c[-1][1] for _, c in sorted(self.curves.items())]

    def mean_curve(self) -> list[tuple[int, float]]:
        """Mean over seeds at the checkpoints every seed has."""
        shared = set.intersection(*({x for x, _ in c} for c in self.curves.values()))
        return [(x, statistics.fmean(dict(c)[x] for c in self.curves.values())) for x in sorted(shared)]

    def collapsed(self, per_seed: bool) -> bool:
        curves = list(self.curves.values()) if per_seed else [self.mean_curve()]
        return any(c and c[-1][1] < COLLAPSE * max(v for _, v in c) for c in curves)


def load_spec(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("ablation spec", f"cannot read {path}: {exc}") from exc
    for key in ("method", "datasets", "stages", "reference", "variants"):
        if not isinstance(spec, dict) or key not in spec:
            raise ConfigError("ablation spec", f"{path} has no '{key}'")
    unknown = [k for v in spec["variants"].values() for k in (v or {}) if k not in spec["reference"]]
    if unknown:
        raise ConfigError("ablation spec", f"{path}: variant key '{unknown[0]}' is not in the reference")
    return spec


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def variant_of(method: Mapping[str, Any], spec: Mapping[str, Any]) -> str | None:
    for name, overrides in spec["variants"].items():
        config = {**spec["reference"], **(overrides or {})}
        if all(_same(method.get(k), v) for k, v in config.items()):
            return name
    return None


def stages_of(record: Mapping[str, Any], spec: Mapping[str, Any], protocol_schedule: Sequence[int] | str
              ) -> list[str]:
    """Every stage whose seeds hold the record's seed and whose schedule is the record's (a screen record with
    seed 0 also counts in a final stage that has seed 0 and the same schedule)."""
    schedule = record["config"]["protocol"]["evaluation"]["checkpoints"]
    seed = int(record["config"]["seed"])
    out = []
    for name, st in spec["stages"].items():
        wanted = protocol_schedule if st.get("checkpoints") is None else st["checkpoints"]
        if seed in st["seeds"] and _same(schedule, wanted):
            out.append(name)
    return out


def collect(records_dir: Path, spec: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Cell]]]:
    """stage -> variant -> data set label -> Cell, from the finished records of the spec's method."""
    from oadbench.protocol import load_protocol

    schedule = load_protocol(spec.get("protocol", "online_cold_start")).evaluation.checkpoints
    labels = {}
    for label, args in spec["datasets"].items():
        opts = dict(a.split("=", 1) for a in args)
        labels[(opts["dataset"], opts.get("dataset.category"))] = label
    out: dict[str, dict[str, dict[str, Cell]]] = defaultdict(lambda: defaultdict(dict))
    for _, r in load_records([Path(records_dir)], required=ABLATION_KEYS).pairs:  # unreadable: an error naming it
        if r.get("status") != FINISHED or r["config"]["method"]["name"] != spec["method"]:
            continue
        variant = variant_of(r["config"]["method"], spec)
        ds = r["config"]["dataset"]
        label = labels.get((ds["name"], str(ds["category"]))) or labels.get((ds["name"], None))
        if variant is None or label is None:
            continue
        seed = int(r["config"]["seed"])
        curve = [(int(c["observed"]), float(c["metrics"][METRIC])) for c in r["checkpoints"]
                 if c["metrics"].get(METRIC) is not None]
        pixel = {m: r["final"].get(m) for m in ("pixel_auroc", "aupro")}
        for stage in stages_of(r, spec, schedule):
            cell = out[stage][variant].setdefault(label, Cell())
            cell.curves[seed] = curve
            cell.pixel[seed] = pixel
            cell.runs.append(r)
    return out


def baselines(baselines_dir: Path | None, spec: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """method -> data set label -> final image AUROC per seed, from the records under ``baselines_dir``."""
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    if baselines_dir is None or not Path(baselines_dir).is_dir():
        return out
    labels = {}
    for label, args in spec["datasets"].items():
        opts = dict(a.split("=", 1) for a in args)
        labels[(opts["dataset"], opts.get("dataset.category"))] = label
    for _, r in load_records([Path(baselines_dir)], required=ABLATION_KEYS).pairs:
        if r.get("status") != FINISHED or r["final"].get(METRIC) is None:
            continue
        ds = r["config"]["dataset"]
        label = labels.get((ds["name"], str(ds["category"]))) or labels.get((ds["name"], None))
        if label is not None:
            out[r["config"]["method"]["name"]][label].append(float(r["final"][METRIC]))
    return out


def distance_to_paper(name: str, spec: Mapping[str, Any]) -> int:
    """Configuration values of a variant that differ from the paper's configuration."""
    paper = {**spec["reference"], **(spec.get("paper") or {})}
    config = {**spec["reference"], **(spec["variants"][name] or {})}
    return sum(not _same(config[k], paper[k]) for k in paper)


def paper_variant(spec: Mapping[str, Any]) -> str | None:
    """The variant that is the paper's configuration (no value different from it), if the spec has one."""
    return next((n for n in spec["variants"] if distance_to_paper(n, spec) == 0), None)


def rank(cells: Mapping[str, Mapping[str, Cell]], spec: Mapping[str, Any], per_seed: bool, ties: bool,
         seeds: Sequence[int] = ()) -> list[str]:
    """Non-collapsing variants with every data set (and on each, every one of ``seeds``), best mean first; with
    ``ties``, those within 0.005 of the best come first in the order of their differences from the paper's
    configuration (fewer first)."""
    datasets = list(spec["datasets"])
    scored = []
    for name, by_ds in cells.items():
        if set(datasets) - set(by_ds) or any(c.collapsed(per_seed) for c in by_ds.values()):
            continue
        if any(set(seeds) - set(c.curves) for c in by_ds.values()):
            continue
        scored.append((statistics.fmean(statistics.fmean(by_ds[d].finals()) for d in datasets), name))
    scored.sort(key=lambda t: (-t[0], list(spec["variants"]).index(t[1])))
    if not scored or not ties:
        return [n for _, n in scored]
    best = scored[0][0]
    ties = sorted((t for t in scored if best - t[0] <= TIE), key=lambda t: (distance_to_paper(t[1], spec), -t[0]))
    return [n for _, n in ties] + [n for v, n in scored if best - v > TIE]


def _fmt(v: float | None, std: float | None = None) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if std is None else f"{v:.4f} ± {std:.4f}"


def table(cells: Mapping[str, Mapping[str, Cell]], spec: Mapping[str, Any], per_seed: bool,
          marks: Mapping[str, str]) -> list[dict[str, str]]:
    datasets = list(spec["datasets"])
    rows = []
    for name in spec["variants"]:
        if name not in cells:
            continue
        by_ds = cells[name]
        row = {"variant": name, "overrides": " ".join(f"{k}={v}" for k, v in (spec["variants"][name] or {}).items())}
        finals = {}
        for d in datasets:
            if d in by_ds:
                f = by_ds[d].finals()
                finals[d] = statistics.fmean(f)
                row[d] = _fmt(finals[d], statistics.stdev(f) if len(f) > 1 else None)
            else:
                row[d] = ""
        row["mean"] = _fmt(statistics.fmean(finals.values())) if len(finals) == len(datasets) else ""
        pix = [v for c in by_ds.values() for p in c.pixel.values() for k, v in p.items() if k == "pixel_auroc"
               and v is not None]
        pro = [v for c in by_ds.values() for p in c.pixel.values() for k, v in p.items() if k == "aupro"
               and v is not None]
        row["pixel_auroc"] = _fmt(statistics.fmean(pix)) if pix else ""
        row["aupro"] = _fmt(statistics.fmean(pro)) if pro else ""
        row["collapsed_on"] = " ".join(d for d in datasets if d in by_ds and by_ds[d].collapsed(per_seed))
        row["seeds"] = " ".join(str(s) for s in sorted({s for c in by_ds.values() for s in c.curves}))
        row["mark"] = marks.get(name, "")
        rows.append(row)
    return rows


def _csv(rows: list[dict[str, str]], cols: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _markdown(rows: list[dict[str, str]], cols: list[str]) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in rows]
    return lines


def _stage_text(spec: Mapping[str, Any], stage: str) -> str:
    st = spec["stages"].get(stage) or {}
    seeds = st.get("seeds", [])
    checks = st.get("checkpoints")
    when = "the protocol's full checkpoint schedule" if checks is None else (
        "evaluated at " + ", ".join(map(str, checks)) + " observed images and the end of the stream")
    return f"seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))}, {when}"


def compile_ablation(records_dir: Path, spec_path: Path, out_dir: Path, baselines_dir: Path | None = None
                     ) -> list[Path]:
    """Write the screen and final tables (CSV and Markdown) and the figures; returns the written paths."""
    spec = load_spec(spec_path)
    cells = collect(records_dir, spec)
    if not cells:
        raise DataError(f"no finished {spec['method']} record of {spec_path} under {records_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    datasets = list(spec["datasets"])
    cols = ["variant", "mark", *datasets, "mean", "pixel_auroc", "aupro", "collapsed_on", "seeds", "overrides"]
    written = []
    screen_top = rank(cells.get("screen", {}), spec, per_seed=True, ties=False)[:3]
    finalists = {*screen_top, "reference", paper_variant(spec)}
    cells["final"] = {n: c for n, c in cells.get("final", {}).items() if n in finalists}
    final_rank = rank(cells["final"], spec, per_seed=False, ties=True, seeds=spec["stages"]["final"]["seeds"])
    selected = final_rank[0] if final_rank else None
    md = [f"# {spec['method']} ablation: {spec.get('protocol')} at {spec.get('image_size')} px, final image AUROC",
          "", "Compiled by `oadbench ablation` from the records in this folder and the spec `variants.yaml`; never "
          "edited by hand.", ""]
    for stage, marks, per_seed, caption in (
            ("screen", {n: f"top {i + 1}" for i, n in enumerate(screen_top)}, True,
             f"Screen ({_stage_text(spec, 'screen')}). `mark`: the three that go to the final stage."),
            ("final", {selected: "selected"} if selected else {}, False,
             f"Final stage (mean ± std over seeds; {_stage_text(spec, 'final')}). `mark`: the selected variant.")):
        rows = table(cells.get(stage, {}), spec, per_seed, marks)
        if not rows:
            continue
        path = out / f"{stage}.csv"
        path.write_text(_csv(rows, cols))
        written.append(path)
        md += [f"## {stage}", "", caption, "", *_markdown(rows, cols), ""]
    base = baselines(baselines_dir, spec)
    if base:
        brows = []
        for method, by_ds in sorted(base.items()):
            row = {"method": method}
            for d in datasets:
                v = by_ds.get(d)
                row[d] = _fmt(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None) if v else ""
            full = [statistics.fmean(by_ds[d]) for d in datasets if by_ds.get(d)]
            row["mean"] = _fmt(statistics.fmean(full)) if len(full) == len(datasets) else ""
            row["seeds"] = str(max((len(v) for v in by_ds.values()), default=0))
            brows.append(row)
        bcols = ["method", *datasets, "mean", "seeds"]
        path = out / "baselines.csv"
        path.write_text(_csv(brows, bcols))
        written.append(path)
        md += ["## baselines", "", "The other methods online with their defaults (final value only; mean ± std "
               "over seeds).", "", *_markdown(brows, bcols), ""]
    readme = out / "README.md"
    readme.write_text("\n".join(md))
    written.append(readme)
    written += _figures(cells.get("final", {}), spec, out, selected)
    return written


def _figures(final: Mapping[str, Mapping[str, Cell]], spec: Mapping[str, Any], out: Path, selected: str | None
             ) -> list[Path]:
    """Learning curves of the paper's configuration, the reference and the selected variant."""
    from oadbench.figure_files import save_figure
    from oadbench.figures import diagnostics_figure

    shown = [n for n in dict.fromkeys([paper_variant(spec), "reference", selected]) if n in final]
    if not shown:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    palette = dict(zip(shown, sns.color_palette("tab10", len(shown)), strict=True))
    datasets = list(spec["datasets"])
    ncol = 3
    nrow = -(-len(datasets) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), squeeze=False)
    for ax, d in zip(axes.flat, datasets, strict=False):
        for name in shown:
            cell = final[name].get(d)
            if cell is None:
                continue
            xs = sorted(set.intersection(*({x for x, _ in c} for c in cell.curves.values())))
            per = [[dict(c)[x] for c in cell.curves.values()] for x in xs]
            means = [statistics.fmean(p) for p in per]
            stds = [statistics.stdev(p) if len(p) > 1 else 0.0 for p in per]
            ax.plot(xs, means, marker="o", ms=2, label=name, color=palette[name])
            ax.fill_between(xs, [m - s for m, s in zip(means, stds, strict=True)],
                            [m + s for m, s in zip(means, stds, strict=True)], alpha=0.2, color=palette[name])
        ax.set_xscale("symlog", linthresh=1)
        ax.set_ylim(0, 1)
        ax.set_title(d, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    axes.flat[0].set_ylabel("image AUROC")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"{spec['method']} on {spec.get('protocol')}: the paper's configuration and the selected one",
                 fontsize=9)
    written = save_figure(fig, out, "learning_curves")
    for d in datasets:
        groups = {name: final[name][d].runs for name in shown if d in final[name]}
        if any(c.get("diagnostics") for runs in groups.values() for r in runs for c in r["checkpoints"]):
            written += diagnostics_figure(groups, out, palette, f"diagnostics_{d.replace('/', '_')}", d)
    return written

"""The statistics and number formatting every results table shares (leaderboards, the headline).

A table cell holds several runs of one configuration, one per seed: ``runs`` maps seed -> the run's values
(metric name -> number, or None where the metric is undefined). Statistics skip undefined values (None and
NaN): a mean of nothing is None, a standard deviation is the sample one (ddof = 1) and needs two values. A row
over several data sets or categories (``mean``) first averages each seed's values over them
(:func:`mean_over`), then takes the statistics over seeds, so its std is the seed-to-seed spread of the average.

Formatting: CSV cells with 4 decimals (empty for None), Markdown cells with 3, 1 or 0 decimals ("–" for None).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MEAN_ROW = "mean"  # the category/data-set label of a row that averages the others


def numbers(values: Iterable[Any]) -> list[float]:
    """The defined values as floats (None and NaN are undefined metrics)."""
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean(values: Iterable[Any]) -> float | None:
    """Mean of the defined values, None without any."""
    xs = numbers(values)
    return statistics.fmean(xs) if xs else None


def std(values: Iterable[Any]) -> float | None:
    """Sample standard deviation (ddof = 1) of the defined values, None with fewer than two."""
    xs = numbers(values)
    return statistics.stdev(xs) if len(xs) > 1 else None


def seed_stats(runs: Mapping[int, Mapping[str, Any]], metrics: Iterable[str], means: Iterable[str] = ()
               ) -> dict[str, float | None]:
    """Over the seeds of ``runs`` (seed -> run values): ``<m>_mean`` and ``<m>_std`` of each metric, the plain
    mean of each key of ``means``; missing values are left out."""
    seeds = sorted(runs)
    out: dict[str, float | None] = {}
    for m in metrics:
        out[f"{m}_mean"] = mean(runs[s].get(m) for s in seeds)
        out[f"{m}_std"] = std(runs[s].get(m) for s in seeds)
    for key in means:
        out[key] = mean(runs[s].get(key) for s in seeds)
    return out


def mean_over(cells: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, float | None]:
    """One seed's values averaged over ``cells`` (that seed's values in each category or data set), key by key."""
    return {k: mean(c.get(k) for c in cells) for k in keys}


def fmt(value: Any) -> str:
    """A CSV cell: floats with 4 decimals, None empty, anything else as text."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def fmt3(v: float | None) -> str:
    """A Markdown metric: 3 decimals, "–" for None."""
    return "–" if v is None else f"{v:.3f}"


def fmt_pct(v: float | None) -> str:
    """A Markdown rate (a fraction) in %, 1 decimal, "–" for None."""
    return "–" if v is None else f"{100 * v:.1f}"


def fmt1(v: float | None) -> str:
    """A Markdown cost (ms, s): 1 decimal, "–" for None."""
    return "–" if v is None else f"{v:.1f}"


def fmt0(v: float | None) -> str:
    """A Markdown memory size (MiB): no decimals, "–" for None."""
    return "–" if v is None else f"{v:.0f}"


def fmt_pm(mean_value: float | None, std_value: float | None) -> str:
    """A Markdown ``mean ± std`` with 3 decimals; the mean alone with one seed, "–" without a mean."""
    if mean_value is None:
        return "–"
    return f"{mean_value:.3f}" + (f" ± {std_value:.3f}" if std_value is not None else "")

"""Label-free threshold policies: a pass / reject decision for each stream image from the scores of the images
before it only (issue 32's first part; metrics, the CLI and protected learning build on it).

A policy sees the scores of stream positions 0 … i-1 — never a label, never the current or a later score — and
sets the threshold t_i; image i is rejected when its score s_i >= t_i. Policies (``NAME[:key=value,...]``):

``quantile``  t_i = the q-quantile (numpy's linear interpolation) of the history. Default q = 0.99. Rejects
              about 1 - q of the parts whatever the defect rate (river's ``QuantileFilter`` without a window).
``pot``       peaks over threshold (SPOT, Siffer et al., KDD 2017): u = the ``init_q``-quantile of the history,
              a generalized Pareto fitted by maximum likelihood (``scipy.stats.genpareto.fit``, location 0) to the
              N_u excesses over u, t = u + σ/γ · ((α·n / N_u)^(-γ) - 1) (u - σ·ln(α·n / N_u) for γ = 0) at risk
              α (``alpha``); refitted every ``refit`` images (between refits the last threshold holds). Defaults
              init_q = 0.98, alpha = 0.001, refit = 1. With fewer than ``min_excesses`` (10) excesses, t = u.
``robust``    t_i = median + k · MAD of the history (MAD scaled to a normal σ, ``scipy.stats.median_abs_deviation``
              with ``scale="normal"``). Default k = 3.
``fixed``     t_i = ``value`` for every i.

The history is every score before i, or with ``window`` (quantile, pot, robust; default unset) the last
``window`` of them: a prequential model's scores fall as it learns, and a threshold over the whole history stays
set by the young model's scores (SPOT's drift form, DSPOT, answers the same problem with a moving local mean).

Every policy takes ``min_history`` (default 20; >= 1, or >= 0 for ``fixed``): before that many scores there
is no threshold and ``warmup`` decides: ``pass`` (the default: with nothing seen yet a line keeps running, and a
rejection would be a guess) or ``reject`` (hold every part until the detector has history).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from oadbench.errors import ConfigError
from oadbench.validate import check_choice, check_int, check_number

POLICIES = ("quantile", "pot", "robust", "fixed")
WARMUPS = ("pass", "reject")
KEYS = {  # policy -> its own keys and their defaults
    "quantile": {"q": 0.99, "window": None},
    "pot": {"init_q": 0.98, "alpha": 0.001, "refit": 1, "min_excesses": 10, "window": None},
    "robust": {"k": 3.0, "window": None},
    "fixed": {"value": None},
}
COMMON = {"min_history": 20, "warmup": "pass"}
# the leaderboards' columns and protected learning's default: the highest mean F1 of the rejections on the selection
# data of leaderboards/decisions (synthetic categories and MTD, online_prequential), chosen by the rule in its run.sh
DEFAULT_POLICY = "quantile:q=0.9,window=100"


@dataclass(frozen=True)
class Policy:
    """A validated policy: its ``name`` and every parameter (defaults filled in)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ConfigError("decisions.policy", f"unknown policy {self.name!r}", allowed=POLICIES)
        allowed = {**KEYS[self.name], **COMMON}
        for key in self.params:
            if key not in allowed:
                raise ConfigError(f"decisions.{self.name}.{key}", f"not a parameter of policy {self.name!r}",
                                  allowed=sorted(allowed))
        full = {**allowed, **self.params}
        object.__setattr__(self, "params", full)
        _validate(self.name, full)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    def label(self) -> str:
        """``name:key=value,...`` with every non-default parameter, in key order."""
        defaults = {**KEYS[self.name], **COMMON}
        changed = [f"{k}={v}" for k, v in sorted(self.params.items()) if v != defaults[k]]
        return self.name + (":" + ",".join(changed) if changed else "")


def parse_policy(text: str) -> Policy:
    """``NAME[:key=value,...]`` (e.g. ``quantile:q=0.995,window=200``) -> :class:`Policy`; values are numbers,
    ``none`` or words."""
    name, _, rest = text.strip().partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError("decisions.policy", f"expected key=value in {text!r}, got {item!r}")
        params[key.strip()] = _value(value.strip())
    return Policy(name.strip(), params)


def _value(text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _validate(name: str, p: dict[str, Any]) -> None:
    def key(k: str) -> str:
        return f"decisions.{name}.{k}"

    def number(k: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
        v = check_number(p[k], key(k))
        if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)):
            span = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            raise ConfigError(key(k), f"must be a number in {span}, got {v!r}")

    check_int(p["min_history"], key("min_history"), lo=0 if name == "fixed" else 1)  # fixed needs no history
    check_choice(p["warmup"], WARMUPS, key("warmup"))
    if p.get("window") is not None:
        check_int(p["window"], key("window"), lo=1)
    if name == "quantile":
        number("q", 0.0, 1.0)
    elif name == "pot":
        number("init_q", 0.0, 1.0, lo_open=True, hi_open=True)
        number("alpha", 0.0, 1.0, lo_open=True, hi_open=True)
        check_int(p["refit"], key("refit"), lo=1)
        check_int(p["min_excesses"], key("min_excesses"), lo=2)
    elif name == "robust":
        number("k", 0.0, math.inf, hi_open=True)
    elif p["value"] is None:
        raise ConfigError(key("value"), "the fixed policy needs value=<threshold>")
    else:
        number("value", -math.inf, math.inf, lo_open=True, hi_open=True)


def pot_threshold(history: np.ndarray, init_q: float, alpha: float, min_excesses: int = 10) -> float:
    """SPOT's threshold z_α over ``history`` (1-D): u = the ``init_q``-quantile, a GPD (location 0) fitted to
    the excesses over u, z = u + σ/γ·((α·n/N_u)^(-γ) - 1), or u - σ·ln(α·n/N_u) when γ = 0; u itself with fewer
    than ``min_excesses`` excesses."""
    u = float(np.quantile(history, init_q))
    excess = history[history > u] - u
    if excess.size < min_excesses:
        return u
    gamma, _, sigma = stats.genpareto.fit(excess, floc=0.0)
    ratio = alpha * history.size / excess.size
    if abs(gamma) < 1e-12:
        return u - sigma * math.log(ratio)
    return u + sigma / gamma * (ratio ** (-gamma) - 1.0)


class Tracker:
    """A policy run along a stream, one image at a time: :meth:`threshold` is t_i for the next image, from the
    scores added so far only; :meth:`decide` takes the next image's score, returns (rejected, t_i) and adds the
    score to the history. What :func:`thresholds` / :func:`decide` replay on a finished stream and what the runner
    uses for protected learning (``decisions.protect``), so both take the same decisions."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._history = np.empty(64)
        self._n = 0
        self._pot = (-1, math.nan)  # (history length it was fitted at, threshold)

    @property
    def history(self) -> np.ndarray:
        return self._history[:self._n]

    def threshold(self) -> float:
        """t for the next image (NaN while fewer than ``min_history`` scores came before it)."""
        p, i = self.policy.params, self._n
        if i < p["min_history"]:
            return math.nan
        history = self.history if p.get("window") is None else self.history[-p["window"]:]
        if self.policy.name == "quantile":
            return float(np.quantile(history, p["q"]))
        if self.policy.name == "pot":
            fitted_at, last = self._pot
            if fitted_at != i and (math.isnan(last) or (i - p["min_history"]) % p["refit"] == 0):
                self._pot = (i, pot_threshold(history, p["init_q"], p["alpha"], p["min_excesses"]))
            return self._pot[1]
        if self.policy.name == "robust":
            return float(np.median(history) + p["k"] * stats.median_abs_deviation(history, scale="normal"))
        return float(p["value"])

    def add(self, score: float) -> None:
        """The next image's score joins the history."""
        if self._n == self._history.size:
            self._history = np.concatenate([self._history, np.empty(self._n)])
        self._history[self._n] = float(score)
        self._n += 1

    def decide(self, score: float) -> tuple[bool, float]:
        """(rejected, t) for the next image, whose score is then added: rejected when score >= t; with no
        threshold yet the ``warmup`` key decides."""
        t = self.threshold()
        rejected = self.policy["warmup"] == "reject" if math.isnan(t) else float(score) >= t
        self.add(score)
        return bool(rejected), t


def thresholds(scores: np.ndarray, policy: Policy) -> np.ndarray:
    """t_i for every stream position i (float, NaN while fewer than ``min_history`` scores came before i),
    each from ``scores[:i]`` only."""
    return decide(scores, policy)[1]


def decide(scores: np.ndarray, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
    """(rejected bool (n,), thresholds (n,)) over a whole stream of scores, in order (:class:`Tracker`)."""
    tracker = Tracker(policy)
    out = [tracker.decide(s) for s in np.asarray(scores, dtype=float)]
    return np.array([r for r, _ in out], dtype=bool), np.array([t for _, t in out], dtype=float)

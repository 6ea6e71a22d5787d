"""Protocols: what is streamed, in which order, and when evaluation happens.

A protocol is data — a YAML file in ``protocols/`` — parsed and validated into a frozen :class:`ProtocolSpec`.
Unknown keys and out-of-range values raise :class:`~oadbench.errors.ConfigError` naming the key (e.g.
``stream.order``) and the allowed values. The keys and their meaning:

``training``            ``online`` or ``offline``: which form of the method runs (its published offline algorithm,
                        or its online conversion).
``stream.pool``         split the stream is drawn from: ``train``, ``test`` or ``train+test``.
``stream.contamination`` fraction of anomalous images in the stream, 0 <= c < 1; anomalies are drawn from the test
                        split. Only for ``pool: train``; with a pool holding the test split it must be null (the
                        pool's natural ratio is used).
``stream.overlap``      whether stream anomalies (and, for test pools, any streamed test image) may also be in the
                        evaluation split; false removes them from it.
``stream.order``        ``shuffled``, ``anomalies_first``, ``anomalies_last``, ``by_defect`` (anomalies arrive in
                        bursts, one per defect type) or ``as_listed`` (dataset order).
``stream.max_length``   cap on the number of streamed images (warm-up excluded); null streams the whole pool.
``stream.batch_size``   images per ``observe`` call (warm-up included).
``warmup.k``            normal training images observed before the stream (few-shot initialisation).
``categories``          null: the run's ``dataset.category``; a list: a continual sequence of categories, one model.
``evaluation.mode``     ``holdout`` (score the evaluation split at checkpoints) or ``prequential`` (score every
                        stream batch before observing it; metrics over everything scored so far).
``evaluation.checkpoints`` observed-image counts (warm-up included) at which to evaluate, or ``log2`` for
                        0, 1, 2, 4, …; the end of the stream (and of each continual task) is always added.
``evaluation.batch_size`` images per ``score`` call when scoring the evaluation split.
``evaluation.order``    prequential only: ``score_then_observe`` (the default: each stream batch is scored by the
                        model as it was before the batch) or ``observe_then_score`` (transductive: the batch is
                        observed, then scored -- Online-InReaCh's code does this). Part of a run's identity only
                        when not the default, so existing records keep their names.
``evaluation.unscored`` prequential only: the first n stream images are observed and never scored (Online-InReaCh's
                        code leaves its first 2 x min_channel_length + 1 images unscored); 0, the default, is
                        not written into a run's identity.
``decisions.protect``   prequential only: true withholds from ``observe`` every stream image that the label-free
                        threshold policy ``decisions.policy`` rejects (:mod:`oadbench.decisions`; its own score
                        against the threshold set by the scores before it -- the method still sees no label).
                        Needs ``evaluation.order: score_then_observe``. The ``decisions`` section is part of a
                        run's identity only when ``protect`` is true (the policy then in its canonical label).
``decisions.policy``    ``NAME[:key=value,...]``, default :data:`oadbench.decisions.DEFAULT_POLICY`.
``metrics``             metric names, a subset of :data:`METRICS`.
``seeds``               the seeds a full benchmark of this protocol runs (sweeps and leaderboards use them).
``drift``               a list of drift components (:mod:`oadbench.drift`): how the normal appearance changes along
                        the stream; holdout checkpoints then score the evaluation split in the current drift state
                        (``metrics``) and in the initial one (``metrics_initial``). Absent or empty: no drift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from oadbench.decisions import DEFAULT_POLICY, parse_policy
from oadbench.drift import Drift, parse_drift
from oadbench.errors import ConfigError
from oadbench.metrics import IMAGE_METRICS, PIXEL_METRICS
from oadbench.paths import search_dirs
from oadbench.validate import check_bool, check_choice, check_int, check_number

POOLS = ("train", "test", "train+test")
ORDERS = ("shuffled", "anomalies_first", "anomalies_last", "by_defect", "as_listed")
TRAINING = ("online", "offline")
EVAL_MODES = ("holdout", "prequential")
SCORE_THEN_OBSERVE, OBSERVE_THEN_SCORE = "score_then_observe", "observe_then_score"
EVAL_ORDERS = (SCORE_THEN_OBSERVE, OBSERVE_THEN_SCORE)
METRICS = IMAGE_METRICS + PIXEL_METRICS
CHECKPOINT_SCHEDULES = ("log2",)


@dataclass(frozen=True)
class StreamSpec:
    pool: str = "train"
    contamination: float | None = 0.0
    overlap: bool = False
    order: str = "shuffled"
    max_length: int | None = None
    batch_size: int = 1


@dataclass(frozen=True)
class WarmupSpec:
    k: int = 0


@dataclass(frozen=True)
class EvaluationSpec:
    mode: str = "holdout"
    checkpoints: tuple[int, ...] | str = "log2"
    batch_size: int = 16
    order: str = SCORE_THEN_OBSERVE
    unscored: int = 0


@dataclass(frozen=True)
class DecisionsSpec:
    protect: bool = False
    policy: str = DEFAULT_POLICY  # canonical label (Policy.label())


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    description: str = ""
    training: str = "online"
    stream: StreamSpec = StreamSpec()
    warmup: WarmupSpec = WarmupSpec()
    categories: tuple[str, ...] | None = None
    evaluation: EvaluationSpec = EvaluationSpec()
    decisions: DecisionsSpec = DecisionsSpec()
    metrics: tuple[str, ...] = METRICS
    seeds: tuple[int, ...] = (0, 1, 2)
    drift: Drift = Drift()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "protocol") -> ProtocolSpec:
        """Parse and validate; errors name the key as ``<source>: <dotted key>``."""
        return _parse(data, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain values; ``drift`` only when the protocol has one, so protocols without drift keep the identities
        (record names) they had before drift existed."""
        out = asdict(replace(self, drift=Drift()))
        out.pop("drift")
        if self.drift:
            out["drift"] = self.drift.to_list()
        out["evaluation"]["checkpoints"] = (
            list(self.evaluation.checkpoints)
            if not isinstance(self.evaluation.checkpoints, str)
            else self.evaluation.checkpoints
        )
        if self.evaluation.order == SCORE_THEN_OBSERVE:  # the default is not written: identities stay as they were
            out["evaluation"].pop("order")
        if not self.evaluation.unscored:
            out["evaluation"].pop("unscored")
        if not self.decisions.protect:  # unprotected runs keep the identities they had before the key existed
            out.pop("decisions")
        out["metrics"] = list(self.metrics)
        out["seeds"] = list(self.seeds)
        out["categories"] = list(self.categories) if self.categories is not None else None
        return out

    @property
    def continual(self) -> bool:
        return self.categories is not None and len(self.categories) > 1

    def checkpoints(self, total: int, task_ends: Sequence[int] = ()) -> list[int]:
        """Sorted observed-image counts at which to evaluate, for a run observing ``total`` images in all.

        Counts above ``total`` are dropped; ``total`` and each continual task's end are always included.
        """
        spec = self.evaluation.checkpoints
        if isinstance(spec, str):  # log2
            points = {0}
            p = 1
            while p < total:
                points.add(p)
                p *= 2
        else:
            points = {c for c in spec if c <= total}
        points.update(task_ends)
        points.add(total)
        return sorted(points)


# --------------------------------------------------------------------------------------------------------------
# parsing and validation


def _parse(data: Mapping[str, Any], source: str) -> ProtocolSpec:
    if not isinstance(data, Mapping):
        raise ConfigError(source, f"a protocol must be a mapping, got {type(data).__name__}")
    top = _check_keys(data, ProtocolSpec, source, "")
    name = top.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: name", "must be a non-empty string")
    stream_d = _section(top, "stream", source)
    warm_d = _section(top, "warmup", source)
    eval_d = _section(top, "evaluation", source)
    dec_d = _section(top, "decisions", source)
    _check_keys(stream_d, StreamSpec, source, "stream.")
    _check_keys(warm_d, WarmupSpec, source, "warmup.")
    _check_keys(eval_d, EvaluationSpec, source, "evaluation.")
    _check_keys(dec_d, DecisionsSpec, source, "decisions.")

    d = StreamSpec()
    stream = StreamSpec(
        pool=_choice(stream_d.get("pool", d.pool), POOLS, source, "stream.pool"),
        contamination=_optional_float(stream_d.get("contamination", d.contamination), source,
                                      "stream.contamination", lo=0.0, hi=1.0, hi_open=True),
        overlap=_bool(stream_d.get("overlap", d.overlap), source, "stream.overlap"),
        order=_choice(stream_d.get("order", d.order), ORDERS, source, "stream.order"),
        max_length=_optional_int(stream_d.get("max_length", d.max_length), source, "stream.max_length", lo=0),
        batch_size=_int(stream_d.get("batch_size", d.batch_size), source, "stream.batch_size", lo=1),
    )
    if stream.pool != "train" and stream.contamination not in (None, 0.0):
        raise ConfigError(
            f"{source}: stream.contamination",
            f"must be null when stream.pool is '{stream.pool}' (the pool's natural anomaly ratio is used); "
            "set stream.pool: train to inject a fixed fraction of anomalies",
        )
    if stream.pool != "train":
        stream = StreamSpec(**{**asdict(stream), "contamination": None})
    elif stream.contamination is None:
        stream = StreamSpec(**{**asdict(stream), "contamination": 0.0})

    warmup = WarmupSpec(k=_int(warm_d.get("k", 0), source, "warmup.k", lo=0))

    de = EvaluationSpec()
    checkpoints = eval_d.get("checkpoints", de.checkpoints)
    if isinstance(checkpoints, str):
        checkpoints = _choice(checkpoints, CHECKPOINT_SCHEDULES, source, "evaluation.checkpoints")
    elif isinstance(checkpoints, Sequence):
        checkpoints = tuple(
            sorted({_int(c, source, f"evaluation.checkpoints[{i}]", lo=0) for i, c in enumerate(checkpoints)})
        )
    else:
        raise ConfigError(f"{source}: evaluation.checkpoints",
                          f"must be a list of observed-image counts or one of {CHECKPOINT_SCHEDULES}, "
                          f"got {checkpoints!r}")
    evaluation = EvaluationSpec(
        mode=_choice(eval_d.get("mode", de.mode), EVAL_MODES, source, "evaluation.mode"),
        checkpoints=checkpoints,
        batch_size=_int(eval_d.get("batch_size", de.batch_size), source, "evaluation.batch_size", lo=1),
        order=_choice(eval_d.get("order", de.order), EVAL_ORDERS, source, "evaluation.order"),
        unscored=_int(eval_d.get("unscored", de.unscored), source, "evaluation.unscored", lo=0),
    )
    if evaluation.order != SCORE_THEN_OBSERVE and evaluation.mode != "prequential":
        raise ConfigError(f"{source}: evaluation.order",
                          f"{evaluation.order} applies to prequential evaluation (evaluation.mode: prequential), "
                          f"not to {evaluation.mode}")
    if evaluation.unscored and evaluation.mode != "prequential":
        raise ConfigError(f"{source}: evaluation.unscored",
                          f"leaves stream images unscored in prequential evaluation only, not in {evaluation.mode}")

    decisions = _decisions(dec_d, evaluation, source)

    metrics = top.get("metrics", METRICS)
    if isinstance(metrics, str) or not isinstance(metrics, Sequence) or not metrics:
        raise ConfigError(f"{source}: metrics", "must be a non-empty list of metric names", allowed=METRICS)
    for i, m in enumerate(metrics):
        _choice(m, METRICS, source, f"metrics[{i}]")

    seeds = top.get("seeds", (0, 1, 2))
    if isinstance(seeds, str) or not isinstance(seeds, Sequence) or not seeds:
        raise ConfigError(f"{source}: seeds", "must be a non-empty list of integers")
    seeds = tuple(_int(s, source, f"seeds[{i}]", lo=0) for i, s in enumerate(seeds))

    categories = top.get("categories")
    if categories is not None:
        if isinstance(categories, str) or not isinstance(categories, Sequence) or not categories:
            raise ConfigError(f"{source}: categories", "must be null or a non-empty list of category names")
        for i, c in enumerate(categories):
            if not isinstance(c, str) or not c:
                raise ConfigError(f"{source}: categories[{i}]", f"must be a category name, got {c!r}")
        if len(set(categories)) != len(categories):
            raise ConfigError(f"{source}: categories", "lists a category twice")
        categories = tuple(categories)

    drift = parse_drift(top.get("drift"), source)

    description = top.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{source}: description", "must be a string")
    return ProtocolSpec(
        name=name,
        description=description.strip(),
        training=_choice(top.get("training", "online"), TRAINING, source, "training"),
        stream=stream,
        warmup=warmup,
        categories=categories,
        evaluation=evaluation,
        decisions=decisions,
        metrics=tuple(dict.fromkeys(metrics)),
        seeds=seeds,
        drift=drift,
    )


def _decisions(d: Mapping[str, Any], evaluation: EvaluationSpec, source: str) -> DecisionsSpec:
    protect = _bool(d.get("protect", False), source, "decisions.protect")
    policy = d.get("policy", DEFAULT_POLICY)
    if not isinstance(policy, str):
        raise ConfigError(f"{source}: decisions.policy", f"must be NAME[:key=value,...], got {policy!r}")
    try:
        label = parse_policy(policy).label()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.key}", exc.message, allowed=exc.allowed) from exc
    if protect and evaluation.mode != "prequential":
        raise ConfigError(f"{source}: decisions.protect",
                          f"withholds rejected stream images in prequential evaluation only, not in {evaluation.mode}")
    if protect and evaluation.order != SCORE_THEN_OBSERVE:
        raise ConfigError(f"{source}: decisions.protect",
                          f"needs evaluation.order: {SCORE_THEN_OBSERVE} (an image is observed only after its "
                          f"decision), got {evaluation.order}")
    return DecisionsSpec(protect=protect, policy=label)


def _check_keys(data: Mapping[str, Any], spec_cls: type, source: str, prefix: str) -> Mapping[str, Any]:
    allowed = list(spec_cls.__dataclass_fields__)
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{source}: {prefix}{key}", "unknown key", allowed=[prefix + a for a in allowed])
    return data


def _section(top: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = top.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {key}", f"must be a mapping, got {value!r}")
    return value


def _choice(value: Any, allowed: Sequence[str], source: str, key: str) -> str:
    return check_choice(value, allowed, f"{source}: {key}")


def _bool(value: Any, source: str, key: str) -> bool:
    return check_bool(value, f"{source}: {key}")


def _int(value: Any, source: str, key: str, lo: int | None = None) -> int:
    return check_int(value, f"{source}: {key}", lo)


def _optional_int(value: Any, source: str, key: str, lo: int | None = None) -> int | None:
    return None if value is None else _int(value, source, key, lo)


def _optional_float(value: Any, source: str, key: str, lo: float, hi: float, hi_open: bool) -> float | None:
    if value is None:
        return None
    value = check_number(value, f"{source}: {key}")
    if not (lo <= value and (value < hi if hi_open else value <= hi)):
        bound = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise ConfigError(f"{source}: {key}", f"must be in {bound}, got {value}")
    return value


# --------------------------------------------------------------------------------------------------------------
# finding protocol files


def protocol_dirs() -> list[Path]:
    """Directories searched for ``<name>.yaml``: ``./protocols`` (a researcher's own), the entries of
    ``$OADBENCH_PROTOCOLS_PATH``, then the built-in ``protocols/`` (installed in the package, or the source
    checkout's)."""
    return search_dirs("protocols", "OADBENCH_PROTOCOLS_PATH")


def protocol_files() -> dict[str, Path]:
    """Protocol name -> YAML file, the first directory of :func:`protocol_dirs` winning."""
    found: dict[str, Path] = {}
    for d in protocol_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def protocol_names() -> list[str]:
    return sorted(protocol_files())


def read_protocol_file(path: Path) -> dict[str, Any]:
    """The raw mapping of a protocol YAML file (validated later by :meth:`ProtocolSpec.from_dict`)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("protocol", f"cannot read protocol file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("protocol", f"protocol file {path} must hold a mapping")
    data.setdefault("name", path.stem)
    return data


def load_protocol(name_or_path: str) -> ProtocolSpec:
    """A shipped protocol by name, or a YAML file by path."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) and path.is_file():
        return ProtocolSpec.from_dict(read_protocol_file(path), source=f"protocol '{path}'")
    files = protocol_files()
    if name_or_path not in files:
        raise ConfigError("protocol", f"unknown protocol '{name_or_path}'", allowed=sorted(files))
    f = files[name_or_path]
    return ProtocolSpec.from_dict(read_protocol_file(f), source=f"protocol '{name_or_path}' ({f.name})")

"""Stream plans: which images a method observes, in which order, and which images it is evaluated on.

:func:`build_plan` is a pure function of (protocol spec, dataset samples, seed): it only reads the sorted sample
lists, never the files, and draws every random choice from a generator seeded by (seed, task index, category).
Plans hold indices into :attr:`CategoryData.samples` (train then test).

Contamination contract: with ``stream.contamination = c`` and ``L`` streamed images, the stream holds the number
of anomalies ``a`` that makes ``a / L`` closest to ``c`` (so ``|a / L - c| <= 1 / (2 L)``); with no length cap all
normal training images are streamed and ``a`` anomalous test images are added. Asking for more anomalies than the
test split can give (keeping at least one for evaluation unless ``overlap``) is an error with both numbers.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oadbench.data.sample import CategoryData, Sample
from oadbench.errors import ConfigError
from oadbench.protocol import ProtocolSpec


@dataclass(frozen=True)
class TaskPlan:
    """One category's part of a run. Indices point into ``CategoryData.samples``."""

    category: str
    warmup: tuple[int, ...]
    stream: tuple[int, ...]
    eval: tuple[int, ...]  # empty for prequential evaluation

    @property
    def observed(self) -> int:
        return len(self.warmup) + len(self.stream)


@dataclass(frozen=True)
class StreamPlan:
    tasks: tuple[TaskPlan, ...]

    @property
    def total_observed(self) -> int:
        return sum(t.observed for t in self.tasks)

    @property
    def task_ends(self) -> list[int]:
        """Cumulative observed count at the end of each task."""
        return list(np.cumsum([t.observed for t in self.tasks]).tolist())


def task_rng(seed: int, task_index: int, category: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, task_index, zlib.crc32(category.encode())]))


def build_plan(spec: ProtocolSpec, data: Sequence[CategoryData], seed: int) -> StreamPlan:
    """The plan for ``data`` (one CategoryData per task, in task order)."""
    return StreamPlan(tuple(
        _build_task(spec, d, seed, i, first=(i == 0)) for i, d in enumerate(data)
    ))


def plan_digest(plan: StreamPlan, data: Sequence[CategoryData]) -> str:
    """SHA-256 over the sample ids of every part of the plan, in order: equal digests mean equal streams."""
    h = hashlib.sha256()
    for task, d in zip(plan.tasks, data, strict=True):
        samples = d.samples
        for part in ("warmup", "stream", "eval"):
            h.update(f"[{task.category}:{part}]".encode())
            for i in getattr(task, part):
                h.update(samples[i].id.encode() + b"\n")
    return h.hexdigest()


def _build_task(spec: ProtocolSpec, data: CategoryData, seed: int, task_index: int, first: bool) -> TaskPlan:
    rng = task_rng(seed, task_index, data.category)
    samples = data.samples
    n_train = len(data.train)
    train_idx = [i for i in range(n_train) if not samples[i].is_anomalous]
    test_idx = list(range(n_train, len(samples)))
    test_anom = [i for i in test_idx if samples[i].is_anomalous]
    st = spec.stream
    ordered = st.order == "as_listed"

    # warm-up: k normal training images, before the stream, first task only
    k = spec.warmup.k if first else 0
    if k > len(train_idx):
        raise ConfigError(
            "protocol.warmup.k",
            f"asks for {k} normal warm-up images but category '{data.category}' has {len(train_idx)} "
            "normal training images",
        )
    warmup = train_idx[:k] if ordered else rng.choice(train_idx, size=k, replace=False).tolist()
    taken_by_warmup = set(warmup)
    train_left = [i for i in train_idx if i not in taken_by_warmup]

    if st.pool == "train":
        normals, anomalies = _contaminated_pool(spec, data, train_left, test_anom, rng)
    else:
        pool = (train_left if st.pool == "train+test" else []) + test_idx
        if st.max_length is not None and st.max_length < len(pool):
            pool = pool[: st.max_length] if ordered else sorted(
                rng.choice(pool, size=st.max_length, replace=False).tolist())
        normals = [i for i in pool if not samples[i].is_anomalous]
        anomalies = [i for i in pool if samples[i].is_anomalous]

    stream = _order(st.order, normals, anomalies, samples, rng)

    if spec.evaluation.mode == "prequential":
        evaluation: list[int] = []
    else:
        taken = set() if st.overlap else set(stream)
        evaluation = [i for i in test_idx if i not in taken]
        n_anom_eval = sum(samples[i].is_anomalous for i in evaluation)
        if not evaluation or n_anom_eval == 0 or n_anom_eval == len(evaluation):
            raise ConfigError(
                "protocol.stream.overlap",
                f"the evaluation split of category '{data.category}' would hold {len(evaluation)} images "
                f"({n_anom_eval} anomalous) after removing the streamed test images; holdout evaluation needs "
                "normal and anomalous images (set stream.overlap: true or evaluation.mode: prequential)",
            )
    return TaskPlan(data.category, tuple(warmup), tuple(stream), tuple(evaluation))


def contamination_count(contamination: float, normals: int | None = None, length: int | None = None) -> int:
    """Anomalies to stream: ``round(c * length)`` for a fixed length, else the ``a`` making ``a/(normals+a)``
    closest to ``c``."""
    if length is not None:
        return int(np.floor(contamination * length + 0.5))
    assert normals is not None
    if contamination == 0.0:
        return 0
    guess = contamination * normals / (1.0 - contamination)
    candidates = {max(0, int(np.floor(guess)) + d) for d in (-1, 0, 1, 2)}
    return min(candidates, key=lambda a: (abs(a / (normals + a) - contamination) if normals + a else 1.0, a))


def _contaminated_pool(
    spec: ProtocolSpec, data: CategoryData, train_left: list[int], test_anom: list[int], rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    st = spec.stream
    c = st.contamination or 0.0
    ordered = st.order == "as_listed"
    if st.max_length is not None and st.max_length <= len(train_left) + len(test_anom):
        n_anom = contamination_count(c, length=st.max_length)
        n_norm = st.max_length - n_anom
        if n_norm > len(train_left):
            raise ConfigError(
                "protocol.stream.max_length",
                f"a stream of {st.max_length} images with contamination {c} needs {n_norm} normal images but "
                f"category '{data.category}' has {len(train_left)} normal training images left after warm-up",
            )
    else:
        n_norm = len(train_left)
        n_anom = contamination_count(c, normals=n_norm)
    available = len(test_anom) if st.overlap else len(test_anom) - 1
    if n_anom > available:
        keep = "" if st.overlap else " (one is kept for the evaluation split)"
        raise ConfigError(
            "protocol.stream.contamination",
            f"contamination {c} asks for {n_anom} anomalous stream images but category '{data.category}' can "
            f"give only {max(available, 0)} of its {len(test_anom)} anomalous test images{keep}",
        )
    if ordered:
        return train_left[:n_norm], test_anom[:n_anom]
    normals = sorted(rng.choice(train_left, size=n_norm, replace=False).tolist()) if n_norm else []
    anomalies = sorted(rng.choice(test_anom, size=n_anom, replace=False).tolist()) if n_anom else []
    return normals, anomalies


def _order(
    order: str, normals: list[int], anomalies: list[int], samples: list[Sample], rng: np.random.Generator
) -> list[int]:
    if order == "as_listed":
        return sorted(normals + anomalies)
    if order == "shuffled":
        return rng.permutation(normals + anomalies).tolist()
    n = rng.permutation(normals).tolist() if normals else []
    a = rng.permutation(anomalies).tolist() if anomalies else []
    if order == "anomalies_first":
        return a + n
    if order == "anomalies_last":
        return n + a
    # by_defect: one contiguous burst per defect type, inserted at random positions among the normals
    groups: dict[str, list[int]] = {}
    for i in a:
        groups.setdefault(samples[i].defect_type, []).append(i)
    bursts = [groups[t] for t in rng.permutation(sorted(groups)).tolist()]
    positions = sorted(rng.integers(0, len(n) + 1, size=len(bursts)).tolist())
    out: list[int] = []
    prev = 0
    for pos, burst in zip(positions, bursts, strict=True):
        out += n[prev:pos] + burst
        prev = pos
    return out + n[prev:]

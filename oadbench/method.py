"""The method interface, the method registry and discovery of method modules.

A method sees only tensors: a :class:`Batch` of normalised images and the frozen backbone's features of those
images (extracted once per distinct image by the runner and reused at every checkpoint). No labels, masks, defect
names or paths ever reach it. Contract:

- ``observe(batch)`` learns from unlabeled stream images; batch size 1 must work.
- ``score(batch)`` returns raw :class:`Scores` (higher = more anomalous); it never changes what the method has
  learned, and before any ``observe`` (cold start) it returns finite scores.
- ``consolidate()`` is called by the runner whenever the stream pauses for evaluation (each checkpoint, the end):
  deferred training work of offline forms (a coreset, epochs over stored features) happens here, timed as
  training cost.
- ``footprint()`` is the number of bytes of learned state (memory bank, Gaussians, adapter weights).
- ``diagnostics()`` (optional) names numbers about the method's state, recorded at every checkpoint.

Methods register with ``@register_method("name")`` and declare their hyperparameters as a dataclass ``Config``
(defaults = the published ones). Discovery imports every ``*.py`` under the methods directories (``./methods``,
``$OADBENCH_METHODS_PATH``, then the built-in ``methods/``) and every entry point of the group ``oadbench.methods``.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.metadata
import importlib.util
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from oadbench.errors import ConfigError
from oadbench.paths import search_dirs
from oadbench.validate import check_bool, check_int, check_number, check_str

ENTRY_POINT_GROUP = "oadbench.methods"
MODES = ("online", "offline")
# metadata of a Config field added after records were published: left out of a run's identity while it has its
# default, so those records keep their names (``field(default=..., metadata=OMIT_AT_DEFAULT)``)
OMIT_AT_DEFAULT = {"oadbench_omit_at_default": True}


class Batch:
    """What a method sees of a batch of images. ``features``: one tensor (B,C_l,H_l,W_l) per backbone level the
    method asked for, in the order of its ``layers``, on the run's device. ``image_size``: (H, W) of the images,
    the size of the maps ``score`` returns. ``images``: float (B,3,H,W), normalised for the backbone, on the run's
    device.

    ``Batch(images, features)`` holds given images; :meth:`deferred` makes them when ``images`` is first read
    (the runner's batches for a method with ``needs_images = False``: a normalised copy of every batch on the
    device that no method reads is memory and time for nothing). Immutable."""

    __slots__ = ("_images", "_source", "_normalise", "features", "image_size")

    def __init__(self, images: torch.Tensor, features: Sequence[torch.Tensor]):
        self._set(images=images, source=None, normalise=None, features=features,
                  size=(int(images.shape[-2]), int(images.shape[-1])))

    @classmethod
    def deferred(cls, source: torch.Tensor, normalise: Callable[[torch.Tensor], torch.Tensor],
                 features: Sequence[torch.Tensor]) -> Batch:
        """A batch whose ``images`` are ``normalise(source)``, made on first access (``source``: the uint8
        images (B,3,H,W) as loaded)."""
        batch = cls.__new__(cls)
        batch._set(images=None, source=source, normalise=normalise, features=features,
                   size=(int(source.shape[-2]), int(source.shape[-1])))
        return batch

    def _set(self, images: torch.Tensor | None, source: torch.Tensor | None,
             normalise: Callable[[torch.Tensor], torch.Tensor] | None, features: Sequence[torch.Tensor],
             size: tuple[int, int]) -> None:
        for name, value in (("_images", images), ("_source", source), ("_normalise", normalise),
                            ("features", tuple(features)), ("image_size", size)):
            object.__setattr__(self, name, value)

    @property
    def images(self) -> torch.Tensor:
        if self._images is None:
            object.__setattr__(self, "_images", self._normalise(self._source))  # type: ignore[misc]
            object.__setattr__(self, "_source", None)
        return self._images

    @property
    def materialised(self) -> torch.Tensor | None:
        """The normalised images if they exist already (no copy is made), else None."""
        return self._images

    def select(self, rows: Sequence[int]) -> Batch:
        """The batch of the given rows only (images and features, in that order); deferred stays deferred."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        feats = [f.index_select(0, index.to(f.device)) for f in self.features]
        if self._images is not None:
            return Batch(self._images.index_select(0, index.to(self._images.device)), feats)
        return Batch.deferred(self._source.index_select(0, index.to(self._source.device)),  # type: ignore[union-attr]
                              self._normalise, feats)  # type: ignore[arg-type]

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Batch is immutable: cannot set {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: Mapping[str, Any]) -> None:  # copy.copy, pickle
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        source = self._images if self._images is not None else self._source
        return int(source.shape[0])


@dataclass
class Scores:
    """``image``: (B,) anomaly scores; ``maps``: (B,H,W) anomaly maps at the input image size."""

    image: torch.Tensor
    maps: torch.Tensor


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about its run: its form, device, seed and the backbone's feature geometry."""

    mode: str  # "online" or "offline"
    device: torch.device
    seed: int
    image_size: int  # input images are image_size x image_size
    backbone: str
    channels: tuple[int, ...]  # per requested level
    strides: tuple[int, ...]  # per requested level
    # the backbone's input normalisation: images reach the method as (pixel / 255 - mean) / std per RGB channel
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class Method(abc.ABC):
    """Base class of every method. Subclasses set ``name``, define a dataclass ``Config`` and implement
    ``observe``, ``score`` and ``footprint``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    # False: observe and score read only a batch's features and image_size, never its pixels, so the runner
    # makes no normalised copy of the images on the device (True: ``Batch.images`` is made before each call)
    needs_images: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Config:
        layers: tuple[int, ...] = (1, 2, 3)

    def __init__(self, config: Any, context: MethodContext):
        self.config = config
        self.context = context
        self.device = context.device

    @classmethod
    def feature_levels(cls, config: Any) -> tuple[int, ...]:
        """Backbone ``out_indices`` this method needs; by default its config's ``layers``."""
        return tuple(config.layers)

    @abc.abstractmethod
    def observe(self, batch: Batch) -> None: ...

    @abc.abstractmethod
    def score(self, batch: Batch) -> Scores: ...

    @abc.abstractmethod
    def footprint(self) -> int: ...

    def consolidate(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Deferred training work before an evaluation; no-op for purely online methods."""

    def diagnostics(self) -> dict[str, float]:
        """Optional: named numbers about the method's state (a loss, a memory's usage), recorded at every
        checkpoint of the run record and logged to W&B. Must not change state. Default: none."""
        return {}


def tensor_bytes(*items: torch.Tensor | torch.nn.Module | None) -> int:
    """Bytes held by tensors and module parameters/buffers (``None`` counts 0)."""
    total = 0
    for item in items:
        if item is None:
            continue
        if isinstance(item, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in [*item.parameters(), *item.buffers()])
        else:
            total += item.numel() * item.element_size()
    return total


# --------------------------------------------------------------------------------------------------------------
# registry

_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str):
    """Class decorator: ``@register_method("padim")`` makes the class available as ``method=padim``."""

    def decorate(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method('{name}') must decorate a subclass of oadbench.method.Method")
        if not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"method '{name}': Config must be a dataclass")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"method '{name}' is registered twice ({existing.__module__}, {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def method_names() -> list[str]:
    discover_methods()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    discover_methods()
    if name not in _REGISTRY:
        raise ConfigError("method", f"unknown method '{name}'", allowed=sorted(_REGISTRY))
    return _REGISTRY[name]


def method_dirs() -> list[Path]:
    """``./methods``, the entries of ``$OADBENCH_METHODS_PATH``, then the built-in ``methods/`` (installed in the
    package, or the source checkout's)."""
    return search_dirs("methods", "OADBENCH_METHODS_PATH")


_IMPORTED: set[Path] = set()
_ENTRY_POINTS_LOADED = False


def discover_methods(dirs: Iterable[Path] | None = None) -> None:
    """Import every method module not imported yet (idempotent)."""
    global _ENTRY_POINTS_LOADED
    for d in method_dirs() if dirs is None else dirs:
        for path in sorted(Path(d).glob("*.py")):
            if path.name.startswith("_"):
                continue
            _import_file(path.resolve())
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            ep.load()  # importing registers; an entry point may name a module or a class


def _import_file(path: Path) -> None:
    if path in _IMPORTED:
        return
    _IMPORTED.add(path)
    module_name = f"oadbench_methods.{path.stem}"
    if module_name in sys.modules:  # a same-named module from an earlier directory wins
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[module_name]
        raise


# --------------------------------------------------------------------------------------------------------------
# configs


def config_defaults(cls: type[Method]) -> dict[str, Any]:
    """The method's default hyperparameters as plain YAML-able values (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(cls.Config):
        value = getattr(cls.Config(), f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def config_identity(config: Any) -> dict[str, Any]:
    """A method config's hyperparameters as they enter a run's identity, as plain values (tuples become lists):
    every field, except one marked :data:`OMIT_AT_DEFAULT` while it has its default."""
    values = dataclasses.asdict(config)
    return {f.name: _plain(values[f.name]) for f in dataclasses.fields(config)
            if not (f.metadata.get("oadbench_omit_at_default") and values[f.name] == f.default)}


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def build_config(cls: type[Method], values: Mapping[str, Any]) -> Any:
    """``cls.Config`` from ``values`` (keys ``name`` ignored). Unknown keys and values of the wrong type raise
    ConfigError naming ``method.<key>``; the Config's own ``__post_init__`` checks ranges."""
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    try:
        hints = typing.get_type_hints(cls.Config)
    except Exception:  # noqa: BLE001 - unresolvable annotations: accept values as given
        hints = {}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key == "name":
            continue
        if key not in fields:
            raise ConfigError(f"method.{key}", f"unknown hyperparameter of method '{cls.name}'",
                              allowed=[f"method.{k}" for k in fields])
        kwargs[key] = _coerce(value, hints.get(key, Any), f"method.{key}")
    return cls.Config(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against the type hint ``hint`` (bool, int, float, str, tuples, lists, unions)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return tuple(value) if isinstance(value, list) else value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"{value!r} does not match {_type_name(hint)}")
    checks = {bool: check_bool, int: check_int, float: check_number, str: check_str}
    if hint in checks:
        return checks[hint](value, key)
    if hint in (tuple, list) or origin in (tuple, list, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(key, f"must be a list, got {value!r}")
        item = args[0] if args and (len(args) == 1 or args[-1] is Ellipsis) else Any
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")

"""A content-addressed store of frozen backbone features, shared by every run that uses one cache directory.

The backbone is frozen and deterministic, so a sweep's runs (methods x seeds x protocols over one data set) need
each image's features once. The store keys an entry by

- a *namespace*: backbone name, weight source, a SHA-256 of the feature extractor's weights, the feature levels
  it outputs, input size and crop, and what changes float results: the torch version, the device type, the CPU
  thread count (oneDNN's convolutions reduce in a thread-count-dependent order) or the CUDA device, its TF32
  settings (the run's ``precision``) and whether deterministic algorithms are on; one directory
  ``<root>/<namespace digest[:16]>/`` per namespace, with ``namespace.json`` saying what it is;
- the image's content: BLAKE2b of the uint8 tensor exactly as the backbone receives it (after resize and crop):
  ``<namespace dir>/<digest[:2]>/<digest>.safetensors``.

An entry holds one float32 tensor ``level<i>`` (C, h, w) per level of the namespace, and in its metadata the
BLAKE2b digest of each tensor's bytes. Reads return exactly the stored tensors (bit-identical to what was
extracted). The format is safetensors: a JSON header with exact dtype, shape and byte offsets, then raw tensor
bytes, read memory-mapped and only for the levels asked for (a PatchCore run does not touch the level-1 maps a
PaDiM run stored); no pickle, so a cache directory shared by a team is not code that runs; and the library
comes with timm. NumPy memmaps would need one file per level or a header of our own.

Safety: writes go to a temp file beside the entry and are renamed over it (no fsync: a torn entry after a crash
is caught by its digests), so concurrent runs of a joblib or SLURM sweep see a whole entry or none; two writers
of one entry rename identical bytes. A truncated file (its header does not cover it) or a tensor whose digest
differs is deleted and reported as a miss, never used. A store that cannot be written (full disk, read-only
directory) logs one warning and the run goes on without storing.

Size: least-recently-used eviction keeps the directory under ``max_bytes`` (a hit refreshes the entry's mtime;
eviction removes the oldest mtimes first, down to 90 % of the cap). Concurrent writers each keep their own count
between scans, so the cap can be exceeded by what they write between two scans.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors

from oadbench.devices import tf32_state
from oadbench.results import atomic_write

log = logging.getLogger("oadbench")

FORMAT = "oadbench-features-1"
FEATURE_DEFAULTS = {"cache": True, "cache_dir": None, "cache_max_gb": 20.0}  # the run config's ``features.*``
SUFFIX = ".safetensors"
LOW_WATER = 0.9  # eviction goes down to this fraction of the cap, so that a full store is not rescanned per write
STALE_TEMP_S = 3600.0  # temp files older than this were left by a killed writer


def store_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """The levels a store entry holds for a run that needs ``levels``: every level from 1 (0 if asked for) to the
    deepest one asked for. The backbone computes them on the way to the deepest level anyway, so a PatchCore run
    (levels 2, 3) stores what a later PaDiM run (1, 2, 3) reads."""
    return tuple(range(min(1, *levels), max(levels) + 1))


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 (hex) of a module's state dict: names, dtypes, shapes and bytes, in key order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def numerics(device: torch.device) -> dict[str, Any]:
    """What, besides weights and input, decides the float results of a backbone pass on ``device``."""
    out: dict[str, Any] = {"torch": torch.__version__, "device": device.type}
    if device.type == "cuda":  # the flags in effect: the run's ``precision`` and deterministic mode set them
        tf32 = tf32_state()
        out["device_name"] = torch.cuda.get_device_name(device)
        out["cudnn_allow_tf32"] = tf32["conv"]
        out["matmul_allow_tf32"] = tf32["matmul"]
        out["deterministic"] = torch.are_deterministic_algorithms_enabled()
    else:
        out["threads"] = torch.get_num_threads()
    return out


def image_digest(image: torch.Tensor) -> str:
    """BLAKE2b-128 (hex) of one image tensor (3, H, W) as the backbone receives it: dtype, shape and bytes."""
    t = image.detach().cpu().contiguous()
    h = hashlib.blake2b(f"{t.dtype}|{tuple(t.shape)}|".encode(), digest_size=16)
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.blake2b(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()


def _namespace_digest(namespace: Mapping[str, Any]) -> str:
    text = json.dumps(dict(namespace), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{FORMAT}:{text}".encode()).hexdigest()


class FeatureStore:
    """The entries of one namespace under ``root``; ``max_bytes`` caps the whole of ``root`` (every namespace).

    ``levels`` are the namespace's levels, in the order the backbone returns them; :meth:`get` and :meth:`put`
    speak of positions in that tuple."""

    def __init__(self, root: Path, namespace: Mapping[str, Any], max_bytes: int):
        if not namespace.get("levels"):
            raise ValueError("a feature store namespace needs its levels")
        self.root = Path(root)
        self.namespace = dict(namespace)
        self.levels = tuple(int(v) for v in namespace["levels"])
        self.max_bytes = int(max_bytes)
        self.dir = self.root / _namespace_digest(self.namespace)[:16]
        self.hits = 0
        self.corrupt = 0
        self.writable = True
        self._size = self.scan()[0] if self.root.is_dir() else 0
        try:
            if not (self.dir / "namespace.json").is_file():
                text = json.dumps({"format": FORMAT, **self.namespace}, indent=1, sort_keys=True) + "\n"
                atomic_write(self.dir / "namespace.json", lambda f: f.write(text.encode()), fsync=False)
        except OSError as exc:
            self._cannot_write(exc)

    def path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}{SUFFIX}"

    # ---- reading ------------------------------------------------------------------------------------------

    def get(self, digest: str, positions: Sequence[int]) -> list[torch.Tensor] | None:
        """The stored tensors (C, h, w) of the levels at ``positions`` for the image ``digest``, on the CPU; None
        on a miss. A truncated or corrupt entry is deleted and is a miss."""
        path = self.path(digest)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}")
                out = []
                for p in positions:
                    name = f"level{self.levels[p]}"
                    t = f.get_tensor(name)
                    if _tensor_digest(t) != meta.get(f"digest.{name}"):
                        raise ValueError(f"digest of {name} differs")
                    out.append(t)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (SafetensorError, ValueError, KeyError, OSError) as exc:
            self.corrupt += 1
            log.warning("feature store: %s is unusable (%s); recomputing it", path, exc)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # the entry was used: it is the most recently used now
        self.hits += 1
        return out

    # ---- writing ------------------------------------------------------------------------------------------

    def put(self, digest: str, features: Sequence[torch.Tensor]) -> None:
        """Store the features of one image: one tensor (C, h, w) per namespace level, in order."""
        if not self.writable:
            return
        if len(features) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} levels {self.levels}, got {len(features)} tensors")
        tensors = {f"level{lv}": t.detach().cpu().contiguous() for lv, t in zip(self.levels, features, strict=True)}
        meta = {"format": FORMAT, "levels": ",".join(map(str, self.levels)),
                **{f"digest.{name}": _tensor_digest(t) for name, t in tensors.items()}}
        data = save_tensors(tensors, metadata=meta)
        try:
            atomic_write(self.path(digest), lambda f: f.write(data), fsync=False)
        except OSError as exc:
            self._cannot_write(exc)
            return
        self._size += len(data)
        if self._size > self.max_bytes:
            self.evict()

    def _cannot_write(self, exc: OSError) -> None:
        self.writable = False
        log.warning("feature store: cannot write to %s (%s); this run goes on without storing features", self.dir, exc)

    # ---- size ---------------------------------------------------------------------------------------------

    def scan(self) -> tuple[int, list[tuple[float, int, Path]]]:
        """(total bytes of entries under ``root``, [(mtime, bytes, path)] of every entry); removes temp files
        left by killed writers."""
        entries: list[tuple[float, int, Path]] = []
        total = 0
        now = time.time()
        for ns in _subdirs(self.root):
            for shard in _subdirs(ns):
                for item in _files(shard):
                    try:
                        st = item.stat()
                    except FileNotFoundError:
                        continue
                    if item.name.endswith(".tmp"):
                        if now - st.st_mtime > STALE_TEMP_S:
                            Path(item.path).unlink(missing_ok=True)
                        continue
                    if item.name.endswith(SUFFIX):
                        entries.append((st.st_mtime, st.st_size, Path(item.path)))
                        total += st.st_size
        return total, entries

    def evict(self) -> int:
        """If the entries under ``root`` exceed the cap, delete the least recently used down to 90 % of it.
        Returns the number of entries deleted."""
        total, entries = self.scan()
        deleted = 0
        if total > self.max_bytes:
            target = LOW_WATER * self.max_bytes
            for _, size, path in sorted(entries, key=lambda e: (e[0], str(e[2]))):
                if total <= target:
                    break
                path.unlink(missing_ok=True)
                total -= size
                deleted += 1
        self._size = total
        return deleted


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path) if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _files(path: Path) -> list[os.DirEntry]:
    try:
        return [e for e in os.scandir(path) if e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []

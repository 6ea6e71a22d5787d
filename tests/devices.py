"""The devices tests run on, and a counter of host synchronisations that works on the CPU.

``DEVICES``: the CPU always, CUDA as a case that skips on a machine without it. :class:`HostSyncs` counts the
operations that, on a CUDA device, make the host wait for the device: a scalar read (``item``, ``int()``,
``float()``, ``bool()``), ``nonzero`` and boolean-mask indexing (the output size is data), ``torch.equal``,
``bincount`` (sizes its output from the maximum), ``unique``, and ``tolist`` / ``cpu`` copies. On the CPU these
cost nothing, but they are dispatched the same way, so a test on the CPU can count what a GPU run would wait for.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
SYNC_OPS = {"aten._local_scalar_dense", "aten.nonzero", "aten.equal", "aten.is_nonzero", "aten.masked_select",
            "aten.bincount", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive"}


class HostSyncs(TorchDispatchMode):
    """``with HostSyncs() as syncs: ...`` then ``syncs.total`` / ``syncs.ops``; ``with syncs.paused(): ...`` stops
    counting (for the syncs of a callee counted separately)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self._paused = 0
        self._saved: dict[str, object] = {}

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def _count(self, name: str) -> None:
        if not self._paused:
            self.ops[name] += 1

    @contextmanager
    def paused(self):
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in SYNC_OPS:
            self._count(name)
        elif name == "aten.index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                          for i in (args[1] if len(args) > 1 else ()) if i is not None):
            self._count("boolean mask")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for attr in ("tolist", "cpu"):
            original = getattr(torch.Tensor, attr)
            self._saved[attr] = original

            def counted(t, *a, _original=original, _name=attr, **k):
                self._count(_name)
                return _original(t, *a, **k)

            setattr(torch.Tensor, attr, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for attr, original in self._saved.items():
            setattr(torch.Tensor, attr, original)
        return super().__exit__(*exc)

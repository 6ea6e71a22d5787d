"""The run's device: validation, the numeric settings of a CUDA run, its warm-up and its memory bookkeeping.

A CUDA run is its own record: its device type and numeric settings (:func:`numeric_identity`) are part of its
identity, so a ``device=cuda`` run never returns the record of the same config run on the CPU. A CPU run's
identity has no ``device`` entry, so every record written before CUDA runs had their own identity keeps its name.

Numeric settings of a CUDA run (:func:`numeric_mode`, entered by the runner before the run's first kernel and
left after the run, restoring what was there before):

- ``torch.use_deterministic_algorithms(True)``: operations with a deterministic CUDA kernel use it (``index_add_``,
  used by k-means, falls back to a sorted ``index_put_``; cuDNN picks deterministic convolution algorithms), and an
  operation without one raises instead of silently varying; ``torch.backends.cudnn.deterministic = True``,
  ``torch.backends.cudnn.benchmark = False``;
- a fixed cuBLAS workspace, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless the environment already sets one (read
  by PyTorch when it creates its cuBLAS workspaces, so it is set before the first matrix product);
- ``precision``: ``fp32`` (default) computes float32 matrix products and convolutions in full float32 (TF32 off;
  this torch turns TF32 on for cuDNN convolutions by default, which moves backbone features by about 1e-3
  relative), ``tf32`` allows TF32 tensor cores for both (faster on Ampere and later, less exact).

TF32 is set through ``torch.backends.cuda.matmul.fp32_precision`` and ``torch.backends.cudnn.{conv,rnn}
.fp32_precision`` where torch has them (2.9 and later; mixing them with the legacy ``allow_tf32`` flags makes the
legacy getters raise), else through ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn
.allow_tf32``. Nothing here touches a CPU run: its results stay bit-identical to what they were.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from oadbench.errors import ConfigError

PRECISIONS = ("fp32", "tf32")
DEFAULT_PRECISION = "fp32"
CUBLAS_WORKSPACE = ":4096:8"  # 8 buffers of 4 MiB: a fixed workspace, as NVIDIA's reproducibility notes ask


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (the current CUDA device) or ``cuda:N`` as a torch.device; ConfigError naming ``device``
    for anything else: an unknown device type, CUDA on a machine without it, or an index beyond the devices there
    are (the error lists them)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError("device", f"{name!r} is not a device", allowed=["cpu", "cuda", "cuda:N"]) from exc
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"{name!r} is not supported", allowed=["cpu", "cuda", "cuda:N"])
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} requested but CUDA is not available on this machine",
                          allowed=["cpu"])
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError("device", f"{name!r} does not exist: this machine has {count} CUDA device"
                          f"{'' if count == 1 else 's'}", allowed=["cpu", "cuda", *[f"cuda:{i}" for i in range(count)]])
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def check_precision(value: Any, device: torch.device) -> str:
    """The run's ``precision`` (``fp32`` or ``tf32``); ``tf32`` only on a CUDA device (on the CPU float32 is always
    computed in full precision, and a CPU run's identity has no numeric settings)."""
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ConfigError("precision", f"{value!r} is not valid", allowed=PRECISIONS)
    if value != DEFAULT_PRECISION and device.type == "cpu":
        raise ConfigError("precision", f"{value!r} applies to CUDA devices only; on the CPU float32 is always "
                          "full precision", allowed=[DEFAULT_PRECISION])
    return value


def numeric_identity(device: torch.device, precision: str) -> dict[str, Any] | None:
    """What a run's identity says about its device: None on the CPU (identities of CPU runs are unchanged), else
    the device type and the numeric settings its results depend on. The index (``cuda:1``) is not part of it."""
    if device.type == "cpu":
        return None
    return {"type": device.type, "precision": precision, "deterministic": True}


# --------------------------------------------------------------------------------------------------------------
# TF32


def _new_precision_api() -> bool:
    try:
        return isinstance(torch.backends.cuda.matmul.fp32_precision, str)
    except (AttributeError, RuntimeError):
        return False


def _resolved(backend: str, op: str) -> str:
    """torch's resolution of a float32 precision flag: the op's, else its backend's, else the generic one."""
    for b, o in ((backend, op), (backend, "all"), ("generic", "all")):
        value = torch._C._get_fp32_precision_getter(b, o)
        if value != "none":
            return value
    return "none"


def tf32_state() -> dict[str, bool]:
    """Whether float32 matrix products (cuBLAS) and cuDNN convolutions may use TF32 now."""
    if _new_precision_api():
        return {"matmul": _resolved("cuda", "matmul") == "tf32", "conv": _resolved("cuda", "conv") == "tf32"}
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "conv": bool(torch.backends.cudnn.allow_tf32)}


def _get_tf32_flags() -> tuple[Any, ...]:
    if _new_precision_api():
        return (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
                torch.backends.cudnn.rnn.fp32_precision)
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32_flags(flags: tuple[Any, ...]) -> None:
    if _new_precision_api():
        matmul, conv, rnn = flags
        torch.backends.cuda.matmul.fp32_precision = matmul
        torch.backends.cudnn.conv.fp32_precision = conv
        torch.backends.cudnn.rnn.fp32_precision = rnn
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 for CUDA float32 matrix products and cuDNN convolutions."""
    if _new_precision_api():
        mode = "tf32" if enabled else "ieee"
        _set_tf32_flags((mode, mode, mode))
    else:
        _set_tf32_flags((enabled, enabled))


# --------------------------------------------------------------------------------------------------------------
# numeric mode of a run


@contextmanager
def numeric_mode(device: torch.device, precision: str = DEFAULT_PRECISION) -> Iterator[None]:
    """The numeric settings of a run on ``device`` (module docstring), restored on exit; a no-op on the CPU."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, _get_tf32_flags())
    workspace_was = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if workspace_was is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    try:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        set_tf32(precision == "tf32")
        yield
    finally:
        deterministic, warn_only, cudnn_det, cudnn_bench, tf32 = saved
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_det
        torch.backends.cudnn.benchmark = cudnn_bench
        _set_tf32_flags(tf32)
        if workspace_was is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def numeric_environment(device: torch.device, precision: str) -> dict[str, Any]:
    """What a CUDA run's record says (``env``) about the numeric settings in effect; empty on the CPU."""
    if device.type != "cuda":
        return {}
    return {
        "device_name": torch.cuda.get_device_name(device),
        "device_capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "precision": precision,
        "tf32": tf32_state(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


# --------------------------------------------------------------------------------------------------------------
# warm-up and memory


def warm_up(device: torch.device, backbone: torch.nn.Module | None = None, image_size: int = 64,
            batch_sizes: Iterable[int] = (1,)) -> float:
    """CUDA's one-off start-up work before any meter runs: the backbone's forward at each batch size (its first
    kernels, cuDNN), a matrix product and a batched one (cuBLAS handle and workspace), a Cholesky factorisation,
    its inverse and a triangular solve (cuSOLVER, cuBLAS), a convolution's backward pass and an optimiser step
    (autograd, cuDNN's backward kernels). Draws no random numbers (the run's random streams are untouched) and
    keeps nothing. Returns the seconds it took; 0 on the CPU, where nothing is done."""
    if device.type != "cuda":
        return 0.0
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        if backbone is not None:
            for b in sorted(set(batch_sizes)):
                backbone(torch.zeros(b, 3, image_size, image_size, dtype=torch.uint8))
        a = torch.eye(64, device=device) + 0.01
        (a @ a).sum()
        torch.bmm(a.expand(4, 64, 64), a.expand(4, 64, 64))
        for dtype in (torch.float32, torch.float64):
            spd = torch.eye(16, device=device, dtype=dtype).expand(3, 16, 16) * 2.0
            factor = torch.linalg.cholesky(spd)
            torch.cholesky_inverse(factor)
            torch.linalg.solve_triangular(factor.float(), torch.ones(3, 16, 2, device=device), upper=False)
        torch.topk(a, 3, dim=1)
    weight = torch.full((8, 8, 1, 1), 0.1, device=device, requires_grad=True)
    x = torch.linspace(-1.0, 1.0, 8 * 16 * 16, device=device).view(1, 8, 16, 16)
    optimiser = torch.optim.AdamW([weight], lr=1e-3, amsgrad=True)
    torch.nn.functional.conv2d(x, weight).square().mean().backward()
    optimiser.step()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def device_bytes(tensors: Iterable[torch.Tensor | None], device: torch.device) -> int:
    """Bytes of the distinct storages behind ``tensors`` that live on ``device`` (views of one storage count
    once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None or t.device != device:
            continue
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


__all__ = ["CUBLAS_WORKSPACE", "DEFAULT_PRECISION", "PRECISIONS", "check_precision", "device_bytes",
           "numeric_environment", "numeric_identity", "numeric_mode", "resolve_device", "set_tf32", "tf32_state",
           "warm_up"]

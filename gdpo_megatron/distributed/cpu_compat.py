"""Let megatron-core run on a CPU-only host (gloo), by redirecting its CUDA assumptions.

megatron-core is written for GPUs: it asks `torch.cuda.current_device()` for buffers,
creates tensors with `device="cuda"`, checks `param.type() == "torch.cuda.FloatTensor"`
in its optimizers, keeps its RNG states with `torch.cuda.get_rng_state`, and uses CUDA
streams and events in DDP and the pipeline schedules. None of that exists on a CPU box.

`apply()` redirects exactly those things to the CPU, in this process only:

- `torch.cuda.current_device()` returns `torch.device("cpu")`, so `device=current_device()`
  allocations (attention buffers, RoPE, p2p buffers, DDP buffers) land on the CPU;
- a torch-function mode rewrites `device="cuda"` arguments and `.cuda()` / `.to("cuda")`
  to the CPU, and reports CPU float/half/bf16 tensors as `torch.cuda.*Tensor` from
  argument-less `Tensor.type()` (the optimizers' dtype dispatch keys on those names);
- `torch.cuda.{synchronize, empty_cache}` become no-ops; `Stream`, `Event`, `stream`,
  `current_stream`, `default_stream` become inert CPU stand-ins (CPU work is synchronous);
- the "CUDA" RNG calls (`torch.cuda.get_rng_state/set_rng_state/manual_seed` and
  megatron's `_get/_set_cuda_rng_state`) use the CPU generator, so megatron's RNG tracker
  still forks a separate state per tensor-parallel rank.

It is never applied when CUDA is available (`apply()` refuses), and it is idempotent.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False
_MODE: "_CudaToCpuMode | None" = None

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
}


def is_applied() -> bool:
    return _APPLIED


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":")[0] == "cuda"
    return False


_CPU = torch.device("cpu")
_SPECIAL_METHODS = frozenset({torch.Tensor.cuda, torch.Tensor.to, torch.Tensor.type})


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites requests for CUDA tensors into CPU tensors (see module docstring).

    It sees every torch call of the process, so the common case (no device argument,
    not one of the three rewritten methods) does no more than two cheap checks: no
    copy of the keyword arguments, no scan of the positional ones.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not kwargs:
            kwargs = {}
        elif "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": _CPU}
        if func in _SPECIAL_METHODS:
            if func is torch.Tensor.cuda:
                return args[0]
            if func is torch.Tensor.to:
                args = tuple(_CPU if _is_cuda_device(a) else a for a in args)
            elif len(args) == 1 and not kwargs:  # argument-less Tensor.type()
                tensor = args[0]
                if tensor.device.type == "cpu" and tensor.dtype in _CUDA_TYPE_NAMES:
                    return _CUDA_TYPE_NAMES[tensor.dtype]
        return func(*args, **kwargs)


class _CpuStream:
    """Stand-in for torch.cuda.Stream: CPU kernels run synchronously, so waits are no-ops."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, event: Any = None) -> "_CpuEvent":
        return event or _CpuEvent()


class _CpuEvent:
    """Stand-in for torch.cuda.Event; timing is not supported on this path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


@contextlib.contextmanager
def _stream_context(stream: Any = None):
    yield


def _get_rng_state(*args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    torch.set_rng_state(state)


class _DropCpuRngWarning(logging.Filter):
    # The RNG tracker warns when the CPU generator changes inside a fork; on this path the
    # "CUDA" generator *is* the CPU generator, so that change is the intended behaviour.
    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def apply() -> None:
    """Install the CPU redirections for megatron-core in this process. Refuses under CUDA."""
    global _APPLIED, _MODE
    if _APPLIED:
        return
    if torch.cuda.is_available():
        raise RuntimeError("gdpo_megatron.distributed.cpu_compat must not be applied when CUDA is available")

    cuda = torch.cuda
    cuda.current_device = lambda: torch.device("cpu")
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda *a, **k: None
    cuda.Stream = _CpuStream
    cuda.Event = _CpuEvent
    cuda.stream = _stream_context
    cuda.current_stream = lambda *a, **k: _CpuStream()
    cuda.default_stream = lambda *a, **k: _CpuStream()
    cuda.get_rng_state = _get_rng_state
    cuda.set_rng_state = _set_rng_state
    # torch.manual_seed itself calls cuda.manual_seed_all: seed the CPU generator directly.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None
    cuda.random.get_rng_state = _get_rng_state
    cuda.random.set_rng_state = _set_rng_state

    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = _get_rng_state
    mcore_random._set_cuda_rng_state = _set_rng_state
    logging.getLogger(mcore_random.__name__).addFilter(_DropCpuRngWarning())

    # Entered for the life of the process: every later torch call sees the redirections.
    _MODE = _CudaToCpuMode()
    _MODE.__enter__()
    _APPLIED = True

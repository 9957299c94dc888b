"""The optimizer's high-precision master weights must be the loaded checkpoint, not the initialization.

megatron-core's optimizers copy the model parameters into fp32 master tensors when they are
built, so the HF weights are loaded before the optimizer exists (MegatronPolicy). FP8
parameters need more: a Float8 parameter built under Transformer Engine's `fp8_model_init`
keeps its *initialization* value in high precision, and the distributed optimizer takes the
master copy from that value (`get_high_precision_init_val`), not from the parameter. Loading a
checkpoint into the FP8 parameter leaves that value stale, so the first update would
overwrite the checkpoint with the random initialization. `keep_loaded_value` replaces it by
the loaded high-precision tensor.
"""

from __future__ import annotations

import types
from typing import Iterator

import torch


def keep_loaded_value(param: torch.Tensor, loaded: torch.Tensor) -> bool:
    """Make `loaded` the high-precision value the optimizer will copy for an FP8 `param`; False if not FP8."""
    if not hasattr(param, "get_high_precision_init_val"):
        return False
    value = loaded.detach().to("cpu", copy=True)

    def get(self):
        return value

    def clear(self):
        self.get_high_precision_init_val = types.MethodType(lambda _: None, self)

    param.get_high_precision_init_val = types.MethodType(get, param)
    param.clear_high_precision_init_val = types.MethodType(clear, param)
    return True


def master_copies(optimizer) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(model parameter, its fp32 master tensor) pairs of a megatron mixed-precision optimizer.

    The master tensor is flat and covers this rank's range of the parameter (all of it unless
    the distributed optimizer shards it over data-parallel ranks).
    """
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        if hasattr(sub, "shard_fp32_from_float16_groups"):  # distributed optimizer
            for group in sub.model_float16_groups:
                for param in group:
                    yield param, param.main_param
        elif hasattr(sub, "fp32_from_float16_groups"):
            for params, masters in zip(sub.float16_groups, sub.fp32_from_float16_groups):
                yield from zip(params, (m.view(-1) for m in masters))

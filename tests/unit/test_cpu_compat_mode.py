"""The CUDA-to-CPU torch-function mode of distributed/cpu_compat.py, on its own (no megatron)."""

import pytest
import torch

from gdpo_megatron.distributed.cpu_compat import _CudaToCpuMode

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the mode is only ever used without CUDA")


def test_cuda_requests_become_cpu_tensors_and_others_pass_through():
    with _CudaToCpuMode():
        made = torch.zeros(3, device="cuda")
        assert made.device.type == "cpu"
        assert torch.empty(2, device=torch.device("cuda", 0)).device.type == "cpu"
        assert made.cuda() is made
        assert made.to("cuda").device.type == "cpu"
        moved = made.to(torch.device("cuda:0"), torch.float64)
        assert moved.device.type == "cpu" and moved.dtype == torch.float64
        assert made.to(device="cuda", dtype=torch.float16).dtype == torch.float16
        assert made.type() == "torch.cuda.FloatTensor"
        assert made.half().type() == "torch.cuda.HalfTensor"
        assert made.long().type() == "torch.LongTensor"  # no CUDA name for an integer tensor
        assert made.type(torch.float64).dtype == torch.float64  # with an argument: the real conversion
        assert torch.add(made, 1, alpha=2).tolist() == [2.0, 2.0, 2.0]  # other keyword arguments untouched

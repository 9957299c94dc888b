"""Process groups (nccl/gloo) and the CPU compatibility layer for megatron-core.

`setup.init_distributed(parallel)` / `setup.destroy_distributed()` are the entry points;
`cpu_compat` is applied by them only when CUDA is absent.
"""

"""The megatron-core policy: model build, layout checks, logprobs, train step, optimizer, checkpoints."""

"""The megatron-core policy: model build, logprobs, train step, optimizer, checkpoints."""

"""gdpo-megatron: multi-reward RL (GDPO) for megatron-core policies with vLLM generation."""
__version__ = "0.1.0"

"""A reward that breaks its declared range, for the runner's out-of-range counter (stdlib only)."""

from gdpo_megatron.rewards.outcomes import value_range
from gdpo_megatron.rewards.registry import REWARDS

if "test_overflow" not in REWARDS:
    @REWARDS.register("test_overflow")
    @value_range(0.0, 1.0)
    def overflow(record, response, num_tokens):
        return 2.0 if "overflow" in response else 0.5

"""Misbehaving rewards for the runner tests, imported by the reward workers through
`scoring.reward_modules` (kept stdlib-only so that a worker starts fast)."""

import os
import time

from gdpo_megatron.rewards.registry import REWARDS


def _register(name):
    def decorator(fn):
        if name not in REWARDS:
            REWARDS.register(name)(fn)
        return fn
    return decorator


@_register("test_echo_length")
def echo_length(record, response, num_tokens, scale=1.0):
    return scale * len(response)


@_register("test_raise_on_bad")
def raise_on_bad(record, response, num_tokens):
    if "bad" in response:
        raise ValueError("bad rollout")
    return 1.0


@_register("test_hang_on_slow")
def hang_on_slow(record, response, num_tokens):
    if "slow" in response:
        time.sleep(3600)
    return 2.0


@_register("test_die_on_kill")
def die_on_kill(record, response, num_tokens):
    if "kill" in response:
        os._exit(3)  # the worker process disappears mid-call
    return 3.0


def test_plugins_are_registered():
    assert echo_length({}, "abc", 0, scale=2.0) == 6.0
    assert "test_hang_on_slow" in REWARDS

"""The data that crosses the generation interface: sampling settings in, rollouts and refit stats out.

Plain picklable dataclasses: they travel through Ray and process pipes unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from gdpo_megatron.config.generation import SamplingConfig

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingSettings:
    """One generation call's sampling: `n` rollouts per prompt from the same distribution.

    Seeding: rollout `s` of prompt `p` draws from its own generator seeded with
    `seed + p * n + s`, so a seeded call is reproducible whatever the batch composition
    or the number of engines the prompts are spread over.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # EOS, stop ids and stop strings cannot end a response shorter than this
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n: rollouts per prompt must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens: must be in [0, max_new_tokens={self.max_new_tokens}], "
                             f"got {self.min_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k: must be -1 (off) or positive, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def seed_for(self, prompt_index: int) -> Optional[int]:
        """The seed of the first rollout of a prompt (the engine adds the sample index)."""
        return None if self.seed is None else self.seed + prompt_index * self.n


# The name the trainer and the brief use for the request-side settings.
GenerationRequest = SamplingSettings


def sampling_from_config(config: SamplingConfig, *, n: int = 1, seed: Optional[int] = None,
                         max_new_tokens: Optional[int] = None) -> SamplingSettings:
    """Settings from the recipe's `generation.sampling`; `seed` overrides the recipe's (per-step seeds).

    A `max_new_tokens` override below the recipe's `min_new_tokens` lowers the minimum with it.
    """
    longest = max_new_tokens if max_new_tokens is not None else config.max_new_tokens
    return SamplingSettings(
        n=n,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        max_new_tokens=longest,
        min_new_tokens=min(config.min_new_tokens, longest),
        stop=tuple(config.stop),
        stop_token_ids=tuple(config.stop_token_ids),
        seed=seed if seed is not None else config.seed,
    )


@dataclass
class Rollout:
    """One generated response. `logprobs[i]` is the sampling policy's log-probability of `token_ids[i]`."""

    prompt_index: int
    sample_index: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    text: str = ""

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.token_ids):
            raise ValueError(f"rollout ({self.prompt_index}, {self.sample_index}): {len(self.token_ids)} tokens "
                             f"but {len(self.logprobs)} logprobs")


@dataclass
class RefitStats:
    """What one weight refit moved and how long the engines were unavailable."""

    bytes: int = 0
    seconds: float = 0.0
    buckets: int = 0
    tensors: int = 0
    weight_version: int = 0
    per_engine_seconds: list[float] = field(default_factory=list)

    def as_metrics(self, prefix: str = "refit/") -> dict[str, float]:
        return {f"{prefix}bytes": float(self.bytes), f"{prefix}seconds": self.seconds,
                f"{prefix}buckets": float(self.buckets), f"{prefix}weight_version": float(self.weight_version)}


def check_grouped(rollouts: list[Rollout], num_prompts: int, n: int) -> None:
    """Raise if rollouts are not exactly prompt-major, sample-minor (the contract of `generate`)."""
    expected = [(p, s) for p in range(num_prompts) for s in range(n)]
    got = [(r.prompt_index, r.sample_index) for r in rollouts]
    if got != expected:
        raise RuntimeError(f"rollouts out of order: expected {len(expected)} (prompt, sample) pairs in "
                           f"prompt-major order, got {got[:8]}{'...' if len(got) > 8 else ''}")

"""The reward runner as a Ray actor, so reward processes are placed like every other worker."""

from __future__ import annotations


class RewardWorker:
    def __init__(self, recipe_data: dict) -> None:
        from gdpo_megatron.config.recipe import RecipeConfig
        from gdpo_megatron.config.schema import build
        from gdpo_megatron.rewards import RewardRunner
        from gdpo_megatron.rewards.sandbox_preflight import check_sandboxes

        recipe = build(RecipeConfig, recipe_data)
        self.runner = RewardRunner(recipe.algorithm.rewards, recipe.scoring)  # imports scoring.reward_modules
        # Fail here, before the first step, when this host cannot run a code reward's sandbox.
        self.sandboxes = check_sandboxes(recipe.algorithm.rewards)

    def ready(self) -> list[str]:
        """The sandbox modes in use (awaited by the trainer so that a failed start-up stops it early)."""
        return self.sandboxes

    def score(self, records: list[dict], responses: list[str], num_tokens: list[int]):
        batch = self.runner.score(records, responses, num_tokens)
        return batch.values, batch.metrics

    def close(self) -> None:
        self.runner.close()

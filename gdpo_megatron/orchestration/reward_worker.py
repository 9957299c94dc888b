"""The reward runner as a Ray actor, so reward processes are placed like every other worker."""

from __future__ import annotations


class RewardWorker:
    def __init__(self, recipe_data: dict) -> None:
        from gdpo_megatron.config.recipe import RecipeConfig
        from gdpo_megatron.config.schema import build
        from gdpo_megatron.rewards import RewardRunner

        recipe = build(RecipeConfig, recipe_data)
        self.runner = RewardRunner(recipe.algorithm.rewards, recipe.scoring)

    def score(self, records: list[dict], responses: list[str], num_tokens: list[int]):
        batch = self.runner.score(records, responses, num_tokens)
        return batch.values, batch.metrics

    def close(self) -> None:
        self.runner.close()

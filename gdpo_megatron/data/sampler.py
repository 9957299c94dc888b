"""Deterministic, resumable prompt order: (seed, epoch, position) fixes every future batch."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class PromptSampler:
    """Batches of records; each epoch is a seeded permutation (or the file order without shuffle).

    A batch that runs past the end of an epoch continues into the next one, so every batch
    has exactly `batch_size` records. `state_dict()` after k batches, loaded into a fresh
    sampler over the same dataset, yields exactly the batches k+1, k+2, ...
    """

    def __init__(self, dataset: Sequence[dict], batch_size: int, seed: int, shuffle: bool = True) -> None:
        if len(dataset) == 0:
            raise ValueError("PromptSampler: the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"PromptSampler: batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.dataset))
        # PCG64 seeded by (seed, epoch): stable across numpy versions and platforms.
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def next_batch(self) -> list[dict]:
        batch = []
        while len(batch) < self.batch_size:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
            take = min(self.batch_size - len(batch), len(self._order) - self.position)
            batch.extend(self.dataset[int(i)] for i in self._order[self.position:self.position + take])
            self.position += take
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "shuffle": self.shuffle, "dataset_size": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("dataset_size", len(self.dataset)) != len(self.dataset):
            raise ValueError(f"PromptSampler: checkpoint was taken over {state['dataset_size']} records, "
                             f"this dataset has {len(self.dataset)}; resuming would change the order")
        self.seed = int(state["seed"])
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self.epoch = int(state["epoch"])
        self._order = self._epoch_order(self.epoch)
        self.position = int(state["position"])
        if not 0 <= self.position <= len(self._order):
            raise ValueError(f"PromptSampler: position {self.position} outside 0..{len(self._order)}")


def completed_passes(state: dict) -> int:
    """Full passes over the dataset that the batches drawn up to `state` (a `state_dict()`) cover.

    The sampler moves to the next epoch only when it draws again, so a pass that has just
    ended counts here although `state["epoch"]` still names it.
    """
    return state["epoch"] + (1 if state["position"] == state["dataset_size"] else 0)

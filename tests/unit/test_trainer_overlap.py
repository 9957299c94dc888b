"""trainer.overlap_generation's scheduling in `Trainer._step`, with the workers replaced.

No Ray here: `_collect_rollouts`, `_train` and `_refit_engines` are stand-ins that record
when they ran (the real ones are exercised by tests/e2e/test_train_tiny.py). What is checked
is the order the driver imposes: the next step's collection starts before this step's
update and ends before its refit, a step that will be the last collects nothing ahead, a
failed collection stops the step that waited for it, and a checkpoint keeps the sampler
from before the batch in hand.
"""

from __future__ import annotations

import threading
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from gdpo_megatron.config import load_recipe
from gdpo_megatron.data import PromptSampler
from gdpo_megatron.trainer import CollectedRollouts, StepBatch, Trainer

ROOT = Path(__file__).resolve().parents[2]


def _trainer(tmp_path, *overrides: str) -> Trainer:
    recipe = load_recipe(ROOT / "recipes/tiny/synthetic-gdpo-1n2c.yaml",
                         ["trainer.overlap_generation=true", "trainer.prompts_per_step=2",
                          "trainer.rollouts_per_prompt=2", *overrides])
    trainer = Trainer(recipe, tmp_path / "run", log=lambda _: None)
    trainer.sampler = PromptSampler([{"id": i} for i in range(6)], 2, seed=0, shuffle=False)
    trainer.events = []
    trainer.train_started = threading.Event()
    trainer.collect_started = threading.Event()

    def collect(step: int) -> CollectedRollouts:
        if step > 0:
            trainer.collect_started.set()
        state = trainer.sampler.state_dict()
        records = trainer.sampler.next_batch()
        if step > 0:  # a collection ahead runs while the update does: it ends after the update started
            assert trainer.train_started.wait(10), "the update did not start while the next rollouts were collected"
        trainer.events.append(("collect", step, [r["id"] for r in records]))
        batch = StepBatch(records=[r for r in records for _ in range(2)],
                          prompt_ids=[[1]] * 4, response_ids=[[2, 3]] * 4, texts=["x"] * 4,
                          engine_logprobs=[[0.0, 0.0]] * 4, finish_reasons=["stop"] * 4,
                          group_ids=[0, 0, 1, 1], rewards=torch.ones(4, 3))
        return CollectedRollouts(batch, [], 0.0, state)

    def train(batch: StepBatch) -> dict:
        # Whether the next step's collection was already under way when the update began.
        ahead = trainer.collect_started.wait(0.5)
        trainer.events.append(("train", [r["id"] for r in batch.records[::2]], ahead))
        trainer.train_started.set()
        return {}

    def refit() -> dict:
        trainer.events.append(("refit",))
        trainer.train_started.clear()
        trainer.collect_started.clear()
        return {}

    trainer._collect_rollouts = collect
    trainer._train = train
    trainer._refit_engines = refit
    trainer._overlap = ThreadPoolExecutor(1)
    return trainer


def _steps(trainer: Trainer, count: int, first: int = 0) -> list[dict]:
    records = []
    for step in range(first, first + count):
        trainer.step = step
        records.append(trainer._step(step))
    return records


def test_the_next_collection_overlaps_the_update_and_ends_before_the_refit(tmp_path):
    trainer = _trainer(tmp_path, "trainer.max_steps=3")
    records = _steps(trainer, 3)
    trainer._finish_overlap()
    assert trainer.events == [
        ("collect", 0, [0, 1]), ("train", [0, 1], True), ("collect", 1, [2, 3]), ("refit",),
        ("train", [2, 3], True), ("collect", 2, [4, 5]), ("refit",),
        ("train", [4, 5], False), ("refit",),  # the last step collects nothing ahead
    ]
    assert all("time/rollout_wait" in r for r in records)
    assert [r["data/epoch"] for r in records] == [0.0, 0.0, 1.0]  # the third batch ends the pass over 6 prompts


def test_a_checkpoint_keeps_the_sampler_from_before_the_batch_in_hand(tmp_path):
    trainer = _trainer(tmp_path, "trainer.max_steps=3")
    _steps(trainer, 1)  # step 2's prompts (2, 3) are drawn and held
    assert trainer.sampler.position == 4
    resume = PromptSampler([{"id": i} for i in range(6)], 2, seed=0, shuffle=False)
    resume.load_state_dict(trainer._sampler_resume_state())
    assert [r["id"] for r in resume.next_batch()] == [2, 3]
    trainer._finish_overlap()


def test_a_stop_or_the_last_epoch_collects_nothing_ahead(tmp_path):
    trainer = _trainer(tmp_path, "trainer.max_steps=5")
    trainer._stop = types.SimpleNamespace(requested=True)
    _steps(trainer, 1)
    assert trainer.events == [("collect", 0, [0, 1]), ("train", [0, 1], False), ("refit",)]
    assert trainer._prefetched is None and trainer._sampler_resume_state()["position"] == 2

    trainer = _trainer(tmp_path, "trainer.max_steps=5", "trainer.max_epochs=1")
    _steps(trainer, 2)
    assert not trainer._epochs_done()  # step 3's batch (4, 5) is held: the pass is not trained on yet
    _steps(trainer, 1, first=2)
    # The third batch ends the pass over the 6 prompts: nothing of a second pass is drawn.
    assert [e for e in trainer.events if e[0] == "collect"][-1] == ("collect", 2, [4, 5])
    assert trainer._epochs_done() and trainer._prefetched is None
    trainer._finish_overlap()


def test_a_failed_collection_stops_the_step_that_waits_for_it(tmp_path):
    trainer = _trainer(tmp_path, "trainer.max_steps=3")
    collect = trainer._collect_rollouts

    def failing(step):
        if step == 1:
            trainer.collect_started.set()
            raise RuntimeError("engine-0 died")
        return collect(step)

    trainer._collect_rollouts = failing
    with pytest.raises(RuntimeError, match="engine-0 died"):
        _steps(trainer, 1)
    assert trainer.events == [("collect", 0, [0, 1]), ("train", [0, 1], True)]  # no refit after the failure
    trainer._finish_overlap()  # the failed future is done: nothing to wait for

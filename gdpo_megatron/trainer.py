"""The driver loop: one GDPO (or GRPO, ...) training run, resumable and observable.

One step:
  sample prompts -> generate n rollouts each (prompts split in contiguous slices over the
  engine actors) -> score K rewards (reward actor) -> [dynamic sampling: drop zero-variance
  groups, over-sample to refill] -> [group filter (GFPO): keep each group's best k
  rollouts] -> [colocated: engines sleep] -> shard rollouts over data-parallel ranks -> on
  every policy rank: advantage stage over the DP group, old/reference logprobs, optimizer
  steps -> [colocated: engines wake their weights] -> refit every engine -> [colocated:
  engines wake their KV cache] -> log, checkpoint.
The driver moves prompts, token ids and reward rows; per-token tensors of the whole
batch never exist here.

With trainer.overlap_generation the next step's rollouts are generated and scored (in a
driver thread) while this step's policy update runs, from the weights before that update;
the refit waits for them, so each step trains on rollouts one update old.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


import numpy as np
import torch

from gdpo_megatron.config.recipe import RecipeConfig, recipe_to_yaml
from gdpo_megatron.config.schema import to_dict
from gdpo_megatron.data.sampler import completed_passes
from gdpo_megatron.metrics.keys import (ADVANTAGES, POLICY, REWARDS, TRAINER, VALIDATION, check, disjoint_union,
                                        is_number, merge)
from gdpo_megatron.rollout_batch import informative_groups, shard_rollouts


@dataclass
class StepBatch:
    """Everything one step generated and scored, in global rollout order."""

    records: list[dict] = field(default_factory=list)  # one per rollout
    prompt_ids: list[list[int]] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    engine_logprobs: list[list[float]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    group_ids: list[int] = field(default_factory=list)
    rewards: torch.Tensor | None = None

    def extend(self, other: "StepBatch") -> None:
        for f in dataclasses.fields(self):
            if f.name != "rewards":
                getattr(self, f.name).extend(getattr(other, f.name))
        self.rewards = other.rewards if self.rewards is None else torch.cat([self.rewards, other.rewards])

    def select(self, keep: list[int]) -> "StepBatch":
        out = StepBatch()
        for f in dataclasses.fields(self):
            if f.name != "rewards":
                values = getattr(self, f.name)
                setattr(out, f.name, [values[i] for i in keep])
        out.rewards = self.rewards[keep]
        return out


@dataclass
class CollectedRollouts:
    """One step's scored rollouts, what collecting them reported, and the sampler before they were drawn."""

    batch: StepBatch
    reports: list[dict[str, float]]  # per sampling round: times, reward counters (merged by the step)
    seconds: float  # generation + rewards + resampling, wall
    sampler_state: dict  # a checkpoint taken before this batch is trained resumes from here and redraws it


def step_seed(run_seed: int, step: int, round_: int = 0) -> int:
    """Sampling seed of a step: a pure function of the run seed, so a resumed run repeats it."""
    return (run_seed * 1_000_003 + step * 101 + round_) % (2**31 - 1)


def response_length_metrics(batch: StepBatch, max_new_tokens: int) -> dict[str, float]:
    lengths = torch.tensor([len(r) for r in batch.response_ids], dtype=torch.float64)
    truncated = sum(reason == "length" for reason in batch.finish_reasons)
    return {
        "response_len/mean": lengths.mean().item(),
        "response_len/max": lengths.max().item(),
        "response_len/min": lengths.min().item(),
        "response_len/clip_frac": truncated / max(1, len(batch.finish_reasons)),
        "response_len/limit": float(max_new_tokens),
    }


def reward_metrics(rewards: torch.Tensor, specs) -> dict[str, float]:
    """Per-reward means as the advantage stage sees them (conditions applied), and their weighted sum.

    A conditioned reward also reports `raw_mean`, its value before the gate (GDPO Eq. 8).
    Missing values (NaN) are left out of each mean and count as 0 in the combined reward.
    """
    from gdpo_megatron.algorithms.advantages import apply_reward_conditions

    conditioned = apply_reward_conditions(rewards, specs)

    def nanmean(column: torch.Tensor) -> float:
        valid = ~torch.isnan(column)
        return column[valid].mean().item() if valid.any() else float("nan")

    out = {}
    for k, spec in enumerate(specs):
        out[f"reward/{spec.name}/mean"] = nanmean(conditioned[:, k])
        if spec.condition is not None:
            out[f"reward/{spec.name}/raw_mean"] = nanmean(rewards[:, k])
    weights = torch.tensor([spec.weight for spec in specs], dtype=conditioned.dtype)
    out["reward/combined/mean"] = (torch.nan_to_num(conditioned, nan=0.0) @ weights).mean().item()
    return out


class Trainer:
    """Owns the workers of one run and drives the steps. Use `run()`; it returns an exit code."""

    def __init__(self, recipe: RecipeConfig, run_dir: Path, log=print) -> None:
        self.recipe = recipe
        self.log = log
        from gdpo_megatron.run_dir import RunDir

        self.run_dir = RunDir.create(run_dir)
        self.workers: list = []
        self.engines: list = []  # one Ray actor per engine, in engine-index order
        self.rewarder = None
        self.placement = None
        self.worker_nodes: dict[str, str] = {}  # actor name -> node address, for failure messages
        self._overlap: ThreadPoolExecutor | None = None  # trainer.overlap_generation's collector thread
        self._pending: Future | None = None  # the next step's collection, in flight
        self._prefetched: CollectedRollouts | None = None  # ... finished, not yet trained on
        self._stop = None  # the run's GracefulStop: a step that will be the last collects nothing ahead

    # ---------------------------------------------------------------- set-up
    def _initial_model(self) -> str:
        """The HF checkpoint every worker starts from: the recipe's, or a fresh warm-started one."""
        if not self.recipe.warmstart.enabled:
            if not self.recipe.policy.model.hf_path:
                from gdpo_megatron.config import ConfigError

                raise ConfigError("policy.model.hf_path: required unless warmstart.enabled is true")
            from gdpo_megatron.conversion.smollm2 import resolve_model_dir

            return resolve_model_dir(self.recipe.policy.model.hf_path)
        from gdpo_megatron.data import render_prompt
        from gdpo_megatron.data.synthetic import build_tokenizer, warmstart_examples
        from gdpo_megatron.warmstart import Demonstration, run_warmstart

        model = self.recipe.policy.model
        if self.recipe.data.task == "tool_calling" and model.hf_path:
            # Fine-tune the recipe's model on reference calls of training records (its own tokenizer).
            from transformers import AutoTokenizer

            from gdpo_megatron.conversion.smollm2 import resolve_model_dir
            from gdpo_megatron.data import load_prompt_dataset
            from gdpo_megatron.data.demonstrations import tool_calling_demonstrations

            model = dataclasses.replace(model, hf_path=resolve_model_dir(model.hf_path))
            tokenizer = AutoTokenizer.from_pretrained(model.hf_path)
            records = list(load_prompt_dataset(self.recipe.data, "train", self.recipe.seed, tokenizer=tokenizer))
            demos = [Demonstration(render_prompt(record, tokenizer), response) for record, response in
                     tool_calling_demonstrations(records, self.recipe.warmstart.num_examples, self.recipe.seed)]
        elif self.recipe.data.task == "synthetic":
            tokenizer = build_tokenizer()
            examples = warmstart_examples(self.recipe.warmstart.num_examples, self.recipe.seed, **self.recipe.data.args)
            demos = [Demonstration(render_prompt(e["record"], tokenizer), e["response"]) for e in examples]
        else:
            from gdpo_megatron.config import ConfigError

            raise ConfigError(f"warmstart.enabled: demonstrations exist for the synthetic task and for tool calling "
                              f"from policy.model.hf_path, not data.task={self.recipe.data.task!r}")
        return str(run_warmstart(model, self.recipe.warmstart, tokenizer, demos,
                                 self.run_dir.root / "initial_model", self.recipe.seed, log=self.log))

    def _start_workers(self, model_path: str) -> None:
        """One actor per engine, per policy rank and for the rewards, each where the placement plan says.

        Colocated engines start (and profile their memory) first and go to sleep before any
        policy rank allocates, so vLLM never sizes its cache against a half-built policy.
        The policy's rendezvous is rank 0's node address and a port free on that node.
        """
        import ray

        from gdpo_megatron.orchestration.cluster import placement_for
        from gdpo_megatron.orchestration.failures import get_all
        from gdpo_megatron.orchestration.generation_worker import GenerationWorker
        from gdpo_megatron.orchestration.reward_worker import RewardWorker

        data = to_dict(self.recipe)
        data["policy"]["model"]["hf_path"] = model_path
        self.placement = plan = placement_for(self.recipe)
        engine_actor = ray.remote(GenerationWorker)
        for index in range(plan.num_engines):
            name = f"engine-{index}"
            self.worker_nodes[name] = plan.node_of_engine(index)
            self.engines.append(engine_actor.options(**plan.engine_options(index), name=name).remote(
                data, model_path, plan.engine_env(index)))
        engines_ready = [(f"engine-{i}", engine.where.remote()) for i, engine in enumerate(self.engines)]
        if self.colocated:
            self.engine_places = list(get_all(engines_ready, None, nodes=self.worker_nodes).values())
            self._log_engine_memory(self._engine_calls("sleep", self.recipe.generation.sleep_level))
        self.workers = self._start_policy_ranks(plan, data)
        self.rewarder = ray.remote(RewardWorker).options(**plan.reward_options(), name="rewards").remote(data)
        self.worker_nodes["rewards"] = plan.node_addresses[0] if plan.node_addresses else ""
        master_addr, master_port = get_all([("policy-rank0", self.workers[0].rendezvous_address.remote())], None,
                                           nodes=self.worker_nodes)["policy-rank0"]
        self.rendezvous = (master_addr, master_port)
        setups = [(f"policy-rank{r}", w.setup.remote(master_addr, master_port)) for r, w in enumerate(self.workers)]
        # The reward worker's start-up runs each code reward's sandbox once: a host that cannot
        # run it stops training here, not as NaN rewards on every rollout.
        results = get_all(setups + [("rewards", self.rewarder.ready.remote())], None, nodes=self.worker_nodes)
        self.policy_places = [results[name] for name, _ in setups]
        if not self.colocated:
            self.engine_places = list(get_all(engines_ready, None, nodes=self.worker_nodes).values())
        self.layouts = ray.get([w.layout.remote() for w in self.workers])
        self.dp_size = self.layouts[0]["dp_size"]

    def _log_engine_memory(self, asleep: list[dict]) -> None:
        """What the GPUs of asleep engines still hold (GPU engines only: CPU engines report nothing)."""
        used = [r.get("device_used_bytes") for r in asleep]
        if any(used):
            self.log("[engines] asleep before the policy starts; GPU memory in use per engine worker: "
                     + "; ".join(f"engine-{i} " + ", ".join(f"{b / 2**30:.1f} GiB" for b in u)
                                 for i, u in enumerate(used) if u))

    def _start_policy_ranks(self, plan, data: dict) -> list:
        """One actor per policy rank in its bundle (created, not yet joined to the process group)."""
        import ray

        from gdpo_megatron.orchestration.policy_worker import PolicyWorker

        world = plan.policy_world_size
        policy_actor = ray.remote(PolicyWorker)
        workers = []
        for rank in range(world):
            name = f"policy-rank{rank}"
            self.worker_nodes[name] = plan.node_of_policy(rank)
            workers.append(policy_actor.options(**plan.policy_options(rank), name=name).remote(data, rank, world))
        return workers

    @property
    def colocated(self) -> bool:
        """Engines share the policy's devices and sleep while it trains (vLLM backend only)."""
        return self.recipe.generation.colocated and self.recipe.generation.backend == "vllm"

    def _engine_calls(self, method: str, *args) -> list:
        """Call `method` on every engine at once and wait for all (a dead one is named)."""
        from gdpo_megatron.orchestration.failures import get_all

        calls = [(f"engine-{i}", getattr(engine, method).remote(*args)) for i, engine in enumerate(self.engines)]
        return list(get_all(calls, getattr(self, "step", None), nodes=self.worker_nodes).values())

    def _log_placement(self) -> None:
        """Where every actor runs (Ray's own report), in the log and in <run_dir>/placement.json."""
        import json

        record = {"rendezvous": {"address": self.rendezvous[0], "port": self.rendezvous[1]},
                  "node_addresses": list(self.placement.node_addresses),
                  "plan": self.placement.shape.to_dict(),
                  "policy": self.policy_places, "engines": self.engine_places}
        (self.run_dir.root / "placement.json").write_text(json.dumps(record, indent=2))
        for name, places in (("policy-rank", self.policy_places), ("engine-", self.engine_places)):
            for i, place in enumerate(places):
                gpus = f" GPU {','.join(place['gpu_ids'])} (device {place['device_index']})" if place["gpu_ids"] else ""
                self.log(f"[placement] {name}{i} on {place['node_ip']}{gpus}")
        self.log(f"[placement] policy rendezvous at {self.rendezvous[0]}:{self.rendezvous[1]}")

    def _sleep_engines(self) -> float:
        """Put every engine to sleep at the recipe's level; returns the seconds it took."""
        start = time.perf_counter()
        self._engine_calls("sleep", self.recipe.generation.sleep_level)
        return time.perf_counter() - start

    def _wake_engines(self, tags: list[str]) -> float:
        """Wake `tags` ("weights", "kv_cache") on every engine; returns the seconds it took."""
        start = time.perf_counter()
        self._engine_calls("wake", tags)
        return time.perf_counter() - start

    def _generate_rollouts(self, prompts: list[list[int]], seed: int, n: int | None = None,
                           step: int | None = None) -> list:
        """Contiguous slices of `prompts` over the engines (a function of num_engines only), results in order.

        `step` names the step in failure messages (default: the one running; overlap collects the next).
        """
        from gdpo_megatron.orchestration.failures import get_all
        from gdpo_megatron.partition import even_ranges

        calls = [(f"engine-{i}", self.engines[i].generate.remote(prompts[start:end], seed, n, start))
                 for i, (start, end) in enumerate(even_ranges(len(prompts), len(self.engines))) if end > start]
        results = get_all(calls, self.step if step is None else step, nodes=self.worker_nodes)
        return [rollout for name, _ in calls for rollout in results[name]]

    # ---------------------------------------------------------------- validation
    def _validate(self, step: int) -> dict[str, float]:
        """One sample per held-out prompt with the training sampling settings, scored like `gdpo eval`."""
        from gdpo_megatron.data import render_prompt
        from gdpo_megatron.evaluation import evaluate_responses

        records = self.val_records
        prompts = [self.tokenizer(render_prompt(r, self.tokenizer), add_special_tokens=False)["input_ids"]
                   for r in records]
        seed = step_seed(self.recipe.seed + 1, step)  # held-out draws never reuse training seeds
        rollouts = self._generate_rollouts(prompts, seed, 1)
        result = evaluate_responses(self.recipe.data.task, records, [r.text for r in rollouts],
                                    num_tokens=[len(r.token_ids) for r in rollouts])
        metrics = {f"val/{key}": float(value) for key, value in result.items() if is_number(value)}
        check(metrics, {VALIDATION})
        return metrics

    # ---------------------------------------------------------------- one step
    def _generate(self, records: list[dict], step: int, round_: int, group_offset: int,
                  reports: list[dict[str, float]]) -> StepBatch:
        import ray

        from gdpo_megatron.data import render_prompt

        prompts = [self.tokenizer(render_prompt(r, self.tokenizer), add_special_tokens=False)["input_ids"]
                   for r in records]
        start = time.perf_counter()
        rollouts = self._generate_rollouts(prompts, step_seed(self.recipe.seed, step, round_), step=step)
        reports.append({"time/generation": time.perf_counter() - start})
        batch = StepBatch()
        for rollout in rollouts:
            batch.records.append(records[rollout.prompt_index])
            batch.prompt_ids.append(list(rollout.prompt_token_ids))
            batch.response_ids.append(list(rollout.token_ids))
            batch.texts.append(rollout.text)
            batch.engine_logprobs.append(list(rollout.logprobs))
            batch.finish_reasons.append(rollout.finish_reason)
            batch.group_ids.append(group_offset + rollout.prompt_index)
        start = time.perf_counter()
        values, metrics = ray.get(self.rewarder.score.remote(
            batch.records, batch.texts, [len(r) for r in batch.response_ids]))
        reports.append({"time/rewards": time.perf_counter() - start})
        check(metrics, {REWARDS})
        reports.append(metrics)
        batch.rewards = values
        return batch

    def _collect_rollouts(self, step: int) -> CollectedRollouts:
        """Draw, generate and score step `step`'s rollouts (in the driver thread or the overlap thread)."""
        state = self.sampler.state_dict()
        reports: list[dict[str, float]] = []
        start = time.perf_counter()
        batch = self._collect(step, reports)
        return CollectedRollouts(batch, reports, time.perf_counter() - start, state)

    def _collect(self, step: int, reports: list[dict[str, float]]) -> StepBatch:
        """Generate and score one step's rollouts; with dynamic sampling, refill dropped groups."""
        from gdpo_megatron.algorithms.advantages import apply_reward_conditions

        cfg = self.recipe.trainer
        wanted = cfg.prompts_per_step
        batch = self._generate(self.sampler.next_batch(), step, 0, 0, reports)
        if not cfg.dynamic_sampling.enabled:
            return batch
        kept, dropped, groups_seen = StepBatch(), 0, wanted
        round_ = 0
        while True:
            # Judge groups on the rewards the advantage stage sees: a gated reward that varies
            # only where its gate is closed carries no signal.
            conditioned = apply_reward_conditions(batch.rewards, self.recipe.algorithm.rewards)
            informative = informative_groups(conditioned, torch.tensor(batch.group_ids))
            unique = sorted(set(batch.group_ids))
            good = {g for g, ok in zip(unique, informative.tolist()) if ok}
            dropped += len(unique) - len(good)
            keep = [i for i, g in enumerate(batch.group_ids) if g in good]
            kept.extend(batch.select(keep))
            have = len(set(kept.group_ids))
            round_ += 1
            if have >= wanted or round_ > cfg.dynamic_sampling.max_resample_rounds:
                break
            batch = self._generate(self.sampler.next_batch(), step, round_, groups_seen, reports)
            groups_seen += wanted
        reports.append({"dynamic_sampling/dropped_groups": float(dropped), "dynamic_sampling/rounds": float(round_)})
        if not kept.response_ids:
            return batch  # nothing informative at all: train on the last batch (zero advantages)
        # Keep exactly `wanted` groups so the batch shape (and the step's cost) stays fixed.
        first = sorted(set(kept.group_ids))[:wanted]
        return kept.select([i for i, g in enumerate(kept.group_ids) if g in set(first)])

    # ---------------------------------------------------------------- group filter (GFPO)
    def _filter_groups(self, batch: StepBatch, metrics: dict[str, float]) -> StepBatch:
        """Keep each group's best k rollouts (algorithm.group_filter); the rest never reach the policy."""
        if not self.recipe.algorithm.group_filter.enabled:
            return batch
        from gdpo_megatron.algorithms.group_filter import filter_groups

        lengths = torch.tensor([len(r) for r in batch.response_ids], dtype=torch.float64)
        result = filter_groups(batch.rewards, torch.tensor(batch.group_ids, dtype=torch.long), lengths,
                               self.recipe.algorithm, self.difficulty)
        metrics.update(result.metrics)
        return batch.select(result.indices)

    def _train(self, batch: StepBatch) -> dict[str, float]:
        rewards = batch.rewards
        trainable = torch.ones(len(batch.response_ids), dtype=torch.bool)
        if self.recipe.trainer.overlong_filtering:
            # Truncated responses keep their rewards in the metrics but get no gradient: their
            # rewards are missing for the advantage stage (advantage 0, left out of the group
            # statistics) and their tokens are masked out of the loss and its normalizers.
            trainable = torch.tensor([reason != "length" for reason in batch.finish_reasons], dtype=torch.bool)
            rewards = rewards.clone()
            rewards[~trainable] = float("nan")
        shards = shard_rollouts(batch.prompt_ids, batch.response_ids, rewards,
                                torch.tensor(batch.group_ids, dtype=torch.long), batch.engine_logprobs, self.dp_size,
                                trainable=trainable)
        from gdpo_megatron.orchestration.failures import get_all

        check_mismatch = self.mismatch_check.due(self.step)
        calls = [(f"policy-rank{layout['rank']}", worker.train_on.remote(shards[layout["dp_rank"]], check_mismatch))
                 for worker, layout in zip(self.workers, self.layouts)]
        metrics = merge(list(get_all(calls, self.step, nodes=self.worker_nodes).values()), {POLICY, ADVANTAGES})
        if check_mismatch:
            metrics.update(self.mismatch_check.judge(self.step + 1, metrics, warn=self.log))
        return metrics

    def _refit(self) -> dict[str, float]:
        from gdpo_megatron.orchestration.refit import create_refitter

        start = time.perf_counter()
        if getattr(self, "_refitter", None) is None:  # the first refit (at start-up) sets the transport up
            self._refitter = create_refitter(self.recipe, self.workers, self.engines)
            self.log(f"[refit] transport {self._refitter.name} "
                     f"(generation.refit.transport: {self.recipe.generation.refit.transport})")
        metrics = self._refitter.refit()
        metrics["time/refit"] = time.perf_counter() - start
        return metrics

    def _refit_engines(self) -> dict[str, float]:
        """Refit every engine; colocated engines wake their weights first and their KV cache after."""
        wake_seconds = self._wake_engines(["weights"]) if self.colocated else 0.0
        metrics = self._refit()
        if self.colocated:
            metrics["time/engine_wake"] = wake_seconds + self._wake_engines(["kv_cache"])
        return metrics

    # ---------------------------------------------------------------- checkpoints
    def _save(self, step: int, metrics: dict[str, Any]) -> float:
        """Write the checkpoint of `step`, holding the step's record; returns the seconds it took."""
        import ray

        from gdpo_megatron.checkpointing import RunState, capture_rng_state, write_run_state
        from gdpo_megatron.metrics.jsonl import make_record

        def write(path: Path) -> None:
            ray.get([w.save_checkpoint.remote(str(path / "policy")) for w in self.workers])
            state = RunState(step=step, config_hash=self.config_hash, sampler_state=self._sampler_resume_state(),
                             consecutive_nan_skips=self.nan_skips_in_a_row, step_record=make_record(step, metrics))
            if self.difficulty is not None:
                state.extra["group_filter_difficulty"] = self.difficulty.state_dict()
            write_run_state(path, state, capture_rng_state())

        start = time.perf_counter()
        self.checkpoints.save(step, write)
        seconds = time.perf_counter() - start
        self.log(f"[checkpoint] step {step} saved in {seconds:.1f}s")
        return seconds

    def _resume(self, latest) -> int:
        """Load `latest` (a complete checkpoint, or None for a fresh run); return the next step."""
        import ray

        from gdpo_megatron.checkpointing import check_config_hash, read_run_state, restore_rng_state

        if latest is None:
            return 0
        state, rng = read_run_state(latest.path)
        check_config_hash(state, self.config_hash, latest.path)
        ray.get([w.load_checkpoint.remote(str(latest.path / "policy")) for w in self.workers])
        self.sampler.load_state_dict(state.sampler_state)
        restore_rng_state(rng)
        self.nan_skips_in_a_row = state.consecutive_nan_skips
        if self.difficulty is not None:
            self.difficulty.load_state_dict(state.extra["group_filter_difficulty"])
        self.log(f"[resume] from step {state.step} ({latest.path})")
        self.resumed_record = state.step_record
        return state.step

    # ---------------------------------------------------------------- the loop
    def run(self) -> int:
        import ray
        from transformers import AutoTokenizer

        from gdpo_megatron.checkpointing import CheckpointManager, config_hash, resolve_resume
        from gdpo_megatron.data import PromptSampler, load_prompt_dataset
        from gdpo_megatron.metrics import MetricsLogger
        from gdpo_megatron.orchestration.cluster import RayCluster
        from gdpo_megatron.orchestration.failures import worker_failures
        from gdpo_megatron.signals import INTERRUPTED_EXIT_CODE, GracefulStop

        cfg = self.recipe.trainer
        self.checkpoints = CheckpointManager(self.run_dir.checkpoints, keep_last=cfg.checkpoint.keep_last,
                                             fsync=cfg.checkpoint.fsync)
        self.config_hash = config_hash(to_dict(self.recipe))
        latest = resolve_resume(self.checkpoints, cfg.resume)  # refuse a conflicting run dir before touching it
        self.run_dir.config.write_text(recipe_to_yaml(self.recipe))
        torch.manual_seed(self.recipe.seed)
        random.seed(self.recipe.seed)
        np.random.seed(self.recipe.seed % 2**32)
        model_path = self._initial_model()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        dataset = load_prompt_dataset(self.recipe.data, "train", self.recipe.seed, tokenizer=self.tokenizer)
        self.sampler = PromptSampler(dataset, cfg.prompts_per_step, seed=self.recipe.seed, shuffle=self.recipe.data.shuffle)
        validation = cfg.validation
        if validation.every_steps or validation.at_start:
            val_set = load_prompt_dataset(self.recipe.data, "val", self.recipe.seed, tokenizer=self.tokenizer)
            self.val_records = list(val_set)[: validation.num_prompts]
        self.nan_skips_in_a_row = 0
        self.difficulty = None  # the adaptive group filter's running statistics (checkpointed)
        self.resumed_record = None  # the record held by the checkpoint a resume starts from
        adaptive = self.recipe.algorithm.group_filter.adaptive
        if adaptive is not None:
            from gdpo_megatron.algorithms.group_filter import DifficultyTracker

            self.difficulty = DifficultyTracker(adaptive.window)
        # trainer.overlap_generation: one thread collects the next step's rollouts during the update.
        self._overlap = ThreadPoolExecutor(1, thread_name_prefix="rollouts") if cfg.overlap_generation else None
        self._pending, self._prefetched = None, None
        from gdpo_megatron.generation.mismatch import MismatchCheck

        self.mismatch_check = MismatchCheck.from_config(self.recipe.generation.mismatch_check,
                                                        one_update_behind=cfg.overlap_generation)
        self.step = 0
        signals = (signal.SIGTERM, signal.SIGINT) if cfg.checkpoint.save_on_signal else ()
        with RayCluster(self.run_dir.ray), GracefulStop(signals) as stop, \
                worker_failures(lambda: self.step, nodes=self.worker_nodes):
            self._stop = stop
            self._start_workers(model_path)
            self._log_placement()
            self.step = step = self._resume(latest)
            metrics_log = MetricsLogger(self.run_dir.root, total_steps=cfg.max_steps, logging_config=cfg.logging,
                                        run_name=self.recipe.name, resume_from_step=step or None,
                                        config=to_dict(self.recipe))
            if step and self.resumed_record is not None and metrics_log.last_step() != step:
                # Killed between the checkpoint and its record: the checkpoint holds the record.
                metrics_log.log(step, {k: v for k, v in self.resumed_record.items() if k != "step"})
                self.log(f"[resume] step {step}'s metrics record restored from its checkpoint")
            try:
                self._refit_engines()  # the engines serve exactly the policy's weights from the first step on
                while step < cfg.max_steps and not self._epochs_done():
                    before = self._validate(step) if validation.at_start and step == 0 else {}
                    metrics = self._step(step)
                    metrics.update({key.replace("val/", "val_at_start/", 1): v for key, v in before.items()})
                    self.step = step = step + 1
                    if validation.every_steps and step % validation.every_steps == 0:
                        metrics.update(self._validate(step))
                    nan_stop = self._too_many_nan_skips(metrics)
                    every = cfg.checkpoint.every_steps
                    finished = step == cfg.max_steps or self._epochs_done()
                    saved = nan_stop or bool(every and step % every == 0) or finished or stop.requested
                    if saved:
                        # Saved before the step's record is written, so that the record holds its time.
                        metrics["time/checkpoint"] = self._save(step, metrics)
                        check(["time/checkpoint"], {TRAINER})
                    metrics_log.log(step, metrics)
                    if nan_stop:
                        self.log(f"[stop] {self.nan_skips_in_a_row} consecutive non-finite updates "
                                 f"(trainer.max_consecutive_nan_skips={cfg.max_consecutive_nan_skips}); "
                                 f"saved step {step}; inspect {self.run_dir.metrics}")
                        return 3
                    # A signal that arrives after the save decision stops the run after the next step's save.
                    if saved and stop.requested and not finished:
                        self.log(f"[stop] {stop.signal_name}: checkpointed step {step}; "
                                 f"rerun the same command to resume")
                        return INTERRUPTED_EXIT_CODE
            finally:
                try:
                    self._finish_overlap()
                finally:
                    metrics_log.close()
            ray.get([w.save_hf.remote(str(self.run_dir.root / "final_model")) for w in self.workers])
        self.log(f"[done] {step} steps; metrics in {self.run_dir.metrics}; "
                 f"final weights (HF format) in {self.run_dir.root / 'final_model'}")
        return 0

    def _step(self, step: int) -> dict[str, float]:
        from gdpo_megatron.metrics import rss_gb

        start = time.perf_counter()
        rollouts, self._prefetched = self._prefetched or self._collect_rollouts(step), None
        batch = rollouts.batch
        rounds = merge(rollouts.reports, {REWARDS, TRAINER})  # counters and times add up over rounds
        metrics = reward_metrics(batch.rewards, self.recipe.algorithm.rewards)
        metrics.update(response_length_metrics(batch, self.recipe.generation.sampling.max_new_tokens))
        metrics["data/epoch"] = float(completed_passes(self.sampler.state_dict()))  # before the next draw
        batch = self._filter_groups(batch, metrics)  # GFPO: the metrics above saw every rollout
        if self.colocated:
            metrics["time/engine_sleep"] = self._sleep_engines()
        if self._overlap is not None and not self._last_step(step):
            # The engines still hold the weights this step's update starts from.
            self._pending = self._overlap.submit(self._collect_rollouts, step + 1)
        train_start = time.perf_counter()
        trained = self._train(batch)
        train_seconds = time.perf_counter() - train_start
        if self._overlap is not None:
            wait_start = time.perf_counter()
            if self._pending is not None:
                # The refit must not change the weights under a generation; a failed collection raises here.
                self._pending, self._prefetched = None, self._pending.result()
            metrics["time/rollout_wait"] = time.perf_counter() - wait_start
        refit = self._refit_engines()
        step_seconds = time.perf_counter() - start
        tokens = sum(len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids))
        metrics.update({
            "time/rollout": rollouts.seconds, "time/train": train_seconds, "time/step": step_seconds,
            "throughput/tokens_per_s": tokens / step_seconds, "samples": float(len(batch.response_ids)),
            "memory/driver_rss_gb": rss_gb(),
        })
        check(metrics, {TRAINER})
        check(refit, {TRAINER})
        return disjoint_union(metrics, rounds, trained, refit)

    def _epochs_reached(self, sampler_state: dict) -> bool:
        """`trainer.max_epochs` full passes over the training prompts are drawn up to `sampler_state`."""
        max_epochs = self.recipe.trainer.max_epochs
        return bool(max_epochs) and completed_passes(sampler_state) >= max_epochs

    def _epochs_done(self) -> bool:
        """`trainer.max_epochs` full passes over the training prompts have been trained on."""
        return self._epochs_reached(self._sampler_resume_state())

    def _last_step(self, step: int) -> bool:
        """Whether the run ends after `step` whatever its update does (no next step's rollouts to collect)."""
        stopping = self._stop is not None and self._stop.requested
        return (step + 1 >= self.recipe.trainer.max_steps or stopping
                or self._epochs_reached(self.sampler.state_dict()))

    def _sampler_resume_state(self) -> dict:
        """The sampler as a checkpoint keeps it: before any rollouts drawn but not yet trained on.

        A run resumed from it draws those prompts again with the same seeds, from the checkpoint's
        weights (with trainer.overlap_generation the lost batch came from the weights one update older).
        """
        return self._prefetched.sampler_state if self._prefetched is not None else self.sampler.state_dict()

    def _finish_overlap(self) -> None:
        """Let an in-flight collection end before the workers go (a run stopped by an error or at max_epochs)."""
        if self._overlap is None:
            return
        if self._pending is not None:
            self._pending.exception()  # waits; its error, if any, is not the one being raised
            self._pending = None
        self._overlap.shutdown(wait=True)

    def _too_many_nan_skips(self, metrics: dict[str, float]) -> bool:
        if metrics.get("train/skipped", 0.0) > 0:
            self.nan_skips_in_a_row += 1
        else:
            self.nan_skips_in_a_row = 0
        return self.nan_skips_in_a_row > self.recipe.trainer.max_consecutive_nan_skips

"""Check a recipe's layout and memory against its cluster; say what to change when it does not fit.

`make_plan(recipe)` never raises for a plan that does not fit: it returns a `Plan` whose
`findings` carry the reasons (severity "error") and concrete suggestions; `plan.fits` is
False then. Only an unresolvable model (no catalog entry, no config.json, no sizes)
raises ConfigError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import dataclasses

from gdpo_megatron.config.policy import ParallelConfig
from gdpo_megatron.config.recipe import RecipeConfig
from gdpo_megatron.model_catalog import VOCAB_WHEN_UNSET, ModelArch, resolve_arch
from gdpo_megatron.parallel_layout import layout_problems, stage_layer_counts, world_problems

from .gpus import GpuKind, gpu_kind
from .memory import GIB, RUNTIME_RESERVE_GIB, EngineMemory, TrainingLayout, TrainingMemory, engine_memory, training_memory

TP_CHOICES = (1, 2, 4, 8, 16)
# Below this many concurrent full-length sequences per engine, decoding is badly under-batched.
LOW_CONCURRENCY = 8


@dataclass(frozen=True)
class Finding:
    severity: str          # "error" (does not run / does not fit) or "warning" (runs, but wasteful or risky)
    key: str               # the recipe key to look at
    message: str
    suggestion: str = ""

    def __str__(self) -> str:
        text = f"{self.severity}: {self.key}: {self.message}"
        return f"{text}; suggestion: {self.suggestion}" if self.suggestion else text


@dataclass
class Layout:
    total_devices: int
    policy_devices: int
    generation_devices: int
    tensor: int
    pipeline: int
    data: int
    engines: int
    engine_tensor: int
    colocated: bool
    seq_length: int
    samples_per_step: int  # rollouts trained on per step (with a group filter: prompts x the largest k)
    microbatches: int
    generated_per_step: int = 0  # rollouts sampled per step (prompts x G'); 0: same as samples_per_step


@dataclass
class Plan:
    recipe: str
    model: str
    params: int
    device: str
    device_gib: Optional[float]
    layout: Layout
    training: Optional[TrainingMemory]
    engine: Optional[EngineMemory]
    findings: list[Finding] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def peak_bytes(self) -> dict[str, float]:
        """Per-GPU peak of each phase. Colocated engines sleep (weights and KV released) while training."""
        peaks: dict[str, float] = {}
        if self.training is not None:
            peaks["training"] = self.training.total
        if self.engine is not None and self.training is not None and self.layout.colocated:
            peaks["generation"] = self.training.resident + self.training.reserve + self.engine.budget
        elif self.engine is not None:
            peaks["generation"] = self.engine.budget + RUNTIME_RESERVE_GIB * GIB
        return peaks

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe, "model": self.model, "params": self.params,
            "device": self.device, "device_gib": self.device_gib, "fits": self.fits,
            "layout": vars(self.layout),
            "training_bytes": self.training.to_dict() if self.training else None,
            "engine_bytes": self.engine.to_dict() if self.engine else None,
            "peak_bytes": self.peak_bytes(),
            "findings": [vars(f) for f in self.findings],
        }


def _training_layout(recipe: RecipeConfig, tensor: int, pipeline: int, data: int, recompute: bool,
                     microbatches: int, stage_layers: Optional[tuple[int, ...]] = None) -> TrainingLayout:
    policy = recipe.policy
    return TrainingLayout(
        tensor=tensor, pipeline=pipeline, data=max(1, data),
        micro_batch_size=policy.micro_batch_size,
        seq_length=recipe.data.max_prompt_tokens + recipe.generation.sampling.max_new_tokens,
        num_microbatches=max(1, microbatches),
        dtype=policy.precision.dtype, fp8_params=policy.precision.fp8_params,
        distributed_optimizer=policy.optimizer.distributed, recompute=recompute,
        sequence_parallel=policy.parallel.sequence_parallel and tensor > 1,
        virtual_pipeline=policy.parallel.virtual_pipeline, stage_layers=stage_layers)


def _microbatches(recipe: RecipeConfig, data: int) -> int:
    trainer = recipe.trainer
    per_rank = _trained_per_step(recipe) // trainer.mini_batches_per_step // max(1, data)
    return max(1, per_rank // recipe.policy.micro_batch_size)


def _trained_per_step(recipe: RecipeConfig) -> int:
    """Rollouts the policy trains on per step: the group filter keeps at most k of the G' sampled."""
    trainer = recipe.trainer
    return trainer.prompts_per_step * recipe.algorithm.group_filter.max_retained(trainer.rollouts_per_prompt)


def _layout_findings(recipe: RecipeConfig, arch: ModelArch, layout: Layout, per_node: int) -> list[Finding]:
    out: list[Finding] = []
    par = recipe.policy.parallel
    tp, pp = layout.tensor, layout.pipeline
    gen = recipe.generation

    if per_node == 0:
        pass  # CPU host: engines and workers share the host's cores; no device accounting
    elif not layout.colocated and layout.policy_devices <= 0:
        out.append(Finding("error", "generation.num_engines",
                           f"separate engines take {layout.generation_devices} of {layout.total_devices} devices, "
                           "none are left for the policy",
                           "set generation.colocated=true or lower generation.num_engines"))
        return out
    elif layout.colocated and layout.generation_devices > layout.total_devices:
        out.append(Finding("error", "generation.num_engines",
                           f"{gen.num_engines} engines x tensor_parallel {gen.tensor_parallel} = "
                           f"{layout.generation_devices} devices, but the cluster has {layout.total_devices}",
                           f"set generation.num_engines={max(1, layout.total_devices // gen.tensor_parallel)}"))
    elif layout.colocated and layout.generation_devices < layout.total_devices:
        out.append(Finding("warning", "generation.num_engines",
                           f"engines use {layout.generation_devices} of {layout.total_devices} devices; the rest idle "
                           "during generation",
                           f"set generation.num_engines={layout.total_devices // gen.tensor_parallel}"))
    if per_node and gen.tensor_parallel > per_node:
        out.append(Finding("error", "generation.tensor_parallel",
                           f"an engine's tensor_parallel {gen.tensor_parallel} spans nodes ({per_node} GPUs per node)",
                           f"set generation.tensor_parallel<={per_node}"))
    if arch.num_attention_heads % gen.tensor_parallel:
        out.append(Finding("error", "generation.tensor_parallel",
                           f"{arch.num_attention_heads} attention heads are not divisible by {gen.tensor_parallel}"))
    elif arch.num_query_groups % gen.tensor_parallel and gen.tensor_parallel % arch.num_query_groups:
        out.append(Finding("error", "generation.tensor_parallel",
                           f"{arch.num_query_groups} KV heads and tensor_parallel {gen.tensor_parallel}: "
                           "one must divide the other"))

    # The model builder's own rules (gdpo_megatron.parallel_layout), so that what the planner
    # accepts is exactly what build_model builds.
    for problem in world_problems(par, layout.policy_devices, "policy device count") + layout_problems(arch, par):
        out.append(Finding("error", problem.key, problem.message, problem.hint))
    if per_node and tp > per_node:
        out.append(Finding("error", "policy.parallel.tensor",
                           f"tensor parallel {tp} spans nodes ({per_node} GPUs per node); TP traffic needs NVLink",
                           f"set policy.parallel.tensor={per_node} and raise policy.parallel.pipeline"))

    trainer = recipe.trainer
    samples = layout.samples_per_step
    mini = samples // trainer.mini_batches_per_step
    if samples % trainer.mini_batches_per_step:
        out.append(Finding("error", "trainer.mini_batches_per_step",
                           f"{samples} rollouts per step (prompts_per_step x "
                           + ("the group filter's largest k" if recipe.algorithm.group_filter.enabled
                              else "rollouts_per_prompt") + ") do not split into "
                           f"{trainer.mini_batches_per_step} mini-batches"))
    elif layout.data and mini % (layout.data * recipe.policy.micro_batch_size):
        out.append(Finding("error", "policy.micro_batch_size",
                           f"a mini-batch of {mini} rollouts does not split over data parallel {layout.data} x "
                           f"micro_batch_size {recipe.policy.micro_batch_size}"))
    if layout.seq_length > arch.max_position_embeddings:
        out.append(Finding("error", "generation.sampling.max_new_tokens",
                           f"prompt ({recipe.data.max_prompt_tokens}) + response "
                           f"({recipe.generation.sampling.max_new_tokens}) = {layout.seq_length} tokens exceed "
                           f"the model's {arch.max_position_embeddings} positions"))
    return out


def make_plan(recipe: RecipeConfig) -> Plan:
    """Layout checks and per-GPU memory for a validated recipe."""
    arch = resolve_arch(recipe.policy.model)
    cluster = recipe.cluster
    gen = recipe.generation
    par = recipe.policy.parallel
    cpu = cluster.gpus_per_node == 0
    per_node = 0 if cpu else cluster.gpus_per_node
    total = cluster.nodes * (cluster.cpu_workers if cpu else cluster.gpus_per_node)
    generation_devices = gen.num_engines * gen.tensor_parallel
    colocated = gen.colocated
    # On a CPU host every worker slot is a policy rank's; separate engines get CPU slots of their own.
    policy_devices = total if colocated or cpu else total - generation_devices
    data = policy_devices // (par.tensor * par.pipeline) if policy_devices > 0 else 0
    layout = Layout(total, policy_devices, generation_devices, par.tensor, par.pipeline, data,
                    gen.num_engines, gen.tensor_parallel, colocated,
                    recipe.data.max_prompt_tokens + gen.sampling.max_new_tokens,
                    _trained_per_step(recipe), _microbatches(recipe, data),
                    recipe.trainer.prompts_per_step * recipe.trainer.rollouts_per_prompt)
    kind: Optional[GpuKind] = None if cpu else gpu_kind(cluster.gpu_type, cluster.gpu_memory_gib)
    plan = Plan(recipe.name, arch.name, arch.total_params(), "CPU" if cpu else kind.name,
                None if cpu else kind.memory_gib, layout, None, None)
    plan.findings.extend(_layout_findings(recipe, arch, layout, per_node))
    model = recipe.policy.model
    if model.vocab_size is None and arch.vocab_size == VOCAB_WHEN_UNSET and not model.hf_path:
        plan.findings.append(Finding("warning", "policy.model.vocab_size",
                                     f"not set (the tokenizer decides at run time); planned with {VOCAB_WHEN_UNSET}"))
    if data == 0:
        return plan

    precision = recipe.policy.precision
    if precision.fp8 and (cpu or not kind.fp8):
        plan.findings.append(Finding("error", "policy.precision.fp8",
                                     f"FP8 needs Hopper-class GPUs and Transformer Engine; {plan.device} has no FP8",
                                     "set policy.precision.fp8=null"))

    stage_layers = None if layout_problems(arch, par) else tuple(stage_layer_counts(arch.num_layers, par))
    train_layout = _training_layout(recipe, par.tensor, par.pipeline, data, recipe.policy.recompute_activations,
                                    layout.microbatches, stage_layers)
    plan.training = training_memory(arch, train_layout)
    if cpu:
        plan.findings.append(Finding("warning", "cluster.gpus_per_node",
                                     "CPU host: memory is host RAM shared by all workers; no device limit checked"))
        return plan

    device_bytes = kind.memory_gib * GIB
    plan.engine = engine_memory(arch, gen.tensor_parallel, device_bytes, gen.gpu_memory_utilization, layout.seq_length)
    _check_training_fits(plan, recipe, arch, device_bytes)
    _check_generation_fits(plan, recipe, arch, device_bytes)
    return plan


def _candidate_parallel(recipe: RecipeConfig, tp: int, pp: int) -> ParallelConfig:
    """The recipe's layout with another tensor/pipeline size (an even split, unless pipeline is unchanged;
    sequence parallel only where tensor > 1, as a suggestion would set it)."""
    par = recipe.policy.parallel
    sequence_parallel = par.sequence_parallel and tp > 1
    if pp == par.pipeline:
        return dataclasses.replace(par, tensor=tp, sequence_parallel=sequence_parallel)
    return dataclasses.replace(par, tensor=tp, pipeline=pp, first_stage_layers=None, last_stage_layers=None,
                               sequence_parallel=sequence_parallel)


def _fits_training(arch: ModelArch, recipe: RecipeConfig, policy_devices: int, tp: int, pp: int,
                   recompute: bool, device_bytes: float) -> bool:
    parallel = _candidate_parallel(recipe, tp, pp)
    if world_problems(parallel, policy_devices) or layout_problems(arch, parallel):
        return False
    data = policy_devices // (tp * pp)
    layout = _training_layout(recipe, tp, pp, data, recompute, _microbatches(recipe, data),
                              tuple(stage_layer_counts(arch.num_layers, parallel)))
    memory = training_memory(arch, layout)
    # A suggestion must also leave room for colocated engines, or it only moves the error.
    engine_budget = recipe.generation.gpu_memory_utilization * device_bytes if recipe.generation.colocated else 0.0
    return memory.total <= device_bytes and memory.resident + memory.reserve + engine_budget <= device_bytes


def _check_training_fits(plan: Plan, recipe: RecipeConfig, arch: ModelArch, device_bytes: float) -> None:
    mem = plan.training
    if mem.total <= device_bytes:
        return
    lay = plan.layout
    per_node = recipe.cluster.gpus_per_node
    recompute = recipe.policy.recompute_activations
    options: list[str] = []
    if not recompute and _fits_training(arch, recipe, lay.policy_devices, lay.tensor, lay.pipeline, True, device_bytes):
        options.append("set policy.recompute_activations=true")
    for tp in TP_CHOICES:
        if lay.tensor < tp <= per_node and _fits_training(arch, recipe, lay.policy_devices, tp, lay.pipeline,
                                                          recompute, device_bytes):
            options.append(f"raise policy.parallel.tensor to {tp}")
            break
    for pp in range(lay.pipeline + 1, arch.num_layers + 1):
        if _fits_training(arch, recipe, lay.policy_devices, lay.tensor, pp, recompute, device_bytes):
            options.append(f"raise policy.parallel.pipeline to {pp}")
            break
    if not options:
        combo = _smallest_fitting_combo(arch, recipe, lay.policy_devices, per_node, device_bytes)
        if combo:
            options.append(f"use policy.parallel.tensor={combo[0]} pipeline={combo[1]} "
                           f"with recompute_activations={str(combo[2]).lower()}")
        else:
            options.append("add nodes or use GPUs with more memory: no layout of "
                           f"{lay.policy_devices} devices fits")
    plan.findings.append(Finding(
        "error", "policy.parallel",
        f"training needs {mem.total / GIB:.1f} GiB per GPU on the {mem.stage} stage "
        f"(weights {mem.weights / GIB:.1f}, grads {mem.gradients / GIB:.1f}, optimizer {mem.optimizer / GIB:.1f}, "
        f"activations {mem.activations / GIB:.1f}, logits {mem.logits / GIB:.1f}, reserve {mem.reserve / GIB:.1f}) "
        f"but a {plan.device} has {device_bytes / GIB:.1f} GiB",
        " or ".join(options)))


def _smallest_fitting_combo(arch: ModelArch, recipe: RecipeConfig, devices: int, per_node: int,
                            device_bytes: float) -> Optional[tuple[int, int, bool]]:
    candidates = []
    for recompute in (False, True):
        for tp in TP_CHOICES:
            if tp > per_node:
                continue
            for pp in range(1, arch.num_layers + 1):
                if _fits_training(arch, recipe, devices, tp, pp, recompute, device_bytes):
                    candidates.append((tp * pp, recompute, tp, pp))
                    break
    if not candidates:
        return None
    _, recompute, tp, pp = min(candidates)
    return tp, pp, recompute


def _check_generation_fits(plan: Plan, recipe: RecipeConfig, arch: ModelArch, device_bytes: float) -> None:
    eng = plan.engine
    gen = recipe.generation
    if eng.sequences < 1:
        sequences = {tp: engine_memory(arch, tp, device_bytes, gen.gpu_memory_utilization, eng.max_model_len).sequences
                     for tp in TP_CHOICES if gen.tensor_parallel < tp <= recipe.cluster.gpus_per_node
                     and arch.num_attention_heads % tp == 0}
        # Prefer a size that batches well over the smallest one that merely starts.
        good = [tp for tp, n in sequences.items() if n >= LOW_CONCURRENCY] or [tp for tp, n in sequences.items() if n >= 1]
        hint = [f"raise generation.tensor_parallel to {good[0]}"] if good else []
        hint.append("raise generation.gpu_memory_utilization")
        plan.findings.append(Finding(
            "error", "generation.gpu_memory_utilization",
            f"a vLLM engine gets {eng.budget / GIB:.1f} GiB per GPU, weights take {eng.weights / GIB:.1f} GiB and "
            f"reserve {eng.reserve / GIB:.1f} GiB, leaving KV cache for {eng.kv_tokens} tokens: not one sequence of "
            f"{eng.max_model_len} tokens", " or ".join(hint)))
    if plan.layout.colocated and plan.training is not None:
        peak = plan.peak_bytes()["generation"]
        if peak > device_bytes:
            free_fraction = (device_bytes - plan.training.resident - plan.training.reserve) / device_bytes
            hint = []
            if free_fraction > 0 and engine_memory(arch, gen.tensor_parallel, device_bytes, math.floor(free_fraction * 100) / 100,
                                                   eng.max_model_len).sequences >= 1:
                hint.append(f"lower generation.gpu_memory_utilization to {math.floor(free_fraction * 100) / 100:.2f}")
            hint.append("raise policy.parallel.tensor or pipeline (less resident training state per GPU)")
            hint.append("set generation.colocated=false with dedicated engine GPUs")
            plan.findings.append(Finding(
                "error", "generation.gpu_memory_utilization",
                f"colocated: the policy's resident state ({plan.training.resident / GIB:.1f} GiB) + reserve + the "
                f"engine budget ({gen.gpu_memory_utilization:.2f} x {device_bytes / GIB:.1f} = {eng.budget / GIB:.1f} GiB) "
                f"= {peak / GIB:.1f} GiB exceed the device", " or ".join(hint)))
    if 1 <= eng.sequences < LOW_CONCURRENCY:
        plan.findings.append(Finding(
            "warning", "generation.gpu_memory_utilization",
            f"each engine's KV cache holds only {eng.sequences} full-length sequences at once: generation will be "
            "slow", "raise generation.gpu_memory_utilization or generation.tensor_parallel"))
